"""After a promotion, while the previous version is kept: all traffic back to it at once (`rollback SERVICE` once
the rollout has ended, and a release group taking back a member it promoted)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from releasegate.errors import UserError
from releasegate.lookup import known, unknown_service
from releasegate.lookup import spec_of as _spec_of
from releasegate.providers.base import Routes, VersionRoute
from releasegate.service import CommandResult, Context, close_providers
from releasegate.spec.models import Spec
from releasegate.store.audit import AuditLog
from releasegate.store.sqlite import RolloutRecord, ServiceRecord, Store

if TYPE_CHECKING:
    from releasegate.controller import Providers


async def rollback_finished(ctx: Context, store: Store, service: str) -> CommandResult:
    """After a promotion, while the previous version is kept: switch all traffic back to it at once."""
    rec = store.service(service)
    if not known(store, service):
        raise unknown_service(ctx.state_dir, service, "nothing to roll back")
    if rec is None or not rec.previous or not rec.current:
        raise UserError(f"{service}: nothing to roll back to: no previous version is kept "
                        f"(see `releasegate status {service}`)")
    latest = store.latest_rollout(service)
    if latest is None:
        raise UserError(f"{service}: no rollout recorded; nothing to roll back")
    spec = _spec_of(latest)
    providers = await ctx.providers(spec, Path(latest.spec_path).parent, ctx.state_dir, ctx.clock)
    try:
        return await _switch_back(ctx, store, service, rec, latest, spec, providers)
    finally:
        await close_providers(providers)


async def _switch_back(ctx: Context, store: Store, service: str, rec: ServiceRecord, latest: RolloutRecord,
                       spec: Spec, providers: Providers) -> CommandResult:
    assert rec.previous is not None and rec.current is not None
    live = sorted((i for i in await providers.platform.instances(service) if i.version == rec.previous),
                  key=lambda i: (i.started_at, i.id))
    if not live:
        raise UserError(f"{service}: the previous version {rec.previous} has no live instance any more; "
                        f"deploy it again with `releasegate deploy SPEC --version {rec.previous}`")
    now = ctx.clock.now()
    store.add_event(service, latest.state.id, now, "intent", f"route {rec.previous} 100% (rollback)")
    await providers.router.set_routes(service, Routes((VersionRoute(rec.previous, 100,
                                                                    tuple(i.address for i in live)),)))
    applied = await providers.router.get_routes(service)
    if applied.weights() != {rec.previous: 100}:
        raise UserError(f"{service}: the router did not apply the rollback (it reports {applied.weights()})")
    store.set_service(service, rec.previous, None, None, None, None, now)
    said = f"rolled back by {ctx.actor}: {rec.previous} serves 100%, {rec.current} stopping"
    store.add_event(service, latest.state.id, now, "rolled_back", said)
    AuditLog(ctx.state_dir).append(ctx.actor, "rollback", release=f"{service}@{rec.current}", decision=said,
                                   evidence={"to": rec.previous}, at=now)
    for inst in await providers.platform.instances(service):
        if inst.version == rec.current:
            await providers.platform.stop(inst, spec.platform.stop_grace)
    return CommandResult(f"{service} rolled back to {rec.previous}; {rec.current} stopped", applied=True)
