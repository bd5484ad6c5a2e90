"""Keeping this process's rollout leases alive (the leases themselves: releasegate/store/leases.py).

Why one keeper per process: a server drives hundreds of rollouts; renewing them one by one would be hundreds of
writes every few seconds. The keeper renews every lease its process holds in one statement every TTL/3, so a lease
is renewed twice before it could expire. A lease found gone (another process took the rollout over after this
one stalled) is dropped and ``on_lost`` told, which for the server cancels that rollout's task.

A standalone ``deploy`` or ``resume`` uses the same rule with a keeper of its own (``kept(..., local=True)`` runs
its renewal loop while the controller runs), so the CLI and the servers judge each other by one rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from releasegate.store.leases import DEFAULT_TTL, Lease, new_holder
from releasegate.store.sqlite import Store, this_owner

log = logging.getLogger("releasegate.leases")


class LeaseKeeper:
    """The leases one process holds, and their renewal."""

    def __init__(self, state_dir: Path, ttl: float = DEFAULT_TTL,
                 on_lost: Callable[[Lease], None] | None = None) -> None:
        self.state_dir, self.ttl, self.on_lost = state_dir, ttl, on_lost
        self.holder = new_holder()
        self.leases: dict[str, Lease] = {}

    def held(self, rollout_id: str) -> Lease | None:
        lease = self.leases.get(rollout_id)
        return lease if lease is not None and not lease.lost else None

    def claim(self, store: Store, rollout_id: str) -> Lease:
        """The lease on ``rollout_id``: the one held already, else taken (a UserError while a live process holds
        it)."""
        lease = self.held(rollout_id) or store.claim(rollout_id, this_owner(), self.holder, self.ttl)
        self.leases[rollout_id] = lease
        return lease

    def track(self, lease: Lease) -> None:
        self.leases[lease.rollout_id] = lease

    def forget(self, lease: Lease) -> None:
        if self.leases.get(lease.rollout_id) is lease:
            del self.leases[lease.rollout_id]

    def renew(self) -> None:
        """Renew every lease held, in one statement; drop (and report) those another process took over."""
        if not self.leases:
            return
        started = time.monotonic()
        store = Store(self.state_dir)
        try:
            held = store.renew_leases(self.holder, self.ttl)
        finally:
            store.close()
        for rollout_id, lease in list(self.leases.items()):
            if lease.ended:
                self.forget(lease)
            elif held.get(rollout_id) == lease.token:
                lease.valid_until = max(lease.valid_until, started + self.ttl)
            else:
                lease.lost = True
                self.forget(lease)
                log.info("lost the lease on rollout %s (another process took it over): it stops here", rollout_id)
                if self.on_lost is not None:
                    self.on_lost(lease)

    async def run(self) -> None:
        """Renew every TTL/3 until cancelled; a store that cannot be reached is retried at the next turn (the
        leases may expire meanwhile, and then another process takes their rollouts over: that is the point)."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                self.renew()
            except Exception as exc:
                log.warning("renewing %d lease(s) failed: %s: %s", len(self.leases), type(exc).__name__, exc)

    def release_all(self) -> None:
        """Give up every lease at once (shutdown), so other processes need not wait for them to expire."""
        store = Store(self.state_dir)
        try:
            store.release_leases(self.holder)
        finally:
            store.close()
        self.leases.clear()


@contextlib.asynccontextmanager
async def kept(keeper: LeaseKeeper, lease: Lease | None, local: bool) -> AsyncIterator[None]:
    """While a controller drives ``lease``'s rollout: the keeper renews it (``local``: this keeper's own loop runs
    meanwhile, for a standalone ``deploy``/``resume``)."""
    if lease is None:
        yield
        return
    keeper.track(lease)
    loop = asyncio.create_task(keeper.run()) if local else None
    try:
        yield
    finally:
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        keeper.forget(lease)


__all__ = ["LeaseKeeper", "kept"]
