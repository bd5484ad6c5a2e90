"""One set of store connections for every rollout a server drives, instead of three per rollout.

Why: each controller used to open its own store connection, audit log connection and calendar reader. With 1,000
rollouts in one server that was 3,000 SQLite connections, each keeping a statement cache and a list of weak
references to its cursors: some 220,000 objects the garbage collector walked at every full collection (a pause of
0.3 s for every rollout at once, bench/bench_server_scale.py), and about 120 MB.

Sharing is safe because the server's controllers all run in one thread, its event loop, and no store transaction
spans an ``await`` (``immediate`` blocks are synchronous): two controllers' statements never interleave inside a
transaction. The handles are given out only in the thread that made them (``here``); a worker thread gets fresh
connections of its own, as everything outside the server does.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from releasegate.governance.stored import LiveCalendar
    from releasegate.store.audit import AuditLog
    from releasegate.store.sqlite import Store


class SharedHandles:
    """The loop thread's store connection, audit log and calendar reader (each opened on first use)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._thread = threading.get_ident()
        self._store: Store | None = None
        self._audit: AuditLog | None = None
        self._calendar: LiveCalendar | None = None

    def here(self) -> bool:
        """Whether the caller runs in the thread these handles belong to."""
        return threading.get_ident() == self._thread

    def store(self) -> Store:
        """A store on the shared connection (its ``close`` leaves the connection open), with its own lease."""
        from releasegate.store.sqlite import Store

        if self._store is None:
            self._store = Store(self.state_dir)
        return Store(self.state_dir, db=self._store.connection())

    def audit(self) -> AuditLog:
        from releasegate.store.audit import AuditLog

        if self._audit is None:
            self._audit = AuditLog(self.state_dir)
        return self._audit

    def calendar(self) -> LiveCalendar:
        from releasegate.governance.stored import LiveCalendar

        if self._calendar is None:
            self._calendar = LiveCalendar(self.state_dir)
        return self._calendar

    def close(self) -> None:
        for handle in (self._store, self._audit, self._calendar):
            if handle is not None:
                handle.close()
        self._store = self._audit = self._calendar = None


__all__ = ["SharedHandles"]
