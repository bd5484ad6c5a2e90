"""Release sign-off: the seed's five-stage flow, each rule refused (and audited), tokens, the deploy gate, the CLI.

Time is passed in (``now``), so an hour of soak takes no time. Every refusal is checked for its one-line message and
for its audit entry: a refusal the log does not show is a refusal nobody can review.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from releasegate.commands.approvals import approvals, approve, reject, release_new, token_app, withdraw
from releasegate.errors import UserError
from releasegate.governance import approvals as gov
from releasegate.governance.identity import authenticate, new_token
from releasegate.governance.policy import Policy, load_policy
from releasegate.governance.stored import apply
from releasegate.spec import SpecError
from releasegate.store.audit import AuditLog
from releasegate.store.governance import GovernanceStore

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "governance" / "policy.yaml"
T0 = 1_767_225_600.0
HOUR = 3600.0
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
CHECKS = {"developer": ["unit tests pass", "rollback plan written"],
          "sre": ["deployment window checked", "rollback plan verified"],
          "pm": ["release notes approved"]}
SIGNERS = [("developer", "alice"), ("reviewer", "bob"), ("reviewer", "carol"), ("qa", "dave"), ("sre", "erin"),
           ("pm", "frank")]


@pytest.fixture
def policy() -> Policy:
    return load_policy(EXAMPLE)


@pytest.fixture
def sd(tmp_path: Path) -> Path:
    return tmp_path / "state"


def custom_policy(tmp_path: Path, users: str) -> Policy:
    """The example's environments with other users, e.g. one who holds two roles."""
    text = EXAMPLE.read_text().replace(
        "users: {alice: [developer], bob: [reviewer], carol: [reviewer], dave: [qa], erin: [sre, admin], frank: [pm]}",
        f"users: {users}")
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return load_policy(path)


def register(sd: Path, digest: str | None = DIGEST_A, author: str = "alice", version: str = "1.4.2",
             at: float = T0) -> gov.ReleaseChange:
    return gov.new_release(sd, "shop", version, author, digest, now=at)


def sign(sd: Path, policy: Policy, stage: str, user: str, env: str = "prod", at: float = T0,
         checks: list[str] | None = None, version: str = "1.4.2") -> None:
    gov.approve(sd, policy, "shop", version, stage, user, CHECKS.get(stage, []) if checks is None else checks, env,
                now=at)


def refused(call: object, *args: object, **kwargs: object) -> str:
    assert callable(call)
    with pytest.raises(UserError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def audit(sd: Path) -> list[tuple[str, str, str | None]]:
    with AuditLog(sd) as log:
        return [(e.actor, e.action, e.decision) for e in log.entries()]


def gate(sd: Path, policy: Policy, at: float, env: str = "prod", digest: str | None = None) -> list[str]:
    result = gov.check_deploy(sd, policy, "shop", "1.4.2", env, at, digest)
    assert result.allowed == (not result.missing)
    return result.missing


# --- the policy file ----------------------------------------------------------------------------------------------


def test_the_seed_policy_is_accepted(policy: Policy) -> None:
    assert policy.environments["stage"].requires == "dev" and policy.environments["stage"].soak == 600
    prod = policy.environments["prod"]
    assert (prod.requires, prod.soak) == ("stage", HOUR)
    assert [(s.role, s.approvals) for s in prod.stages] == [("developer", 1), ("reviewer", 2), ("qa", 1),
                                                            ("sre", 1), ("pm", 1)]
    assert prod.stages[3].checklist == CHECKS["sre"]
    assert policy.holders("reviewer") == ["bob", "carol"]


def test_policy_problems_are_all_reported_at_their_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("users: {alice: [developer], bob: [reviewer], dave: [qa]}\n"
                    "environments:\n"
                    "  stage: {requires: dve, stages: [{role: qa}]}\n"
                    "  prod:\n"
                    "    requires: stage\n"
                    "    stages:\n"
                    "      - {role: reviewer, approvals: 2}\n"
                    "      - {role: sre}\n")
    with pytest.raises(SpecError) as info:
        load_policy(path)
    assert str(info.value).splitlines() == [
        f"{path}:3:21: requires 'dve', which is not an environment; environments: stage, prod",
        f"{path}:7:37: stage reviewer needs 2 approvals but only 1 user(s) hold role reviewer (bob)",
        f"{path}:8:16: no user holds role 'sre', so this stage could never be signed; give the role to a user "
        "under users",
    ]
    path.write_text("users: {alice: developer}\nenvironments:\n  prod: {stages: [], soek: 1h}\n")
    with pytest.raises(SpecError) as info:
        load_policy(path)
    assert str(info.value) == f"{path}:3:22: unknown key 'soek' (did you mean 'soak'?)"


def test_a_broken_part_hides_only_the_checks_that_depend_on_it(tmp_path: Path) -> None:
    """Every problem at once, but none invented: a broken user leaves "who holds qa" unanswered; a broken requires
    leaves "soak needs requires" unasked; a requires naming no environment is still caught next to a broken soak."""
    path = tmp_path / "bad.yaml"
    path.write_text("users: {alice: [developer], bob: 5}\n"
                    "environments:\n"
                    "  stage: {requires: 5, soak: 1h, stages: [{role: qa}]}\n"
                    "  prod: {requires: stgae, soak: 90, stages: [{role: developer, approvals: 0}]}\n")
    with pytest.raises(SpecError) as info:
        load_policy(path)
    assert [line.split(": ", 1)[0].removeprefix(f"{path}:") for line in str(info.value).splitlines()] == [
        "1:34", "3:21", "4:20", "4:33", "4:75"]
    text = str(info.value)
    assert "no user holds role 'qa'" not in text and "soak needs requires" not in text
    assert "requires 'stgae', which is not an environment (did you mean 'stage'?)" in text


# --- the rules ----------------------------------------------------------------------------------------------------


def test_the_author_signs_no_stage_but_developer(tmp_path: Path, sd: Path) -> None:
    policy = custom_policy(tmp_path, "{alice: [developer, reviewer], bob: [reviewer], carol: [reviewer], "
                                     "dave: [qa], erin: [sre], frank: [pm]}")
    register(sd)
    message = refused(sign, sd, policy, "reviewer", "alice")
    assert message == ("--stage reviewer: alice is the author of shop@1.4.2 and signs no stage but developer; ask "
                       "another holder of reviewer")
    assert audit(sd)[-1] == ("alice", "approval.refused", message)
    sign(sd, policy, "developer", "alice")
    assert audit(sd)[-1][:2] == ("alice", "approval.given")


def roles_policy(tmp_path: Path, users: str, roles: str = "author_role: dev\nemergency_role: ops\n") -> Policy:
    """A team that names its roles otherwise: dev writes and signs its own stage, ops decides emergencies."""
    path = tmp_path / "team.yaml"
    path.write_text(f"users: {users}\n{roles}environments:\n"
                    "  prod: {stages: [{role: dev, approvals: 1}, {role: ops, approvals: 1}]}\n")
    return load_policy(path)


def test_the_author_signs_the_stage_the_policy_names_as_author_role(tmp_path: Path, sd: Path) -> None:
    """mia is the only dev: under author_role: dev she signs her own dev stage and the release can reach prod."""
    policy = roles_policy(tmp_path, "{mia: [dev, ops], noah: [ops, admin]}")
    register(sd, author="mia")
    sign(sd, policy, "dev", "mia")
    assert refused(sign, sd, policy, "ops", "mia") == (
        "--stage ops: mia is the author of shop@1.4.2 and signs no stage but dev; ask another holder of ops")
    sign(sd, policy, "ops", "noah")
    assert gate(sd, policy, T0) == []

    strict = roles_policy(tmp_path, "{mia: [dev], noah: [ops, admin]}", "author_role: null\nemergency_role: ops\n")
    register(sd, author="mia", version="1.4.3")
    assert refused(sign, sd, strict, "dev", "mia", version="1.4.3") == (
        f"--stage dev: mia is the author of shop@1.4.3 and signs no stage ({strict.source} sets author_role: null); "
        "ask another holder of dev")
    status = gov.release_status(sd, strict, "shop", "1.4.2", now=T0)  # mia's own approval no longer counts
    assert [(s.user, why) for st in status.stages for s, why in st.ignored] == [("mia", "mia is the author")]


def test_a_user_counts_once_per_release_however_many_roles_they_hold(tmp_path: Path, sd: Path) -> None:
    policy = custom_policy(tmp_path, "{alice: [developer], bob: [reviewer], carol: [reviewer], dave: [qa, reviewer], "
                                     "erin: [sre], frank: [pm]}")
    register(sd)
    sign(sd, policy, "qa", "dave")
    message = refused(sign, sd, policy, "reviewer", "dave")
    assert message == ("--stage reviewer: dave already signed shop@1.4.2 as qa (prod); a user counts once per "
                       "release, however many roles they hold")
    assert audit(sd)[-1] == ("dave", "approval.refused", message)
    assert refused(sign, sd, policy, "qa", "dave") == "dave already approved stage qa of shop@1.4.2 for prod"
    sign(sd, policy, "qa", "dave", env="stage")  # the same stage for another environment is a new sign-off
    sign(sd, policy, "reviewer", "bob")
    assert "stage reviewer: 1 of 2 approvals (bob)" in gate(sd, policy, T0)


def test_a_user_without_the_stage_role_cannot_sign_it(policy: Policy, sd: Path) -> None:
    register(sd)
    message = refused(sign, sd, policy, "qa", "bob")
    assert message.startswith("--stage qa: bob cannot sign it: the stage needs role qa and bob holds reviewer")
    assert audit(sd)[-1] == ("bob", "approval.refused", message)
    assert "no such stage (did you mean 'reviewer'?)" in refused(sign, sd, policy, "reviewr", "bob")
    assert "did you mean 'bob'?" in refused(sign, sd, policy, "reviewer", "bobb")
    assert "has no such environment (did you mean 'prod'?)" in refused(sign, sd, policy, "reviewer", "bob", "prd")


def test_every_checklist_item_must_be_ticked(policy: Policy, sd: Path) -> None:
    register(sd)
    message = refused(sign, sd, policy, "sre", "erin", checks=["deployment window checked"])
    assert message == ("stage sre of prod: every checklist item must be ticked; not ticked: 'rollback plan "
                       "verified' (add --check 'ITEM' for each once it is true)")
    assert audit(sd)[-1] == ("erin", "approval.refused", message)
    typo = refused(sign, sd, policy, "sre", "erin", checks=["deployment window checked", "rollback plan verifed"])
    assert "no such checklist item (did you mean 'rollback plan verified'?)" in typo
    sign(sd, policy, "sre", "erin")
    assert not [m for m in gate(sd, policy, T0) if m.startswith("stage sre")]


def test_a_new_artifact_digest_voids_the_approvals(policy: Policy, sd: Path) -> None:
    register(sd, DIGEST_A)
    sign(sd, policy, "reviewer", "bob")
    sign(sd, policy, "reviewer", "carol")
    assert not [m for m in gate(sd, policy, T0) if "reviewer" in m]
    assert gov.has_approval(sd, "shop", "1.4.2", "reviewer")
    assert register(sd, DIGEST_A).voided == []  # the same artifact again changes nothing
    change = register(sd, DIGEST_B, at=T0 + 60)
    assert sorted(s.user for s in change.voided) == ["bob", "carol"]
    assert audit(sd)[-1][:2] == ("alice", "release.changed")
    assert "2 approval(s) void" in str(audit(sd)[-1][2])
    assert "stage reviewer: 0 of 2 approvals" in gate(sd, policy, T0 + 60)
    assert not gov.has_approval(sd, "shop", "1.4.2", "reviewer")
    sign(sd, policy, "reviewer", "bob", at=T0 + 120)  # approvals are given again, for the new artifact
    assert "stage reviewer: 1 of 2 approvals (bob)" in gate(sd, policy, T0 + 120)
    deployed = gate(sd, policy, T0 + 120, digest=DIGEST_A)  # deploying another artifact than the approved one
    assert any(m.startswith(f"artifact: {DIGEST_A} is not the artifact shop@1.4.2 was approved for") for m in deployed)
    assert refused(register, sd, DIGEST_A, "bob") == ("shop@1.4.2 was registered by alice; only alice can register "
                                                     "it again")


def test_approvals_belong_to_one_version(policy: Policy, sd: Path) -> None:
    register(sd)
    register(sd, version="1.4.3")
    sign(sd, policy, "qa", "dave")
    assert gov.has_approval(sd, "shop", "1.4.2", "qa")
    assert not gov.has_approval(sd, "shop", "1.4.3", "qa")
    assert "stage qa: 0 of 1 approvals" in gov.check_deploy(sd, policy, "shop", "1.4.3", "prod", T0).missing


def test_a_rejection_blocks_the_release_until_the_rejecting_user_withdraws_it(policy: Policy, sd: Path) -> None:
    complete_prod(sd, policy)
    assert gate(sd, policy, T0 + 2 * HOUR) == []
    gov.reject(sd, policy, "shop", "1.4.2", "reviewer", "carol", "no test for the rounding fix", now=T0 + 2 * HOUR)
    missing = gate(sd, policy, T0 + 2 * HOUR)
    assert "rejected by carol at stage reviewer: no test for the rounding fix" in missing
    assert "stage reviewer: 1 of 2 approvals (bob)" in missing  # carol's own approval no longer counts
    assert "rejected by carol at stage reviewer: no test for the rounding fix" in gate(
        sd, policy, T0 + 2 * HOUR, env="stage")  # blocked in every environment
    assert refused(gov.withdraw, sd, "shop", "1.4.2", "bob") == ("bob has no rejection of shop@1.4.2 to withdraw; "
                                                                 "only the user who rejected can withdraw: carol")
    assert refused(sign, sd, policy, "reviewer", "carol").startswith("carol rejected shop@1.4.2 at stage reviewer")
    gov.withdraw(sd, "shop", "1.4.2", "carol", now=T0 + 3 * HOUR)
    assert audit(sd)[-1][:2] == ("carol", "rejection.withdrawn")
    assert gate(sd, policy, T0 + 3 * HOUR) == ["stage reviewer: 1 of 2 approvals (bob)"]
    sign(sd, policy, "reviewer", "carol", at=T0 + 3 * HOUR)
    assert gate(sd, policy, T0 + 3 * HOUR) == []


# --- identity -----------------------------------------------------------------------------------------------------


def test_tokens_missing_wrong_and_replaced_are_refused_and_audited(policy: Policy, sd: Path) -> None:
    assert refused(authenticate, sd, policy, "bob", None).startswith("--as bob: bob has no token;")
    first = new_token(sd, policy, "bob")  # no admin holds a token yet: issued on the OS login's word
    assert first.startswith("rg_") and len(first) > 40
    authenticate(sd, policy, "bob", first)
    assert refused(authenticate, sd, policy, "bob", None) == ("--as bob needs bob's token in the environment "
                                                             "variable RELEASEGATE_TOKEN")
    assert "is not bob's current token" in refused(authenticate, sd, policy, "bob", first + "x")
    erin = new_token(sd, policy, "erin")  # the first admin's token
    assert "is not bob's current token" in refused(authenticate, sd, policy, "bob", erin)
    second = new_token(sd, policy, "bob", by="erin", by_token=erin)
    assert "is not bob's current token" in refused(authenticate, sd, policy, "bob", first)  # replaced
    authenticate(sd, policy, "bob", second)
    actions = [a for _, a, _ in audit(sd)]
    assert actions.count("auth.refused") == 5 and actions.count("token.new") == 3
    issued = [(actor, decision) for actor, action, decision in audit(sd) if action == "token.new"]
    assert issued[-1] == ("erin", "token for bob issued, replacing the previous one")  # names who issued it
    db = sqlite3.connect(sd / "releasegate.db")
    dump = "\n".join(db.iterdump())
    assert first not in dump and second not in dump  # only hashes are stored


def test_once_an_admin_holds_a_token_only_an_admin_issues_tokens(policy: Policy, sd: Path) -> None:
    erin = new_token(sd, policy, "erin")
    assert refused(new_token, sd, policy, "bob") == (
        "token new: an admin holds a token, so only an admin issues tokens now: `releasegate token new bob --as ADMIN` "
        "with that admin's token in RELEASEGATE_TOKEN (admins: erin)")
    assert refused(new_token, sd, policy, "erin").startswith("token new: an admin holds a token")  # nor a 2nd admin's
    bob = new_token(sd, policy, "bob", by="erin", by_token=erin)
    assert refused(new_token, sd, policy, "carol", by="bob", by_token=bob) == (
        f"token new: --as bob: issuing tokens needs role admin in policy {EXAMPLE}; admins: erin")
    assert "not erin's current token" in refused(new_token, sd, policy, "carol", by="erin", by_token=bob)
    assert [a for _, a, _ in audit(sd)][-5:] == ["token.refused", "token.refused", "token.new", "token.refused",
                                                 "auth.refused"]
    rotated = new_token(sd, policy, "erin", by="erin", by_token=erin)  # an admin rotates their own token
    assert "not erin's current token" in refused(authenticate, sd, policy, "erin", erin)
    authenticate(sd, policy, "erin", rotated)


def test_unknown_users_get_no_token_and_cannot_act(policy: Policy, sd: Path) -> None:
    message = refused(new_token, sd, policy, "bobb")
    assert message.startswith("token new: user 'bobb' is not in policy") and "(did you mean 'bob'?)" in message
    assert audit(sd)[-1][1] == "token.refused"
    assert "(did you mean 'bob'?)" in refused(authenticate, sd, policy, "bobb", "rg_whatever")
    assert audit(sd)[-1][:2] == ("bobb", "auth.refused")


def test_break_glass_needs_an_sre_holder_and_an_sre_approval(policy: Policy, sd: Path) -> None:
    register(sd)
    bob = new_token(sd, policy, "bob")
    erin = new_token(sd, policy, "erin")
    gov.require_role(sd, policy, "erin", erin, "sre")
    assert "this needs role sre, and bob holds reviewer" in refused(gov.require_role, sd, policy, "bob", bob, "sre")
    assert audit(sd)[-1][:2] == ("bob", "role.refused")
    assert "not erin's current token" in refused(gov.require_role, sd, policy, "erin", bob, "sre")
    assert not gov.has_approval(sd, "shop", "1.4.2", "sre")
    sign(sd, policy, "sre", "erin")
    assert gov.has_approval(sd, "shop", "1.4.2", "sre")


# --- the deploy gate: the seed's five-stage flow ------------------------------------------------------------------


def complete_prod(sd: Path, policy: Policy) -> None:
    """Registered, every prod stage signed, promoted in stage at T0 (so prod may deploy from T0 + 1h)."""
    register(sd)
    for stage, user in SIGNERS:
        sign(sd, policy, stage, user)
    gov.record_env_success(sd, "shop", "1.4.2", "stage", T0)


def test_the_gate_lists_everything_missing_at_once(policy: Policy, sd: Path) -> None:
    assert gate(sd, policy, T0)[0] == ("release shop@1.4.2 is not registered: `releasegate release new shop 1.4.2 "
                                       "--as AUTHOR`, then its approvals")
    assert gate(sd, policy, T0, env="dev") == []  # no stages, nothing required
    register(sd)
    sign(sd, policy, "reviewer", "bob")
    gov.reject(sd, policy, "shop", "1.4.2", "qa", "dave", "checkout E2E fails", now=T0)
    assert gate(sd, policy, T0) == [
        "stage developer: 0 of 1 approvals",
        "stage developer: checklist item 'unit tests pass' not ticked",
        "stage developer: checklist item 'rollback plan written' not ticked",
        "stage reviewer: 1 of 2 approvals (bob)",
        "stage qa: 0 of 1 approvals",
        "stage sre: 0 of 1 approvals",
        "stage sre: checklist item 'deployment window checked' not ticked",
        "stage sre: checklist item 'rollback plan verified' not ticked",
        "stage pm: 0 of 1 approvals",
        "stage pm: checklist item 'release notes approved' not ticked",
        "rejected by dave at stage qa: checkout E2E fails",
        "requires stage: shop 1.4.2 has not succeeded in stage",
    ]


def test_the_seed_flow_allows_prod_only_after_every_stage_the_stage_success_and_an_hour_of_soak(
        policy: Policy, sd: Path) -> None:
    register(sd)
    assert gate(sd, policy, T0, env="stage") == ["stage qa: 0 of 1 approvals",
                                                 "requires dev: shop 1.4.2 has not succeeded in dev"]
    sign(sd, policy, "qa", "dave", env="stage")
    gov.record_env_success(sd, "shop", "1.4.2", "dev", T0)
    assert gate(sd, policy, T0 + 300, env="stage") == ["soak: shop 1.4.2 succeeded in dev 5m ago, needs 10m"]
    assert gate(sd, policy, T0 + 600, env="stage") == []
    gov.record_env_success(sd, "shop", "1.4.2", "stage", T0 + 600)
    assert gov.env_success(sd, "shop", "1.4.2", "stage") == T0 + 600
    for i, (stage, user) in enumerate(SIGNERS):
        assert gate(sd, policy, T0 + 2 * HOUR), f"allowed before {stage} was signed by {user}"
        sign(sd, policy, stage, user, at=T0 + 600 + i)
    assert gate(sd, policy, T0 + 600 + 12 * 60) == ["soak: shop 1.4.2 succeeded in stage 12m ago, needs 1h"]
    assert gate(sd, policy, T0 + 600 + HOUR - 1) == ["soak: shop 1.4.2 succeeded in stage 59m59s ago, needs 1h"]
    assert gate(sd, policy, T0 + 600 + HOUR) == []
    assert gate(sd, policy, T0 + 600 + HOUR, digest=DIGEST_A) == []


# --- the command line ---------------------------------------------------------------------------------------------


def cli_app() -> typer.Typer:
    """Mounted as releasegate.cli mounts them."""
    app = typer.Typer()
    for command in (approve, reject, withdraw, approvals):
        app.command(command.__name__)(command)
    release_group = typer.Typer()
    release_group.command("new")(release_new)
    app.add_typer(release_group, name="release")
    app.add_typer(token_app, name="token")
    return app


def run(sd: Path, *args: str, token: str | None = None) -> Result:
    env = {"RELEASEGATE_TOKEN": token or "", "RELEASEGATE_HOME": str(sd)}
    return CliRunner().invoke(cli_app(), list(args), env=env)


def assert_refused(result: Result, text: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f"releasegate: {text}"], result.stderr
    assert "Traceback" not in result.output


def test_cli_sign_off_with_tokens_under_the_stored_policy(sd: Path) -> None:
    assert_refused(run(sd, "token", "new", "erin"), f"token new: no policy is stored in {sd}; an admin stores one "
                   "with `releasegate policy apply FILE` (users, roles and the stages of each environment)")
    assert not sd.exists()  # refused by a look: nothing was created
    apply(sd, "policy", EXAMPLE)
    issued = run(sd, "token", "new", "erin")  # the first admin's token needs no admin
    assert issued.exit_code == 0 and issued.stdout.startswith("rg_") and len(issued.stdout.splitlines()) == 1
    erin = issued.stdout.strip()
    alice = run(sd, "token", "new", "alice", "--as", "erin", token=erin).stdout.strip()
    bob = run(sd, "token", "new", "bob", "--as", "erin", token=erin).stdout.strip()
    assert alice.startswith("rg_") and bob.startswith("rg_")
    assert_refused(run(sd, "token", "new", "mallory", "--as", "erin", token=erin),
                   "token new: user 'mallory' is not in stored policy v1; users: alice, bob, carol, dave, erin, frank")
    assert_refused(run(sd, "token", "new", "carol", "--policy", str(EXAMPLE), "--as", "erin", token=erin),
                   f"token new --policy {EXAMPLE}: approvals are judged by the stored policy, not a file; drop "
                   f"--policy (an admin stores the file with `releasegate policy apply {EXAMPLE} --as ADMIN`)")

    made = run(sd, "release", "new", "shop", "1.4.2", "--as", "alice", "--digest", DIGEST_A, token=alice)
    assert made.exit_code == 0 and made.stdout.startswith("registered shop@1.4.2 by alice")
    assert_refused(run(sd, "release", "new", "shop", "1.4.2", "--as", "alice", "--digest", "md5:x", token=alice),
                   "--digest md5:x: write the artifact digest as sha256:<64 lowercase hex digits>")

    approve_as_bob = ["approve", "shop@1.4.2", "--stage", "reviewer", "--as", "bob"]
    assert_refused(run(sd, *approve_as_bob), "--as bob needs bob's token in the environment variable "
                                             "RELEASEGATE_TOKEN")
    assert_refused(run(sd, *approve_as_bob, token=alice), "--as bob: RELEASEGATE_TOKEN is not bob's current token "
                   "(a new token replaces the old one); an admin creates one with `releasegate token new bob --as "
                   "ADMIN`")
    assert_refused(run(sd, *approve_as_bob, "--policy", str(EXAMPLE), token=bob),
                   f"approve --policy {EXAMPLE}: approvals are judged by the stored policy, not a file; drop "
                   f"--policy (an admin stores the file with `releasegate policy apply {EXAMPLE} --as ADMIN`)")
    ok = run(sd, *approve_as_bob, token=bob)
    assert ok.exit_code == 0
    assert ok.stdout.strip() == "shop@1.4.2: bob approved stage reviewer for prod (1 of 2); 0 of 5 stages complete"
    assert_refused(run(sd, "approve", "shop-1.4.2", "--stage", "qa", "--as", "bob", token=bob),
                   "release 'shop-1.4.2': write it as SERVICE@VERSION, e.g. shop@1.4.2")

    rejected = run(sd, "reject", "shop@1.4.2", "--stage", "reviewer", "--as", "bob", "--reason", "no tests", token=bob)
    assert rejected.exit_code == 0, rejected.output
    shown = run(sd, "approvals", "shop@1.4.2")
    assert shown.exit_code == 0
    assert shown.stdout.startswith("judged by stored policy v1\n")
    assert "rejected by bob at stage reviewer" in shown.stdout and "deploy to prod: refused" in shown.stdout
    data = json.loads(run(sd, "approvals", "shop@1.4.2", "--json").stdout)
    assert data["gate"]["allowed"] is False and data["judged_by"] == "stored policy v1"
    assert [r["user"] for r in data["rejections"]] == ["bob"]
    assert data["stages"][0]["missing_checklist"] == CHECKS["developer"]
    assert_refused(run(sd, "withdraw", "shop@1.4.2", "--as", "alice", token=alice),
                   "alice has no rejection of shop@1.4.2 to withdraw; only the user who rejected can withdraw: bob")
    withdrawn = run(sd, "withdraw", "shop@1.4.2", "--as", "bob", token=bob)
    assert withdrawn.stdout.strip() == "shop@1.4.2: bob withdrew the rejection at stage reviewer"


def test_approvals_judges_a_file_only_as_a_dry_look_and_says_so(tmp_path: Path, sd: Path) -> None:
    apply(sd, "policy", EXAMPLE)
    register(sd)
    laxer = tmp_path / "laxer.yaml"
    laxer.write_text("users: {bob: [reviewer, admin]}\nenvironments: {prod: {stages: [{role: reviewer}]}}\n")
    sign(sd, load_policy(laxer), "reviewer", "bob")
    dry = run(sd, "approvals", "shop@1.4.2", "--policy", str(laxer))
    assert dry.exit_code == 0
    assert dry.stdout.splitlines()[0] == (f"judged by policy {laxer}, not the stored policy (a dry look: deploys are "
                                          "judged by the stored one)")
    assert "deploy to prod: allowed" in dry.stdout
    stored = run(sd, "approvals", "shop@1.4.2")
    assert "deploy to prod: refused" in stored.stdout and "stage reviewer: 1 of 2 approvals (bob)" in stored.stdout
    assert_refused(run(sd, "approvals", "shop@1.4.2", "--env", "sandbox"), "--env sandbox: stored policy v1 has no "
                   "such environment; environments: dev, stage, prod")


def test_cli_allows_a_breaking_migration_on_a_release_and_voids_its_approvals(policy: Policy, sd: Path) -> None:
    apply(sd, "policy", EXAMPLE)
    alice = run(sd, "token", "new", "alice").stdout.strip()
    assert run(sd, "release", "new", "shop", "1.4.2", "--as", "alice", token=alice).exit_code == 0
    sign(sd, policy, "sre", "erin")
    flagged = run(sd, "release", "new", "shop", "1.4.2", "--as", "alice", "--allow-breaking-migration", token=alice)
    assert flagged.exit_code == 0, flagged.output
    assert flagged.stdout.strip() == ("shop@1.4.2: changed (digest none, commit none, breaking migration allowed); "
                                      "1 approval(s) are void and must be given again: sre by erin")
    again = run(sd, "release", "new", "shop", "1.4.2", "--as", "alice", token=alice)  # left out: unchanged
    assert "nothing changed" in again.stdout and "breaking migration allowed" in again.stdout
    data = json.loads(run(sd, "approvals", "shop@1.4.2", "--json").stdout)
    assert data["breaking_migration"] is True
    off = run(sd, "release", "new", "shop", "1.4.2", "--as", "alice", "--no-breaking-migration", token=alice)
    assert off.stdout.strip() == "shop@1.4.2: changed (digest none, commit none)"


def test_a_state_dir_from_before_breaking_migrations_is_upgraded_in_place(sd: Path) -> None:
    sd.mkdir()
    with sqlite3.connect(sd / "releasegate.db") as db:
        db.execute("CREATE TABLE gov_releases (service TEXT NOT NULL, version TEXT NOT NULL, author TEXT NOT NULL, "
                   "digest TEXT, commit_sha TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL, "
                   "PRIMARY KEY (service, version))")
        db.execute("INSERT INTO gov_releases VALUES ('shop', '1.0.0', 'alice', NULL, NULL, 1, 1)")
    with GovernanceStore(sd, readonly=True) as looking:  # a look (approvals, plan) reads it as it is
        assert looking.release("shop", "1.0.0").breaking_migration is False  # type: ignore[union-attr]
        assert looking.document("policy") is None and looking.token_hash("alice") is None
    assert [row[0] for row in sqlite3.connect(sd / "releasegate.db").execute(
        "SELECT name FROM sqlite_master WHERE type='table'")] == ["gov_releases"]  # and changed nothing
    with GovernanceStore(sd) as store:
        old = store.release("shop", "1.0.0")
    assert old is not None and old.author == "alice" and old.breaking_migration is False
    assert gov.new_release(sd, "shop", "1.0.0", "alice", breaking_migration=True).release.breaking_migration


def test_cli_reports_a_broken_policy_file_at_its_line(tmp_path: Path, sd: Path) -> None:
    broken = tmp_path / "policy.yaml"
    broken.write_text("users: {alice: [developer]}\nenvironments:\n  prod: {stages: [{role: qa}]}\n")
    result = run(sd, "approvals", "shop@1.4.2", "--policy", str(broken))
    assert_refused(result, f"{broken}:3:26: no user holds role 'qa', so this stage could never be signed; give the "
                           "role to a user under users")
