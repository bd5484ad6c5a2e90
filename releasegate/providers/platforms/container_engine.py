"""The engine side of the container platform: reaching a Docker Engine API (Docker or Podman) through the official
SDK, the labels that make a container findable, reading a container back as an instance (or a dead one), image
pulls with progress, and the image's own HEALTHCHECK.

The SDK is synchronous; every function here blocks and ``ContainerPlatform`` (containers.py) runs them in
``asyncio.to_thread``. Errors become one-line ``ProviderError`` messages that name the engine's address and, when
the engine is not reachable, the fix.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container

from releasegate.errors import ProviderError
from releasegate.providers.base import DeadInstance, Instance

DEFAULT_ENGINE = "unix:///var/run/docker.sock"
API_VERSION = "1.41"  # Docker Engine 20.10+ and Podman 4 speak it; a fixed version saves a request per client
PREFIX = "io.releasegate."
SERVICE, VERSION, INSTANCE, STATE_DIR = (PREFIX + k for k in ("service", "version", "instance", "state-dir"))
STARTED, PORT = PREFIX + "started-at", PREFIX + "port"
HOST = "127.0.0.1"
Say = Callable[[str], None]


def engine_address(configured: str | None) -> str:
    """``platform.engine``, then ``$DOCKER_HOST``, then Docker's default socket."""
    return configured or os.environ.get("DOCKER_HOST") or DEFAULT_ENGINE


def unreachable(address: str, exc: BaseException) -> ProviderError:
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    return ProviderError(f"cannot reach the container engine at {address} ({reason}); start Docker or "
                         f"`podman system service --time=0 {address}`, or point platform.engine (or $DOCKER_HOST) "
                         "at a running engine")


def connect(configured: str | None) -> docker.DockerClient:
    """A client for ``platform.engine``; without one, Docker's own environment (``DOCKER_HOST``, and
    ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH`` for a TLS engine) as the docker CLI reads it. Connects lazily."""
    try:
        if configured is None:
            return docker.from_env(version=API_VERSION, timeout=60)
        return docker.DockerClient(base_url=configured, version=API_VERSION, timeout=60)
    except docker.errors.DockerException as exc:
        raise unreachable(engine_address(configured), exc) from None


def engine_error(address: str, exc: BaseException, doing: str) -> ProviderError:
    """One line for what the engine refused (its own message) or why it could not be asked."""
    if isinstance(exc, requests.exceptions.ConnectionError | FileNotFoundError | ConnectionError):
        return unreachable(address, exc)
    if isinstance(exc, docker.errors.APIError):
        said = exc.explanation or str(exc)
        text = said.decode() if isinstance(said, bytes) else str(said)
        return ProviderError(f"{doing}: the engine at {address} says: {' '.join(text.split())}")
    return ProviderError(f"{doing}: {type(exc).__name__}: {' '.join(str(exc).split())}")


def is_podman(client: docker.DockerClient) -> bool:
    components = client.version().get("Components") or []
    return any("podman" in str(c.get("Name", "")).lower() for c in components)


# --- images ---------------------------------------------------------------------------------------------------------


def has_image(client: docker.DockerClient, image: str) -> bool:
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        return False
    return True


def pull(client: docker.DockerClient, image: str, say: Say | None, every: float = 2.0) -> None:
    """Pull ``image``, telling ``say`` what happens: each layer's state changes once (``Pulling fs layer``,
    ``Pull complete``) and the transfer at most every ``every`` seconds; raises APIError with the engine's message."""
    repository, tag = split_image(image)
    last = 0.0
    seen: set[tuple[str, str]] = set()
    stream: Iterator[dict[str, Any]] = client.api.pull(repository, tag=tag, stream=True, decode=True)
    for event in stream:
        if "error" in event:
            raise docker.errors.APIError(str(event["error"]), explanation=str(event["error"]))
        status, layer = str(event.get("status", "")), str(event.get("id", ""))
        progress = str(event.get("progress", ""))
        if say is None or not status:
            continue
        if progress:
            now = time.monotonic()
            if now - last >= every:
                last = now
                say(f"pulling {image}: {layer} {status} {' '.join(progress.split())}".strip())
        elif (layer, status) not in seen:
            seen.add((layer, status))
            say(f"pulling {image}: {f'{layer}: ' if layer else ''}{status}")
    if say is not None:
        say(f"pulled {image}")


def split_image(image: str) -> tuple[str, str | None]:
    """``registry:5000/shop:1.2`` -> (registry:5000/shop, 1.2); no tag -> latest; a digest: the SDK splits it."""
    if "@" in image:
        return image, None
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return image, "latest"
    return name, tag


# --- containers as instances ----------------------------------------------------------------------------------------


def labels_of(service: str, version: str, id: str, state_dir: str, port: int) -> dict[str, str]:
    return {SERVICE: service, VERSION: version, INSTANCE: id, STATE_DIR: state_dir, PORT: str(port),
            STARTED: f"{time.time():.6f}"}


def filters(service: str, state_dir: str) -> dict[str, Any]:
    return {"label": [f"{SERVICE}={service}", f"{STATE_DIR}={state_dir}"]}


def instance_of(c: Container) -> Instance:
    """The instance a labelled container is: its backend is 127.0.0.1 and the port chosen for it (host network,
    in the labels) or the one the engine published (bridge: picked by the engine after the labels were set)."""
    labels = c.labels
    return Instance(labels.get(SERVICE, ""), labels.get(VERSION, ""), labels.get(INSTANCE, ""), HOST,
                    _label_port(labels) or published_port(c), None, None, _label_started(labels), c.name)


def listed(client: docker.DockerClient, service: str, state_dir: str) -> list[dict[str, Any]]:
    """The engine's summary of every container of ``service`` in ``state_dir`` (one request; no per-container
    inspect, which Podman can refuse for a moment while it cleans up a container that just exited), oldest first."""
    rows = client.api.containers(all=True, filters=filters(service, state_dir))
    mine = [r for r in rows if (r.get("Labels") or {}).get(STATE_DIR) == state_dir]  # an engine ignoring a filter
    return sorted(mine, key=lambda r: (summary_instance(r).started_at, summary_instance(r).id))


def summary_instance(row: dict[str, Any]) -> Instance:
    """``instance_of`` for a row of the engine's container list."""
    labels = row.get("Labels") or {}
    port = _label_port(labels)
    if not port:
        port = next((int(p["PublicPort"]) for p in row.get("Ports") or [] if p.get("PublicPort")), 0)
    names = row.get("Names") or [""]
    return Instance(labels.get(SERVICE, ""), labels.get(VERSION, ""), labels.get(INSTANCE, ""), HOST, port, None,
                    None, _label_started(labels), str(names[0]).lstrip("/"))


def _label_port(labels: dict[str, str]) -> int:
    text = labels.get(PORT, "0")
    return int(text) if text.isdigit() else 0


def _label_started(labels: dict[str, str]) -> float:
    try:
        return float(labels.get(STARTED, "0"))
    except ValueError:
        return 0.0


def published_port(c: Container) -> int:
    """The host port the engine published the container's one port on (bridge network); 0 when none."""
    for bindings in ((c.attrs.get("NetworkSettings") or {}).get("Ports") or {}).values():
        for binding in bindings or []:
            if str(binding.get("HostPort", "")).isdigit():
                return int(binding["HostPort"])
    return 0


def dead_of(c: Container, tail_lines: int = 3, limit: int = 400) -> DeadInstance:
    """What an exited container left: its exit code, whether the kernel OOM-killed it, and its log's tail."""
    state = c.attrs.get("State", {})
    code = state.get("ExitCode")
    cause = None
    if state.get("OOMKilled"):
        cause = f"was OOM-killed (exit code {code})"
    elif isinstance(code, int) and 128 < code <= 128 + 64:
        try:
            cause = f"exited with code {code} (killed by {signal.Signals(code - 128).name})"
        except ValueError:
            cause = None
    return DeadInstance(instance_of(c), code if isinstance(code, int) else None, log_tail(c, tail_lines, limit),
                        parse_time(state.get("FinishedAt")), cause)


def log_tail(c: Container, lines: int = 3, limit: int = 400) -> str:
    """The last lines the container wrote (the engine's logs), on one line."""
    try:
        raw = c.logs(tail=max(lines * 4, 20))
    except docker.errors.APIError:
        return ""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    out = " | ".join(kept)
    return out if len(out) <= limit else "…" + out[-limit:]


def parse_time(text: object) -> float:
    """An engine timestamp (RFC 3339 with nanoseconds) as epoch seconds; 0 for the zero time or nonsense."""
    if not isinstance(text, str) or text.startswith("0001-"):
        return 0.0
    head, _, rest = text.partition(".")
    zone = rest.lstrip("0123456789") if rest else text[19:]
    fraction = rest[: len(rest) - len(zone)] if rest else ""
    try:
        base = dt.datetime.fromisoformat(head[:19] + (zone.replace("Z", "+00:00") or "+00:00"))
    except ValueError:
        return 0.0
    return base.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)


# --- the image's HEALTHCHECK ----------------------------------------------------------------------------------------


def engine_health(client: docker.DockerClient, c: Container, podman: bool) -> tuple[str, str] | None:
    """(status, last health log line) of a container whose image has a HEALTHCHECK; None without one.

    Docker runs the check on its own schedule. Podman schedules checks with systemd timers, which do not exist
    where its service runs outside systemd (as in the tests), so on Podman a container still ``starting`` gets one
    check run now through Podman's own endpoint (``/libpod/containers/ID/healthcheck``)."""
    check = (c.attrs.get("Config") or {}).get("Healthcheck") or {}
    test = check.get("Test") or []
    if not test or test[0] == "NONE":
        return None
    health = (c.attrs.get("State") or {}).get("Health") or {}
    if podman and health.get("Status") in ("starting", "", None):
        client.api.get(f"{client.api.base_url}/v{API_VERSION}/libpod/containers/{c.id}/healthcheck")
        c.reload()
        health = (c.attrs.get("State") or {}).get("Health") or {}
    log = health.get("Log") or []
    last = log[-1] if log else {}
    said = " ".join(str(last.get("Output", "")).split())
    line = f"exit code {last.get('ExitCode')}" + (f": {said}" if said else "") if last else "no check ran yet"
    return str(health.get("Status") or "starting"), line
