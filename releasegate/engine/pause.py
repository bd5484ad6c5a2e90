"""Waiting and pausing for an operator, one mechanism for every phase that analyses traffic.

*Waiting* is what a step, batch or watch does while its evidence is incomplete: it stays where it is and says why
(``RolloutState.waiting``), and it goes on by itself once the evidence is there. *Paused* is a decision that needs
a person: nothing advances on its own any more, while analysis goes on and a breach or a dead instance still rolls
back. Two things pause a rollout:

- ``no_data``: a rule had no data (no traffic to the new version, a source that cannot measure it) for
  ``analysis.no_data_timeout``. The clock starts at the start of the first evaluation window without data for some
  rule and is reset by an evaluation in which every rule has data; it restarts with each step, batch and watch.
  The default timeout is the step's own pause (the watch: ``post_promotion``; rolling: ``rolling.pause``), but
  at least three analysis intervals, so a step that saw no traffic at all pauses when its time is up. A step
  without a pause waits for ``promote`` anyway and has no timeout unless ``no_data_timeout`` is set.
- ``stair``: the rollback staircase holds at a stair where errors stopped (engine/staircase.py).

``promote`` and ``rollback`` end a pause; engine/decide.py's ``command`` says what each does where.
"""

from __future__ import annotations

from typing import Literal

from releasegate.durations import format_duration
from releasegate.engine.analysis import Verdict, missing_text, span_text
from releasegate.engine.phase import Applied
from releasegate.engine.state import Decision, Observation, Pause, RolloutState
from releasegate.spec.models import Spec


def no_data_timeout(st: RolloutState, spec: Spec) -> float | None:
    """How long the current step, batch or watch may go without data before it pauses; None: no limit."""
    if spec.analysis.no_data_timeout is not None:
        return spec.analysis.no_data_timeout
    default: float | None = None
    if st.phase == "step":
        default = spec.strategy.steps[st.step].pause
    elif st.phase == "watch":
        default = spec.analysis.post_promotion or None
    elif st.phase == "roll" and spec.strategy.rolling is not None:
        default = spec.strategy.rolling.pause or None
    # A default never pauses before three evaluations: the first window of a step may hold no evidence yet (the
    # first requests still in flight, a source that needs a baseline reading), and a short step is not a reason.
    return None if default is None else max(default, 3 * spec.analysis.interval)


def pause(st: RolloutState, kind: Literal["no_data", "stair", "judge"], reason: str, at: float,
          data: dict[str, object]) -> Applied:
    """Stop advancing until an operator decides; the reason is shown by `status` and recorded in `history`."""
    paused = st.model_copy(update={"paused": Pause(kind=kind, reason=reason, since=at), "waiting": reason})
    return paused, [Decision("paused", reason, {"pause": kind, **data})]


def wait(st: RolloutState, why: str | None, values: dict[str, float | None], note: str = "analysis") -> Applied:
    """Keep waiting (or stop waiting when ``why`` is None); a new reason is recorded once, not at every tick."""
    if why is None or st.waiting == why:
        return st.model_copy(update={"waiting": why}), [Decision("analysis", note, {"values": values})]
    return st.model_copy(update={"waiting": why}), [Decision("waiting", why, {"values": values})]


def no_data_now(st: RolloutState, spec: Spec, obs: Observation, verdict: Verdict, promise: str) -> str | None:
    """The wait reason when the latest evaluation lacked data for some rule, else None."""
    if verdict.conclusive:
        return None
    span = f"on {st.version} in the last {format_duration(spec.analysis.interval)}"
    return f"waiting: {missing_text(verdict.inconclusive, obs.missing, span)}; {promise}"


def track_no_data(st: RolloutState, spec: Spec, obs: Observation, verdict: Verdict, promote: str) -> Applied:
    """Run the no-data clock; pause when it reaches the timeout. ``promote`` says what `promote` would then do."""
    if verdict.conclusive:
        return st.model_copy(update={"no_data_since": None}), []
    since = st.no_data_since if st.no_data_since is not None else obs.at - spec.analysis.interval
    st = st.model_copy(update={"no_data_since": since})
    timeout = no_data_timeout(st, spec)
    # Half an interval of slack: evaluations run a little late, and the one that closes a step must not miss it.
    if st.paused is not None or timeout is None or obs.at - since < timeout - spec.analysis.interval / 2:
        return st, []
    names = ", ".join(k.split(":", 1)[1] for k in verdict.inconclusive)
    known = any(k in obs.missing for k in verdict.inconclusive)
    why = missing_text(verdict.inconclusive, obs.missing, "") if known else "no traffic?"
    # An evaluation up to half an interval early counts (see above): say the timeout, not the time measured.
    reason = (f"paused: no data for {names} on {st.version} for {span_text(max(obs.at - since, timeout))} ({why}); "
              f"`releasegate promote {st.service}` {promote}; `releasegate rollback {st.service}` rolls back")
    return pause(st, "no_data", reason, obs.at, {"values": dict(verdict.latest), "missing": verdict.inconclusive,
                                                "since": since, "timeout": timeout})
