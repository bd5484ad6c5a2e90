"""The rollout supervisor: one asyncio task per active rollout, all in the server's one event loop.

Each task is the same entry point the CLI uses (``service.start_admitted`` for a new deploy, ``service.resume``
for one left behind), so the server drives rollouts exactly as ``deploy`` would, and the store records this
process as their owner. At start the supervisor adopts every active rollout whose owner is not a live process (a
server or ``deploy`` that died); one still driven by a live ``deploy`` elsewhere is left to it. On shutdown the
tasks are cancelled and their ownership released, so the next server picks them up at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from releasegate import service
from releasegate.engine.clock import Clock, SystemClock
from releasegate.governance.gate import DeployRequest
from releasegate.server.problems import Problem
from releasegate.store.sqlite import Store, owner_alive
from releasegate.wakeups import Bells

log = logging.getLogger("releasegate.server")


class KeyedLocks:
    """One asyncio lock per key (a service, an Idempotency-Key), forgotten when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class Supervisor:
    """Starts, adopts and tracks the rollout tasks of one server process."""

    def __init__(self, state_dir: Path, clock: Clock | None = None) -> None:
        self.state_dir = state_dir
        self.clock: Clock = clock or SystemClock()  # the app's measures the scheduling lag
        self.tasks: dict[str, asyncio.Task[object]] = {}  # rollout id -> its task
        self.ready = False
        self.locks = KeyedLocks()  # admissions of one service (or one Idempotency-Key) run one at a time
        self.bells = Bells(self._pending_commands)  # commands wake the controllers, not their polling
        self._watch_store: Store | None = None

    def context(self, actor: str) -> service.Context:
        ctx = service.new_context(self.state_dir, self.clock)
        ctx.actor, ctx.bells = actor, self.bells
        return ctx

    def _pending_commands(self) -> set[str]:
        """For the bells' watcher: rollouts with a command pending, whichever process posted it."""
        if self._watch_store is None:
            self._watch_store = Store(self.state_dir)
        return self._watch_store.pending_rollouts()

    def active(self) -> int:
        return sum(1 for t in self.tasks.values() if not t.done())

    def _track(self, rollout_id: str, coro: object) -> asyncio.Task[object]:
        task: asyncio.Task[object] = asyncio.create_task(coro)  # type: ignore[arg-type]
        self.tasks[rollout_id] = task
        task.add_done_callback(lambda t: self._done(rollout_id, t))
        return task

    def _done(self, rollout_id: str, task: asyncio.Task[object]) -> None:
        """A task that failed leaves its rollout active: release it, so a resume (or a command, which then
        resumes it) is not refused as "driven by a live process" while this server lives."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        log.error("rollout %s stopped: %s: %s", rollout_id, type(exc).__name__, exc)
        store = Store(self.state_dir)
        try:
            rec = store.rollout(rollout_id)
            if rec is not None and rec.state.active:
                store.release(rollout_id)
        finally:
            store.close()

    async def adopt(self) -> list[str]:
        """Resume every active rollout no live process drives; returns their ids."""
        grouped = self.group_members()
        store = Store(self.state_dir)
        try:
            orphans = [rec for rec in (store.active_rollout(s.service) for s in store.services())
                       if rec is not None and not owner_alive(rec.owner) and rec.state.id not in self.tasks]
        finally:
            store.close()
        for rec in orphans:
            if rec.state.id in grouped:  # a release group's member moves with its group: `resume RELEASE`
                log.warning("rollout %s of %s belongs to release %s: not adopted (the server does not drive release"
                            " groups yet; `releasegate resume %s`)", rec.state.id, rec.state.service,
                            grouped[rec.state.id], grouped[rec.state.id])
                continue
            log.info("adopting rollout %s of %s", rec.state.id, rec.state.service)
            self._track(rec.state.id, service.resume(self.context("server"), rec.state.service))
        self.ready = True
        return [rec.state.id for rec in orphans if rec.state.id not in grouped]

    def group_members(self) -> dict[str, str]:
        """Rollout id -> release, for every member of an active release group."""
        from releasegate.store.groups import GroupStore

        groups = GroupStore(self.state_dir)
        try:
            found = [g for g in (groups.active(r) for r in groups.releases()) if g is not None]
        finally:
            groups.close()
        return {m.rollout_id: gs.release for gs, _ in found for m in gs.members}

    async def deploy(self, spec_path: Path, version: str, actor: str, env: str, hotfix: bool, *,
                     break_glass: bool = False, reason: str | None = None, allow_breaking: bool = False) -> str:
        """Admit (preflight, policy, calendar: a refusal raises its UserError here) and start a rollout; return
        its id once it is recorded, so a 202 always names a rollout that exists."""
        ctx = self.context(actor)
        request = DeployRequest(env=env, actor=actor, hotfix=hotfix, verified=True, break_glass=break_glass,
                                reason=reason, allow_breaking_migration=allow_breaking)
        store = Store(self.state_dir)
        try:
            admitted = await service.admit_deploy(ctx, store, spec_path, version, request)
        except BaseException:
            store.close()
            raise
        rollout_id = f"{admitted.spec.service}-{version}-{uuid.uuid4().hex[:6]}"

        async def run() -> object:
            try:
                return await service.start_admitted(ctx, store, admitted, rollout_id=rollout_id)
            finally:
                store.close()
        task = self._track(rollout_id, run())
        while not task.done():
            if self._recorded(rollout_id):
                return rollout_id
            await asyncio.sleep(0.02)
        exc = task.exception()
        if exc is not None:
            raise exc
        return rollout_id

    def _recorded(self, rollout_id: str) -> bool:
        store = Store(self.state_dir)
        try:
            return store.rollout(rollout_id) is not None
        finally:
            store.close()

    def resume(self, svc: str) -> str:
        """Drive ``svc``'s active rollout here (409 while a live process drives it)."""
        store = Store(self.state_dir)
        try:
            rec = store.active_rollout(svc)
        finally:
            store.close()
        if rec is None:
            raise Problem(409, "conflict", f"{svc}: no rollout in progress to resume (see GET /api/v1/rollouts?"
                                           f"service={svc})")
        release = self.group_members().get(rec.state.id)
        if release is not None:
            raise Problem(409, "conflict", f"{svc}: rollout {rec.state.id} belongs to release {release}, which moves "
                                           f"as one: `releasegate resume {release}` (release groups are not driven by "
                                           "the server yet)")
        task = self.tasks.get(rec.state.id)
        if (task is not None and not task.done()) or owner_alive(rec.owner):
            raise Problem(409, "conflict", f"{svc}: rollout {rec.state.id} is being driven already; follow it with "
                                           f"GET /api/v1/rollouts/{rec.state.id}")
        self._track(rec.state.id, service.resume(self.context("server"), svc))
        return rec.state.id

    async def shutdown(self) -> None:
        """Cancel the tasks and release their rollouts, so the next server adopts them at once."""
        running = {rid: t for rid, t in self.tasks.items() if not t.done()}
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
        await self.bells.close()
        if self._watch_store is not None:
            self._watch_store.close()
            self._watch_store = None
        store = Store(self.state_dir)
        try:
            for rid in running:
                rec = store.rollout(rid)
                if rec is not None and rec.state.active:
                    store.release(rid)
        finally:
            store.close()


__all__ = ["Supervisor"]
