"""From rollout decisions to notifications: which decision is worth telling whom, and delivery that never blocks.

The controller calls ``on_decision`` synchronously inside its loop, so it only maps and enqueues: each target has
its own queue and background task (one slow webhook does not delay another, and each target hears events in
order). A failed post is retried with exponential backoff; every attempt's outcome is appended to
``notifications.jsonl`` in the state directory (the outbox), so "did Slack hear about the rollback?" has an answer.
Nothing raised by a notifier ever reaches the controller. ``drain`` gives pending deliveries a bounded chance to
finish when the rollout ends, and records what is abandoned.

Incidents: the automatic rollback of a ``tier: critical`` service (the engine's ``rollback`` decision; an operator's
rollback comes as a command, not as this decision), and, for every tier, a rollback staircase that reaches 0 % (the
engine's ``incident`` decision: the MegaCity guide's "Incident 선언") are sent to every target subscribed to
``rolled_back`` with ``incident: true`` in their data (``phase: incident`` for the staircase's). Apprise posts them
with notify type FAILURE, which its PagerDuty plugin sends with severity critical (a ``pagerduty://`` target opens an
incident); ``json://`` webhooks receive ``"incident": "true"``.

Pauses: a rollout that waits for evidence (``waiting``), is held by a freeze (``held``) or stops for an operator
(``paused``: no data for too long, or the staircase holding at a stair) sends ``paused``; the operator's choices
are in its reason, and ``pause`` in its data says which kind of pause it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from releasegate.engine.state import Decision, RolloutState
from releasegate.errors import UserError
from releasegate.fileio import append_private
from releasegate.providers.base import Event, Notifier
from releasegate.providers.notifiers.apprise import AppriseNotifier, check_url, redact
from releasegate.spec import secrets
from releasegate.spec.models import Spec
from releasegate.spec.notify import NotifyTarget

log = logging.getLogger(__name__)

OUTBOX = "notifications.jsonl"
_STEP_KINDS = ("step", "switched")
_PAUSE_KINDS = ("waiting", "held", "paused")
_FINAL_KINDS = {"promoted": "promoted", "rolled_back": "rolled_back", "aborted": "aborted", "failed": "aborted"}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

NotifierFactory = Callable[[str], Notifier]


@dataclass
class _Job:
    id: str
    target: int
    event: Event


class Outbox:
    """Append-only JSON lines, one per delivery attempt outcome; the last line for an id is its status."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, job: _Job, target: str, status: str, attempt: int = 0, error: str | None = None) -> None:
        line = {"id": job.id, "at": time.time(), "service": job.event.service, "event": job.event.kind,
                "target": target, "status": status, "attempt": attempt, "error": error}
        try:
            append_private(self.path, json.dumps(line, default=str) + "\n")  # 0600: it names the targets
        except OSError as exc:  # a full disk must not stop a rollout either
            log.warning("cannot record notification %s as %s: %s", job.id, status, exc)

    def lines(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for raw in self.path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(raw))
        return out

    def latest(self) -> dict[str, dict[str, Any]]:
        """Each delivery's last recorded line, by id."""
        return {line["id"]: line for line in self.lines()}


class Notifications:
    """Maps a rollout's decisions to events and delivers them to the targets subscribed to each event."""

    def __init__(self, targets: list[NotifyTarget], state_dir: Path, tier: str, service: str, *,
                 attempts: int = 5, backoff: float = 1.0, max_backoff: float = 30.0, timeout: float = 10.0,
                 notifier: NotifierFactory | None = None) -> None:
        self.targets = list(targets)
        self.tier = tier
        self.service = service
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.outbox = Outbox(Path(state_dir) / OUTBOX)
        factory = notifier or (lambda url: AppriseNotifier(url, timeout=timeout))
        urls = [secrets.resolve(t.url, f"notify[{i}].url") for i, t in enumerate(self.targets)]
        self._notifiers = [factory(url) for url in urls]
        self._names = [secrets.hide(redact(url), t.url) for url, t in zip(urls, self.targets, strict=True)]
        self._queues: list[asyncio.Queue[_Job] | None] = [None] * len(self.targets)
        self._workers: set[asyncio.Task[None]] = set()
        self._pending: dict[str, _Job] = {}
        self._paused: dict[str, str] = {}  # rollout id -> the normalised reason last announced
        self._started: set[str] = set()
        self._rolling_back: set[str] = set()

    # --- mapping ------------------------------------------------------------------------------------------------

    def on_progress(self, state: RolloutState, decisions: list[Decision]) -> None:
        """Shaped like the controller's ``ProgressHook``, to be chained with the CLI's."""
        for d in decisions:
            self.on_decision(state, d)

    def on_decision(self, state: RolloutState, decision: Decision) -> None:
        """Enqueue the event ``decision`` is worth, if any; returns at once and never raises."""
        try:
            event = self.event_for(state, decision)
            if event is not None:
                self._enqueue(event)
        except Exception:  # a bug here must not stop a rollout
            log.exception("notification for %s %s dropped", state.id, decision.kind)

    def on_refused(self, release: str, reasons: list[str]) -> None:
        """Admission refused ``release`` (policy, calendar): tell the ``refused`` subscribers; never raises."""
        message = f"{release} refused: " + "; ".join(reasons)
        try:
            self._enqueue(Event(self.service, "refused", message,
                                {"release": release, "reason": "; ".join(reasons), "tier": self.tier}))
        except Exception:
            log.exception("refusal notification for %s dropped", release)

    def event_for(self, state: RolloutState, decision: Decision) -> Event | None:
        """The event a decision maps to (None: not worth a message); keeps the paused/started de-duplication."""
        kind = decision.kind
        if kind in _PAUSE_KINDS:
            key = _NUMBER.sub("#", decision.message)
            if self._paused.get(state.id) == key:
                return None
            self._paused[state.id] = key
            pause = {"pause": state.paused.kind} if kind == "paused" and state.paused is not None else {}
            return self._event(state, "paused", decision, **pause)
        self._paused.pop(state.id, None)  # anything else ends the pause: the next one is news again
        if kind == "started":
            if state.id in self._started:
                return None
            self._started.add(state.id)
            return self._event(state, "started", decision)
        if kind in _STEP_KINDS:
            self._rolling_back.discard(state.id)  # promoted again after a staircase held: a new breach is news
            return self._event(state, "step", decision)
        if kind == "rollback":
            if state.id in self._rolling_back:  # the staircase cut short to 0 % is the same rollback
                return None
            self._rolling_back.add(state.id)
            return self._event(state, "rolled_back", decision, phase="started", automatic=True,
                               incident=self.tier == "critical")
        if kind == "incident":
            return self._event(state, "rolled_back", decision, phase="incident", automatic=True, incident=True)
        if kind in _FINAL_KINDS and not state.active and state.status == kind:
            return self._event(state, _FINAL_KINDS[kind], decision, phase="finished", status=state.status)
        return None

    def _event(self, state: RolloutState, kind: str, decision: Decision, **extra: object) -> Event:
        weight = decision.data.get("weight", state.weight)
        data: dict[str, object] = {"version": state.version, "previous": state.previous, "weight": weight,
                                   "reason": decision.message, "rollout": state.id, "strategy": state.strategy,
                                   "tier": self.tier, "env": state.env, "decision": decision.kind, **extra}
        return Event(state.service, kind, decision.message, data)

    # --- delivery -----------------------------------------------------------------------------------------------

    def _enqueue(self, event: Event) -> None:
        loop = asyncio.get_running_loop()  # the controller's; raises (and is logged) outside one
        for i, target in enumerate(self.targets):
            if event.kind not in target.events:
                continue
            job = _Job(uuid.uuid4().hex[:12], i, event)
            self.outbox.record(job, self._names[i], "queued")
            self._pending[job.id] = job
            queue = self._queues[i]
            if queue is None:
                queue = self._queues[i] = asyncio.Queue()
                task = loop.create_task(self._worker(i, queue), name=f"notify-{self.service}-{i}")
                self._workers.add(task)
            queue.put_nowait(job)

    async def _worker(self, i: int, queue: asyncio.Queue[_Job]) -> None:
        while True:
            job = await queue.get()
            try:
                await self._deliver(job)
            except Exception as exc:  # belt and braces: _deliver records its own failures
                self.outbox.record(job, self._names[i], "failed", error=f"{type(exc).__name__}: {exc}")
            # Not in a finally: a job cut short by drain's cancellation stays pending, to be recorded as abandoned.
            self._pending.pop(job.id, None)
            queue.task_done()

    async def _deliver(self, job: _Job) -> None:
        name = self._names[job.target]
        for attempt in range(1, self.attempts + 1):
            try:
                await self._notifiers[job.target].post(job.event)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if attempt == self.attempts:
                    self.outbox.record(job, name, "failed", attempt, error)
                    log.warning("notification %s to %s failed after %d attempts: %s", job.event.kind, name,
                                attempt, error)
                    return
                self.outbox.record(job, name, "retrying", attempt, error)
                await asyncio.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            else:
                self.outbox.record(job, name, "delivered", attempt)
                return

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 - a bounded flush is the point
        """Wait up to ``timeout`` s for every queued delivery; then stop the workers, recording what is left as
        failed. True when everything was delivered or gave up on its own."""
        queues = [q for q in self._queues if q is not None]
        done = True
        if queues:
            try:
                await asyncio.wait_for(asyncio.gather(*(q.join() for q in queues)), timeout)
            except TimeoutError:
                done = False
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        self._queues = [None] * len(self.targets)
        for job in list(self._pending.values()):
            self.outbox.record(job, self._names[job.target], "failed",
                               error=f"abandoned: not delivered within {timeout:g} s of the rollout's end")
        self._pending.clear()
        return done


def build_notifications(spec: Spec, state_dir: Path, **options: Any) -> Notifications | None:
    """The notifications for ``spec``, or None when it has no ``notify:`` targets.

    Raises ``UserError`` naming the target whose URL Apprise cannot use, before anything is deployed.
    """
    targets: list[NotifyTarget] = list(spec.notify)
    if not targets:
        return None
    for i, target in enumerate(targets):
        problem = check_url(secrets.resolve(target.url, f"notify[{i}].url"))
        if problem:
            raise UserError(f"notify[{i}].url: {problem}")
    return Notifications(targets, state_dir, spec.tier, spec.service, **options)
