"""Multi-service releases, the I/O side: admit every member, then drive the group's state machine
(engine/group.py) over the members' own rollouts, each an asyncio task through the service layer.

Every member is admitted (spec, preflight, policy, calendar, no rollout in progress) before anything starts, so one
refusal starts nothing. The group's state is saved before each action is performed, and every action can be
performed again (a member's rollout is created under the id the group chose, then resumed; commands are answered
the same when sent twice), so ``resume RELEASE`` after a SIGKILL finishes the group.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from releasegate import service
from releasegate.engine import group
from releasegate.engine.group import GroupAction, GroupState, Member, Report
from releasegate.engine.state import Decision, RolloutState
from releasegate.errors import UserError
from releasegate.governance.gate import Admission, DeployRequest
from releasegate.notifications import build_notifications
from releasegate.spec import load_spec
from releasegate.spec.release import LoadedRelease, load_release, member_versions
from releasegate.store.audit import AuditLog
from releasegate.store.db import has_store
from releasegate.store.groups import GroupStore
from releasegate.store.sqlite import Store, owner_alive, this_owner
from releasegate.switch_back import rollback_finished

if TYPE_CHECKING:
    from releasegate.controller import ProgressHook

Say = Callable[[str], None]
"""Where the group's and its members' progress lines go (the terminal, or nowhere)."""

_QUIET = {"analysis", "waiting", "retry", "command", "reconciled"}


async def deploy(ctx: service.Context, path: Path, versions: list[str], request: DeployRequest | None = None,
                 say: Say | None = None) -> GroupState:
    """Admit every member, record the group, and drive it to its end."""
    release = load_release(path)
    wanted = member_versions(release, versions)
    request = request or DeployRequest()
    gstore, store = GroupStore(ctx.state_dir), ctx.store()
    try:
        gstore.ensure_no_active(release.release)
        admitted = await _admit_all(ctx, store, release, wanted, request)
        now = ctx.clock.now()
        gid = f"{release.release}-{uuid.uuid4().hex[:6]}"
        first = next(iter(admitted.values())).admission
        members = [Member(service=m.service, spec_path=str(m.spec_path.resolve()), tier=m.tier,
                          depends_on=list(m.depends_on), version=wanted[m.service],
                          previous=admitted[m.service].previous,
                          rollout_id=f"{m.service}-{wanted[m.service]}-{uuid.uuid4().hex[:6]}",
                          change=admitted[m.service].admission.change) for m in release.members]
        gs = GroupState(id=gid, release=release.release, switch=release.switch, release_path=str(path.resolve()),
                        members=members, env=first.env, actor=first.actor, emergency=first.emergency,
                        created_at=now, updated_at=now)
        gstore.create(gs, this_owner())
        said = (f"release {release.release}: {len(members)} member(s), switch {release.switch}: " +
                ", ".join(f"{m.service} {m.previous or '-'} -> {m.version} ({m.tier})" for m in members))
        gstore.save(gs, [("created", said, {"actor": ctx.actor, "file": str(path)})])
        _say(say, said)
        return await _drive(ctx, store, gstore, gs, admitted, say)
    finally:
        store.close()
        gstore.close()


async def _admit_all(ctx: service.Context, store: Store, release: LoadedRelease, wanted: dict[str, str],
                     request: DeployRequest) -> dict[str, service.Admitted]:
    out = {}
    for m in release.members:
        try:
            out[m.service] = await service.admit_deploy(ctx, store, m.spec_path, wanted[m.service], request, m.spec)
        except UserError as exc:
            why = "; ".join(line.strip(" -") for line in str(exc).splitlines() if line.strip())
            said = f"member {m.service} ({m.spec_path.name}): {why}; nothing was started"
            if out:  # members admitted before this one are audited as such: the trail says none of them started
                AuditLog(ctx.state_dir).append(request.actor or ctx.actor, "group.refused", release=release.release,
                                               decision=said, evidence={"admitted": sorted(out)}, at=ctx.clock.now())
            raise UserError(f"{release.path}: {said}") from None
    return out


async def resume(ctx: service.Context, release: str, say: Say | None = None) -> GroupState:
    gstore, store = GroupStore(ctx.state_dir), ctx.store()
    try:
        found = gstore.active(release)
        if found is None:
            raise UserError(f"{release}: no release group in progress to resume (see `releasegate history "
                            f"{release}`)")
        gs = found[0]
        gstore.claim(gs, this_owner())
        gstore.save(gs, [("resumed", f"resumed by pid {this_owner()['pid']}", {})])
        _say(say, f"resuming release {release} (group {gs.id})")
        return await _drive(ctx, store, gstore, gs, {}, say)
    finally:
        store.close()
        gstore.close()


def _say(say: Say | None, line: str) -> None:
    if say is not None:
        say(line)


def _readmitted(ctx: service.Context, gs: GroupState, m: Member) -> service.Admitted:
    """A member started by a resumed group: admitted when the group was, with what that admission decided."""
    spec = load_spec(m.spec_path)
    admission = Admission(change=m.change or "major", env=gs.env, actor=gs.actor, emergency=gs.emergency)
    return service.Admitted(spec, Path(m.spec_path), m.version, m.previous, admission, DeployRequest(env=gs.env),
                            build_notifications(spec, ctx.state_dir))


class _Driver:
    """One process driving one group: member tasks, the actions performed in this process, the printer."""

    def __init__(self, ctx: service.Context, store: Store, gstore: GroupStore,
                 admitted: dict[str, service.Admitted], say: Say | None) -> None:
        self.ctx, self.store, self.gstore, self.admitted, self.say = ctx, store, gstore, admitted, say
        self.tasks: dict[str, asyncio.Task[RolloutState]] = {}
        self.done: set[tuple[str, str]] = set()  # (service, action) performed by this process
        self.owner = this_owner()

    def progress(self, svc: str) -> ProgressHook:
        def hook(st: RolloutState, decisions: list[Decision]) -> None:
            for d in decisions:
                if d.kind not in _QUIET:
                    _say(self.say, f"  {svc}: {d.message}")
        return hook

    async def run_member(self, gs: GroupState, m: Member) -> RolloutState:
        member_store = self.ctx.store()
        try:
            rec = member_store.rollout(m.rollout_id)
            if rec is not None:  # created by an earlier process: go on with it where it is
                if not rec.state.active:
                    return rec.state
                return await service.resume(self.ctx, m.service, on_progress=self.progress(m.service))
            a = self.admitted.get(m.service) or _readmitted(self.ctx, gs, m)
            return await service.start_admitted(self.ctx, member_store, a, self.progress(m.service),
                                                rollout_id=m.rollout_id, hold=gs.switch == "together")
        finally:
            member_store.close()

    def report(self, gs: GroupState, m: Member) -> tuple[GroupState, list[Decision]]:
        """Fold what the store shows of the member's rollout, or its task's failure to start it."""
        rec = self.store.rollout(m.rollout_id)
        task = self.tasks.get(m.service)
        if rec is None:
            if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                why = str(exc).splitlines()[0] if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
                return group.failed_member(gs, m.service, "failed", why, self.ctx.clock.now())
            return gs, []
        st = rec.state
        if st.active and task is not None and task.done() and not task.cancelled() and task.exception():
            exc = task.exception()
            return group.failed_member(gs, m.service, "failed", f"its controller stopped: {exc}",
                                       self.ctx.clock.now())
        return group.observe(gs, Report(m.service, st.active, st.phase, st.weight, st.status, st.reason),
                             self.ctx.clock.now())

    async def perform(self, gs: GroupState, a: GroupAction) -> tuple[GroupState, list[Decision]]:
        m = gs.member(a.service)
        self.done.add((a.service, a.kind))
        if a.kind == "start":
            if m.service in self.tasks:
                return gs, []
            self.tasks[m.service] = asyncio.create_task(self.run_member(gs, m))
        elif a.kind in ("release", "revert"):
            rec = self.store.rollout(m.rollout_id)
            if rec is not None and rec.state.active:
                self.store.add_command(m.service, m.rollout_id, "promote" if a.kind == "release" else "rollback",
                                       f"release {gs.release}", self.ctx.clock.now())
        elif a.kind == "switch_back":
            current = self.store.service(m.service)
            error = None
            if current is None or current.current != m.previous:
                try:
                    res = await rollback_finished(self.ctx, self.store, m.service)
                    _say(self.say, f"  {m.service}: {res.message}")
                except UserError as exc:
                    error = str(exc)
            return group.switched_back(gs, m.service, error, self.ctx.clock.now())
        return gs, []

    def apply_commands(self, gs: GroupState) -> GroupState:
        for cmd in self.gstore.pending_commands(gs.id):
            gs, error = group.command(gs, cmd.kind, cmd.actor, self.ctx.clock.now())
            said = f"{cmd.kind} by {cmd.actor}" + (f" refused: {error}" if error else "")
            self.gstore.save(gs, [("command", said, {"command": cmd.kind, "actor": cmd.actor})], answer=(cmd, error))
            AuditLog(self.ctx.state_dir).append(cmd.actor, f"group.{cmd.kind}", release=gs.release, decision=said,
                                                evidence={"group": gs.id}, at=self.ctx.clock.now())
            _say(self.say, said)
        return gs

    def unfinished(self, gs: GroupState) -> list[GroupAction]:
        """What an earlier process marked and may not have done: each member's controller runs again, a command
        it may not have sent is sent (again), once per process."""
        acts = []
        for m in gs.members:
            if m.told == "switch_back" and m.status == "promoted" and (m.service, m.told) not in self.done:
                acts.append(GroupAction("switch_back", m.service))  # it checks what the router serves first
            if m.told is None or m.status in group.ENDED:
                continue
            if m.service not in self.tasks:
                acts.append(GroupAction("start", m.service))
            # A release only while the member still holds: a second promote in its watch would end the watch.
            if ((m.told == "release" and m.status == "held") or m.told == "revert") and \
                    (m.service, m.told) not in self.done:
                acts.append(GroupAction(m.told, m.service))  # type: ignore[arg-type]
        return acts


async def _drive(ctx: service.Context, store: Store, gstore: GroupStore, gs: GroupState,
                 admitted: dict[str, service.Admitted], say: Say | None) -> GroupState:
    d = _Driver(ctx, store, gstore, admitted, say)
    seen = gs
    try:
        while True:
            gs = d.apply_commands(gs)
            said: list[Decision] = []
            for m in gs.members:
                if m.told is not None and m.status not in group.ENDED:
                    gs, more = d.report(gs, gs.member(m.service))
                    said += more
            todo = d.unfinished(gs)
            for a in group.next_actions(gs):
                gs = group.mark(gs, a, ctx.clock.now())  # written before it is acted on
                gstore.save(gs, [(x.kind, x.message, x.data) for x in said] +
                            [("intent", f"{a.kind} {a.service}".strip(), {})], owner=d.owner)
                for x in said:
                    _say(say, x.message)
                said = []
                if a.kind == "finish":
                    _say(say, f"release {gs.release} {gs.status.replace('_', ' ')}: {gs.reason}")
                    await _join(d)
                    return gs
                todo.append(a)
            for a in todo:
                gs, more = await d.perform(gs, a)
                said += more
            if said or gs != seen:
                gstore.save(gs, [(x.kind, x.message, x.data) for x in said], owner=d.owner)
                seen = gs
                for x in said:
                    _say(say, x.message)
            await ctx.clock.sleep(0.05)
    finally:
        for task in d.tasks.values():
            if not task.done():
                task.cancel()


async def _join(d: _Driver) -> None:
    """Let the members' controllers end (each has recorded its outcome by now, or is about to)."""
    for task in d.tasks.values():
        try:
            await asyncio.wait_for(asyncio.shield(task), 30)
        except Exception:  # a member's error is already recorded in the group
            continue


# --- operator commands and the read side ---------------------------------------------------------------------


async def send_command(ctx: service.Context, release: str, kind: str, wait: float = 30.0) -> service.CommandResult:
    """Queue promote/abort/rollback for the process driving the group and wait until it answers."""
    gstore = GroupStore(ctx.state_dir)
    try:
        found = gstore.active(release)
        if found is None:
            if kind == "rollback":
                return await _rollback_finished_group(ctx, gstore, release)
            raise UserError(f"{release}: no release group in progress (see `releasegate status {release}`)")
        gs, owner = found
        cid = gstore.add_command(release, gs.id, kind, ctx.actor, ctx.clock.now())
        if not owner_alive(owner):
            return service.CommandResult(f"{kind} queued for release group {gs.id}; no process is driving it",
                                         applied=False, needs_resume=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while loop.time() < deadline:
            state, note = gstore.command_state(cid)
            if state == "applied":
                return service.CommandResult(f"{kind} applied to release group {gs.id}", applied=True)
            if state == "rejected":
                raise UserError(f"{release}: {kind} refused: {note}")
            await asyncio.sleep(0.1)
        return service.CommandResult(f"{kind} queued for release group {gs.id}; not picked up yet", applied=False)
    finally:
        gstore.close()


async def _rollback_finished_group(ctx: service.Context, gstore: GroupStore, release: str) -> service.CommandResult:
    """After the group ended: every member it promoted back to its kept previous version."""
    gs = gstore.latest(release)
    if gs is None:
        raise UserError(f"{release}: no release group recorded; nothing to roll back")
    promoted = [m for m in gs.members if m.status == "promoted"]
    if not promoted:
        raise UserError(f"{release}: its last group ({gs.status}) promoted no member; nothing to roll back")
    store = ctx.store()
    lines, now = [], ctx.clock.now()
    try:
        for m in promoted:  # each member on its own: one that cannot go back does not keep the others
            try:
                lines.append((await rollback_finished(ctx, store, m.service)).message)
                gs = gs.model_copy(update={"members": [x.model_copy(update={
                    "status": "reverted", "reason": f"rolled back by {ctx.actor} after the group ended"})
                    if x.service == m.service else x for x in gs.members]})
            except UserError as exc:
                lines.append(f"{m.service} not rolled back: {exc}")
    finally:
        store.close()
    back = sum(1 for x in gs.members if x.status == "reverted")
    said = f"rolled back by {ctx.actor}: {back} of {len(promoted)} promoted member(s) back on their previous version"
    gs = gs.model_copy(update={"status": "rolled_back", "reason": said, "updated_at": now})
    gstore.save(gs, [("rolled_back", said, {"members": lines})])
    AuditLog(ctx.state_dir).append(ctx.actor, "group.rollback", release=release, decision=said,
                                   evidence={"group": gs.id, "members": lines}, at=now)
    return service.CommandResult("\n".join([said, *lines]), applied=True)


def known(ctx: service.Context, name: str) -> bool:
    """Is ``name`` a release group (rather than a service)? Reads only."""
    if not has_store(ctx.state_dir):
        return False
    gstore = GroupStore(ctx.state_dir)
    try:
        return gstore.known(name)
    finally:
        gstore.close()


def latest_groups(ctx: service.Context) -> list[GroupState]:
    """Each release's latest group run (for `status` without a name). Reads only."""
    if not has_store(ctx.state_dir):
        return []
    gstore = GroupStore(ctx.state_dir)
    try:
        return [g for name in gstore.releases() if (g := gstore.latest(name)) is not None]
    finally:
        gstore.close()


def status(ctx: service.Context, release: str) -> dict[str, Any]:
    """The group's latest run, one entry per member with its live rollout (phase, weight) when one runs."""
    gstore, store = GroupStore(ctx.state_dir), ctx.store()
    try:
        gs = gstore.latest(release)
        assert gs is not None
        members = []
        for m in gs.members:
            rec = store.rollout(m.rollout_id)
            live = rec.state if rec is not None and rec.state.active else None
            members.append({**m.model_dump(), "phase": live.phase if live else None,
                            "weight": live.weight if live else None, "waiting": live.waiting if live else None})
        return {**gs.model_dump(exclude={"members"}), "members": members}
    finally:
        store.close()
        gstore.close()


def history(ctx: service.Context, release: str, limit: int) -> list[dict[str, Any]]:
    gstore = GroupStore(ctx.state_dir)
    try:
        return [{**g.model_dump(), "events": gstore.events(g.id)} for g in gstore.runs(release, limit)]
    finally:
        gstore.close()
