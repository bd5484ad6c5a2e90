"""``releasegate plan``: what deploy would do, step by step with timings, computed by the engine itself.

The plan runs the real state machine against a simulated world where every check passes and every metric is
healthy, so it cannot drift from what ``deploy`` does. With ``--env`` it also asks deploy's own admission
(``governance.gate.judge``) what the stored policy and calendar would decide now. It reads the store (to know the
running version, the approvals, the stored rules) but creates and changes nothing: no audit entry, no state dir.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from releasegate.durations import format_duration
from releasegate.engine.simulate import simulate
from releasegate.engine.state import Analyze, Finish, Health, Migrate, Route, Smoke, Start, Stop
from releasegate.spec import load_spec
from releasegate.spec.models import Spec, check_version


@dataclass
class Plan:
    spec: Spec
    version: str
    previous: str | None
    rows: list[tuple[str, str]] = field(default_factory=list)  # (time since first traffic, what happens)
    notes: list[str] = field(default_factory=list)


def _running_version(state_dir: Path, service: str) -> str | None:
    from releasegate.store.db import open_db, store_url

    if store_url() is not None:
        pgdb = open_db(state_dir)
        try:
            row = pgdb.execute("SELECT current FROM services WHERE service=?", (service,)).fetchone()
            return str(row[0]) if row and row[0] is not None else None
        finally:
            pgdb.close()
    db = state_dir / "releasegate.db"
    if not db.exists():
        return None
    conn = sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT current FROM services WHERE service=?", (service,)).fetchone()
        return row[0] if row else None
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def make_plan(spec_path: Path, version: str, state_dir: Path, previous: str | None = None) -> Plan:
    spec = load_spec(spec_path)
    check_version(version)
    previous = previous if previous is not None else _running_version(state_dir, spec.service)
    if previous == version:
        previous = None
    plan = Plan(spec, version, previous)
    trace = simulate(spec, version, previous, auto_promote=True)
    h = spec.health
    manual = {i for i, s in enumerate(spec.strategy.steps) if s.pause is None}
    i = 0
    steps = trace.steps
    while i < len(steps):
        t, action = steps[i]
        at = format_duration(t) if t else "0s"
        if isinstance(action, Start):
            plan.rows.append((at, f"start {action.count} instance(s) of {action.version} (platform "
                                  f"{spec.platform.kind})"))
        elif isinstance(action, Health):
            plan.rows.append((at, f"health-check {action.version}: GET {h.path} every "
                                  f"{format_duration(h.interval)}, up to {h.attempts} attempts "
                                  f"(at most {format_duration(h.attempts * h.interval)})"))
        elif isinstance(action, Smoke):
            plan.rows.append((at, f"smoke-test {action.version} directly: {_smoke_summary(spec)}; a failure "
                                  "aborts before any user traffic"))
        elif isinstance(action, Route):
            split = ", ".join(f"{s.version} {s.weight}%" for s in action.shares)
            plan.rows.append((at, f"route {split}"))
        elif isinstance(action, Analyze):
            j = i
            while j + 1 < len(steps) and isinstance(steps[j + 1][1], Analyze):
                j += 1
            end = steps[j + 1][0] if j + 1 < len(steps) else steps[j][0]
            what = (f"analyse every {format_duration(spec.analysis.interval)} for {format_duration(end - t)}"
                    if spec.analysis.rules else f"wait {format_duration(end - t)}")
            plan.rows.append((at, what))
            i = j
        elif isinstance(action, Migrate):
            running = f" ({previous} keeps working: they must be backward compatible)" if previous else ""
            plan.rows.append((at, f"apply pending database migrations{running}: lint, backup and verify first; a "
                                  "failure restores the backup and aborts before any traffic"))
        elif isinstance(action, Stop):
            plan.rows.append((at, f"drain and stop {action.version}" +
                              (f" instances beyond {action.keep}" if action.keep else "")))
        elif isinstance(action, Finish):
            done = f"done: {action.status}"
            keep = spec.strategy.keep_previous
            if previous and keep and trace.state.strategy in ("canary", "bluegreen"):
                done += f"; {previous} kept {format_duration(keep)} for instant rollback, then retired"
            plan.rows.append((at, done))
        i += 1
    if manual:
        plan.notes.append("step(s) " + ", ".join(str(n + 1) for n in sorted(manual)) +
                          " have no pause: the rollout waits there for `releasegate promote "
                          f"{spec.service}` (timed here as if promoted at once)")
    plan.notes.append("times count from the start; health checks can take up to "
                      f"{format_duration(h.attempts * h.interval)} more")
    if spec.analysis.rules:
        plan.notes.append("rollback when: " + "; ".join(r.describe() for r in spec.analysis.rules))
    if previous is not None:
        plan.notes.append(f"health during the rollout: {h.path} on each new instance every "
                          f"{format_duration(spec.analysis.interval)}; {h.failure_threshold} failures in a row, or "
                          f"every instance down for {format_duration(h.down_after)}, roll back straight to 0%")
    plan.notes += rollback_plan(spec, version)
    if previous is None:
        plan.notes.append(f"first deploy of {spec.service}: no previous version, so no canary steps or analysis")
    return plan


def governance_lines(plan: Plan, spec_path: Path, env: str, state_dir: Path, now: float | None = None,
                     hotfix: bool = False) -> list[str]:
    """What the stored policy and calendar would decide for deploying ``plan`` to ``env`` at ``now``."""
    from releasegate.governance.gate import judge

    at = time.time() if now is None else now
    judgement = judge(state_dir, plan.spec, spec_path, plan.version, plan.previous, env, hotfix, at)
    force = judgement.force
    tz = force.calendar.tz if force.calendar is not None else None
    moment = dt.datetime.fromtimestamp(at, tz=dt.UTC).astimezone(tz)
    rules = ", ".join(doc.label for doc in (force.policy_doc, force.calendar_doc) if doc is not None)
    missing = [f"no {kind} is stored" for kind, doc in (("policy", force.policy_doc),
                                                        ("calendar", force.calendar_doc)) if doc is None]
    lines = [f"governance: a deploy of {plan.spec.service} {plan.version} to {env} at {moment:%Y-%m-%d %H:%M %Z}, "
             f"judged by {rules or 'nothing'}" + (f" ({'; '.join(missing)})" if missing else "")]
    since = f" ({plan.previous} -> {plan.version})" if plan.previous else ""
    lines.append(f"  change judged: {judgement.change}{since}" + (" (--hotfix)" if hotfix else ""))
    lines += [f"  note: {n}" for n in judgement.notes]
    if judgement.allowed:
        lines.append("  would be admitted" + ("" if force.policy or force.calendar else
                                              ": nothing is gated until an admin runs `releasegate policy apply "
                                              "FILE` and `releasegate calendar apply FILE`"))
        return lines
    lines.append("  would be refused:")
    lines += [f"    - {m}" for m in judgement.blocking + judgement.bypassable]
    if judgement.bypassable and not judgement.blocking:
        from releasegate.governance.gate import break_glass_hint

        lines.append(f"  {break_glass_hint(force.policy)}")
    return lines


def render_governance(out: Console, plan: Plan, spec_path: Path, env: str, state_dir: Path,
                      hotfix: bool = False) -> None:
    for line in governance_lines(plan, spec_path, env, state_dir, hotfix=hotfix):
        out.print(line, markup=False)


def _smoke_summary(spec: Spec) -> str:
    commands = [t.command for t in spec.smoke_tests if t.command is not None]
    requests = len(spec.smoke_tests) - len(commands)
    parts = [f"{requests} request(s) per instance"] if requests else []
    parts += [f"`{c}` against one instance" for c in commands]
    return ", ".join(parts) or "nothing"


def rollback_plan(spec: Spec, version: str) -> list[str]:
    """What a breach would do, stair by stair, so an operator sees the rollback plan before deploying."""
    rb, svc = spec.rollback, spec.service
    if spec.strategy.kind == "rolling":
        return ["rollback: the replacement runs backwards batch by batch under the same limits"]
    if spec.rollback_mode == "immediate":
        why = " (tier critical)" if spec.tier == "critical" and rb.mode is None else ""
        return [f"rollback mode: immediate{why}: on a breach {version} goes to 0% at once"]
    stairs = " -> ".join(f"{s.weight}% (hold {format_duration(rb.wait_at(s.weight))})" if s.weight else "0%"
                         for s in rb.staircase)
    straight = [f"error rate above {rb.immediate_error_rate * 100:g}% (rollback.immediate_error_rate)"
                if rb.immediate_error_rate is not None else "",
                f"the breaching metric {rb.rising * 100:g}% worse over a stair (rollback.rising)"
                if rb.rising is not None else "", "a dead instance"]
    return [f"rollback mode: staircase: on a breach {version} drops at once to the first stair below its weight: "
            f"{stairs}",
            "at each stair: errors persist for its hold -> the next stair down; errors stopped -> hold there, paused "
            f"for an operator (`releasegate promote {svc}` promotes again, `releasegate rollback {svc}` goes to 0%)",
            "straight to 0% at once: " + ", ".join(s for s in straight if s)
            + "; reaching 0% after the staircase declares an incident"]
