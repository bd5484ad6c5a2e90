"""Where versions run besides local processes: containers through a Docker Engine API, and fleets of SSH hosts.

A spec changes ``platform.kind`` and nothing else: every platform has ``instances`` (how many copies of a version
run) and ``stop_grace``, and hands the router ``host:port`` backends. The local platform's model lives in
``releasegate.spec.models`` beside the union of the three.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from releasegate.spec import placeholders, secrets
from releasegate.spec.common import Duration
from releasegate.spec.common import SpecModel as _Model
from releasegate.spec.errors import LocatedValueError

_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
                   r"[A-Za-z0-9])?)*|\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:]*)$")
_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
_ENGINE = re.compile(r"^(unix|tcp|ssh|npipe|http|https)://\S+$")


def _env(v: dict[str, str], allowed: tuple[str, ...]) -> dict[str, str]:
    placeholders.check(v, allowed, "platform.env")
    for key, value in v.items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise LocatedValueError(f"environment variable name {key!r} must be letters, digits and '_'", (key,))
        problem = secrets.env_form_problem(value)
        if problem:
            raise LocatedValueError(problem, (key,))
    return v


def _volume(i: int, v: str) -> str:
    parts = v.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1].startswith("/") or \
            (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise LocatedValueError(f"volume {v!r} must be HOST_PATH:CONTAINER_PATH[:ro|rw] with an absolute container "
                                "path, e.g. ./data:/app/data:ro", (i,))
    return v


class ContainerRun(_Model):
    """What a container needs, shared by ``kind: docker`` and ``kind: ssh`` with ``run: docker``."""

    image: str | None = Field(None, description="Image reference; {version} and {service} are substituted, e.g. "
                              "registry.example/shop:{version}.")
    port: int | None = Field(None, ge=1, le=65535, description="The port the app listens on inside the container; "
                             "releasegate publishes it on a free host port (bridge network).")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment; {port}, {version}, "
                                "{service} and {host} are substituted per instance; ${env:NAME} is resolved from "
                                "releasegate's environment as the instance starts.")
    volumes: list[str] = Field(default_factory=list, description="HOST_PATH:CONTAINER_PATH[:ro|rw]; a relative "
                               "host path is relative to the spec file (on an SSH host: to the login directory).")
    pull: Literal["always", "missing", "never"] = Field("missing", description="When to pull the image before "
                                                         "starting it.")
    network: Literal["bridge", "host"] = Field("bridge", description="bridge: the container's port is published "
                                               "on a free host port; host: the app shares the host's network and "
                                               "must listen on $PORT.")
    args: list[str] | None = Field(None, description="Command arguments instead of the image's CMD; {port}, "
                                   "{version}, {service} and {host} are substituted.")

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        if v is not None:
            placeholders.check(v, placeholders.VERSION, "platform.image")
            if not v.strip() or any(c.isspace() for c in v):
                raise ValueError(f"image {v!r} must be an image reference without spaces, e.g. shop:{{version}}")
        return v

    @field_validator("env")
    @classmethod
    def _env_ok(cls, v: dict[str, str]) -> dict[str, str]:
        return _env(v, placeholders.PROCESS)

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, v: list[str]) -> list[str]:
        return [_volume(i, item) for i, item in enumerate(v)]

    @field_validator("args")
    @classmethod
    def _args(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            placeholders.check(v, placeholders.PROCESS, "platform.args")
        return v

    def image_for(self, service: str, version: str) -> str:
        return placeholders.substitute_text(self.image or "", {"service": service, "version": version})


class DockerPlatform(ContainerRun):
    """Each instance is a container of the version's image, started through the Docker Engine API (Docker Engine or
    Podman's compatible service); containers are labelled so a restarted controller finds them again."""

    kind: Literal["docker"] = Field(description="Which platform runs the versions.")
    image: str = Field(description="Image reference; {version} and {service} are substituted, e.g. "
                       "registry.example/shop:{version}.")
    port: int = Field(description="The port the app listens on inside the container; releasegate "
                             "publishes it on a free host port (bridge network).", ge=1, le=65535)
    instances: int = Field(1, ge=1, le=64, description="Containers per version.")
    engine: str | None = Field(None, description="Docker Engine API address, e.g. unix:///var/run/docker.sock; "
                               "default: $DOCKER_HOST, then the default socket.")
    stop_grace: Duration = Field(10.0, description="The engine's stop timeout (SIGTERM, then SIGKILL), then the "
                                 "container is removed.")
    memory: str | None = Field(None, description="Memory limit per container, e.g. 256m or 1g (the engine's "
                               "limit; a container that exceeds it is OOM-killed and reported as such).")

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[1-9][0-9]*[bkmg]?$", v.strip().lower()):
            raise ValueError(f"memory {v!r} must be a size such as 256m or 1g")
        return v.strip().lower() if v is not None else v

    @field_validator("engine")
    @classmethod
    def _engine(cls, v: str | None) -> str | None:
        if v is not None and not _ENGINE.match(v):
            raise ValueError(f"engine {v!r} must be a URL such as unix:///var/run/docker.sock or tcp://host:2375")
        return v


class SshPlatform(ContainerRun):
    """Each instance runs on one of ``hosts``, reached over SSH: a command (``run: command``) or a container
    (``run: docker``, through the host's docker CLI). What runs is recorded on the host itself."""

    kind: Literal["ssh"] = Field(description="Which platform runs the versions.")
    hosts: list[str] = Field(min_length=1, max_length=256, description="HOST or HOST:SSH_PORT, one per machine.")
    user: str | None = Field(None, description="Login user; default: the current user.")
    identity: str | None = Field(None, description="Private key file (~ is expanded); default: the SSH agent "
                                 "and ~/.ssh's keys.")
    known_hosts: str | None = Field(None, description="known_hosts file checked for every host (strict); "
                                    "default: ~/.ssh/known_hosts.")
    strict_host_keys: bool = Field(True, description="Refuse a host whose key is unknown or changed.")
    connect_timeout: Duration = Field(10.0, description="How long to wait for a host to answer.")
    run: Literal["command", "docker"] = Field("command", description="command: a process per instance; docker: a "
                                              "container per instance through the hosts' docker_cli (image, port, "
                                              "env, volumes, pull, network, args as kind: docker).")
    command: str | None = Field(None, description="For run: command: the shell command on the host; {port} "
                                "(required), {version}, {service} and {host} are substituted.")
    cwd: str | None = Field(None, description="For run: command: working directory on the host; {version} and "
                            "{service} are substituted; default: the login directory.")
    instances_per_host: int = Field(1, ge=1, le=16, description="Instances of a version on each host.")
    max_parallel_hosts: int = Field(1, ge=1, description="Hosts changed at once by a rolling update (a batch is at "
                                    "most this many hosts' instances).")
    stop_grace: Duration = Field(10.0, description="SIGTERM (or docker stop), then SIGKILL after this long.")
    docker_cli: str = Field("docker", description="For run: docker: the container CLI on the hosts, as words "
                            "(docker, podman, sudo docker, env DOCKER_HOST=... docker).")
    remote_dir: str = Field("~/.releasegate", description="Where each host keeps its instances' records and logs "
                            "(a subdirectory per releasegate state dir, host and service); ~/ is the login "
                            "directory.")

    @field_validator("docker_cli")
    @classmethod
    def _docker_cli(cls, v: str) -> str:
        if not v.strip() or any(c in "$`\\\"'*?;&|<>()\n" for c in v):
            raise ValueError(f"docker_cli {v!r} must be plain words (a program and its options), e.g. podman")
        return v

    @field_validator("remote_dir")
    @classmethod
    def _remote_dir(cls, v: str) -> str:
        if not v.strip() or any(c.isspace() or c in "$`\\\"'" for c in v) or (v.startswith("~") and v != "~" and
                                                                              not v.startswith("~/")):
            raise ValueError(f"remote_dir {v!r} must be a path without spaces or quotes, absolute or under ~/, "
                             "e.g. /var/lib/releasegate")
        return v

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for i, item in enumerate(v):
            host, port = split_host(item)
            if not _HOST.match(host) or not 1 <= port <= 65535:
                raise LocatedValueError(f"host {item!r} must be HOST or HOST:PORT, e.g. app1.internal:2222", (i,))
        if len(set(v)) != len(v):
            raise ValueError("hosts lists a host twice; list each machine once (instances_per_host runs more)")
        return v

    @field_validator("user")
    @classmethod
    def _user(cls, v: str | None) -> str | None:
        if v is not None and not _USER.match(v):
            raise ValueError(f"user {v!r} must be a login name (lower-case letters, digits, '_', '-', '.')")
        return v

    @field_validator("command")
    @classmethod
    def _command(cls, v: str | None) -> str | None:
        if v is not None:
            placeholders.check(v, placeholders.PROCESS, "platform.command")
            if "port" not in placeholders.used(v):
                raise ValueError("the command must contain {port} so each instance can listen on its own port")
        return v

    @model_validator(mode="after")
    def _what_runs(self) -> SshPlatform:
        if self.run == "command" and self.command is None:
            raise LocatedValueError("run: command needs a command, e.g. command: '/opt/shop/bin/shop --port {port}' "
                                    "(or run: docker with an image)", ("command",))
        return self

    def missing_for_run(self) -> str | None:
        """What ``run: docker`` still lacks. Loading accepts the spec (a fleet's spec may be written before its
        image exists); preflight refuses to deploy it with this message, before anything starts."""
        if self.run == "docker" and (self.image is None or self.port is None):
            missing = "image" if self.image is None else "port"
            return (f"platform.run: docker needs platform.{missing} (the image, and the port the app listens on "
                    "inside the container); add it or use run: command")
        return None

    @property
    def instances(self) -> int:
        """Instances of a version when it runs everywhere: every host, ``instances_per_host`` each."""
        return len(self.hosts) * self.instances_per_host

    def host_list(self) -> list[tuple[str, int]]:
        return [split_host(h) for h in self.hosts]


def split_host(item: str) -> tuple[str, int]:
    """``app1`` -> (app1, 22); ``app2:2222`` -> (app2, 2222); ``[::1]:22`` -> (::1, 22)."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "22"
    else:
        host, sep, port = item.partition(":")
        port = port if sep else "22"
    return host, int(port) if port.isdigit() else 0
