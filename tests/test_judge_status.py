"""The judge's figures in ``status`` (engine/judging.py ``figures``, progress.py ``judge_lines``): what a judged step
shows per metric, in the metric's own units, built by the real judge from synthetic intervals (no process runs).
tests/test_judge_rollouts.py reads the same figures from a real rollout held by the judge."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from releasegate.engine import decide, judging
from releasegate.engine.state import RolloutState
from releasegate.progress import judge_lines, render_status
from releasegate.spec.models import Spec

SPEC = Spec.model_validate({
    "service": "shop", "platform": {"command": "app --port {port}"},
    "strategy": {"canary": {"steps": [{"weight": 30, "pause": "1m"}]}},
    "metrics": {"prometheus": {"url": "http://127.0.0.1:9"}},
    "analysis": {"baseline": True, "judge": {"alpha": 0.01, "metrics": [
        {"metric": "error_rate", "max_increase": 0.005}, {"metric": "latency", "max_increase": "10%"},
        {"metric": "prometheus", "query": 'sum(rate(orders_total{version="{{version}}"}[1m]))',
         "direction": "decrease", "max_increase": "5%"}]}}})


def side(requests: int, errors: int) -> dict[str, Any]:
    """One version's interval: its requests and 5xx answers, latencies spread over three of the router's buckets."""
    third = requests // 3
    return {"requests": requests, "errors": errors, "hist": {"40": third, "41": third, "42": requests - 2 * third}}


def held(intervals: int, canary_errors: int = 1) -> RolloutState:
    """A canary at its first step beside its baseline, judged for ``intervals`` intervals of 200 requests each."""
    st = decide.new_rollout("shop-2.0.0-abc123", SPEC, "2.0.0", "1.0.0", 1000.0).model_copy(update={
        "phase": "step", "weight": 30, "baseline": "1.0.0+baseline", "baseline_up": True})
    for _ in range(intervals):
        st, _verdict = judging.judge(st, SPEC, {"canary": side(200, canary_errors), "reference": side(200, 1),
                                                "prometheus": [[98.0, 100.0]]})
    return st


def status_item(st: RolloutState) -> dict[str, Any]:
    return {"service": "shop", "state": "running", "current": "1.0.0", "instances": {"1.0.0": 2}, "previous": None,
            "rollout": {"version": st.version, "strategy": "canary", "phase": st.phase, "paused": None,
                        "controller_alive": True, "weight": st.weight, "waiting": st.waiting, "latest": {},
                        "judge": judging.figures(st, SPEC)}}


def test_the_figures_are_each_metrics_verdict_in_its_own_terms_with_what_a_pass_still_needs() -> None:
    got = judging.figures(held(5), SPEC)
    assert got is not None
    assert (got["outcome"], got["reference"], got["alpha"]) == ("continue", "1.0.0+baseline", 0.01)
    errors, latency, orders = got["metrics"]
    assert (errors["metric"], errors["unit"], errors["margin"], errors["max_increase"]) == (
        "error_rate", "points", 0.005, 0.005)
    assert errors["estimate"] == 0.0 and errors["lo"] < 0 < errors["margin"] < errors["hi"]  # too few pairs yet
    assert errors["verdict"] == "not_ruled_out" and errors["more_canary_requests"] > 0
    assert errors["canary_requests"] == errors["baseline_requests"] == 1000
    assert errors["evalue"] < errors["threshold"] == 300  # 3 metrics at alpha 0.01
    assert (latency["unit"], latency["margin"], latency["max_increase"]) == ("share", 0.5, 0.1)
    assert latency["estimate"] is not None and latency["estimate"] < 0.5  # identical: P(canary > 1.1 x baseline)
    assert (orders["metric"], orders["unit"], orders["direction"]) == ("prometheus 2", "relative", "decrease")
    assert orders["estimate"] == 0.02  # 98 against 100, and fewer orders is worse: +2 % in the bad direction
    assert got["more_canary_requests"] >= max(m["more_canary_requests"] or 0 for m in got["metrics"])


def test_no_figures_before_the_judge_speaks_nor_away_from_a_step() -> None:
    st = held(0)
    assert judging.figures(st, SPEC) is None
    assert judging.figures(held(2).model_copy(update={"phase": "watch"}), SPEC) is None


def test_a_faulty_canary_reads_as_a_regression() -> None:
    got = judging.figures(held(8, canary_errors=100), SPEC)  # half its answers fail
    assert got is not None and got["outcome"] == "regression"
    assert got["metrics"][0]["verdict"] == "regression"


def test_status_shows_the_figures_as_a_table_within_80_columns_and_wraps_them_when_narrower() -> None:
    item = status_item(held(5))
    console = Console(record=True, width=80, color_system=None)
    render_status(console, [item])
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80, lines
    text = "\n".join(lines)
    assert "judge: 2.0.0 against 1.0.0+baseline (alpha 0.01): not yet passing; about" in " ".join(lines)
    header = next(line for line in lines if "estimate [interval]" in line).split()
    assert header == ["metric", "estimate", "[interval]", "margin", "evidence", "verdict"]
    row = next(line for line in lines if line.lstrip().startswith("error_rate")).split()
    assert row[1] == "+0.00" and row[2].startswith("[-") and row[3].endswith("]pp") and row[4] == "0.5pp"
    more = item["rollout"]["judge"]["metrics"][0]["more_canary_requests"]  # 20,391: shown as 20k
    assert row[5].endswith("/300") and row[6:] == ["needs", f"~{round(more / 1000)}k", "more"]
    assert "latency>1.1x  0." in text and "prometheus 2  +2.0% [-100%, +100%]  5%" in text
    assert text.rstrip().endswith("intervals")  # prometheus counts intervals with a value, not requests
    narrow = judge_lines(item["rollout"]["judge"], 50)
    assert max(len(line) for line in narrow) <= 50 and narrow[0].startswith("    error_rate: +0.00 [")


def test_a_passing_step_says_so() -> None:
    st = held(5).model_copy(update={"judged": {"outcome": "pass", "more_canary_requests": 0, "metrics": [
        {"metric": "error_rate", "evalue": 0.3, "threshold": 300.0, "lo": -0.001, "hi": 0.002, "margin": 0.005,
         "estimate": 0.0, "canary_requests": 9000, "baseline_requests": 9000},
        {"metric": "latency", "evalue": 0.5, "threshold": 300.0, "lo": 0.3, "hi": 0.45, "margin": 0.5,
         "estimate": 0.4, "canary_requests": 9000, "baseline_requests": 9000},
        {"metric": "prometheus 2", "evalue": 0.5, "threshold": 300.0, "lo": -0.02, "hi": 0.03, "margin": 0.05,
         "estimate": 0.0, "canary_requests": 40, "baseline_requests": 40}]}})
    console = Console(record=True, width=80, color_system=None)
    render_status(console, [status_item(st)])
    assert "(alpha 0.01): passing, every interval below its margin" in " ".join(console.export_text().split())
    assert [m["verdict"] for m in (judging.figures(st, SPEC) or {})["metrics"]] == ["passing"] * 3


def test_the_dashboards_rollout_page_shows_the_same_rows() -> None:
    """The server's rollout page (views.rollout, templates/rollout.html) carries the rows `status` prints; its
    live updates re-render them from the same view (static/dashboard.js renderJudge)."""
    from types import SimpleNamespace

    from releasegate.server.dashboard.routes import templates
    from releasegate.server.dashboard.views import rollout
    from releasegate.store.sqlite import RolloutRecord

    st = held(5)
    view = rollout(RolloutRecord(st, "/nowhere/shop.yaml", SPEC.model_dump_json(by_alias=True), None), [])
    judge = view["judge"]
    assert judge["said"].startswith("judge: 2.0.0 against 1.0.0+baseline (alpha 0.01): not yet passing")
    assert judge["columns"][0] == "metric" and [r[0] for r in judge["rows"]] == [
        "error_rate", "latency>1.1x", "prometheus 2"]
    page = templates.get_template("rollout.html").render(
        view=view, session=SimpleNamespace(csrf="x"), may_act=False, actions=[], said=None, version="test")
    assert '<section id="judge"  aria-label="the judge">' in page and "<td>latency&gt;1.1x</td>" in page
    assert judge["rows"][0][1] in page
    finished = rollout(RolloutRecord(st.model_copy(update={"phase": "watch"}), "/nowhere/shop.yaml",
                                     SPEC.model_dump_json(by_alias=True), None), [])
    assert finished["judge"] is None
    page = templates.get_template("rollout.html").render(
        view=finished, session=SimpleNamespace(csrf="x"), may_act=False, actions=[], said=None, version="test")
    assert '<section id="judge" hidden aria-label="the judge">' in page


def test_the_waiting_and_rollback_lines_say_what_latencys_interval_is_of() -> None:
    """Latency's interval is a share of request pairs bounded by 1/2, not a relative difference: a line that
    called 0.5 its margin would read as a 50 % margin."""
    st = decide.new_rollout("shop-2.0.0-abc123", SPEC, "2.0.0", "1.0.0", 1000.0).model_copy(update={
        "phase": "step", "weight": 30, "baseline": "1.0.0+baseline", "baseline_up": True})
    st, verdict = judging.judge(st, SPEC, {"canary": side(200, 0), "reference": side(200, 0),
                                           "prometheus": [[100.0, 100.0]]})
    assert verdict is not None
    said = judging.waiting_reason(st, SPEC, verdict, st.phase_started + 120)
    assert "latency (share of request pairs with the canary slower than 1.1x the baseline) interval" in said
    assert "not yet below 1/2" in said and "error_rate interval" in said and "not yet below its margin 0.005" in said
    worse = verdict.model_copy(update={"metrics": [verdict.metrics[1].model_copy(update={"evalue": 1e6})]})
    judge = SPEC.analysis.judge
    assert judge is not None
    only_latency = judge.model_copy(update={"metrics": judge.metrics[1:2]})
    said = judging.regression_reason(st, SPEC.model_copy(update={"analysis": SPEC.analysis.model_copy(update={
        "judge": only_latency})}), worse)
    assert "beyond the margin on latency" in said and "slower than 1.1x the baseline interval [" in said, said
    assert said.count("bound 1/2") == 1, said
