"""Building a ``Report`` from the records: the rollout's state and events (store), the release and its sign-offs
(governance store), and who did what (audit log).

Why only records: a report is read after the fact, when the router's one-hour statistics and the instances may be
gone. Every number comes from a recorded event; what was never recorded (per-version counts of a rollout from
before they were recorded, or behind a router that could not count: nginx with ``access_log: off``, a router
that did not answer) is said to be "not recorded".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from releasegate.engine.analysis import span_text
from releasegate.errors import UserError
from releasegate.lookup import shown, spec_of
from releasegate.reports.model import Approval, Entry, Impact, PostMortem, Report, Trigger, VersionTraffic
from releasegate.reports.traffic import ROUTER_HISTORY
from releasegate.spec.models import Spec
from releasegate.store.sqlite import RolloutRecord, Store

QUIET = {"intent", "analysis", "retry"}
"""Left out of the timeline: intents (the decision that follows says what happened), every analysis tick
(counted in ``evaluations``; the decisions they led to are kept) and repeated retries."""

DEPLOYMENT = {"started", "migrated", "healthy", "smoke_passed", "reconciled", "replaced", "restarted",
              "baseline_started", "baseline_healthy"}
ROLLBACK = {"rollback", "rollback_step", "errors_persist", "incident", "abort"}
FINISH = {"promoted", "rolled_back", "aborted", "failed"}
FAILED = ("rolled_back", "aborted", "failed")
_AT_WEIGHT = re.compile(r" at (\d+)%")


def find(store: Store, state_dir: Path, ref: str) -> RolloutRecord:
    """A rollout by id, or a service's latest; a one-line error naming both ways to ask otherwise."""
    rec = store.rollout(ref) or store.latest_rollout(ref)
    if rec is None:
        raise UserError(f"{ref}: no rollout with this id and no service of this name in {shown(state_dir)}; "
                        "give a rollout id (`releasegate history SERVICE` lists them) or a service name (its "
                        "latest rollout); to read another state dir: --state-dir DIR or RELEASEGATE_HOME=DIR")
    return rec


def relative(at: float, start: float) -> str:
    """T-0 is the rollout's start, as in the PrivateTrade runbook (preflight at T-60, the switch at T+7...)."""
    delta = at - start
    return f"T{'-' if delta < 0 else '+'}{span_text(abs(delta))}"


def build(state_dir: Path, store: Store, rec: RolloutRecord) -> Report:
    st = rec.state
    spec = spec_of(rec)
    events = store.events(st.service, rollout_id=st.id, limit=1_000_000)
    release = f"{spec.release_name}@{st.version}"
    approvals, registered = _governance(state_dir, spec.release_name, st.version)
    audit = _audit(state_dir, release, st.created_at, st.finished_at)
    timeline = _preflight(approvals, audit, st.created_at) + _timeline(events, spec, st.created_at)
    timeline += [e for e in (_audited(a, st.created_at) for a in audit if a["at"] > st.created_at) if e]
    timeline += _planned_retirement(store, st.service, st.version, st.previous, events, st.created_at)
    timeline.sort(key=lambda e: e.at)
    traffic, note = _traffic(events)
    report = Report(
        id=st.id, service=st.service, release=release, version=st.version, previous=st.previous,
        strategy=st.strategy, status=st.status, reason=st.reason, env=st.env, change=st.change, actor=st.actor,
        emergency=st.emergency, started_at=st.created_at, finished_at=st.finished_at,
        duration=span_text(st.finished_at - st.created_at) if st.finished_at else None,
        commit=registered.get("commit"), digest=registered.get("digest"), author=registered.get("author"),
        steps=_steps(spec, st.strategy), rules=[r.describe() for r in spec.analysis.rules], approvals=approvals,
        freezes=_freezes(events, audit), timeline=timeline, traffic=traffic, traffic_note=note,
        evaluations=sum(1 for e in events if isinstance(e["data"].get("values"), dict)))
    if st.status in FAILED:
        report.postmortem = _postmortem(report, events, spec)
    return report


def _steps(spec: Spec, strategy: str) -> list[str]:
    if strategy == "canary":
        return [f"{s.weight}%" + (f" for {span_text(s.pause)}" if s.pause is not None else " until promoted")
                for s in spec.strategy.steps]
    return {"bluegreen": ["100% at once"], "rolling": ["instance by instance"]}.get(strategy, ["100% (first deploy)"])


def _values(data: dict[str, Any], spec: Spec) -> dict[str, str]:
    """``{"0:error_rate": 0.48}`` as people read it: ``{"error_rate": "48%"}``."""
    raw = data.get("values")
    if not isinstance(raw, dict):
        return {}
    out = {}
    for key, value in raw.items():
        index, _, metric = str(key).partition(":")
        rule = spec.analysis.rules[int(index)] if index.isdigit() and int(index) < len(spec.analysis.rules) else None
        if value is None:
            out[metric] = "no data"
        elif rule is not None and isinstance(value, int | float):
            out[metric] = rule.show(float(value))
        else:
            out[metric] = str(value)
    return out


def _weight(event: dict[str, Any]) -> int | None:
    if event["kind"] not in ("step", "switched", "rollback_step", "incident"):
        return None
    w = event["data"].get("weight")
    if isinstance(w, int):
        return w
    found = _AT_WEIGHT.search(event["message"])
    return int(found[1]) if found else None


def _timeline(events: list[dict[str, Any]], spec: Spec, start: float) -> list[Entry]:
    stage = "deployment"
    out: list[Entry] = []
    for e in events:
        kind = e["kind"]
        if kind in ROLLBACK or (kind == "stopped" and stage == "rollback"):
            stage = "rollback"
        elif kind in FINISH:
            stage = "finish"
        elif kind == "retired":
            stage = "cleanup"
        elif kind in ("step", "switched") and stage == "deployment":
            stage = "traffic"
        elif kind == "watch_passed" or (stage == "traffic" and out and out[-1].kind == "switched"):
            stage = "monitoring"
        if kind in QUIET:
            continue
        actor = e["data"].get("actor") if kind in ("command", "retired") else None
        out.append(Entry(at=e["at"], t=relative(e["at"], start), stage=stage if kind not in DEPLOYMENT else
                         "deployment", kind=kind, message=e["message"], actor=str(actor) if actor else None,
                         weight=_weight(e), values=_values(e["data"], spec)))
    return out


def _planned_retirement(store: Store, service: str, version: str, previous: str | None,
                        events: list[dict[str, Any]], start: float) -> list[Entry]:
    """The last step of the runbook's timeline not taken yet: the previous version, kept for an instant rollback,
    is retired by `releasegate gc` once ``keep_previous`` has passed (then a ``retired`` event replaces this)."""
    rec = store.service(service)
    if rec is None or rec.current != version or rec.previous != previous or rec.previous_until is None or \
            any(e["kind"] == "retired" for e in events):
        return []
    return [Entry(at=rec.previous_until, t=relative(rec.previous_until, start), stage="cleanup",
                  kind="retirement (planned)", message=f"{previous} is kept for an instant rollback until then; "
                                                       "`releasegate gc` retires it after that")]


def _governance(state_dir: Path, name: str, version: str) -> tuple[list[Approval], dict[str, str | None]]:
    """The release's sign-offs (void ones too, saying why) and who registered which commit."""
    from releasegate.store.governance import GovernanceStore

    with GovernanceStore(state_dir, readonly=True) as gov:
        release = gov.release(name, version)
        signoffs = gov.signoffs(name, version, active_only=False)
    approvals = [Approval(user=s.user, kind=s.kind, env=s.env, stage=s.stage, at=s.at, reason=s.reason,
                          void=s.void_reason if s.void_at is not None else None) for s in signoffs]
    registered = {"commit": release.commit, "digest": release.digest, "author": release.author} if release else {}
    return approvals, registered


def _audit(state_dir: Path, release: str, start: float, end: float | None) -> list[dict[str, Any]]:
    """Audit entries for this release around this rollout: its admission (the hour before it started) and what
    people and the alert receiver did until it ended. ``rollout.*`` entries repeat the store's events: left out."""
    from releasegate.store.audit import AuditLog

    until = (end if end is not None else float("inf")) + 1.0
    with AuditLog(state_dir) as log:
        return [{"at": a.at, "actor": a.actor, "action": a.action, "decision": a.decision or ""}
                for a in log.entries(since=start - 3600.0)
                if a.release == release and a.at <= until and not a.action.startswith("rollout.")]


def _preflight(approvals: list[Approval], audit: list[dict[str, Any]], start: float) -> list[Entry]:
    """Before T-0: the sign-offs given, and the admission (approvals, freezes, windows checked)."""
    out = [Entry(at=a.at, t=relative(a.at, start), stage="preflight", kind=f"{a.kind} ({a.env}/{a.stage})",
                 actor=a.user, message=(a.reason or f"{a.kind} for {a.env}, stage {a.stage}")
                 + (f" (void: {a.void})" if a.void else "")) for a in approvals if a.at <= start]
    return out + [e for e in (_audited(a, start) for a in audit if a["at"] <= start) if e]


def _audited(a: dict[str, Any], start: float) -> Entry | None:
    if a["action"].startswith(("approval.", "rejection.")):  # listed from the governance store
        return None
    stage = "preflight" if a["at"] <= start else "cleanup" if a["action"] == "retire" else "rollback" \
        if a["action"].startswith("alert.") else "traffic"
    return Entry(at=a["at"], t=relative(a["at"], start), stage=stage, kind=a["action"], actor=a["actor"],
                 message=a["decision"])


def _freezes(events: list[dict[str, Any]], audit: list[dict[str, Any]]) -> list[str]:
    """The freezes that held traffic (``held`` decisions) and what admission noted (windows, emergencies)."""
    held = [e["message"] for e in events if e["kind"] == "held" and not e["message"].startswith("held: ")]
    notes = [f"{a['action']}: {a['decision']}" for a in audit if a["action"] in ("deploy.admitted", "deploy.emergency")
             and a["decision"] and a["decision"] != "allowed"]
    return list(dict.fromkeys(held + notes))


def _traffic(events: list[dict[str, Any]]) -> tuple[list[VersionTraffic] | None, str]:
    """Per-version counts from the last event that recorded them (they are cumulative since the rollout began)."""
    last = next((e for e in reversed(events) if isinstance(e["data"].get("traffic"), dict)), None)
    if last is None:
        return None, ("not recorded: this rollout's router did not count requests per version (the built-in "
                      "router, nginx with its access log and HAProxy record them; a rollout run by an older "
                      "releasegate, or whose router never answered, has none)")
    counts = [VersionTraffic(version=v, requests=int(c.get("requests", 0)), errors=int(c.get("errors", 0)))
              for v, c in last["data"]["traffic"].items() if isinstance(c, dict)]
    window = float(last["data"].get("traffic_window") or 0.0)
    note = "the router's, from the rollout's start to its last traffic change or analysis"
    if window >= ROUTER_HISTORY:
        note = "the router's, of the last hour only: it keeps one hour of statistics, and this rollout ran longer"
    return counts, note


def _trigger(events: list[dict[str, Any]], spec: Spec, start: float) -> Trigger | None:
    """The first decision that turned the rollout back: a breached rule, a failed check, or a person's command."""
    for e in events:
        data = e["data"]
        if e["kind"] == "command" and data.get("command") in ("rollback", "abort") and "refused" not in e["message"]:
            return Trigger(at=e["at"], t=relative(e["at"], start), message=e["message"], actor=str(data.get("actor")))
        if e["kind"] in ("rollback", "abort", "aborted"):
            key = data.get("rule")
            value = data.get("breach_value")
            index, _, metric = str(key or "").partition(":")
            rule = spec.analysis.rules[int(index)] if index.isdigit() and int(index) < len(spec.analysis.rules) \
                else None
            number = float(value) if isinstance(value, int | float) else None
            weight = data.get("weight")
            return Trigger(at=e["at"], t=relative(e["at"], start), message=e["message"],
                           rule=rule.describe() if rule else None, metric=metric or None, value=number,
                           shown=rule.show(number) if rule and number is not None else None,
                           weight=weight if isinstance(weight, int) else None)
    return None


def _postmortem(report: Report, events: list[dict[str, Any]], spec: Spec) -> PostMortem:
    impact = _impact(report, events)
    trigger = _trigger(events, spec, report.started_at)
    words = {"rolled_back": "rolled back", "aborted": "aborted", "failed": "failed"}[report.status]
    if impact.requests is None:
        reached = "how many requests reached it was not recorded"
    elif impact.requests == 0:
        reached = "no user request reached it"
    else:
        rate = f" ({impact.error_rate:.1%})" if impact.error_rate is not None else ""
        reached = (f"{impact.requests} requests reached it at up to {impact.peak_weight}% of traffic, "
                   f"{impact.errors} of them failed{rate}")
        if impact.exposed_seconds is not None:
            reached += f", for {span_text(impact.exposed_seconds)}"
    kept = f"; {report.previous} kept serving the rest" if report.previous else ""
    why = (report.reason or words).rstrip(".")
    summary = f"{report.release} ({report.strategy}) was {words} in {report.env}: {why}. {reached[0].upper()}" \
              f"{reached[1:]}{kept}."
    failing = [e for e in report.timeline if e.stage not in ("preflight",)]
    return PostMortem(title=f"Post-mortem (draft): {report.release} {words}", summary=summary, impact=impact,
                      trigger=trigger, timeline=failing)


def _impact(report: Report, events: list[dict[str, Any]]) -> Impact:
    weights = [(e["at"], w) for e in events if (w := _weight(e)) is not None]
    peak = max((w for _, w in weights), default=0)
    first = next((at for at, w in weights if w > 0), None)
    back = next((at for at, w in weights if first is not None and at >= first and w == 0), None)
    until = back if back is not None else report.finished_at
    mine = next((t for t in report.traffic or [] if t.version == report.version), None)
    impact = Impact(peak_weight=peak, exposed_from=first, exposed_until=until if first is not None else None,
                    exposed_seconds=(until - first) if first is not None and until is not None else None,
                    note=report.traffic_note)
    if first is None:
        impact.requests, impact.errors = 0, 0
        impact.note = "no traffic was routed to this version: it stopped before its first step"
    elif mine is not None:
        impact.requests, impact.errors = mine.requests, mine.errors
        impact.error_rate = mine.errors / mine.requests if mine.requests else None
    return impact


def report_for(state_dir: Path, ref: str) -> Report:
    """The report of rollout ``ref`` (an id, or a service name for its latest rollout) in ``state_dir``'s store."""
    store = Store(state_dir)
    try:
        return build(state_dir, store, find(store, state_dir, ref))
    finally:
        store.close()


def no_postmortem(report: Report) -> UserError:
    """--postmortem (or the API's ``postmortem=true``) for a rollout that did not fail."""
    state = "is still running" if report.status == "running" else f"was {report.status.replace('_', ' ')}"
    return UserError(f"{report.id}: {state}, so there is no post-mortem to draft (one is written for rolled back, "
                     "aborted or failed rollouts); drop --postmortem for its deployment report")
