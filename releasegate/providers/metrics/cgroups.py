"""The memory limit a process runs under: its cgroup's (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``).

Why read it at all: "memory usage 95 %" in a runbook means 95 % of what the instance may use before the kernel
kills it, which is its cgroup's limit when it has one (a container, ``systemd-run -p MemoryMax=...``, a systemd
unit with ``MemoryMax=``), not the host's memory. Limits apply down the hierarchy, so every level from the
process's cgroup up to the mount's root counts and the tightest wins; a level without a file (a path that is not
visible inside a container, the v2 root) or with no limit (``max``) adds nothing.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

PROC = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def memory_limit(pid: int, proc: Path = PROC, root: Path = CGROUP_ROOT) -> int | None:
    """The tightest cgroup memory limit of ``pid`` in bytes; None when it has none (or it cannot be read).

    v1's "no limit" is a huge number rather than ``max``: it comes back as is, and callers cap the result with
    the host's memory anyway."""
    try:
        lines = (proc / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return None
    limits: list[int] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:  # cgroup v2: "0::/path"; unified or, on hybrid systems, under unified/
            places = [(root, "memory.max"), (root / "unified", "memory.max")]
        elif "memory" in controllers.split(","):  # cgroup v1 memory controller
            places = [(root / controllers, "memory.limit_in_bytes")]
            if controllers != "memory":
                places.append((root / "memory", "memory.limit_in_bytes"))
        else:
            continue
        for base, name in places:
            limits.extend(_walk(base, path, name))
    return min(limits) if limits else None


def _walk(base: Path, path: str, name: str) -> list[int]:
    """The limits in ``name`` from ``base/path`` up to ``base`` itself."""
    found = []
    rel = PurePosixPath(path.strip() or "/")
    for level in [rel, *rel.parents]:
        text = _read(base / str(level).lstrip("/") / name)
        if text is not None and text.isdigit():
            found.append(int(text))
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
