"""``releasegate down SERVICE``: take a service out of service, on purpose, with a record of who did it.

Order matters for the users still connected: the routes go first (new requests get the router's 503 instead of a
connection refused), then the built-in router stops (it finishes the requests in flight), then every instance of
every version gets SIGTERM and its stop grace. The intent is recorded before anything is touched and each step is
idempotent, so a `down` interrupted half-way is finished by running it again.

A rollout in progress is refused: its controller would start instances and set routes again. ``--force`` aborts it
first, exactly as ``releasegate abort`` would (recorded as an abort by the same person), then takes the service
down.

The built-in router serves one service, so it is stopped. nginx and HAProxy serve other things too: releasegate
only owns this service's routes there, which it empties (the server keeps running; see docs/cli.md).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from releasegate import service as use_cases
from releasegate.controller import ProgressHook
from releasegate.errors import ProviderError, UserError
from releasegate.lookup import last_spec, unknown_service
from releasegate.providers.base import Routes
from releasegate.providers.platforms import make_platform
from releasegate.reading import last_taken_down
from releasegate.spec.models import BuiltinRouter, Spec
from releasegate.store.audit import AuditLog
from releasegate.store.sqlite import Store

ABORT_WAIT = 300.0
"""How long ``down --force`` waits for a running controller to finish the abort it applied (drains included)."""


@dataclass
class DownResult:
    lines: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)  # VERSION@HOST:PORT of every instance stopped
    already_down: bool = False


async def _abort_first(ctx: use_cases.Context, store: Store, service: str,
                       on_progress: ProgressHook | None) -> str:
    """Abort the rollout in progress as `releasegate abort` would, and wait until it has finished."""
    res = await use_cases.send_command(ctx, service, "abort")
    if res.needs_resume:  # nobody drives it: apply the abort here, as `abort` does
        st = await use_cases.resume(ctx, service, on_progress=on_progress)
        return f"rollout {st.id} of {st.version}: {st.status.replace('_', ' ')} first"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ABORT_WAIT
    while (active := store.active_rollout(service)) is not None:
        if loop.time() > deadline:
            raise UserError(f"{service}: the abort of rollout {active.state.id} was applied but its controller has "
                            f"not finished it after {ABORT_WAIT:g}s (phase {active.state.phase}); run "
                            f"`releasegate down {service}` again once `releasegate status {service}` shows no rollout")
        await asyncio.sleep(0.2)
    return f"{res.message}; the rollout has finished"


async def _remove_routes(state_dir: Path, spec: Spec) -> str:
    """Empty the service's routes and stop its built-in router; what happened, as one phrase."""
    service = spec.service
    if isinstance(spec.router, BuiltinRouter):
        from releasegate.providers.routers.builtin import (
            forget_routes,
            read_router_state,
            router_client,
            stop_router,
        )

        info = await asyncio.to_thread(read_router_state, state_dir, service)
        if info is None:
            forget_routes(state_dir, service)
            return "its router was not running"
        client = router_client(state_dir, service, str(info["admin"]))
        try:
            await client.set_routes(service, Routes(()))
        except ProviderError:
            pass  # stopping it below removes the routes from the data plane all the same
        finally:
            await client.aclose()
        await asyncio.to_thread(stop_router, state_dir, service, 10.0)
        forget_routes(state_dir, service)
        return f"routes removed and its router on {info.get('listen')} stopped"
    router: Any
    if spec.router.kind == "nginx":
        from releasegate.providers.routers.nginx import NginxRouter

        router = NginxRouter(spec.router, state_dir, service)
    else:
        from releasegate.providers.routers.haproxy import HaproxyRouter

        router = HaproxyRouter(spec.router, service)
    try:
        await router.set_routes(service, Routes(()))
    except ProviderError as exc:
        raise UserError(f"{service}: cannot remove its routes from {spec.router.kind}: {exc}; nothing was stopped "
                        "(fix it and run `releasegate down` again)") from None
    return f"its routes in {spec.router.kind} removed ({spec.router.kind} keeps running: it serves more than {service})"


async def take_down(ctx: use_cases.Context, service: str, *, force: bool = False,
                    on_progress: ProgressHook | None = None) -> DownResult:
    store = ctx.store()
    try:
        result = DownResult()
        found = last_spec(store, service)
        if found is None:
            raise unknown_service(ctx.state_dir, service, "nothing to take down")
        active = store.active_rollout(service)
        if active is not None:
            st = active.state
            if not force:
                raise UserError(f"{service}: rollout {st.id} of {st.version} is in progress (phase {st.phase}); "
                                f"`releasegate abort {service}` first, or `releasegate down {service} --force` "
                                "to abort it and take the service down")
            result.lines.append(await _abort_first(ctx, store, service, on_progress))
            found = last_spec(store, service) or found
        spec, spec_dir = found
        platform = make_platform(spec.platform, ctx.state_dir, spec_dir)
        reconciled = await platform.reconcile(service)  # processes a killed controller left unrecorded count too
        result.lines += reconciled
        live = await platform.instances(service)
        dead = await platform.dead_instances(service)
        rec = store.service(service)
        version = rec.current if rec else None
        was_down = store.last_event(service, ("down", "created"))
        router_up = await asyncio.to_thread(_router_running, ctx.state_dir, spec)
        if not live and not dead and version is None and not router_up and was_down \
                and was_down["kind"] == "down":
            result.already_down = True
            result.lines.append(f"{service} is already down: nothing runs (see `releasegate status {service}`)")
            return result
        now = ctx.clock.now()
        latest = store.latest_rollout(service)
        last_id = latest.state.id if latest else None  # recorded with the last rollout, so `history` shows it
        store.add_event(service, last_id, now, "intent", f"take {service} down: remove its routes, stop its router "
                        f"and {len(live)} instance(s)", {"actor": ctx.actor})
        router_note = await _remove_routes(ctx.state_dir, spec)
        for inst in live:
            await platform.stop(inst, spec.platform.stop_grace)
            result.stopped.append(f"{inst.version}@{inst.address}")
        for gone in dead:
            await platform.stop(gone.instance, 0.0)  # clears the record of an instance that had already exited
        now = ctx.clock.now()
        store.set_service(service, None, None, None, None, None, now)
        said = (f"{service} taken down by {ctx.actor}: {len(result.stopped)} instance(s) stopped"
                + (f" ({', '.join(result.stopped)})" if result.stopped else "") + f", {router_note}")
        last = version or last_taken_down(store, service)  # kept across a down where nothing ran
        evidence = {"actor": ctx.actor, "version": version, "last_version": last, "stopped": result.stopped,
                    "router": router_note, "reconciled": reconciled}
        store.add_event(service, last_id, now, "down", said, evidence)
        AuditLog(ctx.state_dir).append(ctx.actor, "down", release=f"{service}@{version}" if version else service,
                                       decision=said, evidence=evidence, at=now)
        result.lines.append(said)
        result.lines.append(f"`releasegate status {service}` shows it as down; `releasegate deploy SPEC --version V` "
                            "starts it again")
        return result
    finally:
        store.close()


def _router_running(state_dir: Path, spec: Spec) -> bool:
    if not isinstance(spec.router, BuiltinRouter):
        return False
    from releasegate.providers.routers.builtin import read_router_state

    return read_router_state(state_dir, spec.service) is not None
