"""What every platform does the same way when it starts instances."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from releasegate.errors import ProviderError
from releasegate.providers.base import Instance
from releasegate.spec import models


def check_names(service: str, version: str) -> None:
    """Both end up in file names, labels and commands, so they are held to the spec's safe alphabets here too."""
    if not models.SERVICE_NAME.match(service) or not models.VERSION_NAME.match(version):
        raise ProviderError(f"unsafe service or version name: {service!r} {version!r}")


async def all_or_none(starts: Iterable[Awaitable[Instance]],
                      undo: Callable[[Instance], Awaitable[None]]) -> list[Instance]:
    """Start instances together; if one fails, the others started with it are undone (stopped) and its error is
    raised, so a failed start leaves nothing half-started behind."""
    results = await asyncio.gather(*starts, return_exceptions=True)
    started = [r for r in results if isinstance(r, Instance)]
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is not None:
        for inst in started:
            await undo(inst)
        raise failure
    return started
