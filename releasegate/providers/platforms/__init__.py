"""Platforms run versions: ``make_platform`` picks one by the spec's ``platform.kind``.

One module per platform: ``local`` (processes on this machine), ``containers`` (a Docker Engine API: Docker or
Podman), ``ssh_hosts`` (a fleet reached over SSH). Each satisfies ``releasegate.providers.base.ManagedPlatform``;
nothing outside this package names a platform class, so adding one is one module and one branch here.
"""

from __future__ import annotations

from pathlib import Path

from releasegate.errors import ProviderError
from releasegate.providers.base import ManagedPlatform
from releasegate.spec.models import AnyPlatform, DockerPlatform, LocalPlatform, SshPlatform


def make_platform(spec: AnyPlatform, state_dir: Path, spec_dir: Path) -> ManagedPlatform:
    """The platform for ``spec``; builds no connection (each call connects when it needs to)."""
    if isinstance(spec, LocalPlatform):
        from releasegate.providers.platforms.local import LocalPlatform as Local

        return Local(spec, state_dir, spec_dir)
    if isinstance(spec, DockerPlatform):
        try:
            from releasegate.providers.platforms.containers import ContainerPlatform
        except ImportError as exc:
            raise ProviderError(f"platform kind docker is not available in this build: {exc}") from None
        return ContainerPlatform(spec, state_dir, spec_dir)
    if isinstance(spec, SshPlatform):
        try:
            from releasegate.providers.platforms.ssh_hosts import SshPlatform as Ssh
        except ImportError as exc:
            raise ProviderError(f"platform kind ssh is not available in this build: {exc}") from None
        return Ssh(spec, state_dir, spec_dir)
    raise ProviderError(f"platform kind {spec.kind} is not available in this build")
