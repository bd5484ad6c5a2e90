"""Approvals: the seed's five-stage sign-off as enforced rules, and the gate ``deploy --env`` asks first.

The rules (seed section 2), each refused with a message that says how to proceed, and recorded in the audit log:

- the author of a release signs no stage but the policy's ``author_role`` (``developer`` by default): nobody
  reviews their own change;
- a user counts once per release however many roles they hold (two reviewers means two people), so a user who
  signed one stage cannot sign another; signing the same stage again for another environment is allowed;
- only a holder of the stage's role signs it, and every checklist item of the stage must be ticked;
- approvals belong to the artifact they were given for: registering the release again with another digest (or
  commit) voids them, and the gate counts only approvals given for the digest being deployed;
- a rejection blocks the release (in every environment) until the user who made it withdraws it.

Use cases take the acting user as already authenticated (``identity.authenticate`` at the boundary: the CLI, the
deploy gate); ``check_deploy`` and the other gate functions only read.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from releasegate.durations import format_duration
from releasegate.errors import UserError
from releasegate.governance.identity import authenticate
from releasegate.governance.policy import Environment, Policy, Stage
from releasegate.spec.errors import did_you_mean
from releasegate.store.audit import append_entry
from releasegate.store.governance import GovernanceStore, Release, Signoff

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_DIGEST = re.compile(r"^(?:sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})$")
_COMMIT = re.compile(r"^[0-9a-f]{7,64}$")


@dataclass(frozen=True)
class GateResult:
    """``allowed`` when nothing is ``missing``; ``missing`` names every problem at once, in a fixed order."""

    allowed: bool
    missing: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StageStatus:
    """One stage of one environment: the approvals that count, and those that do not with the reason why."""

    role: str
    needed: int
    checklist: list[str]
    counted: list[Signoff]
    missing_checklist: list[str]
    ignored: list[tuple[Signoff, str]]

    @property
    def complete(self) -> bool:
        return len(self.counted) >= self.needed and not self.missing_checklist


@dataclass(frozen=True)
class ReleaseStatus:
    """What ``releasegate approvals`` shows: every stage, the rejections, voided sign-offs and the gate."""

    service: str
    version: str
    env: str
    release: Release | None
    stages: list[StageStatus]
    rejections: list[Signoff]
    voided: list[Signoff]
    gate: GateResult


@dataclass(frozen=True)
class ReleaseChange:
    """What ``new_release`` did: created it, changed its artifact (voiding approvals), or nothing."""

    release: Release
    created: bool
    voided: list[Signoff]
    changed: bool = False


def parse_release(text: str) -> tuple[str, str]:
    """``shop@1.4.2`` -> ``("shop", "1.4.2")``."""
    service, at, version = text.partition("@")
    if not at or not _NAME.match(service) or not _VERSION.match(version):
        raise UserError(f"release {text!r}: write it as SERVICE@VERSION, e.g. shop@1.4.2")
    return service, version


def _now(now: float | None) -> float:
    return time.time() if now is None else now


@contextmanager
def _audited(state_dir: Path, actor: str, action: str, service: str, version: str,
             at: float) -> Iterator[GovernanceStore]:
    """Record a refused request in the audit log: the use case's own transaction rolled back, so log after it."""
    store = GovernanceStore(state_dir)
    try:
        yield store
    except UserError as exc:
        release = store.release(service, version)
        with store.tx() as db:
            append_entry(db, actor, f"{action}.refused", release=f"{service}@{version}",
                         commit=release.commit if release else None, decision=str(exc), at=at)
        raise
    finally:
        store.close()


def _registered(store: GovernanceStore, service: str, version: str) -> Release:
    release = store.release(service, version)
    if release is None:
        raise UserError(f"{service}@{version} is not registered; `releasegate release new {service} {version} "
                        "--as AUTHOR` first")
    return release


def _signer(policy: Policy, store: GovernanceStore, service: str, version: str, env: str, stage: str,
            user: str) -> tuple[Stage, Release]:
    """The stage and the release, once ``user`` is known to hold the stage's role: the rules common to sign-offs."""
    problem = policy.user_problem(user)
    if problem:
        raise UserError(problem)
    st = policy.stage(env, stage)
    release = _registered(store, service, version)
    if st.role not in policy.roles_of(user):
        held = ", ".join(policy.roles_of(user)) or "no role"
        raise UserError(f"--stage {st.role}: {user} cannot sign it: the stage needs role {st.role} and {user} holds "
                        f"{held} in {policy.source}; holders of {st.role}: {', '.join(policy.holders(st.role))}")
    return st, release


def _check_checklist(stage: Stage, env: str, checks: Sequence[str]) -> tuple[str, ...]:
    for item in checks:
        if item not in stage.checklist:
            hint = did_you_mean(item, stage.checklist)
            raise UserError(f"--check {item!r}: stage {stage.role} of {env} has no such checklist item"
                            + (f" (did you mean {hint!r}?)" if hint else "")
                            + f"; its items: {', '.join(map(repr, stage.checklist)) or 'none'}")
    missing = [item for item in stage.checklist if item not in checks]
    if missing:
        raise UserError(f"stage {stage.role} of {env}: every checklist item must be ticked; not ticked: "
                        f"{', '.join(map(repr, missing))} (add --check 'ITEM' for each once it is true)")
    return tuple(item for item in stage.checklist if item in checks)


# --- use cases -----------------------------------------------------------------------------------------------


def new_release(state_dir: Path, service: str, version: str, author: str, digest: str | None = None,
                commit: str | None = None, *, breaking_migration: bool | None = None,
                now: float | None = None, commit_at: float | None = None) -> ReleaseChange:
    """Register ``SERVICE@VERSION``; again with another digest or commit, change its artifact and void approvals.

    A digest, commit or ``breaking_migration`` left out (None) on a later call keeps the registered one. Allowing a
    breaking migration voids the approvals too: they were given for a release that could be rolled back safely.
    Only the author re-registers: the author rule depends on who that is. ``commit_at``: when ``commit`` was made
    (``release cut`` knows it), the start of the DORA lead time; a changed commit without it forgets the old time.
    """
    at = _now(now)
    name = f"{service}@{version}"
    if not _NAME.match(service) or not _VERSION.match(version):
        raise UserError(f"release new {service} {version}: service and version are letters, digits, '.', '_', '-' "
                        "(and '+' in versions), e.g. shop 1.4.2")
    if digest is not None and not _DIGEST.match(digest):
        raise UserError(f"--digest {digest}: write the artifact digest as sha256:<64 lowercase hex digits>")
    if commit is not None and not _COMMIT.match(commit):
        raise UserError(f"--commit {commit}: write the commit as its hexadecimal SHA (at least 7 digits)")
    with _audited(state_dir, author, "release", service, version, at) as store, store.tx() as db:
        old = store.release(service, version)
        if old is None:
            release = Release(service, version, author, digest, commit, at, at, bool(breaking_migration),
                              commit_at if commit is not None else None)
            store.put_release(release)
            append_entry(db, author, "release.new", release=name, commit=commit, decision="registered",
                         evidence={"digest": digest, "commit": commit,
                                   "breaking_migration": release.breaking_migration}, at=at)
            return ReleaseChange(release, True, [])
        if old.author != author:
            raise UserError(f"{name} was registered by {old.author}; only {old.author} can register it again")
        breaking = old.breaking_migration if breaking_migration is None else breaking_migration
        kept_at = old.commit_at if commit in (None, old.commit) else None
        release = Release(service, version, author, digest or old.digest, commit or old.commit, old.created_at, at,
                          breaking, commit_at if commit is not None and commit_at is not None else kept_at)
        if (release.digest, release.commit, release.breaking_migration) == (old.digest, old.commit,
                                                                            old.breaking_migration):
            if release.commit_at != old.commit_at:  # the same artifact, its commit time learnt now
                store.put_release(replace(old, commit_at=release.commit_at))
            return ReleaseChange(old, False, [])
        reasons = []
        if (release.digest, release.commit) != (old.digest, old.commit):
            reasons.append(f"artifact changed: digest {old.digest or 'none'} -> {release.digest or 'none'}, commit "
                           f"{old.commit or 'none'} -> {release.commit or 'none'}")
        if breaking and not old.breaking_migration:
            reasons.append("breaking migration allowed: earlier approvals did not cover it")
        voided = store.signoffs(service, version, "approval") if reasons else []
        reason = "; ".join(reasons) or "breaking migration no longer allowed"
        store.void([s.id for s in voided], at, reason)
        store.put_release(release)
        append_entry(db, author, "release.changed", release=name, commit=release.commit,
                     decision=f"{reason}; {len(voided)} approval(s) void",
                     evidence={"old_digest": old.digest, "digest": release.digest, "old_commit": old.commit,
                               "commit": release.commit, "breaking_migration": release.breaking_migration,
                               "voided": [[s.stage, s.env, s.user] for s in voided]}, at=at)
        return ReleaseChange(release, False, voided, changed=True)


def approve(state_dir: Path, policy: Policy, service: str, version: str, stage: str, user: str,
            checks: Sequence[str] = (), env: str = "prod", *, now: float | None = None) -> Signoff:
    """Sign ``stage`` of ``env`` for the release's current artifact, or refuse with the rule that forbids it."""
    at = _now(now)
    name = f"{service}@{version}"
    with _audited(state_dir, user, "approval", service, version, at) as store, store.tx() as db:
        st, release = _signer(policy, store, service, version, env, stage, user)
        if user == release.author and st.role != policy.author_role:
            signs = (f"signs no stage but {policy.author_role}" if policy.author_role is not None else
                     f"signs no stage ({policy.source} sets author_role: null)")
            raise UserError(f"--stage {st.role}: {user} is the author of {name} and {signs}; ask another holder "
                            f"of {st.role}")
        for mine in store.signoffs(service, version):
            if mine.user != user:
                continue
            if mine.kind == "rejection":
                raise UserError(f"{user} rejected {name} at stage {mine.stage}; withdraw the rejection first "
                                f"(`releasegate withdraw {name} --as {user}`)")
            if mine.stage == st.role and mine.env == env:
                raise UserError(f"{user} already approved stage {st.role} of {name} for {env}")
            if mine.stage != st.role:
                raise UserError(f"--stage {st.role}: {user} already signed {name} as {mine.stage} ({mine.env}); "
                                "a user counts once per release, however many roles they hold")
        ticked = _check_checklist(st, env, checks)
        signoff = store.add_signoff(release, env, st.role, user, "approval", at, ticked)
        status = _stage_status(policy, release, env, st, store.signoffs(service, version))
        append_entry(db, user, "approval.given", release=name, commit=release.commit,
                     decision=f"stage {st.role} of {env}: {len(status.counted)} of {st.approvals} approvals",
                     evidence={"env": env, "stage": st.role, "checks": list(ticked), "digest": release.digest,
                               "policy": policy.source}, at=at)
    return signoff


def reject(state_dir: Path, policy: Policy, service: str, version: str, stage: str, user: str, reason: str,
           env: str = "prod", *, now: float | None = None) -> Signoff:
    """Block the release in every environment until ``user`` withdraws; ``user``'s own approvals are void."""
    at = _now(now)
    name = f"{service}@{version}"
    with _audited(state_dir, user, "rejection", service, version, at) as store, store.tx() as db:
        st, release = _signer(policy, store, service, version, env, stage, user)
        if not reason.strip():
            raise UserError(f"reject {name}: --reason TEXT must say what has to change")
        mine = [s for s in store.signoffs(service, version) if s.user == user]
        if any(s.kind == "rejection" for s in mine):
            raise UserError(f"{user} has already rejected {name}; `releasegate withdraw {name} --as {user}` first "
                            "to reject it again")
        store.void([s.id for s in mine], at, f"superseded by {user}'s rejection")
        signoff = store.add_signoff(release, env, st.role, user, "rejection", at, reason=reason.strip())
        append_entry(db, user, "rejection.given", release=name, commit=release.commit,
                     decision=f"blocks {name} until {user} withdraws it: {reason.strip()}",
                     evidence={"env": env, "stage": st.role, "digest": release.digest,
                               "voided_approvals": len(mine)}, at=at)
    return signoff


def withdraw(state_dir: Path, service: str, version: str, user: str, *, now: float | None = None) -> list[Signoff]:
    """Withdraw ``user``'s rejection of the release; only the user who rejected can."""
    at = _now(now)
    name = f"{service}@{version}"
    with _audited(state_dir, user, "withdrawal", service, version, at) as store, store.tx() as db:
        release = _registered(store, service, version)
        rejections = store.signoffs(service, version, "rejection")
        mine = [s for s in rejections if s.user == user]
        if not mine:
            others = sorted({s.user for s in rejections})
            raise UserError(f"{user} has no rejection of {name} to withdraw" + (
                f"; only the user who rejected can withdraw: {', '.join(others)}" if others else ""))
        store.void([s.id for s in mine], at, f"withdrawn by {user}")
        append_entry(db, user, "rejection.withdrawn", release=name, commit=release.commit,
                     decision=f"{user} withdrew the rejection at stage {mine[0].stage}",
                     evidence={"stages": [s.stage for s in mine]}, at=at)
    return mine


# --- the gate ------------------------------------------------------------------------------------------------


def _stage_status(policy: Policy, release: Release | None, env: str, stage: Stage,
                  signoffs: Sequence[Signoff]) -> StageStatus:
    """Approvals are judged again against the policy of today: a user who lost the role no longer counts."""
    valid: list[Signoff] = []
    ignored: list[tuple[Signoff, str]] = []
    for s in signoffs:
        if s.kind != "approval" or not s.active or s.env != env or s.stage != stage.role:
            continue
        if release is None or s.digest != release.digest:
            ignored.append((s, "given for another artifact"))
        elif stage.role not in policy.roles_of(s.user):
            ignored.append((s, f"{s.user} does not hold role {stage.role}"))
        elif s.user == release.author and stage.role != policy.author_role:
            ignored.append((s, f"{s.user} is the author"))
        else:
            valid.append(s)
    counted = [s for s in valid if set(stage.checklist) <= set(s.checks)]
    ignored += [(s, "checklist incomplete") for s in valid if s not in counted]
    missing = [item for item in stage.checklist if not any(item in s.checks for s in valid)]
    return StageStatus(stage.role, stage.approvals, list(stage.checklist), counted, missing, ignored)


def _gate(environment: Environment, service: str, version: str, release: Release | None, signoffs: Sequence[Signoff],
          stages: Sequence[StageStatus], required_at: float | None, now: float, digest: str | None) -> list[str]:
    """Every reason to refuse, in the order a release manager works through them."""
    missing: list[str] = []
    name = f"{service}@{version}"
    if release is None and environment.stages:
        missing.append(f"release {name} is not registered: `releasegate release new {service} {version} --as "
                       "AUTHOR`, then its approvals")
    if release is not None and digest is not None and digest != release.digest:
        missing.append(f"artifact: {digest} is not the artifact {name} was approved for "
                       f"({release.digest or 'no digest registered'}); register it with `releasegate release new "
                       f"{service} {version} --as {release.author} --digest {digest}` and approve it again")
    for st in stages:
        if len(st.counted) < st.needed:
            who = f" ({', '.join(s.user for s in st.counted)})" if st.counted else ""
            missing.append(f"stage {st.role}: {len(st.counted)} of {st.needed} approvals{who}")
        missing += [f"stage {st.role}: checklist item {item!r} not ticked" for item in st.missing_checklist]
    missing += [f"rejected by {s.user} at stage {s.stage}: {s.reason}" for s in signoffs
                if s.kind == "rejection" and s.active]
    required = environment.requires
    if required is not None:
        if required_at is None:
            missing.append(f"requires {required}: {service} {version} has not succeeded in {required}")
        elif now - required_at < environment.soak:
            ago = format_duration(max(0, int(now - required_at)))
            missing.append(f"soak: {service} {version} succeeded in {required} {ago} ago, needs "
                           f"{format_duration(environment.soak)}")
    return missing


def release_status(state_dir: Path, policy: Policy, service: str, version: str, env: str = "prod",
                   now: float | None = None, digest: str | None = None) -> ReleaseStatus:
    """Everything about the release's sign-off for ``env``: what ``approvals`` prints and the gate decides on."""
    at = _now(now)
    environment = policy.environment(env)
    with GovernanceStore(state_dir, readonly=True) as store:
        release = store.release(service, version)
        every = store.signoffs(service, version, active_only=False)
        required_at = store.env_success(service, version, environment.requires) if environment.requires else None
    signoffs = [s for s in every if s.active]
    stages = [_stage_status(policy, release, env, st, signoffs) for st in environment.stages]
    missing = _gate(environment, service, version, release, signoffs, stages, required_at, at, digest)
    return ReleaseStatus(service, version, env, release, stages,
                         [s for s in signoffs if s.kind == "rejection"],
                         [s for s in every if not s.active and s.kind == "approval"], GateResult(not missing, missing))


def check_deploy(state_dir: Path, policy: Policy, service: str, version: str, env: str, now: float,
                 digest: str | None = None) -> GateResult:
    """May ``SERVICE@VERSION`` be deployed to ``env`` at ``now``? Only reads; the caller records the decision."""
    return release_status(state_dir, policy, service, version, env, now, digest).gate


def record_env_success(state_dir: Path, service: str, version: str, env: str, at: float) -> None:
    """The version was promoted in ``env`` at ``at``; a later success restarts the soak (the cautious reading)."""
    with GovernanceStore(state_dir) as store, store.tx():
        store.set_env_success(service, version, env, at)


def env_success(state_dir: Path, service: str, version: str, env: str) -> float | None:
    with GovernanceStore(state_dir, readonly=True) as store:
        return store.env_success(service, version, env)


def has_approval(state_dir: Path, service: str, version: str, role: str) -> bool:
    """Whether a stage ``role`` approval stands on the release's current artifact, in any environment."""
    with GovernanceStore(state_dir, readonly=True) as store:
        release = store.release(service, version)
        return release is not None and any(
            s.stage == role and s.digest == release.digest for s in store.signoffs(service, version, "approval"))


def require_role(state_dir: Path, policy: Policy, user: str, token: str | None, role: str, *,
                 release: str | None = None, now: float | None = None) -> None:
    """Authenticate ``user`` and require ``role``; refusals go to the audit log."""
    authenticate(state_dir, policy, user, token, action=f"act as {role}", release=release, now=now)
    if role in policy.roles_of(user):
        return
    problem = (f"--as {user}: this needs role {role}, and {user} holds {', '.join(policy.roles_of(user)) or 'none'} "
               f"in {policy.source}; holders of {role}: {', '.join(policy.holders(role)) or 'nobody'}")
    with GovernanceStore(state_dir) as store, store.tx() as db:
        append_entry(db, user, "role.refused", release=release, decision=problem, at=_now(now))
    raise UserError(problem)


__all__ = ["GateResult", "ReleaseChange", "ReleaseStatus", "StageStatus", "approve", "check_deploy",
           "env_success", "has_approval", "new_release", "parse_release", "record_env_success", "reject",
           "release_status", "require_role", "withdraw"]
