"""Health during the rollout: the new version's instances keep answering their health check, or it rolls back.

The controller asks each live instance of the new version once per analysis interval, directly (not through the
router), and puts the answers in the Observation; this module counts. Counts live in the persisted state, so a
resumed controller continues where the last one stopped. Two triggers, from the seeds: one instance failing
``health.failure_threshold`` checks in a row (ai-model-mgmt: "health check fails 3 times in a row"), and every
instance down for ``health.down_after`` (Judgify: "service down 30 s"). The caller rolls back straight to 0 %:
traffic left on a version that does not pass its own health check helps nobody.
"""

from __future__ import annotations

from releasegate.durations import format_duration
from releasegate.engine.state import Decision, Observation, RolloutState
from releasegate.spec.models import Spec


def track(st: RolloutState, spec: Spec, obs: Observation) -> tuple[RolloutState, list[Decision], Decision | None]:
    """Fold one round of health checks into the state: returns the state, decisions to record (a failed check
    below the threshold), and the rollback decision when a trigger fired."""
    probes = obs.health
    if not probes:  # not probed (or nothing live to probe: a dead instance is obs.dead's business)
        return st, [], None
    h = spec.health
    counts = {address: st.health_failures.get(address, 0) + 1 if why else 0 for address, why in probes.items()}
    failing = {address: why for address, why in probes.items() if why}
    all_down = len(failing) == len(probes)
    since = (st.health_down_since if st.health_down_since is not None else obs.at) if all_down else None
    st = st.model_copy(update={"health_failures": {a: n for a, n in counts.items() if n},
                               "health_down_since": since})
    if not failing:
        return st, [], None
    worst = max(failing, key=lambda a: (counts[a], a))
    n, last = counts[worst], failing[worst]
    data: dict[str, object] = {"instance": worst, "failures": n, "last": last, "health": dict(probes),
                               "threshold": h.failure_threshold}
    if n >= h.failure_threshold:
        why = (f"health check of {st.version} failed {n} times in a row on {worst} "
               f"(failure_threshold {h.failure_threshold}; last: {last})")
        return st, [], Decision("rollback", why, data)
    if since is not None and obs.at - since >= h.down_after:
        down = format_duration(round(obs.at - since, 3))
        why = (f"every instance of {st.version} failed its health check for {down} (down_after "
               f"{format_duration(h.down_after)}; {worst}: {last})")
        return st, [], Decision("rollback", why, {**data, "down_for": obs.at - since})
    message = (f"health check of {st.version} failed on {', '.join(sorted(failing))} "
               f"({n} of {h.failure_threshold} in a row on {worst}; last: {last})")
    return st, [Decision("health_failed", message, data)], None
