#!/usr/bin/env python3
"""The demo app, except that an instance may crash on its first health request: for the tests of instances that
die before traffic (tests/test_instances_hardening.py).

Run as ``python tests/support/crashing_app.py --port N``. With ``CRASH_DIR`` set, an instance claims one token
file from ``$CRASH_DIR/$RELEASEGATE_VERSION/`` at start (an atomic rename, so each token dooms exactly one
instance, whichever starts first); an instance holding a token answers its first health request, then prints why
and exits with code 3: it passed its health check and is gone before anything else reaches it. No token left: the
plain demo app.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's releasegate, wherever cwd is

from releasegate import demoapp


def claim(directory: Path) -> str | None:
    """Take one token (rename it so no other instance can): its name, or None when none is left."""
    if not directory.is_dir():
        return None
    for token in sorted(p for p in directory.iterdir() if not p.name.startswith("claimed-")):
        try:
            token.rename(directory / f"claimed-{os.getpid()}-{token.name}")
        except FileNotFoundError:  # another instance was quicker
            continue
        return token.name
    return None


def main() -> int:
    crash_dir = os.environ.get("CRASH_DIR")
    version = os.environ.get("RELEASEGATE_VERSION", "dev")
    token = claim(Path(crash_dir) / version) if crash_dir else None
    if token is not None:
        serve = demoapp.Handler._serve

        def crash_on_health(self: demoapp.Handler, body: bool) -> None:
            serve(self, body)
            if self.path.split("?", 1)[0] == "/health":
                port = self.server.server_address[1]
                print(f"crashing_app: {version} on port {port} took token {token}: crashing after its first "
                      "health check", file=sys.stderr, flush=True)
                os._exit(3)

        demoapp.Handler._serve = crash_on_health  # type: ignore[method-assign]
    return demoapp.main()


if __name__ == "__main__":
    sys.exit(main())
