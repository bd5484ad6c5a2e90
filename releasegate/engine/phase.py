"""The two moves every part of the state machine makes: enter a phase, and split traffic between the versions.

Kept apart so the phase modules (decide, staircase, pause, rolling) share them without importing each other.
"""

from __future__ import annotations

from releasegate.engine.state import Decision, RolloutState, Route, Share

Applied = tuple[RolloutState, list[Decision]]


def enter(st: RolloutState, phase: str, now: float, **changes: object) -> RolloutState:
    """A new phase starts with nothing routed yet, nothing waited for, no pause and a fresh no-data clock."""
    return st.model_copy(update={"phase": phase, "phase_started": now, "routed": False, "waiting": None,
                                 "paused": None, "no_data_since": None, "updated_at": now, "growing": False,
                                 **changes})


def split(st: RolloutState, weight: int, instances: int | None = None) -> Route:
    """``weight`` % to the new version (to its first ``instances``; None: all of them), the rest to the previous
    one."""
    shares = [Share(st.version, weight, instances)]
    if st.previous is not None and weight < 100:
        shares.append(Share(st.previous, 100 - weight))
    return Route(tuple(s for s in shares if s.weight > 0))
