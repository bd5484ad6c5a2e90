"""``notify:``: who hears about what, as Apprise URLs (Slack, Teams, Discord, PagerDuty, e-mail, JSON webhooks)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from releasegate.spec.common import SpecModel

EVENTS = ("started", "step", "paused", "promoted", "rolled_back", "aborted", "refused")
Event = Literal["started", "step", "paused", "promoted", "rolled_back", "aborted", "refused"]


class NotifyTarget(SpecModel):
    """One destination; a failing one is recorded and retried, never blocking a rollout."""

    url: str = Field(description="An Apprise URL, e.g. slack://TokenA/TokenB/TokenC or json://host:port/path.")
    events: list[Event] = Field(default_factory=lambda: list(EVENTS),  # type: ignore[arg-type]
                                description="Which events go here; default: all.")
