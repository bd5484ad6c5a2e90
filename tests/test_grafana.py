"""`releasegate grafana SPEC`: the dashboard JSON, checked against Grafana's own schema and read for what a user sees.

Grafana cannot run here, so the schema check is the next best real thing: Grafana's published TypeScript types of
the dashboard model (``@grafana/schema``) and ``tsc --strict`` (tests/support/grafana_schema.py), plus a round trip
through grafana-foundation-sdk's models. The command runs as a real process, as a user would run it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from releasegate.dora_metrics import HELP as DORA_GAUGES
from releasegate.metrics_exporter import COUNTERS, GAUGES
from releasegate.router.exposition import render_metrics
from releasegate.router.stats import Stats
from tests.support.grafana_schema import NoRegistry, type_errors

GPU_SPEC = """\
service: megacity-ai
platform:
  command: python3 app.py --port {port}
metrics:
  prometheus: {url: "http://127.0.0.1:9090"}
analysis:
  rules:
    - {metric: error_rate, max: 1%, for: 5m}
    - {metric: latency_p95, max: 500ms, for: 5m}
    - {metric: cpu, max: 80%, for: 5m}
    - metric: prometheus
      query: 'max(nvidia_gpu_temperature_celsius{service="{{service}}",version="{{version}}"})'
      max: 85
      for: 5m
    - metric: prometheus
      query: 'sum(pg_stat_activity_count{datname="megacity"})'
      max: 500
      min: 1
      for: 5m
"""


def rg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "releasegate", *args], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The dashboard of the GPU spec, written by the real command to a file."""
    tmp = tmp_path_factory.mktemp("grafana")
    spec = tmp / "megacity.yaml"
    spec.write_text(GPU_SPEC)
    out = tmp / "dashboard.json"
    run = rg("grafana", str(spec), "--output", str(out), "--datasource", "prom-main")
    assert run.returncode == 0, run.stderr
    assert f"wrote the dashboard to {out}" in run.stderr and run.stdout == ""
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def panels(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["title"]: p for p in board["panels"] if p["type"] != "row"}


def steps(panel: dict[str, Any]) -> list[tuple[float | None, str]]:
    return [(s["value"], s["color"]) for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]


def exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel["targets"]]


def test_the_dashboard_type_checks_against_grafanas_schema(board: dict[str, Any], tmp_path: Path) -> None:
    broken = json.loads(json.dumps(board))  # the check is not a rubber stamp: a wrong enum and key are caught
    broken["panels"][0]["options"]["colorMode"] = "purple"
    broken["templating"]["list"][0]["refreshes"] = 1
    try:
        errors = type_errors({"board": board, "broken": broken}, tmp_path)
    except NoRegistry as exc:
        pytest.skip(str(exc))
    assert errors["board"] == []
    found = errors["broken"]
    assert len(found) == 2 and any("purple" in e for e in found) and any("refreshes" in e for e in found), found


def test_the_dashboard_round_trips_through_grafanas_sdk_models(board: dict[str, Any]) -> None:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    again = json.loads(JSONEncoder().encode(Dashboard.from_json(board)))
    assert [(p["type"], p["title"], p.get("targets")) for p in again["panels"]] == \
        [(p["type"], p["title"], p.get("targets")) for p in board["panels"]]


def test_panels_queries_and_thresholds_are_the_specs(board: dict[str, Any]) -> None:
    shown = panels(board)
    assert board["title"] == "Release Health - megacity-ai" and board["uid"] == "releasegate-megacity-ai"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == "prom-main"
    assert variables["service"]["type"] == "constant" and variables["service"]["query"] == "megacity-ai"
    assert {p["datasource"]["uid"] for p in shown.values()} == {"${datasource}"}

    error = shown["Error rate (5xx / all) per version"]
    assert steps(error) == [(None, "green"), (0.01, "red")] and error["fieldConfig"]["defaults"]["unit"] == \
        "percentunit"
    assert exprs(error) == ['sum by (version) (rate(http_requests_total{service="$service",status=~"5.."}'
                            '[$__rate_interval])) / sum by (version) (rate(http_requests_total{service="$service"}'
                            '[$__rate_interval]))']
    assert error["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed"
    p95 = shown["Latency p95 per version"]
    assert steps(p95) == [(None, "green"), (0.5, "red")] and p95["fieldConfig"]["defaults"]["unit"] == "s"
    assert exprs(p95) == ['histogram_quantile(0.95, sum by (version, le) (rate(http_request_duration_seconds_bucket'
                          '{service="$service"}[$__rate_interval])))']
    assert "Latency p99 per version" not in shown  # no rule watches it
    assert "thresholds" not in shown["Requests per second per version"]["fieldConfig"]["defaults"]

    gpu = shown["nvidia_gpu_temperature_celsius (rules[3], max 85)"]
    assert exprs(gpu) == ['max(nvidia_gpu_temperature_celsius{service="$service",version="$version"})',
                          'max(nvidia_gpu_temperature_celsius{service="$service",version="$baseline"})']
    assert steps(gpu) == [(None, "green"), (85.0, "red")]
    db = shown["pg_stat_activity_count (rules[4], max 500, min 1)"]
    assert exprs(db) == ['sum(pg_stat_activity_count{datname="megacity"})']  # no {{version}}: no baseline line
    assert steps(db) == [(None, "red"), (1.0, "green"), (500.0, "red")]
    assert "cpu > 80% for 5m" in board["description"]  # measured from processes: named, not drawn

    assert exprs(shown["Canary weight per version"]) == ['releasegate_route_weight{service="$service"}']
    assert exprs(shown["Rollback triggers"]) == [
        'sum by (trigger) (increase(releasegate_rollbacks_total{service="$service"}[$__rate_interval]))']
    assert shown["Rollout phase"]["type"] == "state-timeline"
    assert board["annotations"]["list"][0]["target"]["expr"].startswith("sum by (trigger) (increase(releasegate_")

    failures = shown["Change failure rate, 30 days"]
    assert exprs(failures) == ['releasegate_dora_change_failure_ratio{service="$service"}']
    assert steps(failures) == [(None, "green"), (0.15, "red")]
    assert exprs(shown["Lead time (median), 30 days"]) == [
        'releasegate_dora_lead_time_seconds{service="$service",quantile="0.5"}']


def test_every_builtin_series_is_one_releasegate_exports(board: dict[str, Any]) -> None:
    """The router's and the controller's series, by name; custom rules read whatever their query names."""
    exposed = set(re.findall(r"^# TYPE (\S+) (\S+)", render_metrics("s", Stats(), {}), re.M))
    names = {n for n, kind in exposed} | {f"{n}_bucket" for n, kind in exposed if kind == "histogram"}
    names |= {name for name, _, _ in GAUGES} | {f"{name}_total" for name, _, _, _ in COUNTERS}
    names |= set(DORA_GAUGES)  # the server's /metrics (releasegate/dora_metrics.py)
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    queries += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    queries += [a["target"]["expr"] for a in board["annotations"]["list"]]
    used = {m for q in queries for m in re.findall(r"([a-z_:][a-z0-9_:]*)\{", q)}
    assert used - names == {"nvidia_gpu_temperature_celsius", "pg_stat_activity_count"}


def test_defaults_print_to_stdout_and_a_title_is_taken(tmp_path: Path) -> None:
    spec = tmp_path / "shop.yaml"
    spec.write_text("service: shop\nplatform: {command: 'app --port {port}'}\n")
    run = rg("grafana", str(spec), "--title", "Shop releases")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["title"] == "Shop releases"
    shown = panels(data)
    assert steps(shown["Error rate (5xx / all) per version"])[-1] == (0.05, "red")  # the seeds' defaults
    assert steps(shown["Latency p95 per version"])[-1] == (2.5, "red")
    assert "current" not in data["templating"]["list"][0]  # Grafana's default Prometheus
    assert run.stderr == ""


def test_an_nginx_router_is_told_its_router_panels_stay_empty(tmp_path: Path) -> None:
    spec = tmp_path / "shop.yaml"
    spec.write_text("service: shop\nplatform: {command: 'app --port {port}'}\nrouter: {kind: nginx}\n")
    run = rg("grafana", str(spec))
    assert run.returncode == 0 and json.loads(run.stdout)["title"] == "Release Health - shop"
    assert run.stderr.startswith("note: router kind nginx exports no Prometheus series of its own") and \
        len(run.stderr.splitlines()) == 1, run.stderr
    assert "router kind nginx exports no Prometheus series" in json.loads(run.stdout)["description"]


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("service: shop\nplatform:\n  command: 'app --port {port}'\n  instancez: 2\n")
    spec = tmp_path / "shop.yaml"
    spec.write_text("service: shop\nplatform: {command: 'app --port {port}'}\n")
    cases = [
        ((str(bad),), f"{bad}:4:3: unknown key 'instancez'"),
        ((str(tmp_path / "none.yaml"),), "none.yaml: no such file"),
        ((str(spec), "--datasource", "my prom"), "--datasource 'my prom': a Grafana data source UID"),
        ((str(spec), "--output", str(tmp_path / "no" / "dir.json")), "cannot write it"),
        ((str(spec), "--title", " "), "--title: give a non-empty title"),
    ]
    with ThreadPoolExecutor(len(cases)) as pool:
        runs = list(pool.map(lambda args: rg("grafana", *args), (args for args, _ in cases)))
    for run, (_, message) in zip(runs, cases, strict=True):
        assert run.returncode == 2 and run.stdout == "", (run.stdout, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("releasegate: ") and message in lines[0], run.stderr
