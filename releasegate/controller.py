"""The loop that turns the engine's decisions into provider calls and store writes.

Order of every iteration: apply pending operator commands, compute the next action from the persisted state,
record the intent, perform the action (idempotently), fold the result in, persist state and decisions in one
transaction. Killing the process anywhere in that cycle loses at most the action in flight, which the next
controller recomputes from the same state and performs again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from releasegate.engine import decide
from releasegate.engine.clock import Clock
from releasegate.engine.state import (
    Action,
    Analyze,
    Decision,
    Finish,
    Health,
    Hold,
    Migrate,
    Observation,
    Outcome,
    Result,
    RolloutState,
    Route,
    Smoke,
    Start,
    Stop,
    describe_intent,
)
from releasegate.errors import HostUnreachable, ProviderError
from releasegate.observing import Observer
from releasegate.providers.base import (
    DeadInstance,
    Instance,
    MetricSource,
    Platform,
    Router,
    Routes,
    VersionRoute,
)
from releasegate.providers.metrics.totals import TotalsReader
from releasegate.reports.traffic import with_traffic
from releasegate.spec.models import Health as HealthSpec
from releasegate.spec.models import SmokeTest, Spec
from releasegate.store.sqlite import Store, this_owner
from releasegate.wakeups import Bells, Ear

ProgressHook = Callable[[RolloutState, list[Decision]], None]
IncreaseGate = Callable[[float], str | None]
"""Asked before every traffic increase; a reason (e.g. a change freeze) holds the rollout where it is."""
AuditHook = Callable[[RolloutState, Decision], None]

_NOT_AUDITED = {"analysis", "waiting", "retry", "held", "health_failed"}


@dataclass(frozen=True)
class CheckOutcome:
    ok: bool
    reason: str
    details: dict[str, Any]


@dataclass
class Providers:
    """Everything the controller touches outside itself; tests and other platforms swap parts of it."""

    platform: Platform
    router: Router
    metrics: MetricSource
    health: Callable[[list[Instance], HealthSpec], Awaitable[CheckOutcome]]
    smoke: Callable[[list[Instance], list[SmokeTest]], Awaitable[CheckOutcome]]
    migrate: Callable[[bool], Awaitable[CheckOutcome]] | None = None
    # One health request per instance during analysis (address -> None if healthy, else why); None: not probed.
    probe: Callable[[list[Instance], HealthSpec], Awaitable[dict[str, str | None]]] | None = None
    # Stops what the providers started (e.g. HAProxy's ring reader); the use case that built them calls it.
    close: Callable[[], Awaitable[None]] | None = None
    # Requests and errors per version over the last N seconds, as the router counted them (a TrafficCounter's
    # counts: built-in, nginx, HAProxy); None where the router cannot say. Recorded for reports, never decides.
    traffic: Callable[[float, float | None], Awaitable[dict[str, dict[str, float | None]]]] | None = None
    # Per-version running totals (releasegate/providers/metrics/totals.py), for the judge (analysis.judge): the
    # router's, or Prometheus counters' (analysis.judge.counts).
    totals: TotalsReader | None = None


class Controller:
    def __init__(self, store: Store, spec: Spec, providers: Providers, clock: Clock,
                 on_progress: ProgressHook | None = None, command_poll: float = 0.25,
                 before_increase: IncreaseGate | None = None, audit: AuditHook | None = None,
                 bells: Bells | None = None) -> None:
        self.store = store
        self.spec = spec
        self.p = providers
        self.clock = clock
        self.on_progress = on_progress
        self.command_poll = command_poll
        self.before_increase = before_increase
        self.audit = audit
        self.bells = bells  # the server's: commands ring, not polled (releasegate/wakeups.py)
        self._ear: Ear | None = None
        self.owner = this_owner()
        self._failures = 0
        self._last_retry: str | None = None
        self._observer = Observer(providers, spec, before_increase)

    async def run(self, st: RolloutState) -> RolloutState:
        with self.bells.listening(st.id) if self.bells else contextlib.nullcontext() as self._ear:
            return await self._run(st)

    async def _run(self, st: RolloutState) -> RolloutState:
        await self._reconcile(st)
        while True:
            st = self._apply_commands(st)
            now = self.clock.now()
            action = decide.next_action(st, self.spec, now)
            intent = describe_intent(action)
            if intent:
                self.store.add_event(st.service, st.id, now, "intent", intent)
            result = await self._perform(st, action)
            failed = isinstance(result, Outcome) and not result.ok
            st, decisions = decide.apply(st, self.spec, action, result, self.clock.now())
            decisions = self._quiet_repeats(decisions)
            if isinstance(action, Route) or (isinstance(result, Observation) and not result.interrupted):
                decisions = await with_traffic(self.p.traffic, st, self.clock.now(), decisions,
                                               self.spec.analysis.interval)
            self.owner["lease_until"] = time.time() + 60
            self.store.save(st, [(d.kind, d.message, d.data) for d in decisions], owner=self.owner)
            if self.audit is not None:
                for d in decisions:
                    if d.kind not in _NOT_AUDITED:
                        self.audit(st, d)
            if self.on_progress is not None:
                self.on_progress(st, decisions)
            if not st.active:
                self.store.release(st.id)
                return st
            if failed and st.waiting and st.waiting.startswith("retrying"):
                self._failures += 1
                await self._sleep_or_command(st, self.clock.now() + min(30.0, 2.0 ** min(self._failures, 5)))
            else:
                self._failures = 0

    async def _reconcile(self, st: RolloutState) -> None:
        """Before anything else, what runs is made to match the records (a controller killed between spawning an
        instance and recording it left a process only its marker names): each adoption or stop is recorded."""
        reconcile = getattr(self.p.platform, "reconcile", None)
        if reconcile is None:
            return
        self.store.hold_lease()  # reconciling starts and stops instances: only with the lease held
        try:
            lines: list[str] = await reconcile(st.service)
        except ProviderError as exc:
            lines = [f"reconciling the instances with what runs failed: {exc}"]
        said = [Decision("reconciled", line) for line in lines]
        for d in said:
            self.store.add_event(st.service, st.id, self.clock.now(), d.kind, d.message)
        if said and self.on_progress is not None:
            self.on_progress(st, said)

    def _quiet_repeats(self, decisions: list[Decision]) -> list[Decision]:
        """A retry for the same reason as the last one (a freeze that lasts days) is recorded once."""
        out = []
        for d in decisions:
            if d.kind == "retry":
                if d.message == self._last_retry:
                    continue
                self._last_retry = d.message
            else:
                self._last_retry = None
            out.append(d)
        return out

    def _apply_commands(self, st: RolloutState) -> RolloutState:
        if self._ear is not None and not self._ear.due(self.clock.now()):
            return st  # no bell since the last look, and the fallback look is not due
        for cmd in self.store.pending_commands(st.id):
            new, error = decide.command(st, self.spec, cmd.kind, self.clock.now())
            self.store.apply_command(new, cmd, error)
            said = Decision("command", f"{cmd.kind} by {cmd.actor}" + (f" refused: {error}" if error else ""),
                            {"command": cmd.kind, "actor": cmd.actor})
            if self.on_progress is not None:
                self.on_progress(new, [said])
            if self.audit is not None:
                self.audit(new, said)
            st = new
        return st

    async def _sleep_or_command(self, st: RolloutState, until: float, poll: float | None = None) -> bool:
        """Sleep until ``until``; True when an operator command cut the wait short."""
        while True:
            left = until - self.clock.now()
            if left <= 0:
                return False
            if self._ear is not None and poll is None:
                if await self._ear.wait(self.clock, left, lambda: self.store.has_pending_commands(st.id)):
                    return True
                continue
            if self.store.has_pending_commands(st.id):
                return True
            await self.clock.sleep(min(left, poll or self.command_poll))

    # --- performing actions ----------------------------------------------------------------------------------------

    async def _perform(self, st: RolloutState, action: Action) -> Result:
        if isinstance(action, Start | Route | Stop | Migrate):  # the data plane moves only with the lease held
            self.store.hold_lease()
        try:
            if isinstance(action, Analyze):
                return await self._analyze(st, action)
            if isinstance(action, Start):
                replaced = await self._replace_dead(st.service, action.version)
                self._tell_platform(st)
                started = await self.p.platform.start(st.service, action.version, action.count)
                details: dict[str, object] = {"instances": [i.address for i in started]}
                return Outcome(True, details={**details, "replaced": replaced} if replaced else details)
            if isinstance(action, Health):
                return await self._at_full_strength(st, action.version, action.count, lambda live: self.p.health(
                    live, self.spec.health))
            if isinstance(action, Smoke):
                return await self._at_full_strength(st, action.version, action.count, lambda live: self.p.smoke(
                    live, self.spec.smoke_tests))
            if isinstance(action, Hold):  # no traffic: wait for the group's promote (polled often: the switch waits)
                await self._sleep_or_command(st, self.clock.now() + 1.0, poll=0.05)
                return await self._missing(st, action.version, action.count) or Outcome(True)
            if isinstance(action, Route):
                return await self._route(st, action)
            if isinstance(action, Migrate):
                if self.p.migrate is None:
                    return Outcome(False, "this platform cannot run database migrations")
                check = await self.p.migrate(action.allow_breaking)
                return Outcome(check.ok, check.reason, check.details)
            if isinstance(action, Stop):
                return await self._stop(st, action)
            if isinstance(action, Finish):
                self._record_outcome(st, action)
                return Outcome(True)
        except HostUnreachable as exc:  # unknown, not failed: the engine waits for the host (docs/ssh.md)
            return Outcome(False, str(exc), {"unreachable": [exc.host]})
        except ProviderError as exc:
            return Outcome(False, str(exc))
        raise TypeError(f"unknown action {action!r}")

    def _tell_platform(self, st: RolloutState) -> None:
        """A platform with a ``notify`` hook (the container platform's image pulls) says what takes long in the
        progress output, as ``pull`` lines that are shown, not stored."""
        if self.on_progress is None or not hasattr(self.p.platform, "notify"):
            return
        on_progress = self.on_progress

        def say(line: str) -> None:
            on_progress(st, [Decision("pull", line)])

        self.p.platform.notify = say

    async def _live(self, service: str, version: str) -> list[Instance]:
        return await self._observer.live(service, version)

    # --- every instance the spec asks for, before traffic (engine/instances.py) ------------------------------------

    async def _dead_instances(self, service: str, version: str) -> list[DeadInstance]:
        """The platform's dead instances of ``version`` (processes that ended without being stopped), if it keeps
        them (every ManagedPlatform does; see base.DeadInstance)."""
        dead_instances = getattr(self.p.platform, "dead_instances", None)
        if dead_instances is None:
            return []
        return [d for d in await dead_instances(service) if d.instance.version == version]

    async def _missing(self, st: RolloutState, version: str, count: int) -> Outcome | None:
        """None when ``count`` instances of ``version`` run and none died; else the failure, with ``died``: one entry
        per dead instance (exit code, log tail, log file), which the engine restarts once or gives up on."""
        live = await self._live(st.service, version)
        dead = await self._dead_instances(st.service, version)
        short = count - len(live)
        if not dead and short <= 0:
            return None
        died: list[dict[str, object]] = [d.evidence() for d in dead]
        unexplained = short - len(dead)
        if unexplained > 0:  # gone without a record of why (a platform that keeps none, a record removed)
            died.append({"message": f"{unexplained} instance(s) of {version} gone without a trace"})
        said = "; ".join(str(d["message"]) for d in died)
        return Outcome(False, f"{said} ({len(live)} of {count} instance(s) of {version} run)",
                       {"died": died, "live": [i.address for i in live], "expected": count})

    async def _at_full_strength(self, st: RolloutState, version: str, count: int | None,
                                check: Callable[[list[Instance]], Awaitable[CheckOutcome]]) -> Outcome:
        """Run a check (health, smoke) on every live instance of ``version``, with all ``count`` of them running
        before and after it: one that died before it is not silently left out, one that died during it is named."""
        if count is None:  # rolling back: what runs is checked, nothing more is asked of it
            result = await check(await self._live(st.service, version))
            return Outcome(result.ok, result.reason, result.details)
        missing = await self._missing(st, version, count)
        if missing is not None:
            return missing
        result = await check(await self._live(st.service, version))
        missing = await self._missing(st, version, count)
        return missing or Outcome(result.ok, result.reason, result.details)

    async def _replace_dead(self, service: str, version: str) -> list[dict[str, object]]:
        """Forget the dead instances of ``version`` so that starting it replaces them; what they left is returned
        for the record (the engine recorded the decision to restart before this runs)."""
        dead = await self._dead_instances(service, version)
        for d in dead:
            await self.p.platform.stop(d.instance, 0.0)  # an exited instance: only its record goes
        return [d.evidence() for d in dead]

    async def _route(self, st: RolloutState, action: Route) -> Outcome:
        increase = action.weight_of(st.version) > st.weight
        if increase:  # more traffic to the new version: every instance that should serve it must run
            share = next(s for s in action.shares if s.version == st.version)
            count = share.instances if share.instances is not None else self.spec.platform.instances
            missing = await self._missing(st, st.version, count)
            if missing is not None:
                return missing
        held = self._observer.held(self.clock.now()) if increase else None
        if held:
            return Outcome(False, held)
        versions = []
        for share in action.shares:
            live = await self._live(st.service, share.version)
            chosen = live if share.instances is None else live[: share.instances]
            if not chosen:
                return Outcome(False, f"no live instance of {share.version} to send {share.weight}% to")
            versions.append(VersionRoute(share.version, share.weight, tuple(i.address for i in chosen)))
        lease = self.store.lease
        routes = Routes(tuple(versions), fence=(lease.rollout_id, lease.token) if lease is not None else None)
        self.store.hold_lease()  # checking instances took a while: the lease again, right before traffic moves
        await self.p.router.set_routes(st.service, routes)
        applied = await self.p.router.get_routes(st.service)
        if applied.weights() != routes.weights():
            return Outcome(False, f"the router applies {applied.weights()} instead of {routes.weights()}")
        return Outcome(True, details={"routes": routes.to_json()})

    async def _stop(self, st: RolloutState, action: Stop) -> Outcome:
        live = await self._live(st.service, action.version)
        routed = {b for v in (await self.p.router.get_routes(st.service)).versions for b in v.backends}
        victims = live[action.keep:]
        for inst in victims:
            if inst.address in routed:
                return Outcome(False, f"{inst.address} still receives traffic; refusing to stop it")
            deadline = self.clock.now() + self.spec.router.drain_timeout
            while await self.p.router.inflight(st.service, inst.address) > 0 and self.clock.now() < deadline:
                await self.clock.sleep(0.05)
            self.store.hold_lease()
            await self.p.platform.stop(inst, self.spec.platform.stop_grace)
        if action.keep == 0:  # platforms remember crashed instances until told we are done with them
            await self._replace_dead(st.service, action.version)
        return Outcome(True, details={"stopped": [i.address for i in victims]})

    async def _analyze(self, st: RolloutState, action: Analyze) -> Observation:
        if await self._sleep_or_command(st, action.at):
            return Observation(at=self.clock.now(), interrupted=True)
        return await self._observer.observe(st, action, self.clock.now())

    def _record_outcome(self, st: RolloutState, action: Finish) -> None:
        now = self.clock.now()
        spec_json = self.spec.model_dump_json(by_alias=True)
        rec = self.store.service(st.service)
        if action.status == "promoted":
            keep = self.spec.strategy.keep_previous if st.strategy in ("canary", "bluegreen") else 0.0
            previous = st.previous if keep > 0 else None
            self.store.set_service(st.service, st.version, previous, now + keep if previous else None,
                                   None, spec_json, now)
        elif rec is None and st.strategy == "initial":
            self.store.set_service(st.service, None, None, None, None, spec_json, now)
