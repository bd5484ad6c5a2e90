"""Crash-safe, private file writes shared by the router's routes file, the local platform's instance records and
the notifications outbox.

Everything here lives in the state dir, which holds secrets (docs/security.md, section 5): directories are created
0700 and files 0600 whatever the umask (``mkstemp`` creates 0600; appends open with an explicit mode).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with the directory itself 0700; tighten it when it is wider."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    tighten(path, PRIVATE_DIR)


def tighten(path: Path, mode: int) -> None:
    """Drop the group and other bits of ``path`` when it is ours and has any (best effort: never fails)."""
    try:
        info = path.stat()
        if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & 0o077:
            path.chmod(stat.S_IMODE(info.st_mode) & mode)
    except OSError:
        pass


def append_private(path: Path, text: str, *, durable: bool = False) -> None:
    """Append ``text`` to ``path``, creating it 0600 (and its directory 0700) when it does not exist; never
    through a symbolic link. ``durable``: fsync before returning, for records that must exist before what they
    record happens (the audit head, the router's route changes)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        view = memoryview(text.encode("utf-8"))
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: object) -> None:
    """Replace ``path`` with ``data`` as JSON so a reader sees the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def next_number(path: Path) -> int:
    """The next number of a counter kept in ``path`` (1 first), under an exclusive lock: two processes never get
    the same one, and numbers are never reused across restarts (the platforms' instance ids)."""
    import fcntl

    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        text = f.read().strip()
        n = int(text) if text.isdigit() else 1
        f.seek(0)
        f.truncate()
        f.write(f"{n + 1}\n")
    return n
