"""The seeds' T-60 checks: is this machine ready for the deploy, before anything is started?

Each check says pass or fail with a reason a person can act on. ``releasegate preflight`` prints them; every
``deploy`` runs them first and stops on the first report with a failure, before admission and before any
process starts.
"""

from __future__ import annotations

import datetime as dt
import shlex
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from releasegate.durations import format_duration
from releasegate.spec import secrets
from releasegate.spec.models import BuiltinRouter, LocalPlatform, Spec

MIN_FREE_BYTES = 1 << 30  # 1 GiB: logs, the database, backups; the seeds check disk before every release
_SHELL = set("|&;<>()$`\\\"'*?[]#~=%")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _disk(state_dir: Path) -> Check:
    where = state_dir if state_dir.exists() else state_dir.resolve().parent
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    ok = free >= MIN_FREE_BYTES
    return Check("disk", ok, f"{free / (1 << 30):.1f} GiB free at {where}" + ("" if ok else
                 f"; needs at least {MIN_FREE_BYTES >> 30} GiB: free space or choose another --state-dir"))


def _writable(state_dir: Path) -> Check:
    """Writable, or creatable by deploy: a check creates nothing (the nearest existing parent is tried)."""
    where = state_dir
    while not where.exists() and where.parent != where:
        where = where.parent
    try:
        with tempfile.NamedTemporaryFile(dir=where):
            pass
    except OSError as exc:
        return Check("state dir", False, f"{state_dir} is not writable ({exc.strerror} in {where}); fix its "
                     "permissions or set --state-dir")
    if where != state_dir:
        return Check("state dir", True, f"{state_dir} can be created (deploy creates it)")
    return Check("state dir", True, f"{state_dir} is writable")


def _port(spec: Spec, state_dir: Path) -> Check:
    listen = spec.router.listen
    if isinstance(spec.router, BuiltinRouter):
        from releasegate.providers.routers.builtin import read_router_state

        running = read_router_state(state_dir, spec.service)
        if running is not None and running.get("listen") == listen:
            return Check("port", True, f"{listen} is served by this service's router (pid {running['pid']})")
    else:
        return Check("port", True, f"{listen} belongs to the {spec.router.kind} router (not checked here)")
    host, _, port = listen.rpartition(":")
    with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as s:
        # Bound as the router binds it (asyncio's reuse_address): connections of a router that stopped moments
        # ago linger in TIME-WAIT for a minute; they do not keep the router from listening, so nor do they here.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), int(port)))
            s.listen(1)
        except OSError as exc:
            return Check("port", False, f"{listen} is taken by another program ({exc.strerror}); stop it or "
                         "change router.listen")
    return Check("port", True, f"{listen} is free for the router")


async def _platform(spec: Spec, spec_dir: Path, state_dir: Path, version: str,
                    say: Callable[[str], None] | None = None) -> list[Check]:
    """The platform's own checks: the local command resolves; an image or a host is there (asked of it). ``say``
    hears what takes long (an image pull's progress) on a platform that has a ``notify`` hook."""
    from releasegate.errors import ProviderError
    from releasegate.providers.platforms import make_platform

    platform = make_platform(spec.platform, state_dir, spec_dir)
    if say is not None and hasattr(platform, "notify"):
        platform.notify = say
    try:
        found = await platform.preflight(spec.service, version)
    except ProviderError as exc:
        return [Check("platform", False, str(exc))]
    return [Check(name, ok, detail) for name, ok, detail in found]


def _command(platform: LocalPlatform, service: str, spec_dir: Path, version: str) -> Check:
    cwd = (spec_dir / platform.cwd_for(service, version)).resolve()
    if not cwd.is_dir():
        return Check("command", False, f"platform.cwd {cwd} does not exist (for version {version})")
    command = platform.command_for(service, version, 0, "127.0.0.1")
    if any(c in _SHELL for c in command):
        return Check("command", True, f"shell command, not resolved ahead: {command}")
    try:
        program = shlex.split(command)[0]
    except (ValueError, IndexError):
        return Check("command", False, f"cannot read platform.command {command!r}: fix its quoting")
    found = shutil.which(program) or (
        str(cwd / program) if (cwd / program).is_file() and (cwd / program).stat().st_mode & 0o111 else None)
    if found is None:
        return Check("command", False, f"{program!r} is neither on PATH nor an executable in {cwd}")
    return Check("command", True, f"{program} -> {found}")


async def _running(spec: Spec, spec_dir: Path, state_dir: Path) -> Check:
    from releasegate.providers.checks import check_health_once
    from releasegate.providers.platforms import make_platform
    from releasegate.store.sqlite import Store

    store = Store(state_dir)
    try:
        rec = store.service(spec.service)
    finally:
        store.close()
    if rec is None or rec.current is None:
        return Check("running version", True, "none yet: this is the first deploy")
    live = [i for i in await make_platform(spec.platform, state_dir, spec_dir).instances(spec.service)
            if i.version == rec.current]
    if not live:  # e.g. after a reboot: the prepare phase restarts it and health-checks it before anything else
        return Check("running version", True, f"{rec.current} has no live instance; deploy restarts it first")
    for inst in live:
        result = await check_health_once(inst, spec.health)  # expect placeholders take its values
        if not result.ok:
            return Check("running version", False, f"{rec.current} at {inst.address}: {result.reason}")
    return Check("running version", True, f"{rec.current}: {len(live)} instance(s) healthy")


async def _haproxy_ring(spec: Spec) -> Check | None:
    """With latency rules through HAProxy: does the running HAProxy log every request into the service's ring?
    Without it those rules would have no data at every evaluation; the fix is one reload or a few lines."""
    from releasegate.errors import ProviderError
    from releasegate.providers.routers.haproxy import HaproxyRouter
    from releasegate.providers.routers.haproxy_config import missing_ring
    from releasegate.spec.routers_haproxy import HaproxyRouter as HaproxyRouterSpec

    latency = sorted({r.metric for r in spec.analysis.rules if r.metric.startswith("latency_")})
    if not isinstance(spec.router, HaproxyRouterSpec) or not latency:
        return None
    router = HaproxyRouter(spec.router, spec.service)
    try:
        found = await router.has_ring()
    except ProviderError as exc:  # not running yet (deploy renders a missing configuration): the reader waits
        return Check("haproxy ring", True, f"not checked, {exc}")
    if not found:
        why = missing_ring(spec.router, spec.service)
        return Check("haproxy ring", False, f"{why} ({', '.join(latency)} cannot be measured without it)")
    return Check("haproxy ring", True, f"HAProxy logs every request into ring {router.ring} ({', '.join(latency)})")


def _freeze(state_dir: Path, env: str, now: float) -> Check | None:
    """The next freeze of the stored calendar (``releasegate calendar apply``); none stored, no check."""
    from releasegate.governance.calendar import next_freeze
    from releasegate.governance.stored import LiveCalendar

    calendar = LiveCalendar(state_dir).get()
    if calendar is None:
        return None
    at = dt.datetime.fromtimestamp(now, tz=dt.UTC)
    upcoming = next_freeze(calendar, at, env)
    if upcoming is None:
        return Check("next freeze", True, "none ahead")
    freeze, start = upcoming
    left = max(0.0, (start - at).total_seconds())
    return Check("next freeze", True, f"'{freeze.name}' ({freeze.mode}) starts in {format_duration(round(left))}")


def _migrations(spec: Spec, spec_dir: Path, allow_breaking: bool) -> list[Check]:
    """With ``migrations:``: the database is usable (PostgreSQL: reachable, CREATEDB for the backup's verification,
    a pg_dump that can dump it), the backup directory writable and the pending files lint clean, so a deploy never
    fails there after the new version was started."""
    if spec.migrations is None:
        return []
    from releasegate.errors import ReleasegateError
    from releasegate.migrations import readiness
    from releasegate.migrations.lint import lint_files

    backup_dir = _backup_dir(spec_dir / spec.migrations.backup_dir)
    try:
        detail, todo = readiness(spec.migrations, spec_dir)
    except ReleasegateError as exc:
        return [Check("database", False, str(exc)), backup_dir]
    checks = [Check("database", True, detail), backup_dir]
    issues = lint_files(todo)
    names = ", ".join(f.name for f in todo)
    if not todo:
        checks.append(Check("migrations", True, "none pending"))
    elif not issues:
        checks.append(Check("migrations", True, f"{len(todo)} pending ({names}), backward compatible"))
    elif allow_breaking:
        checks.append(Check("migrations", True, f"{len(issues)} backward-incompatible statement(s) in {names}; "
                                                "allowed if the release is approved for it (checked at admission)"))
    else:
        checks.append(Check("migrations", False, f"{len(issues)} backward-incompatible statement(s), first "
                                                 f"{issues[0].format()}; see `releasegate migrations lint "
                                                 f"{spec_dir / spec.migrations.dir}`"))
    return checks


def _backup_dir(directory: Path) -> Check:
    """Writable, or creatable: the nearest existing parent must be a writable directory."""
    import os

    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        state = "is writable" if existing == directory else f"can be created (in {existing})"
        return Check("backup dir", True, f"{directory} {state}")
    return Check("backup dir", False, f"{directory}: {existing} is not a writable directory; fix "
                                      "migrations.backup_dir or its permissions")


async def preflight(spec: Spec, spec_path: Path, version: str, state_dir: Path, env: str = "prod",
                    now: float | None = None, allow_breaking: bool = False,
                    say: Callable[[str], None] | None = None) -> list[Check]:
    import asyncio
    import time

    spec_dir = spec_path.parent.resolve()
    unset = secrets.unset(spec)
    if unset:  # every later check that reads a referenced value would stop at it: say this one thing
        return [Check("secrets", False, unset)]
    checks = [_disk(state_dir), _writable(state_dir), _port(spec, state_dir)]
    checks += await _platform(spec, spec_dir, state_dir, version, say)
    if any(not c.ok for c in checks):
        return checks  # e.g. a host that cannot be reached: asking it for the running version would only repeat it
    checks.append(await _running(spec, spec_dir, state_dir))
    checks += await asyncio.to_thread(_migrations, spec, spec_dir, allow_breaking)
    ring = await _haproxy_ring(spec)
    checks += [ring] if ring else []
    freeze = _freeze(state_dir, env, time.time() if now is None else now)
    return checks + ([freeze] if freeze else [])
