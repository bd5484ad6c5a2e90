"""DORA delivery metrics (docs/dora.md) over a store with a known history, through the CLI, the API and /metrics.

The history is made by the real engine (``decide`` driven in simulated time by ``engine.simulate``: the canary
steps, the automatic rollback of a breach, the abort of a health check that fails before traffic) and written
through the real ``Store`` and ``new_release`` (the commit times); only the clock is shifted, so that twenty days
of rollouts exist in a second. Every expected number below is worked out by hand in the comments. The same history
written to a PostgreSQL store (when one can run here) gives the same numbers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from releasegate.dora import DAY, read_deploys, report
from releasegate.dora_metrics import DoraCollector
from releasegate.engine.simulate import Trace, simulate
from releasegate.governance.approvals import new_release
from releasegate.store.sqlite import Store
from tests.support.pgstore import on_postgres
from tests.support.postgres import PostgresServer
from tests.support.rollouts import Load, RolloutEnv
from tests.support.server import ServerProc
from tests.support.simulated import errors_when, make_spec

SPEC = make_spec(strategy={"canary": {"steps": [{"weight": 20, "pause": "10m"}, {"weight": 50, "pause": "10m"}]}})
PROMOTED = 3000.0  # a passing rollout of SPEC: first traffic at +0, 100 % at +1200, promoted at +3000
BREACHED = 900.0  # errors from the first step: rollback decided at +300, rolled back at +900
HOUR = 3600.0


def _record(store: Store, trace: Trace, *, env: str = "prod", hotfix: bool = False) -> str:
    """Persist one simulated rollout as a controller would have: its state (with what admission decided: the
    env, the change kind ``hotfix`` of ``deploy --hotfix``), and each decision at its time."""
    made = trace.state
    st = made.model_copy(update={"env": env, "change": "hotfix" if hotfix else "minor",
                                 "id": f"{made.service}-{made.version}-{made.created_at:.0f}"})
    store.create_rollout(st, "spec.yaml", SPEC.model_dump_json(), {})
    for at, d in trace.decisions:
        store.add_event(st.service, st.id, st.created_at + at, d.kind, d.message, d.data)
    store.save(st)
    return st.id


def _run(store: Store, service: str, version: str, previous: str, start: float, *, env: str = "prod",
         hotfix: bool = False, breach: bool = False, dead: bool = False) -> str:
    spec = SPEC.model_copy(update={"service": service})
    trace = simulate(spec, version, previous, t0=start, metric=errors_when(lambda t, w: w > 0) if breach else None,
                     failing=frozenset({f"health:{version}"}) if dead else frozenset())
    return _record(store, trace, env=env, hotfix=hotfix)


def _history(state: Path, now: float) -> float:
    """Twenty days back from ``now``; returns the base time B (every time below is B + something)."""
    b = now - 20 * DAY
    store = Store(state)
    try:
        # shop/prod
        _run(store, "shop", "1.0.0", "0.9.0", b)  # promoted B+3000; committed 2 days before: lead 172800
        _run(store, "shop", "1.1.0", "1.0.0", b + DAY)  # promoted B+1d+3000; lead 6h = 21600 ...
        # ... and a hotfix 4 h after that promotion: 1.1.0 failed; restored when 1.1.1 is promoted, 4h+3000 later
        _run(store, "shop", "1.1.1", "1.1.0", b + DAY + PROMOTED + 4 * HOUR, hotfix=True)  # lead unknown
        _run(store, "shop", "1.2.0", "1.1.1", b + 3 * DAY, breach=True)  # failed after traffic: restore 900
        promoted_130 = b + 4 * DAY + PROMOTED
        bad = _run(store, "shop", "1.3.0", "1.2.0", b + 4 * DAY)  # lead 1 day; switched back an hour later
        store.add_event("shop", bad, promoted_130 + HOUR, "rolled_back", "rolled back by ops: 1.1.1 serves 100%")
        _run(store, "shop", "1.4.0", "1.3.0", b + 5 * DAY, dead=True)  # aborted before traffic: not a deploy
        late = _run(store, "shop", "1.5.0", "1.1.1", b + 6 * DAY)  # lead 3h; switched back after 2 days: no failure
        store.add_event("shop", late, b + 6 * DAY + PROMOTED + 48 * HOUR, "rolled_back", "rolled back by ops")
        # api/staging: 2.0.0 promoted, then its previous version deployed again 2 h later (a rollback by deploy)
        _run(store, "api", "2.0.0", "1.9.0", b + 2 * DAY, env="staging")
        _run(store, "api", "1.9.0", "2.0.0", b + 2 * DAY + PROMOTED + 2 * HOUR, env="staging")
    finally:
        store.close()
    for version, start, lead in (("1.0.0", b, 2 * DAY), ("1.1.0", b + DAY, 6 * HOUR), ("1.3.0", b + 4 * DAY, DAY),
                                 ("1.5.0", b + 6 * DAY, 3 * HOUR)):
        new_release(state, "shop", version, "dev", commit="abc1234", commit_at=start + PROMOTED - lead, now=start)
    return b


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("dora") / "state"
    _history(where, float(int(time.time())))  # whole seconds: every difference below is exact
    return where


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "releasegate", "dora", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def _group(data: dict[str, Any], service: str) -> dict[str, Any]:
    return next(g for g in data["groups"] if g["service"] == service)


def _check_numbers(data: dict[str, Any]) -> None:
    shop, api, total = _group(data, "shop"), _group(data, "api"), data["total"]
    # shop/prod: 1.0.0, 1.1.0, 1.1.1, 1.2.0 (rolled back after traffic), 1.3.0, 1.5.0; 1.4.0 never got traffic
    assert (shop["env"], shop["deployments"], shop["stopped_before_traffic"]) == ("prod", 6, 1)
    assert shop["deployments_per_day"] == pytest.approx(6 / 90) and shop["deployment_frequency_band"] == "medium"
    # failures: 1.1.0 (hotfix within 24h), 1.2.0 (rolled back), 1.3.0 (switched back after 1h); not 1.5.0 (48h)
    assert (shop["change_failures"], shop["change_failure_rate"], shop["change_failure_band"]) == (3, 0.5, "low")
    # lead times 3h, 6h, 1d, 2d: median (6h + 1d) / 2 = 15h (elite, under a day), p90 = 4th of 4 = 2d
    assert shop["lead_time"] == {"count": 4, "median_seconds": 54000.0, "p90_seconds": 172800.0, "band": "elite",
                                 "unknown": 1}
    # restores 900 (1.2.0), 3600 (1.3.0), 4h + 3000 = 17400 (1.1.0 until 1.1.1 was promoted): median 3600
    assert shop["time_to_restore"] == {"count": 3, "median_seconds": 3600.0, "p90_seconds": 17400.0,
                                       "band": "high", "not_restored": 0}
    # api/staging: 2.0.0 failed (its previous version deployed 2h later), restored at 1.9.0's promotion: 2h + 3000
    assert (api["env"], api["deployments"], api["change_failures"], api["change_failure_rate"]) == \
        ("staging", 2, 1, 0.5)
    assert api["lead_time"]["unknown"] == 2 and api["lead_time"]["count"] == 0
    assert api["time_to_restore"]["median_seconds"] == 10200.0
    assert (total["deployments"], total["change_failures"], total["change_failure_rate"]) == (8, 4, 0.5)
    assert total["time_to_restore"]["median_seconds"] == (3600.0 + 10200.0) / 2  # of 900, 3600, 10200, 17400
    assert data["window_seconds"] == DAY


def test_the_cli_reports_each_metric_per_service_and_env_with_its_band(state: Path) -> None:
    as_json = _cli("--state-dir", str(state), "--json")
    assert as_json.returncode == 0, as_json.stderr
    _check_numbers(json.loads(as_json.stdout))
    table = _cli("--state-dir", str(state), env=os.environ | {"COLUMNS": "80"})  # a newcomer's terminal
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert max(len(line) for line in lines if line.startswith(" ")) <= 80  # the table's lines: no wrapped cell
    at = next(i for i, line in enumerate(lines) if line.split()[:2] == ["shop", "prod"])
    # the figures, then each one's band on the line below
    assert lines[at].split() == ["shop", "prod", "6", "0.07", "3", "(50%)", "15h", "/", "48h", "1h", "/", "4h50m"]
    assert lines[at + 1].split() == ["medium", "low", "elite", "high"]
    total = next(i for i, line in enumerate(lines) if line.split()[:1] == ["total"])
    assert lines[total].split() == ["total", "8", "0.09", "4", "(50%)", "15h", "/", "48h", "1h55m", "/", "4h50m"]
    assert "shop prod: 1 rollout(s) stopped before any traffic, not counted as deployments" in lines
    assert any(line.startswith("lead time unknown for 3 promotion(s): no commit time recorded") for line in lines)


def test_filters_and_a_shorter_window_change_what_counts(state: Path) -> None:
    only = json.loads(_cli("--state-dir", str(state), "--json", "--env", "staging").stdout)
    assert [g["service"] for g in only["groups"]] == ["api"] and only["total"]["deployments"] == 2
    # with a 3 h window the hotfix (4 h after 1.1.0) no longer makes 1.1.0 a failed change
    short = json.loads(_cli("--state-dir", str(state), "--json", "--service", "shop", "--window", "3h").stdout)
    assert _group(short, "shop")["change_failures"] == 2
    # the last 10 days hold only 1.5.0 (promoted B+6d+3000 = 14 days ago is outside): nothing to measure
    recent = _cli("--state-dir", str(state), "--since", "10d")
    assert recent.returncode == 0 and "nothing to measure" in recent.stdout


@pytest.mark.parametrize(("args", "says"), [
    (("--since", "ninety days"), "--since ninety days: write an ISO 8601 time"),
    (("--since", "2999-01-01"), "--since 2999-01-01: that is in the future"),
    (("--window", "24"), "--window 24: cannot read duration '24': use a number with a unit"),
    (("--window", "0s"), "--window 0s: give a positive duration"),
    (("--service", "shpo"), "shpo: unknown service: the state dir "),
])
def test_bad_input_is_one_line_and_exit_2(state: Path, args: tuple[str, ...], says: str) -> None:
    answer = _cli("--state-dir", str(state), *args)
    assert answer.returncode == 2 and answer.stdout == ""
    assert answer.stderr.startswith(f"releasegate: {says}") and answer.stderr.count("\n") == 1, answer.stderr


def test_a_state_dir_without_a_store_is_named(tmp_path: Path) -> None:
    answer = _cli("--state-dir", str(tmp_path / "nowhere"))
    assert answer.returncode == 2 and "dora: no state in" in answer.stderr and "--state-dir" in answer.stderr
    assert not (tmp_path / "nowhere").exists()


def test_the_server_serves_the_same_numbers_to_the_api_the_client_and_metrics(state: Path, tmp_path: Path) -> None:
    server = ServerProc(state, tmp_path).start()
    try:
        viewer = server.token("vera", "viewer")
        with server.client(viewer) as c:
            answer = c.get("/api/v1/dora", params={"since": "90d"})
            assert answer.status_code == 200, answer.text
            _check_numbers(answer.json())
            bad = c.get("/api/v1/dora", params={"window": "soon"})
            assert bad.status_code == 400 and bad.json()["detail"].startswith("--window soon:")
            scraped = c.get("/metrics").text
        with server.client(server.token("apiteam", "viewer", "api*")) as c:
            scoped = c.get("/api/v1/dora").json()  # a token for api* sees api only, totals included
            assert [g["service"] for g in scoped["groups"]] == ["api"] and scoped["total"]["deployments"] == 2
            assert c.get("/api/v1/dora", params={"service": "shop"}).status_code == 403
        with httpx.Client(base_url=server.url, timeout=30, headers={"Origin": server.url}) as browser:
            assert browser.post("/signin", data={"token": viewer, "next": "/"}).status_code == 303
            page = browser.get("/").text  # the dashboard's overview: the same 30-day figures, written out
        env = {"PATH": "/usr/bin:/bin", "RELEASEGATE_SERVER": server.url, "RELEASEGATE_TOKEN": viewer}
        through = _cli("--json", env=env)
        assert through.returncode == 0, through.stderr
        _check_numbers(json.loads(through.stdout))
        refused = _cli("--since", "later", env=env)
        assert refused.returncode == 2 and refused.stderr.startswith("releasegate: --since later:")
    finally:
        server.stop()
    # the last 30 days hold the whole history: the same numbers as gauges
    assert 'releasegate_dora_deployments{service="shop",env="prod"} 6.0' in scraped
    assert 'releasegate_dora_change_failure_ratio{service="api",env="staging"} 0.5' in scraped
    assert 'releasegate_dora_lead_time_seconds{service="shop",env="prod",quantile="0.5"} 54000.0' in scraped
    assert 'releasegate_dora_time_to_restore_seconds{service="shop",env="prod",quantile="0.9"} 17400.0' in scraped
    assert "releasegate_dora_period_seconds 2592000.0" in scraped
    shop_row = re.search(r'<tr data-service="shop" data-env="prod">(.*?)</tr>', page, re.S)
    assert shop_row is not None, page
    cells = [re.sub(r"\s+", " ", c).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", shop_row[1], re.S)]
    # over 30 days rather than 90, the same six deploys are 0.2 a day: at least weekly, "high"
    assert cells == ["shop", "prod", "6, 0.20/day (high)", "3, 50% (low)", "15h (elite)", "1h (high)"]
    assert '<tr data-service="total" data-env="">' in page


def test_the_same_history_on_a_postgres_store_gives_the_same_numbers(postgres: PostgresServer,
                                                                      tmp_path: Path) -> None:
    now = float(int(time.time()))
    with on_postgres(postgres, "dora"):
        _history(tmp_path, now)
        _check_numbers(report(read_deploys(tmp_path, now - 90 * DAY), now - 90 * DAY, now))
        scraped = DoraCollector(tmp_path, clock=lambda: now).render().decode()
    assert 'releasegate_dora_change_failures{service="shop",env="prod"} 3.0' in scraped


def test_release_new_records_the_commit_time_given_and_refuses_one_it_cannot_read(tmp_path: Path) -> None:
    from releasegate.governance.identity import new_token
    from releasegate.governance.policy import load_policy
    from releasegate.store.governance import GovernanceStore

    state = tmp_path / "state"
    policy = load_policy(Path(__file__).resolve().parent.parent / "examples" / "governance" / "policy.yaml")
    env = os.environ | {"RELEASEGATE_TOKEN": new_token(state, policy, "alice")}
    base = [sys.executable, "-m", "releasegate", "release", "new", "shop", "3.0.0", "--as", "alice", "--state-dir",
            str(state), "--commit", "abc1234", "--commit-time"]
    bad = subprocess.run([*base, "last tuesday"], capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("releasegate: --commit-time last tuesday: write an ISO 8601")
    done = subprocess.run([*base, "2026-12-01T09:30:00+09:00"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    with GovernanceStore(state) as store:
        release = store.release("shop", "3.0.0")
    assert release is not None and release.commit_at == 1796085000.0  # 2026-12-01 00:30 UTC


@pytest.fixture
def real(tmp_path: Path) -> Iterator[RolloutEnv]:
    made = RolloutEnv(tmp_path)
    yield made
    made.close()  # stops every process the rollouts started


async def test_real_rollouts_a_promotion_and_a_rollback_after_it_count_as_a_deploy_that_failed(
        real: RolloutEnv) -> None:
    """Two real blue-green rollouts of the demo app behind the built-in router (under load: the analysis needs
    requests), then `rollback` after the second's promotion: the controller's own events and times feed the same
    numbers."""
    from releasegate import service

    spec = real.spec("{bluegreen: {keep_previous: 1h}}")
    async with Load(real.url, concurrency=2) as load:
        await load.wait_for(5)
        assert (await asyncio.wait_for(service.deploy(real.ctx, spec, "1.0.0"), 60)).status == "promoted"
        assert (await asyncio.wait_for(service.deploy(real.ctx, spec, "2.0.0"), 60)).status == "promoted"
        assert (await service.send_command(real.ctx, "shop", "rollback")).applied
    store = Store(real.state)
    try:
        second = store.latest_rollout("shop")
        assert second is not None and second.state.finished_at is not None
        back = store.last_event("shop", ["rolled_back"])
    finally:
        store.close()
    assert back is not None and back["rollout"] == second.state.id
    answer = _cli("--state-dir", str(real.state), "--json")
    assert answer.returncode == 0, answer.stderr
    shop = _group(json.loads(answer.stdout), "shop")
    assert (shop["env"], shop["deployments"], shop["change_failures"], shop["stopped_before_traffic"]) == \
        ("prod", 2, 1, 0)
    assert shop["time_to_restore"]["median_seconds"] == pytest.approx(back["at"] - second.state.finished_at)
    assert shop["lead_time"]["unknown"] == 2  # neither version was registered with a commit time
