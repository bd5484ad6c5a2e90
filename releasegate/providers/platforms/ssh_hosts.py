"""Placeholder until the platform lands: every call says it is not available (see issue 10)."""

from __future__ import annotations

from pathlib import Path

from releasegate.errors import ProviderError
from releasegate.providers.base import DeadInstance, Instance
from releasegate.spec import models


class SshPlatform:
    def __init__(self, spec: models.SshPlatform, state_dir: Path, spec_dir: Path) -> None:
        self.spec = spec
        self.state_dir = state_dir
        self.spec_dir = spec_dir

    def _no(self) -> ProviderError:
        return ProviderError(f"platform kind {self.spec.kind} is not available in this build yet")

    async def start(self, service: str, version: str, count: int) -> list[Instance]:
        raise self._no()

    async def stop(self, instance: Instance, grace: float) -> None:
        raise self._no()

    async def instances(self, service: str) -> list[Instance]:
        raise self._no()

    async def alive(self, instance: Instance) -> bool:
        raise self._no()

    def running(self, service: str) -> list[Instance]:
        raise self._no()

    async def reconcile(self, service: str) -> list[str]:
        raise self._no()

    async def dead_instances(self, service: str) -> list[DeadInstance]:
        raise self._no()

    async def exit_info(self, instance: Instance) -> DeadInstance | None:
        raise self._no()

    async def preflight(self, service: str, version: str) -> list[tuple[str, bool, str]]:
        raise self._no()
