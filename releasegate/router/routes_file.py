"""The routes file: what a restarted router serves, so a crash or reboot never sends users to a wrong version.

Written atomically (temporary file, fsync, rename, fsync of the directory) before a new routing table is
applied: once the admin API has answered a PUT, the routes survive a power cut, and a half-written file can
never exist. Beside it, the change log: one JSON line per route change (when, who, what), appended before the
change is saved.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from releasegate.fileio import append_private, write_json_atomic
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


# --- the change log: every route change, with who made it -------------------------------------------------------


def default_changes_file(routes_file: Path, service: str) -> Path:
    """``<service>.changes.jsonl`` beside the routes file: ``routers/shop.changes.jsonl`` in a state dir."""
    return routes_file.parent / f"{service}.changes.jsonl"


def append_change(path: Path, record: dict[str, object]) -> None:
    """Append one JSON line and fsync it: written before the change is saved and applied, so no change is served
    without its record. The file is created 0600 (it names the backends) and only ever appended to."""
    append_private(path, json.dumps(record, separators=(",", ":"), sort_keys=False) + "\n", durable=True)


def recent_changes(path: Path, limit: int = 10, tail_bytes: int = 1 << 16) -> list[dict[str, object]]:
    """The last ``limit`` records, oldest first; [] when there is no log. Unreadable lines are skipped."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - tail_bytes))
            text = fh.read().decode("utf-8", errors="replace")
            cut = size > tail_bytes
    except OSError:
        return []
    lines = text.splitlines()
    if cut and lines:
        lines = lines[1:]  # the first one may be a partial line
    out: list[dict[str, object]] = []
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict):
            out.append(item)
    return out[-limit:] if limit > 0 else []
