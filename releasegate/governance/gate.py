"""What ``deploy`` must check before it starts anything, and before every traffic increase.

The policy and the calendar are the ones stored in the state (``releasegate.governance.stored``), never a file the
spec or the command line names. Admission gathers every reason to refuse (calendar, approvals, environment
pipeline, identity) and reports them all at once, so a release manager fixes everything in one round.
Break-glass (``--break-glass --reason``) is the one way past a freeze or a missing stage: it needs an approval
on the release by the policy's ``emergency_role`` (``sre`` by default: the seed's SRE decides prod deploys and
rollbacks) and is recorded as an emergency change. Rolling back is never gated.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from releasegate.errors import UserError
from releasegate.governance.calendar_models import Calendar
from releasegate.governance.identity import os_user
from releasegate.governance.policy import Policy
from releasegate.governance.stored import InForce, in_force, spec_drift
from releasegate.spec.models import Spec


@dataclass(frozen=True)
class DeployRequest:
    """What the person asked for, beyond the spec and the version. No policy or calendar: those are the state's."""

    env: str = "prod"
    actor: str | None = None
    token: str | None = None
    hotfix: bool = False
    break_glass: bool = False
    reason: str | None = None
    allow_breaking_migration: bool = False
    verified: bool = False  # ``actor`` was authenticated by the server's bearer token: no identity token needed


@dataclass
class Admission:
    """The decision to start, with what later checks need: the change kind, the environment, break-glass."""

    change: str
    env: str
    actor: str
    emergency: bool
    notes: list[str] = field(default_factory=list)


@dataclass
class Judgement:
    """What the stored policy and calendar say about a deploy at a moment. Only reads: ``plan --env`` shows it,
    ``admit`` acts on it."""

    change: str
    force: InForce
    notes: list[str] = field(default_factory=list)
    blocking: list[str] = field(default_factory=list)
    """Refusals nothing passes: the spec names rules that are not in force, an environment the policy lacks."""
    bypassable: list[str] = field(default_factory=list)
    """A freeze, a closed deploy window, missing approvals: what break-glass passes."""

    @property
    def allowed(self) -> bool:
        return not self.blocking and not self.bypassable


def change_kind(previous: str | None, version: str, hotfix: bool) -> tuple[str, str | None]:
    """The change kind the calendar judges: from the semver difference to the running version, or hotfix."""
    if hotfix:
        return "hotfix", None
    if previous is None:
        return "major", "first deploy of the service: judged as a major change"
    from releasegate.governance.versioning import semver_kind

    try:
        kind = semver_kind(previous, version)
    except (ValueError, UserError):  # e.g. build-7 -> build-8: judged conservatively, not refused
        return "major", f"{previous} -> {version} is not a semver change: judged as a major change"
    return (kind or "patch"), None


def _now(at: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(at, tz=dt.UTC)


def judge(state_dir: Path, spec: Spec, spec_path: Path, version: str, previous: str | None, env: str,
          hotfix: bool, now: float) -> Judgement:
    """Every reason the stored policy and calendar give to refuse this deploy at ``now``; changes nothing."""
    force = in_force(state_dir)
    change, note = change_kind(previous, version, hotfix)
    judgement = Judgement(change, force, [note] if note else [], spec_drift(spec, spec_path, force, state_dir))
    if force.calendar is not None:
        from releasegate.governance.calendar import decide, format_local

        decision = decide(force.calendar, _now(now), change, env)  # type: ignore[arg-type]
        if decision.allowed:
            judgement.notes.append(f"calendar: {decision.reason}")
        else:
            judgement.bypassable.append(f"calendar: {decision.reason}" + (
                f"; next allowed {format_local(decision.next_allowed, force.calendar.tz)}"
                if decision.next_allowed is not None else "; not allowed within 60 days"))
    if force.policy is not None:
        from releasegate.governance.approvals import check_deploy

        try:
            force.policy.environment(env)
        except UserError as exc:
            judgement.blocking.append(f"{exc} (every environment of a stored policy is governed; an admin adds one "
                                      "with `releasegate policy apply FILE --as ADMIN`)")
        else:
            gate = check_deploy(state_dir, force.policy, spec.release_name, version, env, now)
            judgement.bypassable += [f"policy ({env}): {m}" for m in gate.missing]
    return judgement


def admit(state_dir: Path, spec: Spec, spec_path: Path, version: str, previous: str | None,
          request: DeployRequest, now: float,
          on_refused: Callable[[str, list[str]], None] | None = None) -> Admission:
    """Refuse (UserError listing every reason) or return the admission; every decision goes to the audit log."""
    from releasegate.store.audit import AuditLog

    judgement = judge(state_dir, spec, spec_path, version, previous, request.env, request.hotfix, now)
    policy = judgement.force.policy
    admission = Admission(change=judgement.change, env=request.env,
                          actor=request.actor or f"{os_user()} (os login)", emergency=request.break_glass,
                          notes=judgement.notes)
    release = f"{spec.release_name}@{version}"
    audit = AuditLog(state_dir)
    commit = release_commit(state_dir, spec.release_name, version)
    problems = list(judgement.blocking)
    bypassable = judgement.bypassable
    if (request.actor is not None or request.break_glass) and not request.verified:
        problems += _identity(state_dir, policy, request)
    if request.break_glass:
        if not request.reason:
            problems.append("--break-glass needs --reason TEXT saying why this emergency change cannot wait")
        problems += emergency_approval(state_dir, policy, spec.release_name, version, "--break-glass")
    if request.allow_breaking_migration:
        problems += _breaking_migration(state_dir, policy, spec.release_name, version)
    problems += [] if request.break_glass else bypassable

    evidence = {"change": judgement.change, "env": request.env, "previous": previous,
                **judgement.force.evidence(), "bypassed": bypassable if request.break_glass else [],
                "allow_breaking_migration": request.allow_breaking_migration}
    if problems:
        if on_refused is not None:
            on_refused(release, problems)
        audit.append(admission.actor, "deploy.refused", release=release, commit=commit,
                     decision="; ".join(problems), evidence=evidence, at=now)
        raise UserError(f"{release} refused for {request.env}:\n  - " + "\n  - ".join(problems))
    action = "deploy.emergency" if request.break_glass else "deploy.admitted"
    audit.append(admission.actor, action, release=release, commit=commit,
                 decision=(f"break-glass: {request.reason}; bypassed: " + "; ".join(bypassable))
                 if request.break_glass else "; ".join(admission.notes) or "allowed", evidence=evidence, at=now)
    return admission


def release_commit(state_dir: Path, name: str, version: str) -> str | None:
    """The commit a registered release was built from, for the audit trail (None when not registered)."""
    from releasegate.store.governance import GovernanceStore

    with GovernanceStore(state_dir, readonly=True) as store:
        rel = store.release(name, version)
    return rel.commit if rel is not None else None


def _identity(state_dir: Path, policy: Policy | None, request: DeployRequest) -> list[str]:
    if request.actor is None:
        return ["--break-glass needs --as USER (with RELEASEGATE_TOKEN) so the emergency change has an owner"]
    if policy is None:
        return [f"--as {request.actor}: no policy is stored, so no users are known (an admin stores one with "
                "`releasegate policy apply FILE`)"]
    from releasegate.governance.identity import authenticate

    try:
        authenticate(state_dir, policy, request.actor, request.token)
    except UserError as exc:
        return [str(exc)]
    return []


def _breaking_migration(state_dir: Path, policy: Policy | None, name: str, version: str) -> list[str]:
    """``--allow-breaking-migration`` is a decision the release's approvers took, not a flag anyone may pass: the
    release must be registered with it (which voids earlier approvals) and carry an approval of the policy's
    ``emergency_role`` given since.
    Break-glass does not bypass this: an emergency does not make a schema change reversible."""
    release = f"{name}@{version}"
    register = f"`releasegate release new {name} {version} --as AUTHOR --allow-breaking-migration`"
    if policy is None:
        return [f"--allow-breaking-migration needs an approved release, and no policy is stored to name approvers "
                f"(`releasegate policy apply FILE`, then register it: {register})"]
    from releasegate.store.governance import GovernanceStore

    with GovernanceStore(state_dir, readonly=True) as store:
        registered = store.release(name, version)
    if registered is None:
        return [f"--allow-breaking-migration: {release} is not registered; register it with {register} and get "
                "it approved"]
    if not registered.breaking_migration:
        return [f"--allow-breaking-migration: {release} was not registered as carrying a breaking migration; "
                f"register it again with {register} (its approvals are voided) and get it approved again"]
    return emergency_approval(state_dir, policy, name, version, "--allow-breaking-migration",
                              since=" given after the breaking migration was allowed")


def emergency_approval(state_dir: Path, policy: Policy | None, name: str, version: str, what: str,
                       since: str = "") -> list[str]:
    """Why ``what`` (break-glass, a breaking migration) lacks the approval of the policy's emergency role, if it
    does: the role is the policy's to name (``emergency_role``), so the refusal names the one this policy uses."""
    release = f"{name}@{version}"
    if policy is None:
        return [f"{what} needs an approval by the emergency_role of a stored policy, and no policy is stored "
                "(`releasegate policy apply FILE`)"]
    role = policy.emergency_role
    if role is None:
        return [f"{what} is not allowed: {policy.source} sets emergency_role: null, so no approval permits it"]
    from releasegate.governance.approvals import has_approval

    if has_approval(state_dir, name, version, role):
        return []
    return [f"{what} needs an approval of stage {role} on {release}{since} ({role} is the emergency_role of "
            f"{policy.source}; `releasegate approve {release} --stage {role} --as USER`)"]


def break_glass_hint(policy: Policy | None) -> str:
    """How break-glass would pass what a deploy is refused for, under ``policy``: for ``plan --env``."""
    if policy is None:
        return "break-glass needs a stored policy, whose emergency_role approves it"
    if policy.emergency_role is None:
        return f"break-glass is off: {policy.source} sets emergency_role: null"
    return (f"break-glass (--break-glass --reason TEXT --as USER, with an approval of stage {policy.emergency_role} "
            "on the release) would pass these")


def before_increase(admission: Admission, now: float, calendar: Calendar | None) -> str | None:
    """Checked before every traffic increase against the calendar stored now: a rollout that runs into a freeze
    pauses, never promotes."""
    if calendar is None or admission.emergency:
        return None
    from releasegate.governance.calendar import frozen_at

    freeze = frozen_at(calendar, _now(now), admission.env)
    if freeze is None:
        return None
    allowed = {"full": {"config"}, "hotfix-only": {"config", "patch", "hotfix"}}.get(freeze.mode, set())
    if admission.change in allowed:
        return None
    return (f"paused by change freeze '{freeze.name}' ({freeze.mode}): a {admission.change} change may not take "
            "more traffic until it ends; rollback stays allowed")
