#!/usr/bin/env python3
"""The releasegate CLI, SIGKILLed at the worst moment for its instances: right after it spawned one, before it
wrote that instance's pid into its record. For tests/test_instances_hardening.py.

Run as ``python tests/support/killed_after_spawn.py [releasegate arguments]``. The kill is injected here, by
wrapping ``LocalPlatform._spawn`` (which returns the record the caller is about to write), so releasegate itself
carries no test hook; ``KILL_AFTER_SPAWN=N`` (default 1) picks the N-th spawn of this process.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's releasegate, wherever cwd is

from releasegate.cli import main
from releasegate.providers.platforms.local import LocalPlatform

_spawn = LocalPlatform._spawn
_spawned = 0


def spawn_then_die(self: LocalPlatform, *args: Any, **kwargs: Any) -> Any:
    global _spawned
    rec = _spawn(self, *args, **kwargs)
    _spawned += 1
    if _spawned == int(os.environ.get("KILL_AFTER_SPAWN", "1")):
        os.kill(os.getpid(), signal.SIGKILL)
    return rec


LocalPlatform._spawn = spawn_then_die  # type: ignore[method-assign]

if __name__ == "__main__":
    main(sys.argv[1:])
