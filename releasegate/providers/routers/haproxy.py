"""``router: {kind: haproxy}``: an HAProxy backend rendered once, then steered only through its runtime API.

Why slots: HAProxy 2.6 cannot add or rename servers in a running backend without a reload, so the rendered backend
holds ``slots`` disabled servers per version group (``v<group>_<n>``), and a rollout fills them at run time with
``set server ... addr/weight/state``. A version keeps its group and a backend keeps its slot for as long as it is
routed, so a reader of ``show servers state`` sees stable names. Which group serves which version is the one thing
HAProxy cannot hold, so it lives in a small JSON state file next to the configuration; everything else (addresses,
weights, ready/drain/maint) is read back from HAProxy itself, which is what ``get_routes`` reports.

Stickiness: ``cookie rg_srv insert indirect nocache`` pins a client to a server, hence to a version. HAProxy keeps
sending pinned clients to a *drained* server (that is what drain means there); they move once the server goes to
``maint``, which happens as soon as its in-flight count reaches 0 (checked by ``inflight`` and ``set_routes``).

Reloads: the rendered configuration sets ``server-state-file`` and ``load-server-state-from-file global``;
``save_server_state`` writes ``show servers state`` there and must run before a reload (systemd ``ExecReload``,
or ``HaproxyRouter.save_server_state``). Should that be missed, ``set_routes`` re-asserts every routed slot's
address, weight and state each time, so the next routing change (or ``reapply``) restores the state file's routes.

Latency: the rendered configuration (``haproxy_config``) also logs every request into a ring that the metric
source follows over the same socket; ``slot_versions`` and ``state_stamp`` tell it which version a slot serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from releasegate.errors import ProviderError
from releasegate.providers.base import Routes, VersionRoute
from releasegate.providers.routers.haproxy_config import (
    backend_name,
    render_config,
    ring_listed,
    ring_name,
    server_state_path,
    slot_name,
    state_path,
)
from releasegate.spec.routers_haproxy import HaproxyRouter as HaproxyRouterSpec

__all__ = ["HaproxyRouter", "Server", "backend_name", "normalise", "render_config", "ring_name", "server_state_path",
           "slot_name", "spread", "state_path"]

MAX_WEIGHT = 256
# srv_admin_state bits. CMAINT (0x04, "disabled" in the configuration) stays set after "state ready" clears
# FMAINT, so it does not count: FMAINT is what the runtime API sets and clears.
_MAINT = 0x01 | 0x02 | 0x20 | 0x40  # FMAINT, IMAINT, RMAINT, HMAINT
_DRAIN = 0x08 | 0x10  # FDRAIN, IDRAIN


@dataclass(frozen=True)
class Server:
    """One server of the backend as HAProxy reports it in ``show servers state``."""

    name: str
    addr: str
    port: int
    admin: int
    weight: int

    @property
    def backend(self) -> str:
        return f"{self.addr}:{self.port}"

    @property
    def ready(self) -> bool:
        return not self.admin & (_MAINT | _DRAIN)

    @property
    def maint(self) -> bool:
        return bool(self.admin & _MAINT)


def spread(weights: dict[str, int], counts: dict[str, int]) -> dict[str, int]:
    """Per-server HAProxy weight for each version: its share split over its servers, scaled so the largest
    per-server share gets 256 (the most precision HAProxy's 0-256 weights allow)."""
    shares = {v: weights[v] / counts[v] for v in weights if counts.get(v)}
    top = max(shares.values(), default=0.0)
    if top <= 0:
        return dict.fromkeys(weights, 0)
    return {v: max(1, round(s * MAX_WEIGHT / top)) if s > 0 else 0 for v, s in shares.items()}


def normalise(raw: dict[str, int]) -> dict[str, int]:
    """Raw weight sums to percentages adding up to exactly 100 (largest remainder), all 0 when nothing is up."""
    total = sum(raw.values())
    if total <= 0:
        return dict.fromkeys(raw, 0)
    exact = {v: w * 100 / total for v, w in raw.items()}
    out = {v: int(x) for v, x in exact.items()}
    for v in sorted(exact, key=lambda k: exact[k] - out[k], reverse=True)[:100 - sum(out.values())]:
        out[v] += 1
    return out


class HaproxyRouter:
    """The ``Router`` protocol over one HAProxy backend's runtime API (stats socket, level admin)."""

    def __init__(self, spec: HaproxyRouterSpec, service: str, *, max_versions: int = 3,
                 timeout: float = 5.0) -> None:
        self.spec = spec
        self.service = service
        self.max_versions = max_versions
        self.timeout = timeout
        self.backend = backend_name(spec, service)
        self.ring = ring_name(spec, service)
        self.socket = str(Path(spec.stats_socket).absolute())
        self.config_file = Path(spec.config_file).absolute()
        self.state_file = state_path(self.config_file)

    # --- configuration and state files --------------------------------------------------------------------

    def ensure_config(self) -> bool:
        """Render the configuration once (True) and never overwrite an existing one (False): an operator's
        later edits to other sections survive."""
        if self.config_file.exists():
            return False
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self._write_atomic(self.config_file, render_config(self.spec, self.service, self.max_versions))
        return True

    def _write_atomic(self, path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)

    def _load_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = None
        except (OSError, ValueError) as exc:
            raise ProviderError(f"the HAProxy router state {self.state_file} is unreadable ({exc}); "
                                "delete it and set the routes again") from None
        if not isinstance(data, dict) or data.get("backend") != self.backend:
            return {"backend": self.backend, "versions": [], "draining": {}}
        return data

    def slots_of(self, version: str) -> set[str] | None:
        """The server names the state file assigns to ``version``, None when it is not routed."""
        return next((set(v.get("slots", {})) for v in self._load_state().get("versions", [])
                     if v.get("version") == version), None)

    def slot_versions(self) -> dict[str, str]:
        """Server slot -> the version the state file assigns it to, for every routed version (draining slots are
        not in it: the ring reader keeps what it last knew of them)."""
        return {slot: str(v.get("version")) for v in self._load_state().get("versions", [])
                for slot in v.get("slots", {})}

    def state_stamp(self) -> tuple[int, int] | None:
        """Changes whenever the state file is replaced (it is written atomically): (inode, mtime)."""
        try:
            st = os.stat(self.state_file)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    # --- the runtime API -----------------------------------------------------------------------------------

    async def command(self, cmd: str) -> str:
        """One runtime API command on its own connection (non-interactive mode answers, then closes)."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.socket), self.timeout)
        except FileNotFoundError:
            raise ProviderError(f"the HAProxy stats socket {self.socket} does not exist: start haproxy with "
                                f"'stats socket {self.socket} level admin' in its global section") from None
        except PermissionError:
            raise ProviderError(f"permission denied on the HAProxy stats socket {self.socket}: run releasegate "
                                "as a user that may write it (e.g. 'mode 660 group haproxy' on the socket)") from None
        except (ConnectionRefusedError, TimeoutError, OSError) as exc:
            raise ProviderError(f"HAProxy does not answer on {self.socket} ({type(exc).__name__}); "
                                "is haproxy running?") from None
        try:
            writer.write(cmd.encode() + b"\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), self.timeout)
        except (OSError, TimeoutError) as exc:
            raise ProviderError(f"HAProxy on {self.socket} failed during '{cmd}' ({type(exc).__name__})") from None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        text = data.decode(errors="replace")
        first = text.strip().splitlines()[0] if text.strip() else ""
        if first.startswith(("No such", "Unknown command", "Permission denied", "Require ", "Invalid",
                             "'set server", "Can't find")):
            raise ProviderError(f"HAProxy on {self.socket} refused '{cmd}': {first} (backend {self.backend}; "
                                "was the configuration rendered by releasegate and reloaded?)")
        return text

    async def servers(self) -> dict[str, Server]:
        """The backend's servers from ``show servers state``, by name."""
        text = await self.command(f"show servers state {self.backend}")
        lines = text.strip().splitlines()
        header = next((line[1:].split() for line in lines if line.startswith("#")), None)
        if header is None:
            raise ProviderError(f"HAProxy on {self.socket} sent no server state for backend {self.backend}")
        out = {}
        for line in lines:
            if line.startswith("#") or len(line.split()) < len(header):
                continue
            row = dict(zip(header, line.split(), strict=False))
            out[row["srv_name"]] = Server(row["srv_name"], row["srv_addr"], int(row["srv_port"]),
                                          int(row["srv_admin_state"]), int(row["srv_uweight"]))
        return out

    async def stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` rows of the backend's servers, by server name (scur, qcur, req_tot, hrsp_5xx...)."""
        text = await self.command("show stat")
        rows = csv.DictReader(line.lstrip("# ") for line in text.splitlines() if line.strip())
        return {r["svname"]: r for r in rows if r.get("pxname") == self.backend
                and r.get("svname") not in ("FRONTEND", "BACKEND")}

    async def has_ring(self) -> bool:
        """Whether the running HAProxy has this service's ring (``show events`` lists the sinks)."""
        return ring_listed(await self.command("show events"), self.ring)

    async def save_server_state(self) -> Path:
        """Dump ``show servers state`` into the configuration's server-state-file; run it just before a reload."""
        text = await self.command("show servers state")
        path = server_state_path(self.config_file)
        self._write_atomic(path, text)
        return path

    # --- the Router protocol ---------------------------------------------------------------------------------

    async def _retire_drained(self, state: dict[str, Any]) -> None:
        """Drained servers with nothing in flight go to maint and free their slot."""
        draining: dict[str, str] = state.get("draining", {})
        if not draining:
            return
        stats = await self.stats()
        for name in list(draining):
            row = stats.get(name, {})
            if int(row.get("scur") or 0) + int(row.get("qcur") or 0) == 0:
                await self.command(f"set server {self.backend}/{name} state maint")
                del draining[name]

    async def set_routes(self, service: str, routes: Routes) -> None:
        self._check_service(service)
        state = self._load_state()
        await self._retire_drained(state)
        live = await self.servers()
        draining: dict[str, str] = state.setdefault("draining", {})
        old = {v["version"]: v for v in state.get("versions", [])}
        groups: dict[str, int] = {}
        for vr in routes.versions:
            if vr.version in old:
                groups[vr.version] = int(old[vr.version]["group"])
        for vr in routes.versions:
            if vr.version not in groups:
                free = [g for g in range(self.max_versions) if g not in groups.values()]
                if not free:
                    raise ProviderError(f"HAProxy backend {self.backend} serves at most {self.max_versions} "
                                        "versions at once; remove a version from the routes first")
                groups[vr.version] = free[0]
        taken = {n for slots in (v.get("slots", {}) for v in state.get("versions", [])) for n in slots}
        new_versions: list[dict[str, Any]] = []
        for vr in routes.versions:
            group = groups[vr.version]
            prev: dict[str, str] = dict(old.get(vr.version, {}).get("slots", {}))
            if old.get(vr.version, {}).get("group") != group:
                prev = {}
            by_backend = {b: n for n, b in prev.items()}
            slots: dict[str, str] = {}
            for backend in vr.backends:
                _parse_backend(backend)
                name = by_backend.get(backend) or next(
                    (n for n, b in draining.items() if b == backend and n.startswith(f"v{group}_")), None)
                if name is None:
                    name = next((slot_name(group, i) for i in range(self.spec.slots)
                                 if slot_name(group, i) not in taken and slot_name(group, i) not in draining
                                 and slot_name(group, i) not in slots), None)
                if name is None:
                    raise ProviderError(f"HAProxy backend {self.backend} has no free slot for {vr.version} "
                                        f"{backend} (slots: {self.spec.slots}); raise router.slots and re-render")
                draining.pop(name, None)
                slots[name] = backend
                taken.add(name)
            new_versions.append({"version": vr.version, "group": group, "weight": vr.weight, "slots": slots})
        kept = {n for v in new_versions for n in v["slots"]}
        for v in state.get("versions", []):
            for name, backend in v.get("slots", {}).items():
                if name not in kept:
                    draining[name] = backend
        state["versions"] = new_versions
        self._write_atomic(self.state_file, json.dumps(state, indent=1))
        await self._apply(new_versions, draining, live)

    async def _apply(self, versions: list[dict[str, Any]], draining: dict[str, str],
                     live: dict[str, Server]) -> None:
        """Enable and raise first, then lower, then drain: at no moment is every server at weight 0."""
        per_server = spread({v["version"]: v["weight"] for v in versions},
                            {v["version"]: len(v["slots"]) for v in versions})
        raises: list[str] = []
        lowers: list[str] = []
        for v in versions:
            weight = per_server.get(v["version"], 0)
            for name, backend in v["slots"].items():
                host, port = _parse_backend(backend)
                cur = live.get(name)
                if cur is None:
                    raise ProviderError(f"HAProxy backend {self.backend} has no server {name}; re-render "
                                        f"{self.config_file} with releasegate and reload haproxy")
                cmds = raises if cur.maint or not cur.ready or weight >= cur.weight else lowers
                if cur.backend != backend:
                    cmds.append(f"set server {self.backend}/{name} addr {host} port {port}")
                cmds.append(f"set server {self.backend}/{name} weight {weight}")
                if not cur.ready:
                    cmds.append(f"set server {self.backend}/{name} state ready")
        drains = [f"set server {self.backend}/{name} state drain" for name in draining
                  if name in live and live[name].ready]
        for cmd in raises + lowers + drains:
            await self.command(cmd)

    async def reapply(self, service: str) -> None:
        """Send the last routes of the state file again (after a reload that lost the runtime changes)."""
        self._check_service(service)
        state = self._load_state()
        await self._apply(state.get("versions", []), state.get("draining", {}), await self.servers())

    async def get_routes(self, service: str) -> Routes:
        """What HAProxy applies: each version's ready servers (from the state file's slots), their weights
        summed and normalised to 100. The state file is read in a thread: the server's event loop calls this too."""
        self._check_service(service)
        state = await asyncio.to_thread(self._load_state)
        live = await self.servers()
        raw: dict[str, int] = {}
        backends: dict[str, tuple[str, ...]] = {}
        for v in state.get("versions", []):
            up = [live[n] for n in sorted(v.get("slots", {})) if n in live and live[n].ready]
            raw[v["version"]] = sum(s.weight for s in up)
            backends[v["version"]] = tuple(s.backend for s in up)
        pct = normalise(raw)
        return Routes(tuple(VersionRoute(v, pct[v], backends[v]) for v in raw))

    async def inflight(self, service: str, backend: str) -> int:
        """Requests on the servers at ``backend`` (active plus queued); retires drained servers that are idle."""
        self._check_service(service)
        state = self._load_state()
        stats = await self.stats()
        live = await self.servers()
        total = sum(int(stats.get(s.name, {}).get("scur") or 0) + int(stats.get(s.name, {}).get("qcur") or 0)
                    for s in live.values() if s.backend == backend and not s.maint)
        if total == 0 and state.get("draining"):
            await self._retire_drained(state)
            self._write_atomic(self.state_file, json.dumps(state, indent=1))
        return total

    def _check_service(self, service: str) -> None:
        if service != self.service:
            raise ProviderError(f"the HAProxy router for backend {self.backend} serves {self.service!r}, "
                                f"not {service!r}")


def _parse_backend(backend: str) -> tuple[str, int]:
    host, sep, port = backend.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ProviderError(f"backend {backend!r} must be HOST:PORT for HAProxy's 'set server ... addr'")
    return host, int(port)
