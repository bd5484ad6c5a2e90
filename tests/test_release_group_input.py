"""Release groups: bad input is one line naming the place (FILE:LINE:COL or the member), exit 2, nothing started;
and the group state machine's decisions (engine/group.py), pure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from releasegate.engine import decide, group
from releasegate.engine.group import GroupState, Member, Report
from releasegate.spec import load_spec
from releasegate.store.sqlite import Store, this_owner
from tests.support.groups import JUDGIFY, GroupEnv, member_spec
from tests.support.rollouts import marked_processes


def rg(state: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "releasegate", "--state-dir", str(state), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=60)


def refused(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.fixture
def env(tmp_path):
    made = GroupEnv(tmp_path)
    made.release()
    yield made
    made.close()


def write(env: GroupEnv, text: str) -> Path:
    path = env.tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("services", "said"), [
    ("  - {spec: services/judgment.yaml}\n  - {spec: services/nope.yaml}\n",
     "bad.yaml:4:6: no such spec file services/nope.yaml"),
    ("  - {spec: services/judgment.yaml}\n  - {spec: services/judgment.yaml}\n",
     "bad.yaml:4:6: service judgment is already member 1; list each service once"),
    ("  - {spec: services/judgment.yaml, depends_on: [ghost]}\n",
     "bad.yaml:3:49: depends_on ghost: not a member of this release (members: judgment)"),
    ("  - {spec: services/judgment.yaml, depends_on: [action]}\n  - {spec: services/action.yaml, depends_on: "
     "[logging]}\n  - {spec: services/logging.yaml, depends_on: [judgment]}\n",
     "depends_on makes a cycle: judgment -> action -> logging -> judgment"),
])
def test_a_bad_release_file_names_the_place_and_starts_nothing(env, services, said):
    path = write(env, f"release: jr\nservices:\n{services}switch: together\n")
    for command in ("deploy", "plan") if "nope" in services or "ghost" in services else ("deploy",):
        line = refused(rg(env.state, command, str(path), "--version", "2.0.0", cwd=env.tmp_path))
        assert said in line and line.startswith(f"releasegate: {path}"), line
    assert not (env.state / "routers").exists() and not marked_processes(env.state)


def test_versions_per_member_must_name_members_once(env):
    path = env.tmp_path / "release.yaml"
    line = refused(rg(env.state, "deploy", str(path), "--version", "judgment=2.0.0", "--version", "ghost=1.0.0",
                      cwd=env.tmp_path))
    assert "--version ghost=1.0.0: ghost is not a member of judgify-core" in line
    line = refused(rg(env.state, "deploy", str(path), "--version", "judgment=2.0.0", cwd=env.tmp_path))
    assert "no version for api-gateway, workflow, dashboard, action, logging" in line
    line = refused(rg(env.state, "deploy", str(env.specs["judgment"]), "--version", "judgment=2.0.0",
                      cwd=env.tmp_path))
    assert "--version takes one VERSION for a service's spec" in line
    assert not marked_processes(env.state)
    done = rg(env.state, "validate", str(path), cwd=env.tmp_path)
    assert done.returncode == 0 and "ok: release judgify-core, 6 member(s) (api-gateway critical" in done.stdout


def test_a_member_mid_rollout_or_refused_by_governance_stops_the_whole_group_before_it_starts(env):
    path = env.tmp_path / "release.yaml"
    spec = load_spec(env.specs["workflow"])
    store = Store(env.state)
    try:
        st = decide.new_rollout("workflow-9.9.9-abc123", spec, "9.9.9", None, 0.0)
        store.create_rollout(st, str(env.specs["workflow"]), spec.model_dump_json(), this_owner())
        line = refused(rg(env.state, "deploy", str(path), "--version", "2.0.0", cwd=env.tmp_path))
        assert "member workflow (workflow.yaml): workflow: rollout workflow-9.9.9-abc123 of 9.9.9 is in progress" \
            in line and "nothing was started" in line
        store.save(st.model_copy(update={"status": "aborted"}))
    finally:
        store.close()
    # A member whose spec expects a stored calendar, while none is stored: admission refuses it, naming it.
    with env.specs["action"].open("a") as f:
        f.write("governance: {calendar: calendar.yaml}\n")
    (env.specs["action"].parent / "calendar.yaml").write_text("timezone: UTC\nfreezes: []\n")
    line = refused(rg(env.state, "deploy", str(path), "--version", "2.0.0", cwd=env.tmp_path))
    assert "member action (action.yaml)" in line and "nothing was started" in line
    # The members admitted before the refusal are audited as admitted; the refusal says none of them started.
    from releasegate.store.audit import AuditLog

    refusals = [e for e in AuditLog(env.state).entries() if e.action == "group.refused"]
    assert len(refusals) == 2 and "member action" in (refusals[-1].decision or "")
    assert not (env.state / "routers").exists() and not marked_processes(env.state)


# --- the state machine, pure ---------------------------------------------------------------------------------


def state(switch: str = "together") -> GroupState:
    members = [Member(service=n, spec_path=f"{n}.yaml", tier=t, depends_on=d, version="2", previous="1",
                      rollout_id=f"{n}-r") for n, t, d in JUDGIFY]
    return GroupState(id="g", release="judgify-core", switch=switch, release_path="r.yaml",
                      members=members, created_at=0, updated_at=0)


def started(gs: GroupState) -> GroupState:
    for a in group.next_actions(gs):
        gs = group.mark(gs, a, 1)
    return gs


def report(gs: GroupState, name: str, *, active: bool = True, phase: str = "held", weight: int = 0,
           status: str = "running", reason: str | None = None) -> GroupState:
    return group.observe(gs, Report(name, active, phase, weight, status, reason), 2)[0]


def test_together_starts_all_and_switches_only_when_every_member_holds_in_depends_on_order():
    gs = state()
    assert [a.service for a in group.next_actions(gs)] == [n for n, _, _ in JUDGIFY]
    gs = started(gs)
    for name, _, _ in JUDGIFY[1:]:
        gs = report(gs, name)
    assert group.next_actions(gs) == []  # api-gateway is not ready yet
    gs = report(gs, "api-gateway")
    first = [a.service for a in group.next_actions(gs)]
    assert first == ["judgment", "workflow", "dashboard", "action", "logging"]
    for a in group.next_actions(gs):
        gs = group.mark(gs, a, 3)
    gs = report(gs, "judgment", phase="promote", weight=100)
    assert group.next_actions(gs) == []
    gs = report(gs, "workflow", phase="watch", weight=100)
    assert [a.service for a in group.next_actions(gs)] == ["api-gateway"]


def test_ordered_starts_a_member_after_what_it_depends_on_is_promoted():
    gs = started(state("ordered"))
    assert gs.member("api-gateway").told is None
    gs = report(gs, "judgment", active=False, status="promoted")
    assert [a.service for a in group.next_actions(gs)] == []
    gs = report(gs, "workflow", active=False, status="promoted")
    assert [a.service for a in group.next_actions(gs)] == ["api-gateway"]


@pytest.mark.parametrize(("failing", "expected"), [
    ("judgment", "revert"), ("workflow", "pause"), ("logging", "go on")])
def test_a_failure_does_what_its_tier_says(failing, expected):
    gs = started(state())
    for name, _, _ in JUDGIFY:
        gs = report(gs, name)
    gs, said = group.observe(gs, Report(failing, False, "finish", 0, "aborted", "smoke failed"), 3)
    acts = group.next_actions(gs)
    if expected == "revert":
        assert gs.reverting == "rolled_back" and said[0].kind == "group_rollback"
        assert {a.service for a in acts if a.kind == "revert"} == {n for n, _, _ in JUDGIFY} - {failing}
    elif expected == "pause":
        assert gs.paused and "promote judgify-core" in gs.paused and acts == []
        gs, error = group.command(gs, "promote", "ops", 4)
        assert error is None and gs.member(failing).excluded
        # The others switch (the gateway after judgment, which it still needs).
        assert {a.service for a in group.next_actions(gs)} == {n for n, _, _ in JUDGIFY} - {failing, "api-gateway"}
    else:
        assert gs.reverting is None and not gs.paused
        assert {a.service for a in acts} == {n for n, _, _ in JUDGIFY} - {failing, "api-gateway"}
    assert gs.member(failing).reason == "smoke failed"


def test_a_held_member_waits_after_smoke_with_no_traffic_until_promote_and_abort_needs_no_traffic_change(tmp_path):
    """The engine's hook for `switch: together`: health and smoke pass, then phase held (no Route) until promote."""
    from releasegate.engine.state import Hold, Outcome, Route, Smoke

    spec = load_spec(member_spec(tmp_path, "solo", 1))
    st = decide.new_rollout("r", spec, "2.0.0", "1.0.0", 0.0).model_copy(update={"phase": "smoke", "hold": True})
    action = decide.next_action(st, spec, 1.0)
    assert isinstance(action, Smoke)
    st, said = decide.apply(st, spec, action, Outcome(True), 1.0)
    assert st.phase == "held" and [d.kind for d in said] == ["smoke_passed", "held"]
    action = decide.next_action(st, spec, 2.0)
    assert isinstance(action, Hold)
    assert decide.apply(st, spec, action, Outcome(True), 2.0)[0].phase == "held"
    promoted, error = decide.command(st, spec, "promote", 3.0)
    assert error is None and promoted.phase == "promote"
    route = decide.next_action(promoted, spec, 3.0)
    assert isinstance(route, Route) and route.weight_of("2.0.0") == 100
    aborted, error = decide.command(st, spec, "rollback", 3.0)
    assert error is None and aborted.phase == "abort" and aborted.weight == 0
    died = decide.apply(st, spec, action, Outcome(False, "gone", {"died": [{"message": "exit 1"}]}), 4.0)[0]
    assert died.phase == "start" and died.restarts == 1  # before its first traffic: restarted once, as in health



def test_operator_commands_on_the_group_and_how_it_ends():
    gs = started(state("ordered"))
    assert "not paused" in (group.command(gs, "promote", "ops", 1)[1] or "")
    gs, error = group.command(gs, "abort", "ops", 1)
    assert error is None and gs.reverting == "aborted"
    # Members never started are skipped; a started one is rolled back once its rollout shows, then it is back.
    assert {m.service: m.status for m in gs.members if m.status == "skipped"} == {"api-gateway": "skipped"}
    assert all(a.kind != "finish" for a in group.next_actions(gs))
    for name, _, _ in JUDGIFY[1:]:
        gs = report(gs, name, phase="health")
    assert {a.service for a in group.next_actions(gs)} == {n for n, _, _ in JUDGIFY[1:]}
    for a in group.next_actions(gs):
        gs = group.mark(gs, a, 3)
    for name, _, _ in JUDGIFY[1:]:
        gs = group.observe(gs, Report(name, False, "finish", 0, "aborted", "aborted by operator"), 4)[0]
    [finish] = group.next_actions(gs)
    done = group.mark(gs, finish, 5)
    assert done.status == "aborted" and not done.active and done.reason == "aborted by ops"
    assert {m.status for m in done.members} == {"skipped", "reverted"}
    assert group.command(done, "rollback", "ops", 6)[1] is not None  # over: refused


def test_plan_shows_the_whole_group_and_changes_nothing(env):
    path = env.tmp_path / "release.yaml"
    done = rg(env.state, "plan", str(path), "--version", "2.0.0", cwd=env.tmp_path)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "release judgify-core: 6 member(s), switch together" in text
    assert "api-gateway - -> 2.0.0 critical first deploy, after judgment, workflow" in text
    assert "in depends_on order: judgment, workflow, dashboard, action, logging; then api-gateway" in text
    assert "critical: the whole group goes back to its previous versions" in text
    assert not env.state.exists()  # plan looks, it never creates a state dir
    ordered = write(env, path.read_text().replace("switch: together", "switch: ordered"))
    done = rg(env.state, "plan", str(ordered), "--version", "2.0.0", cwd=env.tmp_path)
    assert done.returncode == 0 and "one after another by depends_on" in done.stdout
    assert done.stdout.count("first deploy)") == 6  # each member's own plan, in depends_on order
