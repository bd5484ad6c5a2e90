"""How a rollout leaves its phases: down (to the rollback, by the staircase or rolling the other way) or out
(to the finish phase with an outcome). Shared by the state machine (engine/decide.py), the analysis of steps and
the watch (engine/observe.py) and operator commands, so that every road to a rollback says the same.
"""

from __future__ import annotations

from releasegate.engine import rolling, staircase
from releasegate.engine.phase import enter as _to
from releasegate.engine.state import RolloutState, Status
from releasegate.spec.models import Spec


def ending(st: RolloutState, outcome: Status, reason: str, now: float) -> RolloutState:
    """Enter the finish phase; performing Finish records the outcome for the service and stops the loop."""
    if outcome != "promoted":
        reason += st.schema_note()
    return _to(st, "finish", now, reason=reason, outcome=outcome)


def start_rollback(st: RolloutState, spec: Spec, reason: str, now: float, *, immediate: bool = False,
                   rule: str | None = None, value: float | None = None,
                   outcome: Status = "rolled_back") -> RolloutState:
    """Leave the new version: rolling rolls the other way; canary and blue-green go down the staircase (or to 0 %
    at once when ``immediate``, in immediate mode, or from below the lowest stair)."""
    if st.phase in ("roll", "roll_back"):
        return rolling.reverse(st, spec, reason, now, outcome)
    return staircase.start(st, spec, reason, now, immediate=immediate, rule=rule, value=value, outcome=outcome)
