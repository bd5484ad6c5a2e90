"""Deploy admission: the change kind the calendar judges, the freeze check before traffic moves, and the rules a
spec cannot switch off: the stored policy and calendar decide, whatever the spec or the command line names."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import pytest

from releasegate.errors import UserError
from releasegate.governance.approvals import approve, new_release, record_env_success
from releasegate.governance.calendar import load_calendar_text
from releasegate.governance.gate import Admission, DeployRequest, admit, before_increase, change_kind, judge
from releasegate.governance.identity import new_token
from releasegate.governance.stored import apply, stored_policy
from releasegate.spec import load_spec
from releasegate.store.audit import AuditLog

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "governance"
CALENDAR = """\
timezone: UTC
freezes:
  - {name: launch week, from: 2026-03-02, to: 2026-03-06, mode: hotfix-only}
  - {name: year end, from: 2026-12-20, to: 2026-12-31, mode: full}
"""
SPEC = """\
service: shop
platform: {command: "app --port {port}"}
"""


@pytest.mark.parametrize(("old", "new", "hotfix", "kind"), [
    ("1.4.2", "2.0.0", False, "major"), ("1.4.2", "1.5.0", False, "minor"), ("1.4.2", "1.4.3", False, "patch"),
    ("1.4.2", "1.5.0", True, "hotfix"), (None, "1.0.0", False, "major"), ("build-7", "build-8", False, "major")])
def test_change_kind_comes_from_the_semver_difference_or_hotfix(old, new, hotfix, kind):
    assert change_kind(old, new, hotfix)[0] == kind


def test_non_semver_versions_are_judged_as_major_and_say_so():
    assert "not a semver change" in (change_kind("build-7", "build-8", False)[1] or "")


def _at(day: str) -> float:
    return dt.datetime.fromisoformat(day + "T12:00:00+00:00").timestamp()


def test_a_freeze_holds_traffic_increases_by_change_kind_and_break_glass_is_not_held():
    calendar = load_calendar_text(CALENDAR)
    minor = Admission(change="minor", env="prod", actor="x", emergency=False)
    patch = Admission(change="patch", env="prod", actor="x", emergency=False)
    assert before_increase(minor, _at("2026-03-01"), calendar) is None  # before the freeze
    assert "launch week" in (before_increase(minor, _at("2026-03-03"), calendar) or "")
    assert before_increase(patch, _at("2026-03-03"), calendar) is None  # hotfix-only lets a patch move on
    assert "year end" in (before_increase(patch, _at("2026-12-24"), calendar) or "")
    assert before_increase(minor, _at("2026-12-24"), None) is None  # no calendar stored: nothing to hold for
    emergency = Admission(change="minor", env="prod", actor="erin", emergency=True)
    assert before_increase(emergency, _at("2026-12-24"), calendar) is None


# --- the stored rules decide, not the spec ------------------------------------------------------------------------


@pytest.fixture
def shop(tmp_path: Path) -> tuple[Path, Path]:
    """A spec directory like the example's (shop/shop.yaml next to policy.yaml and calendar.yaml) and a state."""
    directory = tmp_path / "shop"
    directory.mkdir()
    for name in ("policy.yaml", "calendar.yaml"):
        shutil.copy(EXAMPLES / name, directory / name)
    spec = directory / "shop.yaml"
    spec.write_text(SPEC)
    return spec, tmp_path / "state"


def refusal(state: Path, spec: Path, env: str = "prod", **request: object) -> str:
    with pytest.raises(UserError) as info:
        admit(state, load_spec(spec), spec, "1.0.0", None, DeployRequest(env=env, **request),  # type: ignore[arg-type]
              _at("2026-02-10"))
    return str(info.value)


def test_a_spec_without_governance_cannot_deploy_to_prod_once_a_policy_is_stored(shop):
    spec, state = shop
    admitted = admit(state, load_spec(spec), spec, "1.0.0", None, DeployRequest(env="prod"), _at("2026-02-10"))
    assert admitted.actor.endswith("(os login)")  # nothing stored: nothing gated, and never "anonymous"

    apply(state, "policy", spec.parent / "policy.yaml")
    text = refusal(state, spec)
    for stage in ("developer", "reviewer", "qa", "sre", "pm"):
        assert f"policy (prod): stage {stage}: 0 of" in text
    assert "requires stage" in text
    assert "--env sandbox: stored policy v1 has no such environment" in refusal(state, spec, env="sandbox")
    refused = [e for e in AuditLog(state).entries() if e.action == "deploy.refused"]
    assert len(refused) == 2 and refused[0].actor.endswith("(os login)")
    assert refused[0].evidence["policy"].startswith("v1 sha256:")


def test_spec_keys_naming_files_refuse_a_deploy_unless_the_stored_copy_says_the_same(shop):
    spec, state = shop
    spec.write_text(SPEC + "governance: {policy: policy.yaml, calendar: calendar.yaml}\n")
    text = refusal(state, spec, env="dev")
    assert (f"governance.policy names {spec.parent / 'policy.yaml'}, but no policy is stored in {state} and deploys "
            f"are judged by the stored one: `releasegate policy apply {spec.parent / 'policy.yaml'}`") in text
    assert f"`releasegate calendar apply {spec.parent / 'calendar.yaml'}`" in text

    apply(state, "policy", spec.parent / "policy.yaml")
    token = new_token(state, stored_policy(state), "erin")  # type: ignore[arg-type]
    apply(state, "calendar", spec.parent / "calendar.yaml", actor="erin", token=token)
    (spec.parent / "policy.yaml").write_text((spec.parent / "policy.yaml").read_text() + "# a comment changes no "
                                             "rule\n")
    admitted = admit(state, load_spec(spec), spec, "1.0.0", None, DeployRequest(env="dev"), _at("2026-02-10"))
    assert admitted.env == "dev"

    laxer = (spec.parent / "policy.yaml").read_text().replace("approvals: 2", "approvals: 1")
    (spec.parent / "policy.yaml").write_text(laxer)
    text = refusal(state, spec, env="dev")
    assert "which differs from stored policy v1 (applied by" in text and "`releasegate policy show >" in text


def test_judging_reads_and_never_writes(shop):
    spec, state = shop
    judgement = judge(state, load_spec(spec), spec, "1.0.0", None, "prod", False, _at("2026-02-10"))
    assert judgement.allowed and not state.exists()


def test_the_stored_calendar_refuses_with_the_freeze_and_when_it_ends(shop):
    spec, state = shop
    apply(state, "policy", spec.parent / "policy.yaml")
    token = new_token(state, stored_policy(state), "erin")  # type: ignore[arg-type]
    apply(state, "calendar", spec.parent / "calendar.yaml", actor="erin", token=token)
    exam = dt.datetime.fromisoformat("2025-11-11T03:00:00+09:00").timestamp()
    judgement = judge(state, load_spec(spec), spec, "1.4.1", "1.4.0", "dev", False, exam)
    [freeze] = judgement.bypassable
    assert freeze.startswith("calendar: refused: full freeze 'exam season' "
                             "(2025-11-01 00:00 \u2013 2025-11-21 24:00 KST)")
    assert freeze.endswith("next allowed 2025-11-24 08:00 KST")  # hotfix week, after the weekend freeze
    assert judgement.change == "patch"


def test_break_glass_passes_a_stored_freeze_and_missing_stages_not_an_unknown_environment(shop):
    spec, state = shop
    apply(state, "policy", spec.parent / "policy.yaml")
    policy = stored_policy(state)
    assert policy is not None
    token = new_token(state, policy, "erin")
    new_release(state, "shop", "1.0.0", "alice")
    approve(state, policy, "shop", "1.0.0", "sre", "erin", ["deployment window checked", "rollback plan verified"])
    record_env_success(state, "shop", "1.0.0", "stage", 0)
    glass = DeployRequest(env="prod", actor="erin", token=token, break_glass=True, reason="payments down")
    admitted = admit(state, load_spec(spec), spec, "1.0.0", None, glass, _at("2026-02-10"))
    assert admitted.emergency and admitted.actor == "erin"
    assert "no such environment" in refusal(state, spec, env="sandbox", actor="erin", token=token, break_glass=True,
                                            reason="payments down")


def test_a_resumed_rollout_is_held_by_the_stored_calendar_not_the_file_it_was_admitted_with(shop, tmp_path):
    """``resume`` used to read the calendar file again; now the stored calendar decides, read at each increase.
    A rollout admitted by an older releasegate (with a calendar file) keeps that file's freezes until one is
    stored."""
    from releasegate import service
    from releasegate.engine.decide import new_rollout

    spec, state = shop
    frozen = tmp_path / "frozen.yaml"
    frozen.write_text("timezone: UTC\nfreezes: [{name: old file, from: 2026-03-01, to: 2026-03-31, mode: full}]\n")
    st = new_rollout("shop-2.0.0-x", load_spec(spec), "2.0.0", "1.0.0", _at("2026-03-10"))
    st = st.model_copy(update={"change": "major", "env": "prod", "calendar_path": str(frozen)})
    ctx = service.new_context(state)
    hold = service._hooks(ctx, load_spec(spec), st, service._readmit(st))["before_increase"]
    assert "old file" in hold(_at("2026-03-10"))  # nothing stored: the legacy file still holds it

    (tmp_path / "open.yaml").write_text("timezone: UTC\n")
    apply(state, "calendar", tmp_path / "open.yaml")
    assert hold(_at("2026-03-10")) is None  # the stored calendar decides, not the file
    (tmp_path / "launch.yaml").write_text(CALENDAR)
    apply(state, "calendar", tmp_path / "launch.yaml")
    assert "launch week" in hold(_at("2026-03-03"))  # applied after the hooks were made: read at each increase


TEAM = """\
users: {mia: [dev], noah: [ops, admin], olga: [ops]}
author_role: dev
emergency_role: ops
environments:
  prod: {stages: [{role: dev}, {role: ops}]}
"""


def test_break_glass_and_breaking_migrations_need_the_approval_of_the_policys_emergency_role(shop):
    """A team whose SRE role is called ops: the refusals name ops, an ops approval lets break-glass pass."""
    spec, state = shop
    (spec.parent / "team.yaml").write_text(TEAM)
    apply(state, "policy", spec.parent / "team.yaml")
    policy = stored_policy(state)
    assert policy is not None
    token = new_token(state, policy, "noah")
    new_release(state, "shop", "1.0.0", "mia")
    glass: dict[str, Any] = {"actor": "noah", "token": token, "break_glass": True, "reason": "payments down"}
    text = refusal(state, spec, **glass)
    assert ("--break-glass needs an approval of stage ops on shop@1.0.0 (ops is the emergency_role of stored policy "
            "v1; `releasegate approve shop@1.0.0 --stage ops --as USER`)") in text
    assert "sre" not in text
    new_release(state, "shop", "1.0.0", "mia", breaking_migration=True)
    assert "--allow-breaking-migration needs an approval of stage ops on shop@1.0.0 given after the breaking " \
           "migration was allowed" in refusal(state, spec, allow_breaking_migration=True)

    approve(state, policy, "shop", "1.0.0", "ops", "olga")
    admitted = admit(state, load_spec(spec), spec, "1.0.0", None,
                     DeployRequest(env="prod", allow_breaking_migration=True, **glass),
                     _at("2026-02-10"))
    assert admitted.emergency  # the dev stage is missing: break-glass passed it

    (spec.parent / "team.yaml").write_text(TEAM.replace("emergency_role: ops", "emergency_role: null"))
    apply(state, "policy", spec.parent / "team.yaml", actor="noah", token=token)
    assert "--break-glass is not allowed: stored policy v2 sets emergency_role: null" in refusal(state, spec, **glass)
