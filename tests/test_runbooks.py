"""The seed runbooks as their teams would write them (examples/runbooks/), run with third-party apps.

Every example spec validates and plans. Two run end to end with the apps their teams ship, under their own
servers: PrivateTrade's Flask app under gunicorn (blue-green, SQLite migration before the smoke suite, health that
must name the version, 24 h keep) and the ai-model FastAPI backend under uvicorn with worker processes (three
instances, cpu and memory rules per instance, health failing three times in a row rolls back). Only the durations
are shortened: the spec is the example file with its waits scaled down, so the example cannot drift from what runs.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from releasegate import service
from releasegate.engine.state import RolloutState
from tests.support.rollouts import Load, cleanup, free_port

ROOT = Path(__file__).resolve().parent.parent
RUNBOOKS = ROOT / "examples" / "runbooks"
PY = sys.executable
BIN = Path(sys.executable).parent


def _rg(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "releasegate", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


@pytest.mark.parametrize("spec", sorted(RUNBOOKS.glob("*/*.yaml")), ids=lambda p: p.parent.name)
def test_every_runbook_example_validates_and_plans(spec: Path, tmp_path: Path) -> None:
    done = _rg("validate", str(spec), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    plan = _rg("--state-dir", str(tmp_path / "state"), "plan", str(spec), "--version", "2.0.0", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert "rollback" in plan.stdout
    assert not (tmp_path / "state").exists(), "plan is read-only"


def _copy_app(name: str, tmp: Path) -> Path:
    app = tmp / name
    shutil.copytree(RUNBOOKS / name, app, ignore=shutil.ignore_patterns("__pycache__", "*.db", "backups"))
    return app


def _shorten(doc: dict[str, Any], port: int) -> dict[str, Any]:
    """The runbook's spec with test-sized waits and this test's tools; every check and rule as written."""
    doc["router"] = {"kind": "builtin", "listen": f"127.0.0.1:{port}", "drain_timeout": "5s"}
    doc["platform"]["stop_grace"] = "5s"
    doc["health"].update({"interval": "200ms", "attempts": 100})
    doc["analysis"].update({"interval": "500ms", "post_promotion": "6s"})
    for rule in doc["analysis"]["rules"]:
        rule["for"] = "1s"
    for test in doc.get("smoke") or []:
        if "command" in test:
            test["command"] = test["command"].replace("python3 ", f"{PY} ")
    for ramp in doc["strategy"].get("bluegreen", {}).get("ramp", []):
        ramp["pause"] = "2s"
    return doc


def _events(state_dir: Path, service_name: str) -> list[dict[str, Any]]:
    history = service.history(service.new_context(state_dir), service_name, 1)
    return list(history[0]["events"])


@pytest.fixture
def privatetrade(tmp_path: Path) -> Iterator[tuple[Path, Path, int]]:
    if not (BIN / "gunicorn").exists():
        pytest.skip("gunicorn is not installed (pip install -e .[dev])")
    app = _copy_app("privatetrade", tmp_path)
    port = free_port()
    doc = _shorten(yaml.safe_load((app / "backtest.yaml").read_text()), port)
    doc["platform"]["command"] = doc["platform"]["command"].replace("gunicorn", str(BIN / "gunicorn"), 1)
    doc["platform"]["env"]["MISBEHAVE"] = "2.1.0:health_after=4"
    spec = app / "backtest.yaml"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    # The checkout of 1.9.0 has only its own migration; 2.0.0's adds 001 (the test moves it back in).
    (app / "db" / "migrations" / "001_add_specific_stock_selection.sql").rename(tmp_path / "001.sql")
    state = tmp_path / "state"
    yield spec, state, port
    asyncio.run(cleanup(state, spec))


@pytest.mark.slow
async def test_privatetrade_blue_green_on_gunicorn(privatetrade: tuple[Path, Path, int]) -> None:
    """1.9.0 runs; 2.0.0 starts beside it, the migration adds the columns its new endpoints need before its health
    (which must say version 2.0.0) and the smoke suite run against it; traffic switches with no failed request and
    1.9.0 is kept. Then 2.1.0, whose health fails after the switch, goes back to 2.0.0 at once."""
    spec, state, port = privatetrade
    ctx = service.new_context(state)
    first = await service.deploy(ctx, spec, "1.9.0")
    assert first.status == "promoted", first.reason
    (spec.parent.parent / "001.sql").rename(spec.parent / "db" / "migrations" / "001_add_specific_stock_selection.sql")
    async with Load(f"http://127.0.0.1:{port}/api/config", concurrency=3) as load:
        await load.wait_for(20)
        green: RolloutState = await service.deploy(ctx, spec, "2.0.0")
        await load.wait_for(20)
    assert green.status == "promoted", green.reason
    assert load.failures == []
    kinds = [e["kind"] for e in _events(state, "backtesting-simulator")]
    assert kinds.index("migrated") < kinds.index("healthy") < kinds.index("smoke_passed") < kinds.index("switched")
    smoke = next(e for e in _events(state, "backtesting-simulator") if e["kind"] == "smoke_passed")
    assert "5/5 smoke tests passed" in str(smoke["data"])
    columns = [r[1] for r in sqlite3.connect(spec.parent / "backtest.db").execute("PRAGMA table_info(config)")]
    assert {"stock_mode", "selected_specific_stocks"} <= set(columns)
    status = service.status(ctx, "backtesting-simulator")[0]
    assert status["current"] == "2.0.0" and status["previous"] == "1.9.0"

    async with Load(f"http://127.0.0.1:{port}/api/config", concurrency=3) as load:
        await load.wait_for(10)
        bad = await service.deploy(ctx, spec, "2.1.0")
    assert bad.status == "rolled_back", bad.reason
    assert "health" in (bad.reason or "")
    assert service.status(ctx, "backtesting-simulator")[0]["current"] == "2.0.0"


@pytest.fixture
def ai_model(tmp_path: Path) -> Iterator[tuple[Path, Path, int]]:
    if not (BIN / "uvicorn").exists():
        pytest.skip("uvicorn is not installed (pip install -e .[dev])")
    app = _copy_app("ai-model-mgmt", tmp_path)
    port = free_port()
    doc = _shorten(yaml.safe_load((app / "ai-model.yaml").read_text()), port)
    doc["platform"]["command"] = doc["platform"]["command"].replace("uvicorn", str(BIN / "uvicorn"), 1).replace(
        "--workers 4", "--workers 2")
    doc["platform"]["env"] = {**doc["platform"].get("env", {}), "MISBEHAVE": "1.2.0:health_after=5"}
    spec = app / "ai-model.yaml"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    state = tmp_path / "state"
    yield spec, state, port
    asyncio.run(cleanup(state, spec))


@pytest.mark.slow
async def test_ai_model_on_uvicorn_with_workers(ai_model: tuple[Path, Path, int]) -> None:
    """Three uvicorn instances with two workers each: a healthy 1.1.0 is promoted (cpu and memory are judged per
    instance, so three busy-ish instances do not add up to a breach); 1.2.0, whose /health starts failing after the
    switch, is rolled back after three failures in a row, before its watch ends."""
    spec, state, port = ai_model
    ctx = service.new_context(state)
    assert (await service.deploy(ctx, spec, "1.0.0")).status == "promoted"
    async with Load(f"http://127.0.0.1:{port}/api/models", concurrency=4) as load:
        await load.wait_for(20)
        good = await service.deploy(ctx, spec, "1.1.0")
    assert good.status == "promoted", good.reason
    assert load.failures == []
    async with Load(f"http://127.0.0.1:{port}/api/models", concurrency=2) as load:
        await load.wait_for(10)
        bad = await service.deploy(ctx, spec, "1.2.0")
    assert bad.status == "rolled_back", bad.reason
    failed = [e for e in _events(state, "ai-model-backend") if e["kind"] == "health_failed"]
    assert failed, "the failures below the threshold are recorded"
    assert "3" in (bad.reason or "") and "health" in (bad.reason or "")
