"""The routes file: what a restarted router serves, so a crash or reboot never sends users to a wrong version.

Written atomically (temporary file, fsync, rename, fsync of the directory) before a new routing table is
applied: once the admin API has answered a PUT, the routes survive a power cut, and a half-written file can
never exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from releasegate.fileio import write_json_atomic
from releasegate.providers.base import Routes


class RoutesFileError(Exception):
    """The file exists but cannot be used; the message is one line naming the file."""


@dataclass(frozen=True)
class SavedRoutes:
    routes: Routes
    generation: int


def save_routes(path: Path, service: str, routes: Routes, generation: int) -> None:
    data = {"service": service, "generation": generation, **routes.to_json()}
    write_json_atomic(path, data)


def load_routes(path: Path, service: str) -> SavedRoutes | None:
    """The saved routes, None when there is no file yet; RoutesFileError when it cannot be trusted."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RoutesFileError(f"router: cannot read the routes file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
        routes = Routes.from_json(data)
    except ValueError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RoutesFileError(f"router: the routes file {path} is corrupt ({reason}); fix it or delete it "
                              "to start with no routes") from None
    saved_service = data.get("service")
    if saved_service is not None and saved_service != service:
        raise RoutesFileError(f"router: the routes file {path} belongs to service {saved_service!r}, "
                              f"not {service!r}")
    generation = data.get("generation", 0)
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        generation = 0
    return SavedRoutes(routes, generation)
