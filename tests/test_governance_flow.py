"""The seed's governance end to end, with real deploys: five approval stages, dev -> stage -> prod with soak,
a change freeze that refuses a deploy, and break-glass. Each environment is its own deployment (shop-dev,
shop-stage, shop) sharing the release name `shop` for approvals. The policy and the calendar are the state's
(applied as an admin would), so a spec that leaves them out changes nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import sys
from pathlib import Path

import pytest

from releasegate import service
from releasegate.errors import UserError
from releasegate.governance.approvals import approve, new_release, record_env_success
from releasegate.governance.gate import DeployRequest
from releasegate.governance.identity import new_token
from releasegate.governance.policy import load_policy
from releasegate.governance.stored import apply
from releasegate.providers.routers.builtin import read_router_state
from releasegate.store.audit import AuditLog
from tests.support.rollouts import cleanup, free_port

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "governance"


def write(directory: Path, name: str, extra: str = "") -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(f"""\
service: {name}
platform: {{command: "{sys.executable} -m releasegate.demoapp --port {{port}}", instances: 1, stop_grace: 2s}}
router: {{listen: "127.0.0.1:{free_port()}"}}
health: {{path: /health, interval: 100ms, attempts: 50}}
strategy: {{bluegreen: {{}}}}
analysis: {{interval: 500ms, post_promotion: 0s}}
governance: {{release: shop, policy: policy.yaml{extra}}}
""")
    return path


@pytest.fixture
def world(tmp_path):
    shutil.copy(EXAMPLES / "policy.yaml", tmp_path / "policy.yaml")
    state = tmp_path / "state"
    apply(state, "policy", tmp_path / "policy.yaml")
    specs = {env: write(tmp_path, name) for env, name in (("dev", "shop-dev"), ("stage", "shop-stage"),
                                                          ("prod", "shop"))}
    yield tmp_path, state, specs
    for spec in specs.values():
        asyncio.run(cleanup(state, spec))


async def deploy(state: Path, spec: Path, version: str, **request: object):
    return await asyncio.wait_for(service.deploy(service.new_context(state), spec, version,
                                                 request=DeployRequest(**request)), 60)  # type: ignore[arg-type]


async def test_the_seed_five_stage_flow_from_dev_to_prod(world):
    root, state, specs = world
    policy = load_policy(root / "policy.yaml")
    new_release(state, "shop", "1.0.0", "alice")

    assert (await deploy(state, specs["dev"], "1.0.0", env="dev")).status == "promoted"

    with pytest.raises(UserError) as refused:
        await deploy(state, specs["stage"], "1.0.0", env="stage")
    text = str(refused.value)
    assert "stage qa: 0 of 1" in text and "soak" in text and "10m" in text
    assert read_router_state(state, "shop-stage") is None  # refused before anything started

    approve(state, policy, "shop", "1.0.0", "qa", "dave", env="stage")
    now = dt.datetime.now(dt.UTC).timestamp()
    record_env_success(state, "shop", "1.0.0", "dev", now - 1200)  # dev went out 20 minutes ago
    assert (await deploy(state, specs["stage"], "1.0.0", env="stage")).status == "promoted"

    with pytest.raises(UserError) as refused:
        await deploy(state, specs["prod"], "1.0.0", env="prod")
    missing = str(refused.value)
    for stage in ("developer", "reviewer", "qa", "sre", "pm"):
        assert f"stage {stage}" in missing
    assert "soak" in missing

    approve(state, policy, "shop", "1.0.0", "developer", "alice",
            checks=["unit tests pass", "rollback plan written"])
    approve(state, policy, "shop", "1.0.0", "reviewer", "bob")
    approve(state, policy, "shop", "1.0.0", "reviewer", "carol")
    approve(state, policy, "shop", "1.0.0", "qa", "dave")
    approve(state, policy, "shop", "1.0.0", "sre", "erin",
            checks=["deployment window checked", "rollback plan verified"])
    approve(state, policy, "shop", "1.0.0", "pm", "frank", checks=["release notes approved"])
    record_env_success(state, "shop", "1.0.0", "stage", now - 2 * 3600)  # soaked two hours in stage
    assert (await deploy(state, specs["prod"], "1.0.0", env="prod")).status == "promoted"

    log = AuditLog(state)
    assert log.verify().ok
    actions = [e.action for e in log.entries()]
    assert actions.count("deploy.refused") == 2 and actions.count("deploy.admitted") == 3
    assert "rollout.switched" in actions and "rollout.promoted" in actions


async def test_a_freeze_refuses_the_deploy_and_break_glass_needs_an_sre_approval(world):
    root, state, specs = world
    today = dt.datetime.now(dt.UTC).date()
    (root / "freeze.yaml").write_text(f"""\
timezone: UTC
freezes:
  - {{name: incident review, from: {today - dt.timedelta(days=1)}, to: {today + dt.timedelta(days=1)}, mode: full}}
""")
    policy = load_policy(root / "policy.yaml")
    new_release(state, "shop", "1.0.0", "alice")
    new_release(state, "shop", "1.1.0", "alice")
    record_env_success(state, "shop", "1.0.0", "stage", 0)
    await deploy(state, specs["dev"], "1.0.0", env="dev")

    token = new_token(state, policy, "erin")
    apply(state, "calendar", root / "freeze.yaml", actor="erin", token=token)
    with pytest.raises(UserError, match="full freeze 'incident review'"):
        await deploy(state, specs["dev"], "1.1.0", env="dev")
    with pytest.raises(UserError, match=r"needs an approval of stage sre on shop@1\.1\.0"):
        await deploy(state, specs["dev"], "1.1.0", env="dev", break_glass=True, reason="payments down",
                     actor="erin", token=token)
    with pytest.raises(UserError, match="token"):
        await deploy(state, specs["dev"], "1.1.0", env="dev", break_glass=True, reason="payments down",
                     actor="erin", token="rg_wrong")

    approve(state, policy, "shop", "1.1.0", "sre", "erin",
            checks=["deployment window checked", "rollback plan verified"])
    st = await deploy(state, specs["dev"], "1.1.0", env="dev", break_glass=True, reason="payments down",
                      actor="erin", token=token)
    assert st.status == "promoted" and st.emergency
    [emergency] = [e for e in AuditLog(state).entries() if e.action == "deploy.emergency"]
    assert emergency.actor == "erin" and "payments down" in (emergency.decision or "")
    assert "incident review" in (emergency.decision or "")


async def test_a_spec_without_governance_is_refused_in_prod_when_a_policy_is_stored(world):
    """The reported hole: a spec without ``governance:`` deployed to prod unapproved, audited as anonymous."""
    root, state, specs = world
    bare = root / "bare.yaml"
    bare.write_text(specs["prod"].read_text().replace("governance: {release: shop, policy: policy.yaml}\n", ""))
    assert "\ngovernance:" not in bare.read_text()
    with pytest.raises(UserError) as refused:
        await deploy(state, bare, "1.0.0", env="prod")
    for stage in ("developer", "reviewer", "qa", "sre", "pm"):
        assert f"policy (prod): stage {stage}: 0 of" in str(refused.value)
    assert read_router_state(state, "shop") is None  # nothing was started
    [entry] = [e for e in AuditLog(state).entries() if e.action == "deploy.refused"]
    assert entry.actor.endswith("(os login)") and entry.actor != "anonymous"


async def test_a_calendar_applied_during_a_rollout_holds_its_next_traffic_increase(world):
    """The freeze check before each traffic increase reads the calendar stored at that moment, not the one (or the
    file) admission saw: an admin's emergency freeze holds a canary where it is until the freeze is lifted."""
    from releasegate.governance.stored import stored_policy
    from tests.support.wait import eventually

    root, state, specs = world
    spec = specs["dev"]
    spec.write_text(spec.read_text().replace(
        "strategy: {bluegreen: {}}\nanalysis: {interval: 500ms, post_promotion: 0s}",
        "strategy: {canary: {steps: [{weight: 10, pause: 1s}, {weight: 50, pause: 1s}]}}\n"
        "analysis: {interval: 200ms, post_promotion: 0s, rules: []}"))
    assert (await deploy(state, spec, "1.0.0", env="dev")).status == "promoted"
    token = new_token(state, stored_policy(state), "erin")  # type: ignore[arg-type]
    today = dt.datetime.now(dt.UTC).date()
    (root / "freeze.yaml").write_text(f"""\
timezone: UTC
freezes:
  - {{name: incident review, from: {today - dt.timedelta(days=1)}, to: {today + dt.timedelta(days=1)}, mode: full}}
""")
    (root / "open.yaml").write_text("timezone: UTC\n")

    rollout = asyncio.create_task(deploy(state, spec, "1.1.0", env="dev"))
    ctx = service.new_context(state)

    def at_ten() -> bool:
        found = service.status(ctx, "shop-dev")[0]["rollout"]
        return found is not None and found["weight"] == 10

    await eventually(at_ten, 30, "the canary at 10%")
    apply(state, "calendar", root / "freeze.yaml", actor="erin", token=token)

    def held() -> bool:
        found = service.status(ctx, "shop-dev")[0]["rollout"]
        return bool(found and "paused by change freeze 'incident review'" in (found["waiting"] or ""))

    await eventually(held, 30, "the canary held by the freeze")
    assert service.status(ctx, "shop-dev")[0]["rollout"]["weight"] == 10
    assert not rollout.done()
    apply(state, "calendar", root / "open.yaml", actor="erin", token=token)  # the freeze is lifted
    assert (await asyncio.wait_for(rollout, 60)).status == "promoted"


async def test_a_breaking_migration_needs_a_release_approved_for_it(world):
    """``--allow-breaking-migration`` is the approvers' decision: registered on the release (voiding approvals
    given before), then an approval by the emergency role (sre); each missing piece is refused before anything
    starts."""
    import sqlite3

    root, state, specs = world
    policy = load_policy(root / "policy.yaml")
    (root / "migrations").mkdir()
    (root / "migrations" / "001_drop_phone.sql").write_text("ALTER TABLE users DROP COLUMN phone;\n")
    with sqlite3.connect(root / "app.db") as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, phone TEXT)")
    spec = specs["dev"]
    spec.write_text(spec.read_text() + "migrations: {database: sqlite:///app.db}\n")
    sre_checks = ["deployment window checked", "rollback plan verified"]

    with pytest.raises(UserError, match=r"shop@2\.0\.0 is not registered"):
        await deploy(state, spec, "2.0.0", env="dev", allow_breaking_migration=True)
    new_release(state, "shop", "2.0.0", "alice")
    approve(state, policy, "shop", "2.0.0", "sre", "erin", checks=sre_checks)
    with pytest.raises(UserError, match="not registered as carrying a breaking migration"):
        await deploy(state, spec, "2.0.0", env="dev", allow_breaking_migration=True)

    change = new_release(state, "shop", "2.0.0", "alice", breaking_migration=True)
    assert [s.user for s in change.voided] == ["erin"]  # approved before the breaking change was on the table
    with pytest.raises(UserError, match=r"needs an approval of stage sre on shop@2\.0\.0 given after"):
        await deploy(state, spec, "2.0.0", env="dev", allow_breaking_migration=True)
    assert read_router_state(state, "shop-dev") is None  # every refusal came before anything started

    approve(state, policy, "shop", "2.0.0", "sre", "erin", checks=sre_checks)
    assert (await deploy(state, spec, "2.0.0", env="dev", allow_breaking_migration=True)).status == "promoted"
    with sqlite3.connect(root / "app.db") as db:
        assert [c[1] for c in db.execute("PRAGMA table_info(users)")] == ["id"]
    refusals = [e.decision or "" for e in AuditLog(state).entries() if e.action == "deploy.refused"]
    assert len(refusals) == 3 and all("--allow-breaking-migration" in r for r in refusals)


def test_allowing_a_breaking_migration_needs_a_policy(tmp_path):
    from releasegate.governance.gate import _breaking_migration

    [problem] = _breaking_migration(tmp_path / "state", None, "shop", "2.0.0")
    assert "no policy is stored to name approvers" in problem and "release new shop 2.0.0" in problem


def test_the_example_calendar_refuses_exam_season_and_allows_config(tmp_path):
    from typer.testing import CliRunner

    from releasegate.cli import app

    runner = CliRunner()
    base = ["calendar", "check", "--calendar", str(EXAMPLES / "calendar.yaml")]
    refused = runner.invoke(app, [*base, "--at", "2025-11-11T03:00", "--change", "minor"])
    assert refused.exit_code == 2 and "exam season" in refused.output
    config = runner.invoke(app, [*base, "--at", "2025-11-11T03:00", "--change", "config"])
    assert config.exit_code == 0


def test_the_documented_walkthrough_runs(tmp_path):
    """examples/governance/walkthrough.sh is what the docs show; it must keep working as written."""
    import os
    import subprocess

    env = {**os.environ, "RELEASEGATE_HOME": str(tmp_path / "state")}
    r = subprocess.run(["bash", str(EXAMPLES / "walkthrough.sh")], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "stored policy v1 from" in r.stdout and "stored calendar v1 from" in r.stdout
    assert "judged by stored policy v1, stored calendar v1" in r.stdout and "would be refused:" in r.stdout
    assert "5 of 5 stages complete" in r.stdout
    assert "judged by stored calendar v1" in r.stdout and "refused: full freeze 'exam season'" in r.stdout
    assert "--as bob: policy apply needs role admin" in r.stderr
    assert "stored policy v2 from" in r.stdout and "+users: {alice: [developer]" in r.stdout
    assert "audit log ok" in r.stdout
