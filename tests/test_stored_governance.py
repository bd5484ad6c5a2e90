"""The policy and the calendar belong to the state: ``policy apply``/``calendar apply`` store validated, versioned
copies (audited with who and a diff), only an admin replaces them, and every look (``show``, ``history``,
``calendar check``, ``plan --env``) reads them without creating or changing anything."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from releasegate.cli import app
from releasegate.store.audit import AuditLog

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "governance"


def rg(state: Path, *args: str, token: str | None = None) -> Result:
    env = {"RELEASEGATE_HOME": str(state), "RELEASEGATE_TOKEN": token or ""}
    return CliRunner().invoke(app, list(args), env=env)


def refused(result: Result) -> str:
    """The one line a refusal prints (exit 2, no traceback)."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("releasegate: "), result.stderr
    return lines[0].removeprefix("releasegate: ")


def actions(state: Path) -> list[tuple[str, str]]:
    with AuditLog(state) as log:
        return [(e.actor, e.action) for e in log.entries()]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    directory = tmp_path / "shop"
    shutil.copytree(EXAMPLES, directory)
    return directory


def test_a_bad_policy_is_refused_at_its_line_and_nothing_is_stored(tmp_path: Path, files: Path) -> None:
    state = tmp_path / "state"
    broken = files / "broken.yaml"
    broken.write_text("users: {alice: [developer, admin], erin: [sre]}\nenvironments:\n"
                      "  prod: {stages: [{role: qa}, {role: developer}, {role: sre}]}\n")
    assert refused(rg(state, "policy", "apply", str(broken))) == (
        f"{broken}:3:26: no user holds role 'qa', so this stage could never be signed; give the role to a user "
        "under users")
    no_admin = files / "no-admin.yaml"
    no_admin.write_text("users:\n  alice: [developer]\n  erin: [sre]\n"
                        "environments: {prod: {stages: [{role: developer}, {role: sre}]}}\n")
    assert refused(rg(state, "policy", "apply", str(no_admin))) == (
        f"{no_admin}:2:3: no user holds role admin, so nobody could change the stored policy or calendar again; "
        "give the role to someone under users, e.g. alice: [developer, admin]")
    admin_stage = files / "admin-stage.yaml"
    admin_stage.write_text("users: {alice: [developer, admin], erin: [sre]}\n"
                           "environments: {prod: {stages: [{role: admin}, {role: developer}, {role: sre}]}}\n")
    assert "admin is the role that may change the stored policy and calendar, not an approval stage" in refused(
        rg(state, "policy", "apply", str(admin_stage)))
    assert not state.exists()


def test_policy_apply_stores_versions_only_an_admin_replaces_and_each_change_is_audited(tmp_path: Path,
                                                                                        files: Path) -> None:
    state = tmp_path / "state"
    policy = files / "policy.yaml"
    first = rg(state, "policy", "apply", str(policy))
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith(f"stored policy v1 from {policy} (sha256:")
    assert "applied by" in first.stdout and "(os login)" in first.stdout
    assert "`releasegate token new erin`" in first.stdout
    shown = rg(state, "policy", "show")
    assert shown.stdout == policy.read_text() and "stored policy v1, sha256:" in shown.stderr
    again = rg(state, "policy", "apply", str(policy))
    assert again.exit_code == 0 and again.stdout.strip() == f"policy: {policy} is the same as stored policy v1; " \
                                                           "nothing stored"

    laxer = policy.read_text().replace("{role: reviewer, approvals: 2}", "{role: reviewer, approvals: 1}")
    assert laxer != policy.read_text()
    policy.write_text(laxer)
    assert refused(rg(state, "policy", "apply", str(policy))) == (
        "policy apply: changing the stored policy needs an admin of stored policy v1: add --as ADMIN with that "
        "admin's token in RELEASEGATE_TOKEN (admins: erin)")
    erin = rg(state, "token", "new", "erin").stdout.strip()
    bob = rg(state, "token", "new", "bob", "--as", "erin", token=erin).stdout.strip()
    assert refused(rg(state, "policy", "apply", str(policy), "--as", "bob", token=bob)) == (
        "--as bob: policy apply needs role admin in stored policy v1; bob holds reviewer; admins: erin")
    assert "is not erin's current token" in refused(rg(state, "policy", "apply", str(policy), "--as", "erin",
                                                       token=bob))
    dry = rg(state, "policy", "apply", str(policy), "--dry-run")
    assert dry.exit_code == 0 and "applying it would store v2 (+1 -1 lines against v1); nothing stored" in dry.stdout
    assert "-      - {role: reviewer, approvals: 2}" in dry.stdout
    assert rg(state, "policy", "history").stdout.count("sha256:") == 1

    applied = rg(state, "policy", "apply", str(policy), "--as", "erin", token=erin)
    assert applied.exit_code == 0, applied.output
    assert applied.stdout.splitlines()[0].endswith("applied by erin (+1 -1 lines against v1)")
    assert "+      - {role: reviewer, approvals: 1}" in applied.stdout
    history = rg(state, "policy", "history").stdout.splitlines()
    assert history[1].startswith("v1 ") and "(os login)" in history[1]
    assert history[2].startswith("v2 *") and " erin " in history[2] and str(policy) in history[2]
    assert rg(state, "policy", "show", "--version", "1").stdout == (EXAMPLES / "policy.yaml").read_text()
    assert "+      - {role: reviewer, approvals: 1}" in rg(state, "policy", "show", "--diff").stdout
    assert "there is no policy v3" in refused(rg(state, "policy", "show", "--version", "3"))

    log = AuditLog(state)
    assert log.verify().ok
    [applied_v2] = [e for e in log.entries() if e.action == "policy.applied" and e.actor == "erin"]
    assert applied_v2.evidence["version"] == 2 and applied_v2.evidence["previous"] == 1
    assert "-      - {role: reviewer, approvals: 2}\n+      - {role: reviewer, approvals: 1}" in \
        applied_v2.evidence["diff"]
    assert [a for _, a in actions(state)].count("policy.refused") == 2  # no --as, and bob


def test_a_policy_must_leave_an_admin_who_holds_a_token(tmp_path: Path, files: Path) -> None:
    state = tmp_path / "state"
    policy = files / "policy.yaml"
    assert rg(state, "policy", "apply", str(policy)).exit_code == 0
    erin = rg(state, "token", "new", "erin").stdout.strip()
    handover = policy.read_text().replace("erin: [sre, admin]", "erin: [sre]").replace("frank: [pm]",
                                                                                      "frank: [pm, admin]")
    policy.write_text(handover)
    assert refused(rg(state, "policy", "apply", str(policy), "--as", "erin", token=erin)) == (
        f"{policy}: none of its admins (frank) holds a token, so nobody could change the policy again; keep an admin "
        "who has one in this version, issue the new admins' tokens (`releasegate token new frank --as ADMIN`), then "
        "remove the old admin")
    both = handover.replace("erin: [sre]", "erin: [sre, admin]")
    policy.write_text(both)
    assert rg(state, "policy", "apply", str(policy), "--as", "erin", token=erin).exit_code == 0
    frank = rg(state, "token", "new", "frank", "--as", "erin", token=erin).stdout.strip()
    policy.write_text(handover)
    assert rg(state, "policy", "apply", str(policy), "--as", "erin", token=erin).exit_code == 0  # erin hands over
    calendar = files / "calendar.yaml"
    assert "needs role admin" in refused(rg(state, "calendar", "apply", str(calendar), "--as", "erin", token=erin))
    assert rg(state, "calendar", "apply", str(calendar), "--as", "frank", token=frank).exit_code == 0


def test_the_stored_calendar_is_what_check_show_and_upcoming_judge(tmp_path: Path, files: Path) -> None:
    state = tmp_path / "state"
    calendar = files / "calendar.yaml"
    assert refused(rg(state, "calendar", "check", "--change", "minor")) == (
        f"no calendar is stored in {state}; an admin stores one with `releasegate calendar apply FILE`, or give "
        "--calendar FILE for a dry look at a file")
    assert not state.exists()
    applied = rg(state, "calendar", "apply", str(calendar))  # no policy stored: no admins yet
    assert applied.exit_code == 0 and "note: no policy is stored, so anyone who can write the state dir" in \
        applied.stdout
    check = rg(state, "calendar", "check", "--change", "minor", "--at", "2025-11-11T03:00")
    assert check.exit_code == 2
    assert check.stdout.splitlines()[:2] == [
        "judged by stored calendar v1",
        "refused: full freeze 'exam season' (2025-11-01 00:00 \u2013 2025-11-21 24:00 KST) allows only config "
        "changes"]
    month = rg(state, "calendar", "show", "--month", "2025-11")
    assert month.exit_code == 0 and month.stdout.startswith("judged by stored calendar v1\n")
    assert "wk 48    24f  25H  26H  27H  28f  29F  30F" in month.stdout
    soon = rg(state, "calendar", "upcoming", "--at", "2025-11-18T00:00", "--days", "7")
    assert soon.exit_code == 0 and "exam hotfix week" in soon.stdout
    assert rg(state, "calendar", "show", "--yaml").stdout == calendar.read_text()

    other = files / "other.yaml"
    other.write_text("timezone: UTC\n")
    dry = rg(state, "calendar", "check", "--change", "minor", "--at", "2025-11-11T03:00", "--calendar", str(other))
    assert dry.exit_code == 0
    assert dry.stdout.splitlines()[0] == f"judged by calendar file {other}, not the stored calendar (a dry look)"

    assert rg(state, "policy", "apply", str(files / "policy.yaml")).exit_code == 0
    assert "changing the stored calendar needs an admin of stored policy v1" in refused(
        rg(state, "calendar", "apply", str(other)))
    erin = rg(state, "token", "new", "erin").stdout.strip()
    assert rg(state, "calendar", "apply", str(other), "--as", "erin", token=erin).exit_code == 0
    history = rg(state, "calendar", "history").stdout.splitlines()
    assert history[1].startswith("v1 ") and history[2].startswith("v2 *") and " erin " in history[2]
    assert rg(state, "calendar", "check", "--change", "minor", "--at", "2025-11-11T03:00").exit_code == 0


def _cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command, as a user runs it: user errors are one line on stderr."""
    env = {**os.environ, "RELEASEGATE_HOME": str(state)}
    return subprocess.run([sys.executable, "-m", "releasegate", *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_deploy_takes_no_policy_or_calendar_file(tmp_path: Path, files: Path) -> None:
    state = tmp_path / "state"
    for option in ("--calendar", "--policy"):
        done = _cli(state, "deploy", str(files / "shop.yaml"), "--version", "1.0.0", option, str(files / "x.yaml"))
        assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
        kind = option.removeprefix("--")
        assert (f"deploy {option} {files / 'x.yaml'}: deploys are judged by the stored {kind}, never a file; an "
                f"admin stores it with `releasegate {kind} apply {files / 'x.yaml'} --as ADMIN`") in done.stderr
    assert not state.exists()


def _snapshot(state: Path) -> tuple[list[str], list[str]]:
    """Every row of the database and every file of the state dir (SQLite's -wal/-shm companions aside)."""
    with sqlite3.connect(state / "releasegate.db") as db:
        rows = list(db.iterdump())
    return rows, sorted(str(p.relative_to(state)) for p in state.rglob("*") if not p.name.endswith(("-wal", "-shm")))


def test_plan_env_shows_what_the_stored_rules_decide_and_changes_nothing(tmp_path: Path, files: Path) -> None:
    from releasegate.governance.approvals import approve, new_release
    from releasegate.governance.stored import stored_policy

    state, spec = tmp_path / "state", files / "shop.yaml"
    empty = _cli(state, "plan", str(spec), "--version", "1.4.0", "--env", "prod")
    assert empty.returncode == 0, empty.stderr
    assert "judged by nothing (no policy is stored; no calendar is stored)" in empty.stdout
    assert "governance.policy names" in empty.stdout and "would be refused" in empty.stdout
    assert not state.exists()

    assert rg(state, "policy", "apply", str(files / "policy.yaml")).exit_code == 0
    erin = rg(state, "token", "new", "erin").stdout.strip()
    calendar = files / "calendar.yaml"
    assert rg(state, "calendar", "apply", str(calendar), "--as", "erin", token=erin).exit_code == 0
    new_release(state, "shop", "1.4.0", "alice")
    approve(state, stored_policy(state), "shop", "1.4.0", "reviewer", "bob")  # type: ignore[arg-type]
    before = _snapshot(state)
    entries = AuditLog(state).count()

    planned = _cli(state, "plan", str(spec), "--version", "1.4.0", "--env", "prod")
    assert planned.returncode == 0, planned.stderr
    text = planned.stdout
    assert "judged by stored policy v1, stored calendar v1" in text
    assert "change judged: major" in text and "would be refused:" in text
    assert "policy (prod): stage reviewer: 1 of 2 approvals (bob)" in text
    assert "policy (prod): requires stage: shop 1.4.0 has not succeeded in stage" in text
    assert "calendar: allowed" in text or "calendar: refused" in text  # whichever it is now, it is judged
    hotfix = _cli(state, "plan", str(spec), "--version", "1.4.0", "--env", "dev", "--hotfix")
    assert "change judged: hotfix (--hotfix)" in hotfix.stdout
    assert AuditLog(state).count() == entries
    assert _snapshot(state) == before


def test_approvals_json_names_the_rules_it_judged_by(tmp_path: Path, files: Path) -> None:
    state = tmp_path / "state"
    assert rg(state, "policy", "apply", str(files / "policy.yaml")).exit_code == 0
    data = json.loads(rg(state, "approvals", "shop@1.0.0", "--env", "dev", "--json").stdout)
    assert data["judged_by"] == "stored policy v1" and data["gate"]["allowed"] is True


def test_preflight_names_the_next_freeze_of_the_stored_calendar_not_the_spec_file(tmp_path: Path,
                                                                                  files: Path) -> None:
    state = tmp_path / "state"
    nightly = files / "nightly.yaml"
    nightly.write_text("timezone: UTC\nfreezes:\n  - {name: nightly batch, cron: '0 0 * * *', duration: 1h, "
                       "mode: full}\n")
    assert rg(state, "calendar", "apply", str(nightly)).exit_code == 0
    done = _cli(state, "preflight", str(files / "shop.yaml"), "--version", "1.4.0")  # the spec names calendar.yaml
    [line] = [line for line in done.stdout.splitlines() if "next freeze" in line]
    assert "'nightly batch' (full) starts in" in line


def test_a_user_the_stored_policy_no_longer_names_cannot_act_with_an_old_token(tmp_path: Path, files: Path) -> None:
    """bob held a token under policy v1; v2 drops him: his `rollback --as bob` is refused before anything happens."""
    state = tmp_path / "state"
    policy = files / "policy.yaml"
    assert rg(state, "policy", "apply", str(policy)).exit_code == 0
    erin = rg(state, "token", "new", "erin").stdout.strip()
    bob = rg(state, "token", "new", "bob", "--as", "erin", token=erin).stdout.strip()
    policy.write_text(policy.read_text().replace("bob: [reviewer]", "bert: [reviewer]"))
    assert rg(state, "policy", "apply", str(policy), "--as", "erin", token=erin).exit_code == 0
    for command in ("promote", "abort", "rollback"):
        done = subprocess.run([sys.executable, "-m", "releasegate", "--state-dir", str(state), command, "shop", "--as",
                               "bob"], capture_output=True, text=True, env={**os.environ, "RELEASEGATE_TOKEN": bob})
        assert done.returncode == 2 and done.stderr.startswith("releasegate: user 'bob' is not in stored policy v2")


def test_apply_reports_every_problem_of_a_policy_or_calendar_in_one_run(tmp_path: Path, files: Path) -> None:
    """A bare-number soak used to hide the stage nobody can sign and the soak without requires until it was fixed;
    a bad timezone hid duplicate freeze names and a freeze's missing 'to'."""
    state = tmp_path / "state"
    policy = files / "team.yaml"
    policy.write_text("users: {mia: [dev, admin], noah: [dev, ops]}\n"
                      "author_role: dev\n"
                      "emergency_role: ops\n"
                      "environments:\n"
                      "  stage: {stages: [{role: dev}, {role: ops}]}\n"
                      "  prod: {stages: [{role: lead, approvals: 2}], soak: 5}\n")
    done = rg(state, "policy", "apply", str(policy))
    assert done.exit_code == 2
    assert done.stderr.splitlines() == [
        f"releasegate: {policy}:6:26: no user holds role 'lead', so this stage could never be signed; give the "
        "role to a user under users",
        f"releasegate: {policy}:6:54: write durations with a unit, e.g. '5s' or '5m' (got bare number 5)",
        f"releasegate: {policy}:6:54: soak needs requires: it is how long the version must have run in the "
        "required environment"]

    calendar = files / "freezes.yaml"
    calendar.write_text("timezone: Asia/Seol\n"
                        "freezes:\n"
                        "  - {name: exams, from: 2025-11-01, to: 2025-11-21}\n"
                        "  - {name: exams, from: 2025-12-01, to: 2025-12-03}\n"
                        "  - {name: holidays, from: 2025-13-01}\n")
    done = rg(state, "calendar", "apply", str(calendar))
    assert done.exit_code == 2
    assert done.stderr.splitlines() == [
        f"releasegate: {calendar}:1:11: unknown timezone 'Asia/Seol' (did you mean 'Asia/Seoul'?)",
        f"releasegate: {calendar}:4:6: two freezes are named 'exams'; names must be unique (decisions and the "
        "calendar feed refer to freezes by name)",
        f"releasegate: {calendar}:5:22: freeze 'holidays' needs both 'from' and 'to' (inclusive dates); 'to' is "
        "missing",
        f"releasegate: {calendar}:5:28: '2025-13-01' is not a date (month must be in 1..12); write YYYY-MM-DD, "
        "e.g. 2025-11-01"]
    assert not state.exists()


def test_policy_apply_refuses_author_and_emergency_roles_nobody_could_satisfy(tmp_path: Path, files: Path) -> None:
    """A team whose roles are dev and ops: the defaults (developer, sre) would block every author and make
    break-glass impossible, so apply says which line to change and how, until the policy names its own roles."""
    state = tmp_path / "state"
    policy = files / "team.yaml"
    team = ("users: {mia: [dev], noah: [ops, admin]}\n"
            "environments:\n"
            "  prod: {stages: [{role: dev}, {role: ops}]}\n")
    policy.write_text(team)
    done = rg(state, "policy", "apply", str(policy))
    assert done.exit_code == 2
    assert done.stderr.splitlines() == [
        f"releasegate: {policy}:1:8: role 'developer' (the default author_role: the stage a release's author may "
        "sign): no user holds it and it is no stage of any environment; add a stage {role: developer} and give role "
        "developer to a user under users, or write author_role: ROLE (stages: dev, ops), or author_role: null if "
        "authors sign no stage",
        f"releasegate: {policy}:1:8: role 'sre' (the default emergency_role: whose approval --break-glass and "
        "--allow-breaking-migration need): no user holds it and it is no stage of any environment; add a stage "
        "{role: sre} and give role sre to a user under users, or write emergency_role: ROLE (stages: dev, ops), or "
        "emergency_role: null to allow neither"]

    policy.write_text("author_role: dev\nemergency_role: opps\n" + team)
    assert refused(rg(state, "policy", "apply", str(policy))) == (
        f"{policy}:2:17: role 'opps' (emergency_role names it: whose approval --break-glass and "
        "--allow-breaking-migration need): no user holds it and it is no stage of any environment; add a stage "
        "{role: opps} and give role opps to a user under users, or write emergency_role: ops (stages: dev, ops), or "
        "emergency_role: null to allow neither")
    policy.write_text("author_role: dev\nemergency_role: ops\n" + team.replace("{role: ops}", "{role: dev}"))
    assert "role 'ops' (emergency_role names it: whose approval --break-glass and --allow-breaking-migration need): " \
           "it is no stage of any environment, so its approval could never be given; add a stage {role: ops}, or " \
           "write emergency_role: ROLE (stages: dev)" in rg(state, "policy", "apply", str(policy)).stderr
    assert not state.exists()

    policy.write_text("author_role: dev\nemergency_role: ops\n" + team)
    assert rg(state, "policy", "apply", str(policy)).exit_code == 0
    spec = files / "shop.yaml"
    spec.write_text(spec.read_text().split("governance:")[0])  # the spec names no files: the stored policy decides
    planned = rg(state, "plan", str(spec), "--version", "1.0.0", "--env", "prod")
    assert planned.exit_code == 0, planned.output
    assert "break-glass (--break-glass --reason TEXT --as USER, with an approval of stage ops on the release) would " \
           "pass these" in planned.stdout


@pytest.mark.parametrize("kind", ["policy", "calendar"])
def test_history_suggests_a_command_that_shows_what_a_version_changed(tmp_path: Path, files: Path, kind: str) -> None:
    state = tmp_path / "state"
    assert rg(state, "policy", "apply", str(files / "policy.yaml")).exit_code == 0
    token = rg(state, "token", "new", "erin").stdout.strip()
    first = files / f"{kind}.yaml"
    if kind == "calendar":
        assert rg(state, kind, "apply", str(first), "--as", "erin", token=token).exit_code == 0
    second = files / f"{kind}-v2.yaml"
    second.write_text(first.read_text() + "# v2\n")
    assert rg(state, kind, "apply", str(second), "--as", "erin", token=token).exit_code == 0
    footer = rg(state, kind, "history").stdout.splitlines()[-1]
    suggested = footer.split("`")[1].split()
    assert suggested[:3] == ["releasegate", kind, "show"]
    shown = rg(state, *[("2" if word == "N" else word) for word in suggested[1:]])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith(f"--- {kind} v1\n+++ {kind} v2\n") and "+# v2" in shown.stdout
