"""A canary on a fleet of hosts: the new version on as many hosts as each step's weight needs, not on all of them.

Why: on an SSH fleet a bad version can also hurt the machine it runs on (disk, memory, a broken config file there),
so a canary's blast radius is counted in hosts too: a 20 % step on five hosts needs one host, not five. The engine
asks the platform for that many instances before the first traffic (``first``); before a step or the promotion that
needs more, it starts them and health-checks them, with traffic unchanged until they pass (``grow``). Every other
platform and strategy starts every instance at once, as before (``exposure`` is None).
"""

from __future__ import annotations

import math

from releasegate.engine.state import Action, Health, RolloutState, Start
from releasegate.spec.models import Spec, SshPlatform


def exposure(st: RolloutState, spec: Spec, weight: int) -> int | None:
    """Instances of the new version a canary at ``weight`` % needs on a fleet: the hosts that share of the fleet
    is (at least one), each with ``instances_per_host``; None when every instance runs from the start."""
    fleet = spec.platform
    if st.strategy != "canary" or not isinstance(fleet, SshPlatform):
        return None
    hosts = min(len(fleet.hosts), max(1, math.ceil(len(fleet.hosts) * weight / 100)))
    return hosts * fleet.instances_per_host


def first(st: RolloutState, spec: Spec) -> int:
    """Instances started, health-checked and smoke-tested before any traffic: the first step's, else all."""
    steps = spec.strategy.steps
    need = exposure(st, spec, steps[0].weight) if steps else None
    return spec.platform.instances if need is None else need


def for_baseline(st: RolloutState, spec: Spec) -> int:
    """Instances of a baseline (engine/baseline.py): on a fleet, as many as the canary has at its largest step,
    all started and health-checked before the first traffic; each step routes as many of them as the canary has
    then (``phase.split``), so the two are compared instance for instance. Starting them all at once keeps the
    baseline out of the growing above (no phase of its own per step) and a baseline is the version that already
    runs, so its hosts are no blast radius. Elsewhere: the platform's instance count, like the canary's."""
    steps = spec.strategy.steps
    most = exposure(st, spec, max(s.weight for s in steps)) if steps else None
    return spec.platform.instances if most is None else most


def need(st: RolloutState, spec: Spec) -> int | None:
    """What the step being entered (or the promotion) needs; None: nothing to grow here."""
    if st.phase == "step":
        return exposure(st, spec, spec.strategy.steps[st.step].weight)
    if st.phase == "promote":
        return exposure(st, spec, 100)
    return None


def grow(st: RolloutState, spec: Spec) -> Action | None:
    """Start the instances the next traffic increase needs, then health-check them all; None once they run."""
    count = need(st, spec)
    if count is None or st.routed or count <= st.grown:
        return None
    return Health(st.version, count) if st.growing else Start(st.version, count)
