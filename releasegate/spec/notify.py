"""``notify:``: who hears about what, as Apprise URLs (Slack, Teams, Discord, PagerDuty, e-mail, JSON webhooks)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator

from releasegate.spec import secrets
from releasegate.spec.common import SpecModel

EVENTS = ("started", "step", "paused", "promoted", "rolled_back", "aborted", "refused")
Event = Literal["started", "step", "paused", "promoted", "rolled_back", "aborted", "refused"]


class NotifyTarget(SpecModel):
    """One destination; a failing one is recorded and retried, never blocking a rollout."""

    url: str = Field(description="An Apprise URL, e.g. slack://TokenA/TokenB/TokenC or json://host:port/path; "
                     "a token may be written ${env:NAME}, resolved when the notification is sent so the stored "
                     "spec never holds it.")
    events: list[Event] = Field(default_factory=lambda: list(EVENTS),  # type: ignore[arg-type]
                                description="Which events go here; default: all.")

    @field_validator("url")
    @classmethod
    def _usable(cls, v: str) -> str:
        """Refused here, as deploy refuses it, so that `validate` passes no spec `deploy` would stop at
        (offline: Apprise only parses the URL; the message names the scheme, never the tokens)."""
        from releasegate.providers.notifiers.apprise import check_url

        secrets.check(v)
        if any(name not in os.environ for name in secrets.names(v)):
            return v  # the tokens are not known here: deploy refuses the unset variable, then checks the URL
        try:
            problem = check_url(secrets.for_checking(v))
        except Exception:  # Apprise's parser on a URL it does not expect: not usable either
            problem = "not a URL Apprise can read"
        if problem:
            raise ValueError(f"{problem}; write one such as slack://TokenA/TokenB/TokenC, "
                             "mailtos://user:password@example.com or json://host:port/path")
        return v
