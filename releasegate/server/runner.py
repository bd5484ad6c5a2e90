"""The rollout supervisor: one asyncio task per active rollout, all in the server's one event loop.

Each task is the same entry point the CLI uses (``service.start_admitted`` for a new deploy, ``service.resume``
for one left behind), so the server drives rollouts exactly as ``deploy`` would. Each rollout it drives is held
through a lease (releasegate/store/leases.py) that the supervisor's keeper renews, all in one statement, every
TTL/3. Every TTL/2 (and at start) it adopts every active rollout whose lease is free or expired: a server or
``deploy`` that died, here or on another host sharing the store; one still driven by a live process is left to
it. A lease found taken over (this server stalled past its TTL) cancels that rollout's task. On shutdown the tasks
are cancelled and every lease released in one statement, so another server picks the rollouts up at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from releasegate import service
from releasegate.engine.clock import Clock, SystemClock
from releasegate.errors import UserError
from releasegate.governance.gate import DeployRequest
from releasegate.leasing import LeaseKeeper
from releasegate.server.problems import Problem
from releasegate.store.leases import DEFAULT_TTL, Lease, LeaseLost
from releasegate.store.shared import SharedHandles
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

    def __init__(self, state_dir: Path, clock: Clock | None = None, lease_ttl: float = DEFAULT_TTL) -> None:
        self.state_dir = state_dir
        self.clock: Clock = clock or SystemClock()  # the app's measures the scheduling lag
        self.tasks: dict[str, asyncio.Task[object]] = {}  # rollout id -> its task
        self.ready = False
        self.locks = KeyedLocks()  # admissions of one service (or one Idempotency-Key) run one at a time
        self.bells = Bells(self._pending_commands)  # commands wake the controllers, not their polling
        self._watch_store: Store | None = None
        self.keeper = LeaseKeeper(state_dir, lease_ttl, on_lost=self._lost)
        self._loops: list[asyncio.Task[None]] = []
        self._failed: dict[str, float] = {}  # rollout id -> when this server may adopt it again (its task failed)
        self._told: set[str] = set()  # release groups' members said to be left (once each, not every scan)
        self._shared: SharedHandles | None = None

    def context(self, actor: str) -> service.Context:
        ctx = service.new_context(self.state_dir, self.clock)
        ctx.actor, ctx.bells, ctx.leases = actor, self.bells, self.keeper
        if _in_loop():  # the loop's controllers share one connection set; a worker thread opens its own
            if self._shared is None:
                self._shared = SharedHandles(self.state_dir)
            ctx.shared = self._shared
        return ctx

    def _pending_commands(self) -> set[str]:
        """For the bells' watcher: rollouts with a command pending, whichever process posted it."""
        if self._watch_store is None:
            self._watch_store = Store(self.state_dir)
        return self._watch_store.pending_rollouts()

    def start(self) -> None:
        """Renew the leases every TTL/3 and look for rollouts to adopt every TTL/2, until ``shutdown``."""
        self._loops = [asyncio.create_task(self.keeper.run()), asyncio.create_task(self._scan())]

    async def _scan(self) -> None:
        while True:
            await asyncio.sleep(self.keeper.ttl / 2)
            try:
                await self.adopt()
            except Exception as exc:  # the store unreachable for a moment: the next scan tries again
                log.warning("looking for rollouts to adopt failed: %s: %s", type(exc).__name__, exc)

    def _lost(self, lease: Lease) -> None:
        """Another process took this rollout over (this one stalled past its lease): its task stops, quietly."""
        task = self.tasks.get(lease.rollout_id)
        if task is not None and not task.done():
            log.info("rollout %s: the lease was taken over by another process; this server stops driving it",
                     lease.rollout_id)
            task.cancel()

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
        if isinstance(exc, LeaseLost):
            log.info("rollout %s: another process took it over; this server stopped driving it", rollout_id)
            return
        retry = 5 * self.keeper.ttl  # another server may adopt it at once; this one waits, not to fail in a loop
        log.error("rollout %s stopped: %s: %s (released; this server adopts it again after %.0f s at the earliest)",
                  rollout_id, type(exc).__name__, exc, retry)
        self._failed[rollout_id] = time.monotonic() + retry
        self.keeper.leases.pop(rollout_id, None)
        try:  # the store may be what failed (unreachable, out of connections): then the lease simply expires
            store = Store(self.state_dir)
            try:
                store.release_leases(self.keeper.holder, rollout_id)
            finally:
                store.close()
        except Exception as release_failed:
            log.warning("rollout %s: releasing its lease failed (%s); it expires within %.0f s", rollout_id,
                        release_failed, self.keeper.ttl)

    async def adopt(self) -> list[str]:
        """Drive every active rollout whose lease is free or expired (taken here before its task starts, so two
        servers scanning at once do not both start it); returns their ids."""
        grouped = self.group_members()
        store = Store(self.state_dir)
        adopted: list[str] = []
        try:
            for rollout_id, svc in store.adoptable():
                if self._failed.get(rollout_id, 0.0) > time.monotonic() or (
                        rollout_id in self.tasks and not self.tasks[rollout_id].done()):
                    continue
                if rollout_id in grouped:  # a release group's member moves with its group: `resume RELEASE`
                    self._left(rollout_id, svc, grouped[rollout_id])
                    continue
                try:
                    self.keeper.claim(store, rollout_id)
                except UserError:  # another server took it first
                    continue
                log.info("adopting rollout %s of %s", rollout_id, svc)
                self._track(rollout_id, service.resume(self.context("server"), svc))
                adopted.append(rollout_id)
        finally:
            store.close()
        self.ready = True
        return adopted

    def _left(self, rollout_id: str, svc: str, release: str) -> None:
        if rollout_id in self._told:
            return
        self._told.add(rollout_id)
        log.warning("rollout %s of %s belongs to release %s: not adopted (the server does not drive release groups "
                    "yet; `releasegate resume %s`)", rollout_id, svc, release, release)

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
        store = ctx.store()
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
        self._failed.pop(rec.state.id, None)
        self._track(rec.state.id, service.resume(self.context("server"), svc))
        return rec.state.id

    async def shutdown(self) -> None:
        """Cancel the tasks and release every lease at once, so another server adopts the rollouts at once."""
        for loop in self._loops:
            loop.cancel()
        running = [t for t in [*self._loops, *self.tasks.values()] if not t.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await self.bells.close()
        if self._watch_store is not None:
            self._watch_store.close()
            self._watch_store = None
        if self._shared is not None:
            self._shared.close()
            self._shared = None
        self.keeper.release_all()


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


__all__ = ["Supervisor"]
