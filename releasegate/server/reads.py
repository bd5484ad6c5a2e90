"""The API's hot reads (the token lookup, ``GET /api/v1/rollouts``, one rollout) on connections kept open, run
in the event loop.

Why: at 1,000 rollouts in one server (bench/bench_server_scale.py) a list request opened two connections (the
token's and the rollouts'), the second creating the schema in a write transaction that queued behind the
controllers' commits, and each of its parts hopped to a worker thread and back through the busy loop, where it
also fought the controllers for the GIL. The kept connections read in autocommit, so every read sees the last
commit of any process; they are used only from the loop's thread (the handlers using them are ``async``), so they
need no lock. Reads that may take long (history, events, audit) stay in worker threads with their own
connections.
"""

from __future__ import annotations

from pathlib import Path

from releasegate.store.server import ServerStore
from releasegate.store.sqlite import Store


class Reads:
    """A ``Store`` and a ``ServerStore`` opened once, at the first read, for the event loop's handlers."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._store: Store | None = None
        self._server: ServerStore | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.state_dir)
        return self._store

    @property
    def server(self) -> ServerStore:
        if self._server is None:
            self._server = ServerStore(self.state_dir)
        return self._server

    def close(self) -> None:
        for held in (self._store, self._server):
            if held is not None:
                held.close()
        self._store = self._server = None


__all__ = ["Reads"]
