"""The read side of the use cases: ``status`` and ``history`` (their JSON shapes are documented in docs/cli.md).

Nothing here starts a provider: status reads the platform's records of what runs, so it works where nothing runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from releasegate.engine.judging import figures
from releasegate.errors import UserError
from releasegate.lookup import known, shown, spec_of, unknown_service
from releasegate.store.sqlite import ServiceRecord, Store, owner_alive

if TYPE_CHECKING:
    from releasegate.service import Context


def _live_versions(ctx: Context, store: Store, service: str) -> tuple[dict[str, int], list[str]]:
    """How many instances of each version run right now, read from the platform's records (no provider is
    started: status may run where nothing runs), and the hosts that could not be read (an SSH fleet's: their
    instances are counted as last seen, docs/ssh.md)."""
    latest = store.latest_rollout(service)
    if latest is None:
        return {}, []
    from releasegate.providers.platforms import make_platform

    spec = spec_of(latest)
    counts: dict[str, int] = {}
    platform = make_platform(spec.platform, ctx.state_dir, Path(latest.spec_path).parent)
    for inst in platform.running(service):
        counts[inst.version] = counts.get(inst.version, 0) + 1
    unreachable: dict[str, str] = getattr(platform, "unreachable", None) or {}
    return counts, list(unreachable.values())


def _service_state(store: Store, rec: ServiceRecord, live: dict[str, int], rolling: bool) -> tuple[str, str | None]:
    """(state, last version): a version is only current while one of its instances runs (docs/cli.md). The last
    version survives `down` and whatever failed after it: only a promotion replaces it."""
    if rec.current is not None:
        return ("running" if live.get(rec.current) else "not_running"), rec.current
    last = last_taken_down(store, rec.service)
    if rolling:
        return "deploying", last
    if store.last_event(rec.service, ("down",)) is not None:
        return "down", last  # a deploy since then that did not promote leaves it down
    return "not_running", None  # no version was ever promoted


def last_taken_down(store: Store, service: str) -> str | None:
    """The last version that served before the service was taken down: its last `down` records it (a `down`
    where nothing ran carries over the one before it)."""
    down = store.last_event(service, ("down",))
    if down is None:
        return None
    data = down["data"]
    last = data.get("last_version", data.get("version"))  # events recorded before last_version: the version
    return str(last) if last else None


def status(ctx: Context, service: str | None = None) -> list[dict[str, Any]]:
    """The documented ``status --json`` shape (docs/cli.md)."""
    store = ctx.store()
    try:
        records = [r for r in store.services() if service is None or r.service == service]
        if service and not records and store.latest_rollout(service) is None:
            raise unknown_service(ctx.state_dir, service, "deploy it first (`releasegate deploy SPEC --version V`)")
        out = []
        for rec in records:
            active = store.active_rollout(rec.service)
            live, unreachable = _live_versions(ctx, store, rec.service)
            state, last = _service_state(store, rec, live, active is not None)
            item: dict[str, Any] = {
                "service": rec.service, "state": state, "current": rec.current if state == "running" else None,
                "last_version": last, "instances": live, "previous": rec.previous,
                "previous_retire_at": rec.previous_until, "rollout": None}
            if unreachable:
                item["unreachable_hosts"] = unreachable
            if active is not None:
                st = active.state
                item["rollout"] = {
                    "id": st.id, "version": st.version, "previous": st.previous, "strategy": st.strategy,
                    "phase": st.phase, "step": st.step, "weight": st.weight, "waiting": st.waiting,
                    "reason": st.reason, "paused": st.paused.model_dump() if st.paused else None,
                    "staircase": st.staircase if st.phase == "rollback" else None,
                    "baseline": st.baseline if st.baseline_up else None,
                    "started_at": st.created_at, "updated_at": st.updated_at,
                    "controller_alive": owner_alive(active.owner),
                    "latest": {k.split(":", 1)[1]: (v[-1].value if v else None) for k, v in st.samples.items()},
                    "judge": figures(st, spec_of(active)) if st.judged and st.phase == "step" else None}
            out.append(item)
        return out
    finally:
        store.close()


def history(ctx: Context, service: str, limit: int = 20) -> list[dict[str, Any]]:
    store = ctx.store()
    try:
        rollouts = store.rollouts(service, limit)
        if not rollouts:
            if not known(store, service):
                raise unknown_service(ctx.state_dir, service, "no rollouts to show")
            raise UserError(f"{service}: no rollouts recorded in {shown(ctx.state_dir)}")
        out = []
        for rec in rollouts:
            st = rec.state
            out.append({"id": st.id, "version": st.version, "previous": st.previous, "strategy": st.strategy,
                        "status": st.status, "reason": st.reason, "waiting": st.waiting if st.active else None,
                        "paused": st.paused.model_dump() if st.paused and st.active else None,
                        "started_at": st.created_at,
                        "finished_at": st.finished_at,
                        "events": store.events(service, rollout_id=st.id)})
        return out
    finally:
        store.close()


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)
