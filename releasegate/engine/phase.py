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
    one; a baseline during the steps takes its share from the previous one's (``baseline_weight``), served by as
    many of its instances as the canary's share (a fleet's baseline runs the canary's largest count)."""
    shares = [Share(st.version, weight, instances)]
    base = baseline_weight(st, weight)
    if st.baseline is not None and base > 0:
        shares.append(Share(st.baseline, base, instances))  # as many instances as the canary: compared alike
    if st.previous is not None and weight < 100:
        shares.append(Share(st.previous, 100 - weight - base))
    return Route(tuple(s for s in shares if s.weight > 0))


def baseline_weight(st: RolloutState, weight: int) -> int:
    """The baseline's share when the new version has ``weight`` % (engine/baseline.py): the same during the steps,
    capped at what is left of the previous version's share (75 % -> 25 %); nothing outside the steps (promotion,
    rollback, abort), so a rollback's first stair gives the baseline's share back to the previous version."""
    if st.baseline is None or not st.baseline_up or st.baseline_lost or st.phase != "step":
        return 0
    return max(0, min(weight, 100 - weight))
