"""Containers as the platform (``platform: {kind: docker}``): each instance is a container of the version's image,
run by a Docker Engine API (Docker Engine, or Podman's ``podman system service``) through the official SDK.

The engine is the record. Every container carries labels (service, version, instance id, the releasegate state dir
it belongs to, its backend port, when it started), so a restarted controller, ``status``, ``down`` and ``gc`` read
the instances back from the engine, filtered by service *and* state dir: two state dirs on one engine never see
(or stop) each other's containers. An exited container is kept (not auto-removed) until ``stop``: that is how its
exit code, the engine's OOM verdict and its log's tail reach the controller, as a dead process's do.

Networking: ``bridge`` publishes the container's ``port`` on 127.0.0.1 on a port the engine picks (the backend
is 127.0.0.1:<that port>); ``host`` shares the host's network and the app listens on ``$PORT``, a free port chosen
here. The SDK blocks, so every engine call runs in ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
from docker.models.containers import Container

from releasegate.errors import ProviderError
from releasegate.fileio import next_number
from releasegate.providers.base import DeadInstance, Instance
from releasegate.providers.metrics.containers import ContainerMetrics
from releasegate.providers.platforms import container_engine as engine
from releasegate.providers.platforms.container_engine import HOST, Say
from releasegate.providers.platforms.local_processes import free_port
from releasegate.providers.platforms.starting import all_or_none, check_names
from releasegate.spec import models, placeholders, secrets
from releasegate.spec.common import artifact_version

T = TypeVar("T")
_PULLED: dict[tuple[str, str], float] = {}
"""(engine, image) -> when this process pulled it: deploy's preflight pulls, so its start need not pull again."""
_PULL_FRESH = 600.0
_PORT_ATTEMPTS = 3
_ADDRESS_IN_USE = ("address already in use", "eaddrinuse", "errno 98")
_POLL = 0.05
_ENDED = ("exited", "dead", "stopped")  # "stopped": libpod's state for a stopped container, should an engine say it


class ContainerPlatform:
    """The ``ManagedPlatform`` for ``platform: {kind: docker}``; see the module docstring for where state lives."""

    def __init__(self, spec: models.DockerPlatform, state_dir: Path, spec_dir: Path, *,
                 startup_grace: float = 1.0) -> None:
        """``startup_grace``: how long ``start`` watches a new container for an early exit; it stops watching as
        soon as the backend accepts connections."""
        self.spec = spec
        self.state_dir = str(Path(state_dir).resolve())
        self.ids_dir = Path(state_dir) / "platform" / "docker"
        self.spec_dir = Path(spec_dir)
        self.address = engine.engine_address(spec.engine)
        self.startup_grace = startup_grace
        self.notify: Say | None = None  # pull progress goes here (the controller and deploy's preflight set it)
        self._client: docker.DockerClient | None = None
        self._podman: bool | None = None
        self._locks: dict[str, asyncio.Lock] = {}

    # --- the Platform protocol ------------------------------------------------------------------------------

    async def start(self, service: str, version: str, count: int) -> list[Instance]:
        """Ensure ``count`` running containers of ``version``: the oldest running ones, plus new ones. If a new one
        exits at once, the others this call started are removed too and ProviderError says why (its log's tail)."""
        check_names(service, version)
        async with self._locks.setdefault(service, asyncio.Lock()):
            live = [i for i in await self.instances(service) if i.version == version]
            missing = count - len(live)
            if missing <= 0:
                return live[:count]
            image = self.spec.image_for(service, artifact_version(version))  # a baseline: the previous one's
            await self._call(self._ensure_image, image, self.spec.pull == "always", doing=f"pulling {image}")
            started = await all_or_none((self._start_one(service, version, image) for _ in range(missing)),
                                        lambda inst: self.stop(inst, min(self.spec.stop_grace, 5.0)))
            return live + sorted(started, key=lambda i: (i.started_at, i.id))

    async def stop(self, instance: Instance, grace: float) -> None:
        """The engine's stop (SIGTERM, SIGKILL after ``grace``), then remove; a container already gone is fine."""
        await self._call(self._stop, instance, grace, doing=f"stopping {instance.ref or instance.id}")

    async def instances(self, service: str) -> list[Instance]:
        """Running containers of every version of ``service`` in this state dir, oldest first, from the engine."""
        return await self._call(self.running, service, doing="listing containers")

    def running(self, service: str) -> list[Instance]:
        """``instances()`` without an event loop (``status``): one engine request."""
        return self._list(service, lambda row: row.get("State") == "running")

    async def alive(self, instance: Instance) -> bool:
        found = await self._call(self._find, instance, doing="inspecting a container")
        return found is not None and found.status == "running"

    async def reconcile(self, service: str) -> list[str]:
        """The labels are the record, so there is nothing to adopt; a container created but never started (its
        controller was killed in between) is removed, one line each."""
        return await self._call(self._reconcile, service, doing="reconciling containers")

    async def preflight(self, service: str, version: str) -> list[tuple[str, bool, str]]:
        """The engine answers, and the version's image is there: present, or pulled now (``pull: missing`` or
        ``always``), so a missing image or tag fails here, with the engine's message, before anything starts."""
        image = self.spec.image_for(service, version)
        try:
            said = await self._call(self._ensure_image, image, self.spec.pull == "always", doing=f"image {image}")
        except ProviderError as exc:
            return [("image", False, str(exc))]
        return [("image", True, said)]

    # --- noticing deaths ------------------------------------------------------------------------------------

    async def dead_instances(self, service: str) -> list[DeadInstance]:
        """Containers that exited (or were OOM-killed) without ``stop()``, oldest first, until ``stop`` removes
        them."""
        return await self._call(self._dead, service, doing="listing exited containers")

    async def exit_info(self, instance: Instance) -> DeadInstance | None:
        found = await self._call(self._find, instance, doing="inspecting a container")
        if found is None or found.status not in _ENDED:
            return None
        return await self._call(engine.dead_of, found, doing=f"reading the exit of {found.name}")

    async def engine_health(self, instance: Instance) -> tuple[str, str] | None:
        """The image's HEALTHCHECK verdict (status, last check's line); None when the image has none (or the
        container is gone: the HTTP check and dead-instance detection say so)."""
        def ask() -> tuple[str, str] | None:
            found = self._find(instance)
            if found is None:
                return None
            if self._podman is None:
                self._podman = engine.is_podman(self.client)
            return engine.engine_health(self.client, found, self._podman)

        return await self._call(ask, doing="reading the HEALTHCHECK")

    async def stats(self, instance: Instance) -> dict[str, Any] | None:
        """The engine's one-shot stats of the instance's container (cpu time, memory); None once it is gone."""
        def read() -> dict[str, Any] | None:
            try:
                found: dict[str, Any] = self.client.api.stats(instance.ref or "", stream=False)
            except docker.errors.NotFound:
                return None
            return found

        return await self._call(read, doing=f"reading the stats of {instance.ref}")

    def metric_source(self) -> ContainerMetrics:
        """cpu and memory rules on containers read the engine's stats (releasegate.providers.metrics.containers)."""
        return ContainerMetrics(self)

    # --- engine calls (blocking; run in a thread) -----------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = engine.connect(self.spec.engine)
        return self._client

    async def _call(self, fn: Callable[..., T], *args: Any, doing: str, **kwargs: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except ProviderError:
            raise
        except Exception as exc:  # the SDK's errors, and requests' or the socket's from inside it
            raise engine.engine_error(self.address, exc, doing) from None

    def _rows(self, service: str) -> list[dict[str, Any]]:
        return engine.listed(self.client, service, self.state_dir)

    def _list(self, service: str, keep: Callable[[dict[str, Any]], bool]) -> list[Instance]:
        try:
            return [engine.summary_instance(r) for r in self._rows(service) if keep(r)]
        except ProviderError:
            raise
        except Exception as exc:
            raise engine.engine_error(self.address, exc, f"listing the containers of {service}") from None

    def _inspect(self, row: dict[str, Any]) -> Container | None:
        try:
            return self.client.containers.get(row["Id"])
        except docker.errors.NotFound:
            return None  # removed meanwhile

    def _dead(self, service: str) -> list[DeadInstance]:
        found = [self._inspect(r) for r in self._rows(service) if r.get("State") in _ENDED]
        return [engine.dead_of(c) for c in found if c is not None]

    def _find(self, instance: Instance) -> Container | None:
        for row in self._rows(instance.service):
            labels = row.get("Labels") or {}
            if engine.summary_instance(row).ref == instance.ref or (
                    labels.get(engine.INSTANCE) == instance.id and labels.get(engine.VERSION) == instance.version):
                return self._inspect(row)
        return None

    def _stop(self, instance: Instance, grace: float) -> None:
        c = self._find(instance)
        if c is None:
            return
        try:
            if c.status == "running":
                c.stop(timeout=max(0, math.ceil(grace)))  # the API counts whole seconds
            c.remove(force=True)
        except docker.errors.NotFound:
            return  # removed meanwhile (another stop): what was asked is done

    def _reconcile(self, service: str) -> list[str]:
        said = []
        for row in self._rows(service):
            inst = engine.summary_instance(row)
            if row.get("State") != "created" or time.time() - inst.started_at < 60:
                continue  # a container created a moment ago: its controller is about to start it
            self.client.api.remove_container(row["Id"], force=True)
            said.append(f"instance {service} {inst.version} {inst.id}: removed container {inst.ref}, created "
                        "but never started (its controller ended in between)")
        return said

    def _ensure_image(self, image: str, always: bool) -> str:
        """Pull when asked to (``always``, or missing and allowed); what was done, for preflight's line."""
        key = (self.address, image)
        present = engine.has_image(self.client, image)
        fresh = time.monotonic() - _PULLED.get(key, float("-inf")) < _PULL_FRESH
        if present and (not always or fresh):
            return f"{image} is present on the engine at {self.address}"
        if self.spec.pull == "never":
            raise ProviderError(f"image {image} is not on the engine at {self.address} and platform.pull is never; "
                                "load or build it there, or set pull: missing")
        started = time.monotonic()
        try:
            engine.pull(self.client, image, self.notify)
        except docker.errors.APIError as exc:
            raise engine.engine_error(self.address, exc, f"cannot pull image {image}") from None
        _PULLED[key] = time.monotonic()
        return f"{image} pulled in {time.monotonic() - started:.1f}s from its registry"

    # --- starting one ---------------------------------------------------------------------------------------

    async def _start_one(self, service: str, version: str, image: str) -> Instance:
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            c = await self._call(self._create, service, version, image, doing=f"starting a container of {image}")
            code = await self._watch_start(c)
            inst = engine.instance_of(c)
            if code is None:
                return inst
            dead = await self._call(engine.dead_of, c, 5, 600, doing=f"reading the exit of {c.name}")
            await self._call(c.remove, doing=f"removing container {c.name}", force=True)
            if attempt < _PORT_ATTEMPTS and self.spec.network == "host" and \
                    any(s in dead.log_tail.lower() for s in _ADDRESS_IN_USE):
                continue  # someone took the port between our probe and the app's bind: another one
            hint = " (the container's command must keep running in the foreground)" if code == 0 else ""
            how = dead.cause or f"exited with code {code}"
            raise ProviderError(f"instance {service} {version} (container {c.name}) {how} right after start{hint}: "
                                f"{dead.log_tail or '(no output)'}")
        raise AssertionError("unreachable")

    def _create(self, service: str, version: str, image: str) -> Container:
        id = self._next_id(service)
        name = f"rg-{service}-{re.sub(r'[^A-Za-z0-9_.-]', '_', version)}-{id}-{_short(self.state_dir)}"
        host_network = self.spec.network == "host"
        port = free_port() if host_network else self.spec.port
        run = artifact_version(version)  # labels keep the version name (a baseline's own), the app sees its artifact
        values: dict[str, object] = {"service": service, "version": run, "port": port, "host": HOST}
        env = {key: secrets.resolve(placeholders.substitute_text(value, values), f"platform.env.{key}")
               for key, value in self.spec.env.items()}
        env.update({"PORT": str(port), "RELEASEGATE_VERSION": run, "RELEASEGATE_SERVICE": service})
        args = [placeholders.substitute_text(a, values) for a in self.spec.args] if self.spec.args else None
        options: dict[str, Any] = {
            "name": name, "environment": env, "volumes": self._volumes(), "detach": True,
            "labels": engine.labels_of(service, version, id, self.state_dir, port if host_network else 0)}
        if self.spec.memory:
            options["mem_limit"] = self.spec.memory
        if host_network:
            options["network_mode"] = "host"
        else:
            options["ports"] = {f"{self.spec.port}/tcp": (HOST, None)}  # the engine picks a free host port
        c = self.client.containers.create(image, args, **options)
        try:
            c.start()
            c.reload()
            if not host_network:
                self._check_published(c)
        except BaseException:
            c.remove(force=True)
            raise
        return c

    def _check_published(self, c: Container) -> None:
        if engine.published_port(c) == 0:
            raise ProviderError(f"container {c.name}: the engine did not publish port {self.spec.port} (network: "
                                "bridge); try network: host")

    def _volumes(self) -> list[str]:
        out = []
        for item in self.spec.volumes:
            host, _, rest = item.partition(":")
            path = Path(host).expanduser()
            out.append(f"{path if path.is_absolute() else (self.spec_dir / path).resolve()}:{rest}")
        return out

    def _next_id(self, service: str) -> str:
        """A per-service counter under a file lock, as the local platform's: ids stay unique across restarts."""
        directory = self.ids_dir / service
        directory.mkdir(parents=True, exist_ok=True)
        return f"{next_number(directory / 'next-id'):04d}"

    async def _watch_start(self, c: Container) -> int | None:
        """The exit code if the container ends within the grace; None once its backend accepts connections or the
        grace is over."""
        deadline = time.monotonic() + self.startup_grace
        port = engine.instance_of(c).port
        while True:
            await self._call(c.reload, doing=f"watching container {c.name} start")
            if c.status in _ENDED:
                code = (c.attrs.get("State") or {}).get("ExitCode")
                return code if isinstance(code, int) else -1
            if await _accepts(port) or time.monotonic() >= deadline:
                return None
            await asyncio.sleep(_POLL)


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 0.5)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]
