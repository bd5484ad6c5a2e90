"""`releasegate report`: checked against real rollouts whose numbers the test knows.

One scenario for the module (real demo-app processes behind the built-in router, real HTTP): 1.0.0, then a canary
of 2.0.0 promoted by an operator ("alice"), then a canary of 3.0.0 whose every request fails (FAULTS) under a
load generator, rolled back by the error-rate rule. The load counts what it received per version; the report's
counts are the router's. Tolerance: the router's last count is taken when traffic to 3.0.0 goes to 0 %, so the
requests still in flight then (at most one per load worker) may be missing from it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from releasegate import service
from releasegate.engine.state import RolloutState
from releasegate.governance import approvals as gov
from releasegate.governance.identity import os_user
from releasegate.governance.policy import load_policy
from tests.support.rollouts import Load, RolloutEnv
from tests.support.server import ServerProc
from tests.support.wait import eventually

pytestmark = pytest.mark.slow

CONCURRENCY = 4
FAILING = "{canary: {steps: [{weight: 50, pause: 5s}]}}"
MANUAL = "{canary: {steps: [{weight: 20}]}}"  # no pause: waits for an operator's promote
POLICY = Path(__file__).resolve().parents[1] / "examples" / "governance" / "policy.yaml"
DIGEST = "sha256:" + "a" * 64
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Scenario:
    env: RolloutEnv
    promoted: RolloutState
    failed: RolloutState
    load: Load  # the load that ran through the failing canary
    aborted: RolloutState  # 4.0.0: failed its smoke test, no user request reached it


async def _run(env: RolloutEnv) -> Scenario:
    spec = env.spec(MANUAL, faults="3.0.0:error_rate=1", smoke_path="/health",
                    rules="[{metric: error_rate, max: 0.05, for: 1s}]", post_promotion="1s")
    assert (await service.deploy(env.ctx, spec, "1.0.0")).status == "promoted"
    env.ctx.actor = "alice"
    first = asyncio.create_task(asyncio.wait_for(service.deploy(env.ctx, spec, "2.0.0"), 60))
    await eventually(lambda: (service.status(env.ctx, "shop")[0]["rollout"] or {}).get("waiting"), what="manual step")
    async with Load(env.url, concurrency=CONCURRENCY) as load:  # the watch passes on evidence only: traffic
        await load.wait_for(10)
        assert (await service.send_command(env.ctx, "shop", "promote")).applied
        promoted = await first
    spec.write_text(spec.read_text().replace(MANUAL, FAILING))
    gov.new_release(env.state, "shop", "3.0.0", "alice", DIGEST, COMMIT)  # its author, and bob's approval
    gov.approve(env.state, load_policy(POLICY), "shop", "3.0.0", "reviewer", "bob")
    async with Load(env.url, concurrency=CONCURRENCY) as load:
        await load.wait_for(10)
        failed = await asyncio.wait_for(service.deploy(env.ctx, spec, "3.0.0"), 60)
    spec.write_text(spec.read_text().replace("path: /health, expect_status", "path: /api/items, expect_status")
                    .replace('FAULTS: "3.0.0:error_rate=1"', 'FAULTS: "3.0.0:error_rate=1;4.0.0:error_rate=1"'))
    aborted = await asyncio.wait_for(service.deploy(env.ctx, spec, "4.0.0"), 60)
    return Scenario(env, promoted, failed, load, aborted)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    env = RolloutEnv(tmp_path_factory.mktemp("report"))
    try:
        yield asyncio.run(_run(env))
    finally:
        env.close()


def cli(s: Scenario, *args: str, server: ServerProc | None = None, token: str = "") -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("RELEASEGATE_SERVER", "RELEASEGATE_TOKEN")}
    if server is not None:
        environ.update(RELEASEGATE_SERVER=server.url, RELEASEGATE_TOKEN=token)
    else:
        args = ("--state-dir", str(s.env.state), *args)
    return subprocess.run([sys.executable, "-m", "releasegate", *args], capture_output=True, text=True, timeout=60,
                          env={**environ, "COLUMNS": "200"})


def as_json(s: Scenario, ref: str) -> dict[str, Any]:
    r = cli(s, "report", ref, "--format", "json")
    assert r.returncode == 0, r.stderr
    data: dict[str, Any] = json.loads(r.stdout)
    return data


def test_a_rolled_back_canary_reports_its_timeline_trigger_and_impact_as_the_load_saw_it(scenario):
    s = scenario
    assert s.failed.status == "rolled_back", s.failed.reason
    report = as_json(s, s.failed.id)
    assert report["id"] == s.failed.id and report["status"] == "rolled_back" and report["previous"] == "2.0.0"
    stages = {e["kind"]: e for e in report["timeline"]}
    assert stages["step"]["weight"] == 50 and stages["step"]["stage"] == "traffic"
    assert stages["rollback"]["values"]["error_rate"] == "100%" and stages["rollback"]["stage"] == "rollback"
    assert [e["weight"] for e in report["timeline"] if e["kind"] == "rollback_step"][-1] == 0
    assert all(e["t"].startswith("T+") for e in report["timeline"] if e["stage"] != "preflight")
    assert report["author"] == "alice" and report["commit"] == COMMIT and report["digest"] == DIGEST
    [approval] = report["approvals"]
    assert (approval["user"], approval["kind"], approval["env"], approval["stage"]) == ("bob", "approval", "prod",
                                                                                      "reviewer")
    preflight = [(e["kind"], e["actor"]) for e in report["timeline"] if e["stage"] == "preflight"]
    assert preflight == [("release.new", "alice"), ("approval (prod/reviewer)", "bob"),
                         ("deploy.admitted", f"{os_user()} (os login)")]

    pm = report["postmortem"]
    trigger = pm["trigger"]
    assert trigger["rule"] == "error_rate > 5% for 1s" and trigger["metric"] == "error_rate"
    assert trigger["value"] == pytest.approx(1.0) and trigger["shown"] == "100%" and trigger["weight"] == 50

    seen = s.load.by_version.get("3.0.0", 0)  # every one of them failed: FAULTS error_rate=1
    assert seen > 0 and sum(f.endswith("from 3.0.0") for f in s.load.failures) == seen
    impact = pm["impact"]
    assert seen - CONCURRENCY <= impact["requests"] <= seen, (impact, seen)
    assert impact["errors"] == impact["requests"] and impact["error_rate"] == 1.0
    assert impact["peak_weight"] == 50 and impact["exposed_seconds"] > 0
    counts = {t["version"]: t for t in report["traffic"]}
    assert counts["3.0.0"]["requests"] == impact["requests"]
    assert counts["2.0.0"]["requests"] > 0 and counts["2.0.0"]["errors"] == 0  # the stable version never failed
    assert f". {impact['requests']} requests reached it at up to 50% of traffic" in pm["summary"]
    # The recorded shape the dashboard reads too: every analysed decision has cumulative counts per version.
    [run] = [h for h in service.history(s.env.ctx, "shop") if h["id"] == s.failed.id]
    analysed = [e["data"] for e in run["events"] if "values" in e["data"]]
    assert analysed and all(set(d["traffic"]) == {"3.0.0", "2.0.0"} and d["traffic_window"] > 0 for d in analysed)
    served = [d["traffic"]["3.0.0"]["requests"] for d in analysed]
    assert served == sorted(served) and served[-1] <= impact["requests"]  # cumulative, up to the final count


def test_the_post_mortem_draft_follows_the_template_in_markdown_and_html(scenario, tmp_path):
    s = scenario
    md = cli(s, "report", s.failed.id)
    assert md.returncode == 0, md.stderr
    text = md.stdout
    assert text.startswith("# Deployment report: shop@3.0.0 (rolled back)")
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings == ["# Deployment report: shop@3.0.0 (rolled back)", "## 1. Pre-flight (before T-0)",
                        "## 2. Timeline", "## 3. Traffic per version", "## 4. Analysis rules",
                        "# Post-mortem (draft): shop@3.0.0 rolled back", "## Summary", "## Impact", "## Timeline",
                        "## Trigger", "## Root cause", "## Action items"]
    assert "- Rule: error_rate > 5% for 1s" in text and "- Value: 100% at 50% of traffic" in text
    assert "- [ ] To be written" in text

    draft = cli(s, "report", s.failed.id, "--postmortem", "--format", "html", "--output", str(tmp_path / "pm.html"))
    assert draft.returncode == 0, draft.stderr
    assert draft.stderr.strip() == f"wrote the post-mortem draft of {s.failed.id} to {tmp_path / 'pm.html'}"
    page = (tmp_path / "pm.html").read_text()
    impact = as_json(s, s.failed.id)["postmortem"]["impact"]
    assert page.startswith("<!doctype html>") and "Deployment report" not in page  # the draft alone
    assert f'<b class="requests">{impact["requests"]}</b>' in page and "<h2>Root cause</h2>" in page


def test_a_promoted_rollout_reports_who_promoted_it_and_has_no_post_mortem(scenario):
    s = scenario
    report = as_json(s, s.promoted.id)
    assert report["status"] == "promoted" and report["postmortem"] is None
    [command] = [e for e in report["timeline"] if e["kind"] == "command"]
    assert command["actor"] == "alice" and command["message"] == "promote by alice"
    assert [e["weight"] for e in report["timeline"] if e["kind"] in ("step", "switched")] == [20, 100]
    assert {t["version"] for t in report["traffic"]} == {"1.0.0", "2.0.0"}
    [outcome] = [line for line in cli(s, "report", s.promoted.id).stdout.splitlines() if line.startswith("| Outcome")]
    assert outcome.startswith("| Outcome | promoted: 2.0.0 serves 100%"), outcome  # the status said once
    refused = cli(s, "report", s.promoted.id, "--postmortem")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        f"releasegate: {s.promoted.id}: was promoted, so there is no post-mortem to draft (one is written for rolled "
        "back, aborted or failed rollouts); drop --postmortem for its deployment report"]


@pytest.mark.parametrize(("args", "says"), [
    (("report", "nosuch"), "nosuch: no rollout with this id and no service of this name in "),
    (("report", "shop", "--format", "pdf"), "Invalid value for '--format'"),
    (("report", "shop", "--output", "/"), "--output /: cannot write it"),
])
def test_bad_input_is_one_line_and_exit_2(scenario, args, says):
    r = cli(scenario, *args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and says in r.stderr, r.stderr


def test_the_api_serves_the_same_report_and_the_client_fetches_it(scenario, tmp_path):
    s = scenario
    server = ServerProc(s.env.state, tmp_path).start()
    try:
        viewer = server.token("vera", "viewer")
        outsider = server.token("olga", "viewer", "billing-*")
        with server.client(viewer) as c:
            html = c.get(f"/api/v1/rollouts/{s.failed.id}/report", params={"format": "html"})
            assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
            assert "<h1>Post-mortem (draft): shop@3.0.0 rolled back</h1>" in html.text
            aborted = c.get(f"/api/v1/rollouts/{s.aborted.id}/report", params={"format": "html"}).text
            assert '"injected fault"' not in aborted and "&#34;injected fault&#34;" in aborted  # recorded text escaped
            missing = c.get("/api/v1/rollouts/nosuch/report")
            assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
            no_draft = c.get(f"/api/v1/rollouts/{s.promoted.id}/report", params={"postmortem": "true"})
            assert no_draft.status_code == 409 and "no post-mortem to draft" in no_draft.json()["detail"]
        with server.client(outsider) as c:
            assert c.get(f"/api/v1/rollouts/{s.failed.id}/report").status_code == 403
        fetched = cli(s, "report", "shop", "--format", "json", server=server, token=viewer)
        assert fetched.returncode == 0, fetched.stderr
        assert json.loads(fetched.stdout) == as_json(s, s.aborted.id)  # a service name: its latest rollout
        unknown = cli(s, "report", "nosuch", server=server, token=viewer)
        assert unknown.returncode == 2 and unknown.stderr.startswith("releasegate: rollout nosuch: no rollout")
    finally:
        server.stop()


def test_a_rollout_recorded_before_counts_were_says_not_recorded(scenario, tmp_path):
    """Older rollouts (and routers that cannot count) have no ``traffic`` in their events: never a made-up 0."""
    import shutil
    import sqlite3

    from releasegate.reports.build import report_for

    s = scenario
    old = tmp_path / "old-state"
    old.mkdir()
    for part in s.env.state.glob("releasegate.db*"):  # nothing writes any more: the WAL is copied with its base
        shutil.copy(part, old / part.name)
    with sqlite3.connect(old / "releasegate.db") as db:
        db.execute("UPDATE events SET data = json_remove(data, '$.traffic', '$.traffic_window')")
    report = report_for(old, s.failed.id)
    assert report.traffic is None and report.postmortem is not None
    assert report.postmortem.impact.requests is None and report.postmortem.impact.errors is None
    assert "How many requests reached it was not recorded" in report.postmortem.summary


def test_an_abort_before_any_traffic_says_no_request_reached_it(scenario):
    s = scenario
    assert s.aborted.status == "aborted", s.aborted.reason
    report = as_json(s, "shop")  # a service name: its latest rollout
    assert report["id"] == s.aborted.id
    pm = report["postmortem"]
    assert pm["impact"]["requests"] == 0 and pm["impact"]["errors"] == 0 and pm["impact"]["exposed_from"] is None
    assert ". No user request reached it; 2.0.0 kept serving the rest." in pm["summary"]
    assert pm["trigger"]["message"].startswith("smoke failed for 4.0.0, no user traffic reached it: smoke GET "
                                               "/api/items")
    assert pm["trigger"]["rule"] is None and pm["trigger"]["actor"] is None
