"""A multi-service release's state machine, pure: from the members' states, their tiers and the switch mode,
decide what the group does next (docs/multi-service.md).

The I/O (releasegate/group_service.py) loops: apply operator commands, fold each member's rollout as the store
shows it (``observe``), take the next actions (``next_actions``), mark each one in the state (``mark``) and
persist before performing it. Every action is idempotent (starting a member whose rollout exists resumes it; a
command sent twice is answered the same), so a group killed anywhere is finished by ``resume``.

Members move: pending -> running -> [held -> switching] -> switched -> promoted, or end rolled_back / aborted /
failed (their own rollout gave up), skipped (never started), reverted (the group took them back).
What a member's failure does is its tier's: critical -> the whole group reverts (lockstep), important -> the group
pauses for an operator (promote goes on without it, rollback reverts all), supporting -> only it is back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from releasegate.engine.state import Decision

Tier = Literal["critical", "important", "supporting"]
MemberStatus = Literal["pending", "running", "held", "switching", "switched", "promoted", "rolled_back", "aborted",
                       "failed", "skipped", "reverted"]
GroupStatus = Literal["running", "promoted", "partial", "rolled_back", "aborted"]
FAILED = ("rolled_back", "aborted", "failed")
ENDED = (*FAILED, "promoted", "skipped", "reverted")
UP = ("switched", "promoted")  # the new version serves 100 %
LIVE = ("running", "held", "switching", "switched")  # its rollout is in progress


class Member(BaseModel):
    service: str
    spec_path: str
    tier: Tier
    depends_on: list[str] = Field(default_factory=list)
    version: str
    previous: str | None = None
    rollout_id: str
    status: MemberStatus = "pending"
    reason: str | None = None
    told: str | None = None  # the last action the group took on it: start, release, revert, switch_back
    excluded: bool = False  # failed, and the operator went on without it
    # What admission decided for it (governance), so a member started later is judged as when the group began.
    change: str | None = None


class GroupState(BaseModel):
    id: str
    release: str
    switch: Literal["together", "ordered"]
    release_path: str
    members: list[Member]
    status: GroupStatus = "running"
    reverting: GroupStatus | None = None  # rolled_back or aborted once the group goes back
    paused: str | None = None
    reason: str | None = None
    trigger: str | None = None  # what made the group go back, in a few words (shown with each member taken back)
    env: str = "prod"
    actor: str = "cli"
    emergency: bool = False
    created_at: float
    updated_at: float
    finished_at: float | None = None

    @property
    def active(self) -> bool:
        return self.status == "running"

    def member(self, service: str) -> Member:
        return next(m for m in self.members if m.service == service)


@dataclass(frozen=True)
class Report:
    """A member's rollout as the store shows it (None fields: no rollout recorded yet)."""

    service: str
    active: bool
    phase: str
    weight: int
    status: str
    reason: str | None


@dataclass(frozen=True)
class GroupAction:
    """start: create (or resume) the member's rollout; release: end its hold (promote); revert: roll its rollout
    back (rollback command); switch_back: its rollout is over, send traffic back to the kept previous version;
    finish: the group is over."""

    kind: Literal["start", "release", "revert", "switch_back", "finish"]
    service: str = ""


Applied = tuple[GroupState, list[Decision]]


def _set(gs: GroupState, service: str, now: float, **changes: object) -> GroupState:
    members = [m.model_copy(update=changes) if m.service == service else m for m in gs.members]
    return gs.model_copy(update={"members": members, "updated_at": now})


def observe(gs: GroupState, r: Report, now: float) -> Applied:
    """Fold one member's rollout into the group; a member's failure is decided by its tier."""
    m = gs.member(r.service)
    if m.status in ENDED:
        return gs, []
    if r.active:
        status: MemberStatus = ("held" if r.phase == "held" else "switched" if r.weight >= 100 else
                                "switching" if m.status in ("held", "switching") else "running")
        return (_set(gs, m.service, now, status=status), []) if status != m.status else (gs, [])
    if r.status == "promoted":
        return _set(gs, m.service, now, status="promoted", reason=r.reason), [
            Decision("member_promoted", f"{m.service} {m.version} promoted", {"service": m.service})]
    failed: MemberStatus = "aborted" if r.status == "aborted" else "failed" if r.status == "failed" else "rolled_back"
    return failed_member(gs, m.service, failed, r.reason or r.status, now)


def failed_member(gs: GroupState, service: str, status: MemberStatus, reason: str, now: float) -> Applied:
    """A member ended without its new version (its own rollout rolled back, or it could not start)."""
    m = gs.member(service)
    if gs.reverting is not None:  # the group is going back anyway: this member is back
        if m.told == "revert":
            return _set(gs, service, now, status="reverted",
                        reason=f"back on {m.previous or 'nothing'}: {gs.trigger}"), []
        return _set(gs, service, now, status=status, reason=reason), []
    gs = _set(gs, service, now, status=status, reason=reason)
    said = f"{m.tier} member {service} {m.version} {status.replace('_', ' ')}: {reason}"
    if m.tier == "critical":
        return revert(gs, f"critical member {service} failed ({reason}): the group goes back to its previous "
                          "versions", "rolled_back", now, f"critical member {service} failed"), [
            Decision("group_rollback", said, {"service": service})]
    if m.tier == "important":
        why = (f"paused: important member {service} failed ({reason}); `releasegate promote {gs.release}` goes "
               f"on without it, `releasegate rollback {gs.release}` takes every member back")
        return gs.model_copy(update={"paused": why}), [Decision("group_paused", said, {"service": service})]
    return gs, [Decision("member_rolled_back", f"{said}; the others go on", {"service": service})]


def revert(gs: GroupState, reason: str, outcome: GroupStatus, now: float, trigger: str) -> GroupState:
    """Every member goes back to its previous version; members never started are skipped."""
    members = [m.model_copy(update={"status": "skipped", "reason": f"not started: {trigger}"})
               if m.status == "pending" and m.told is None else m for m in gs.members]
    return gs.model_copy(update={"members": members, "reverting": outcome, "paused": None, "reason": reason,
                                 "trigger": trigger, "updated_at": now})


def command(gs: GroupState, kind: str, actor: str, now: float) -> tuple[GroupState, str | None]:
    """promote: while paused, go on without the failed member(s); rollback/abort: every member back."""
    if not gs.active:
        return gs, f"release {gs.release} group {gs.id} has already finished ({gs.status})"
    if kind == "promote":
        if gs.paused is None:
            return gs, f"{gs.release} is not paused; promote goes on after an important member's failure"
        members = [m.model_copy(update={"excluded": True}) if m.status in FAILED else m for m in gs.members]
        return gs.model_copy(update={"members": members, "paused": None, "updated_at": now}), None
    if kind in ("rollback", "abort"):
        if gs.reverting is not None:
            return gs, None
        outcome: GroupStatus = "aborted" if kind == "abort" else "rolled_back"
        said = f"{'aborted' if kind == 'abort' else 'rolled back'} by {actor}"
        return revert(gs, said, outcome, now, said), None
    return gs, f"unknown command {kind!r}"


def _out(m: Member) -> bool:
    """A member the others no longer wait for: a supporting member that failed, or one the operator let go."""
    return m.status in FAILED and (m.tier == "supporting" or m.excluded)


def _deps_ready(gs: GroupState, m: Member, ready: tuple[str, ...]) -> bool:
    return all(gs.member(d).status in ready or _out(gs.member(d)) for d in m.depends_on)


def next_actions(gs: GroupState) -> list[GroupAction]:
    """What to do now, from the members' states alone (deterministic)."""
    if not gs.active:
        return []
    if gs.reverting is not None:
        acts = [GroupAction("revert", m.service) for m in gs.members if m.status in LIVE and m.told != "revert"]
        acts += [GroupAction("switch_back", m.service) for m in gs.members
                 if m.status == "promoted" and m.told != "switch_back"]
        if all(m.status in (*FAILED, "skipped", "reverted") for m in gs.members):
            acts.append(GroupAction("finish"))
        return acts
    if gs.paused is not None:
        return []
    acts = [GroupAction("start", m.service) for m in gs.members if m.status == "pending" and m.told is None
            and (gs.switch == "together" or _deps_ready(gs, m, ("promoted",)))]
    if gs.switch == "together":
        live = [m for m in gs.members if not _out(m)]
        if live and all(m.status in ("held", "switching", *UP) for m in live):
            acts += [GroupAction("release", m.service) for m in live
                     if m.status == "held" and m.told != "release" and _deps_ready(gs, m, UP)]
    if all(m.status in ENDED for m in gs.members):
        acts.append(GroupAction("finish"))
    return acts


def switched_back(gs: GroupState, service: str, error: str | None, now: float) -> Applied:
    """A promoted member was sent back to its kept previous version (or could not be: it stays, with why)."""
    m = gs.member(service)
    if error is None:
        said = f"{service} back on {m.previous or 'nothing'}"
        return _set(gs, service, now, status="reverted",
                    reason=f"back on {m.previous or 'nothing'}: {gs.trigger}"), [
            Decision("member_reverted", said, {"service": service})]
    said = f"{service} could not be switched back, {m.version} still serves: {error}"
    return _set(gs, service, now, status="failed", reason=said), [Decision("member_stuck", said, {"service": service})]


def mark(gs: GroupState, action: GroupAction, now: float) -> GroupState:
    """Record an action before it is performed (what a resumed group performs again if it was cut short)."""
    if action.kind == "finish":
        return finish(gs, now)
    return _set(gs, action.service, now, told=action.kind)


def finish(gs: GroupState, now: float) -> GroupState:
    if gs.reverting is not None:
        status: GroupStatus = gs.reverting
        reason = gs.reason or "the group went back"
    elif all(m.status == "promoted" for m in gs.members):
        status, reason = "promoted", f"every member promoted ({len(gs.members)})"
    else:
        back = [m.service for m in gs.members if m.status != "promoted"]
        status, reason = "partial", f"promoted without {', '.join(back)} (back on their previous version)"
    return gs.model_copy(update={"status": status, "reason": reason, "finished_at": now, "updated_at": now})


def waves(members: list[Member]) -> list[list[str]]:
    """The members in depends_on order: each wave needs only members of the waves before it (for `plan`)."""
    done: set[str] = set()
    out: list[list[str]] = []
    left = list(members)
    while left:
        wave = [m.service for m in left if set(m.depends_on) <= done]
        if not wave:  # a cycle: the release file's loader refuses those
            raise ValueError("depends_on cycle")
        out.append(wave)
        done |= set(wave)
        left = [m for m in left if m.service not in done]
    return out
