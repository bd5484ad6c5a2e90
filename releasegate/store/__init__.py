"""Persistent state: rollouts, events, operator commands and what each service runs."""

from releasegate.store.sqlite import Store

__all__ = ["Store"]
