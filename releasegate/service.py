"""Use cases shared by the CLI and (later) the server: deploy, resume, promote, abort, rollback, status, gc.

Each function validates its input completely before it changes anything, so a refused request leaves no trace
but its audit line.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from releasegate.engine import decide
from releasegate.engine.clock import Clock, SystemClock
from releasegate.engine.state import Decision, RolloutState
from releasegate.errors import ProviderError, UserError
from releasegate.governance.approvals import record_env_success
from releasegate.governance.calendar_models import Calendar
from releasegate.governance.gate import Admission, DeployRequest, admit, before_increase, release_commit
from releasegate.leasing import LeaseKeeper, kept
from releasegate.lookup import known, unknown_service
from releasegate.lookup import spec_of as _spec_of
from releasegate.notifications import Notifications, build_notifications
from releasegate.preflight import preflight
from releasegate.spec import load_spec, secrets
from releasegate.spec.models import Spec, check_version
from releasegate.store.audit import AuditLog
from releasegate.store.shared import SharedHandles
from releasegate.store.sqlite import Store, owner_alive, this_owner
from releasegate.wakeups import Bells

if TYPE_CHECKING:  # the controller (and the providers behind it) load when a rollout is driven, not for status
    from releasegate.controller import ProgressHook, Providers

ProviderFactory = Any  # async (spec, spec_dir, state_dir, clock) -> Providers


async def _default_factory(spec: Spec, spec_dir: Path, state_dir: Path, clock: Clock) -> Providers:
    from releasegate.providers.registry import build_providers

    return await build_providers(spec, spec_dir, state_dir, clock)


@dataclass
class Context:
    """What every use case needs: where state lives, the clock, and how to reach the providers."""

    state_dir: Path
    clock: Clock
    providers: ProviderFactory = _default_factory
    actor: str = "cli"
    bells: Bells | None = None  # the server's: its controllers hear its commands at once (releasegate/wakeups.py)
    leases: LeaseKeeper | None = None  # a server's keeper; None: each deploy/resume keeps its own lease
    shared: SharedHandles | None = None  # a server's: one connection set for all its controllers (store/shared.py)

    def keeper(self) -> LeaseKeeper:
        return self.leases or LeaseKeeper(self.state_dir)

    def store(self) -> Store:
        if self.shared is not None and self.shared.here():
            return self.shared.store()
        return Store(self.state_dir)


async def close_providers(providers: Providers) -> None:
    """Stop what building the providers started (``Providers.close``); tests' factories may have none."""
    close = getattr(providers, "close", None)
    if close is not None:
        await close()


def new_context(state_dir: Path, clock: Clock | None = None) -> Context:
    return Context(state_dir=state_dir, clock=clock or SystemClock())


def _rollout_id(service: str, version: str) -> str:
    return f"{service}-{version}-{uuid.uuid4().hex[:6]}"




def _hooks(ctx: Context, spec: Spec, st: RolloutState, admission: Admission) -> dict[str, Any]:
    """The controller's governance hooks: the freeze check before traffic increases (against the calendar stored
    at that moment), and the audit trail."""
    from releasegate.governance.stored import LiveCalendar

    shared = ctx.shared if ctx.shared is not None and ctx.shared.here() else None
    audit = shared.audit() if shared else AuditLog(ctx.state_dir)
    release = f"{spec.release_name}@{st.version}"
    commit = release_commit(ctx.state_dir, spec.release_name, st.version)

    def record(state: RolloutState, d: Any) -> None:
        audit.append(state.actor, f"rollout.{d.kind}", release=release, commit=commit, decision=d.message,
                     evidence=dict(d.data), at=state.updated_at)

    calendar = shared.calendar() if shared else LiveCalendar(ctx.state_dir)
    legacy = _legacy_calendar(st)

    def held(now: float) -> str | None:
        try:
            current = calendar.get() or legacy
        except Exception as exc:  # never promote on missing evidence: an unreadable calendar holds the traffic
            return (f"the stored calendar cannot be read ({type(exc).__name__}: {exc}); traffic stays where it is "
                    "until it can")
        return before_increase(admission, now, current)

    return {"audit": record, "before_increase": held}


def _legacy_calendar(st: RolloutState) -> Calendar | None:
    """A rollout admitted by a releasegate that judged a calendar file keeps that file's freezes until a calendar
    is stored."""
    if st.calendar_path is None or not Path(st.calendar_path).is_file():
        return None
    from releasegate.governance.calendar import load_calendar

    return load_calendar(Path(st.calendar_path))


def _chain(on_progress: ProgressHook | None, notes: Notifications | None) -> ProgressHook | None:
    """Progress goes to the terminal and to the notification targets (which never block the rollout)."""
    hooks = [h for h in (on_progress, notes.on_progress if notes else None) if h is not None]
    if not hooks:
        return None

    def both(st: RolloutState, decisions: list[Any]) -> None:
        for hook in hooks:
            hook(st, decisions)
    return both


def _readmit(st: RolloutState) -> Admission:
    """What admission decided for a rollout being resumed; the calendar is the one stored, read at each check."""
    return Admission(change=st.change or "major", env=st.env, actor=st.actor, emergency=st.emergency)


async def _drive(ctx: Context, store: Store, spec: Spec, providers: Providers, st: RolloutState,
                 admission: Admission, notes: Notifications | None,
                 on_progress: ProgressHook | None, keeper: LeaseKeeper) -> RolloutState:
    """Run the controller to the end (deploy and resume alike): notifications get a bounded chance to flush, and a
    promotion is recorded as the version's success in its environment (what the next one `requires`)."""
    use_spec = getattr(on_progress, "use_spec", None)  # e.g. the terminal printer judges values by the rules
    if use_spec is not None:
        use_spec(spec)
    from releasegate.controller import Controller

    controller = Controller(store, spec, providers, ctx.clock, _chain(on_progress, notes),
                            **_hooks(ctx, spec, st, admission), bells=ctx.bells)
    try:
        async with kept(keeper, store.lease, local=keeper is not ctx.leases):
            final = await controller.run(st)
    finally:
        if notes is not None:
            await notes.drain(10.0)
    if final.status == "promoted":
        record_env_success(ctx.state_dir, spec.release_name, final.version, final.env, ctx.clock.now())
    return final


@dataclass
class Admitted:
    """A deploy that passed every check and governance: what starting it needs (a release group admits every
    member before it starts any)."""

    spec: Spec
    spec_path: Path
    version: str
    previous: str | None
    admission: Admission
    request: DeployRequest
    notes: Notifications | None


async def admit_deploy(ctx: Context, store: Store, spec_path: Path, version: str, request: DeployRequest,
                       spec: Spec | None = None, say: Callable[[str], None] | None = None) -> Admitted:
    """Validate, preflight and admit (policy, calendar) a deploy, starting nothing; a refusal is a UserError.
    ``say`` hears what preflight does that takes long (an image pull's progress)."""
    spec = spec or load_spec(spec_path)
    check_version(version)
    secrets.require(spec, "deploy")  # before the state is touched: a reference resolved later must not fail
    store.ensure_no_active(spec.service)  # before touching any provider; create_rollout checks again
    checks = await preflight(spec, spec_path, version, ctx.state_dir, request.env,
                             allow_breaking=request.allow_breaking_migration, say=say)
    failed = [c for c in checks if not c.ok]
    if failed:
        raise UserError(f"{spec_path}: preflight failed, nothing was started:\n  - "
                        + "\n  - ".join(f"{c.name}: {c.detail}" for c in failed))
    record = store.service(spec.service)
    previous = record.current if record else None
    if previous == version:
        raise UserError(f"{spec.service} {version} is already the running version; nothing to deploy "
                        f"(see `releasegate status {spec.service}`)")
    notes = build_notifications(spec, ctx.state_dir)
    try:
        admission = admit(ctx.state_dir, spec, spec_path, version, previous, request, ctx.clock.now(),
                          on_refused=notes.on_refused if notes else None)
    except UserError:
        if notes is not None:
            await notes.drain(5.0)  # the refusal is worth telling before the process exits
        raise
    return Admitted(spec, spec_path, version, previous, admission, request, notes)


async def start_admitted(ctx: Context, store: Store, a: Admitted, on_progress: ProgressHook | None = None,
                         rollout_id: str | None = None, hold: bool = False) -> RolloutState:
    """Create the admitted rollout and drive it to its end; ``hold``: stop before traffic (engine ``held``)."""
    spec, version, previous, admission = a.spec, a.version, a.previous, a.admission
    try:
        providers = await ctx.providers(spec, a.spec_path.parent.resolve(), ctx.state_dir, ctx.clock)
    except ProviderError as exc:  # e.g. the router's port is taken: nothing was started, the user can fix it
        raise UserError(f"{a.spec_path}: cannot start the rollout: {exc}") from None
    try:
        _, retired = await _retire(ctx, store, spec, providers, force=True, replaced_by=version,
                                   actor=admission.actor)
        now = ctx.clock.now()
        st = decide.new_rollout(rollout_id or _rollout_id(spec.service, version), spec, version, previous, now)
        st = st.model_copy(update={"env": admission.env, "change": admission.change, "actor": admission.actor,
                                   "emergency": admission.emergency, "hold": hold,
                                   "allow_breaking_migration": a.request.allow_breaking_migration})
        keeper = ctx.keeper()
        store.lease = store.create_rollout(st, str(a.spec_path.resolve()), spec.model_dump_json(by_alias=True),
                                           this_owner(), keeper.holder, keeper.ttl)
        store.set_service(spec.service, previous, None, None, str(a.spec_path.resolve()), None, now)
        store.add_event(spec.service, st.id, now, "created",
                        f"deploy {version} ({st.strategy}" + (f", replacing {previous})" if previous else ")"),
                        {"actor": ctx.actor, "spec": str(a.spec_path)})
        if retired is not None and on_progress is not None:
            on_progress(st, [Decision("retired", retired.message, {"stopped": retired.stopped})])
        return await _drive(ctx, store, spec, providers, st, admission, a.notes, on_progress, keeper)
    finally:
        await close_providers(providers)


async def deploy(ctx: Context, spec_path: Path, version: str, on_progress: ProgressHook | None = None,
                 request: DeployRequest | None = None) -> RolloutState:
    spec = load_spec(spec_path)  # a bad spec or version is refused before the state dir is touched
    check_version(version)
    secrets.require(spec, "deploy")
    store = ctx.store()
    try:
        admitted = await admit_deploy(ctx, store, spec_path, version, request or DeployRequest(), spec,
                                      say=getattr(on_progress, "note", None))
        return await start_admitted(ctx, store, admitted, on_progress)
    finally:
        store.close()


async def resume(ctx: Context, service: str, on_progress: ProgressHook | None = None) -> RolloutState:
    store = ctx.store()
    try:
        rec = store.active_rollout(service)
        if rec is None:
            if not known(store, service):
                raise unknown_service(ctx.state_dir, service, "nothing to resume")
            raise UserError(f"{service}: no rollout in progress to resume (see `releasegate history {service}`)")
        spec = _spec_of(rec)
        secrets.require(spec, "resume")  # another shell may lack a variable the deploy had: change nothing
        keeper = ctx.keeper()
        store.lease = keeper.claim(store, rec.state.id)
        providers = await ctx.providers(spec, Path(rec.spec_path).parent, ctx.state_dir, ctx.clock)
        try:
            store.add_event(service, rec.state.id, ctx.clock.now(), "resumed", f"resumed by pid {this_owner()['pid']}")
            st = rec.state
            notes = build_notifications(spec, ctx.state_dir)
            return await _drive(ctx, store, spec, providers, st, _readmit(st), notes, on_progress, keeper)
        finally:
            await close_providers(providers)
    finally:
        store.close()


@dataclass(frozen=True)
class CommandResult:
    message: str
    applied: bool
    needs_resume: bool = False


async def send_command(ctx: Context, service: str, kind: str, wait: float = 30.0) -> CommandResult:
    """Queue promote/abort/rollback for the controller driving ``service`` and wait until it answers."""
    store = ctx.store()
    try:
        rec = store.active_rollout(service)
        if rec is None:
            if kind == "rollback":
                from releasegate.switch_back import rollback_finished

                return await rollback_finished(ctx, store, service)
            if not known(store, service):
                raise unknown_service(ctx.state_dir, service, f"no rollout to {kind}")
            raise UserError(f"{service}: no rollout in progress (see `releasegate status {service}`)")
        cid = store.add_command(service, rec.state.id, kind, ctx.actor, ctx.clock.now())
        if ctx.bells is not None:
            ctx.bells.ring(rec.state.id)
        if not owner_alive(rec.owner):
            return CommandResult(f"{kind} queued for rollout {rec.state.id}; no controller is running it",
                                 applied=False, needs_resume=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while loop.time() < deadline:
            state, note = store.command_state(cid)
            if state == "applied":
                return CommandResult(f"{kind} applied to rollout {rec.state.id}", applied=True)
            if state == "rejected":
                raise UserError(f"{service}: {kind} refused: {note}")
            await asyncio.sleep(0.1)
        return CommandResult(f"{kind} queued for rollout {rec.state.id}; the controller has not picked it up yet",
                             applied=False)
    finally:
        store.close()


@dataclass(frozen=True)
class Retired:
    """The kept previous version, stopped: what was said (printed, in history and in the audit log)."""

    version: str
    message: str
    stopped: list[str]


async def _retire(ctx: Context, store: Store, spec: Spec, providers: Providers, force: bool,
                  replaced_by: str | None = None, actor: str | None = None) -> tuple[list[str], Retired | None]:
    """Stop versions that are neither current nor still kept (or, with force, anything but current). Retiring
    the kept previous version is recorded with the rollout that promoted the current one (history shows it
    there) and audited: it ends the instant rollback to that version."""
    rec = store.service(spec.service)
    if rec is None:
        return [], None
    now = ctx.clock.now()
    keep = {rec.current}
    if rec.previous and not force and (rec.previous_until or 0) > now:
        keep.add(rec.previous)
    routed = {v.version for v in (await providers.router.get_routes(spec.service)).versions if v.weight > 0}
    stopped = []
    for inst in await providers.platform.instances(spec.service):
        if inst.version not in keep and inst.version not in routed:
            await providers.platform.stop(inst, spec.platform.stop_grace)
            stopped.append(f"{inst.version}@{inst.address}")
    if not rec.previous or rec.previous in keep:
        return stopped, None
    until = _when(rec.previous_until)
    if replaced_by is not None:
        said = (f"retiring {rec.previous}, kept for rollback until {until}, because {replaced_by} replaces "
                f"{rec.current}'s rollback target: {rec.current} becomes the version kept for rollback")
    else:
        said = f"retiring {rec.previous}: kept for rollback until {until}, which has passed"
    ran = [s for s in stopped if s.split("@", 1)[0] == rec.previous]
    said += f" ({len(ran)} instance(s) stopped)"
    store.set_service(spec.service, rec.current, None, None, None, None, now)
    latest = store.latest_rollout(spec.service)  # the one that promoted the current version: history shows it
    actor = actor or ctx.actor
    evidence = {"stopped": stopped, "version": rec.previous, "kept_until": rec.previous_until,
                "replaced_by": replaced_by, "actor": actor}
    store.add_event(spec.service, latest.state.id if latest else None, now, "retired", said, evidence)
    AuditLog(ctx.state_dir).append(actor, "retire", release=f"{spec.service}@{rec.previous}", decision=said,
                                   evidence=evidence, at=now)
    return stopped, Retired(rec.previous, said, stopped)


def _when(ts: float | None) -> str:
    import datetime as dt

    return "-" if ts is None else dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


async def gc(ctx: Context, service: str | None = None) -> dict[str, list[str]]:
    """Retire previous versions whose keep_previous has passed; skip services with a rollout in progress."""
    store = ctx.store()
    out: dict[str, list[str]] = {}
    try:
        if service and not known(store, service):
            raise unknown_service(ctx.state_dir, service, "nothing to retire")
        for rec in store.services():
            if service and rec.service != service:
                continue
            if store.active_rollout(rec.service) is not None or not rec.spec_json:
                continue
            spec = Spec.model_validate_json(rec.spec_json)
            spec_dir = Path(rec.spec_path).parent if rec.spec_path else Path.cwd()
            providers = await ctx.providers(spec, spec_dir, ctx.state_dir, ctx.clock)
            try:
                out[rec.service] = (await _retire(ctx, store, spec, providers, force=False))[0]
            finally:
                await close_providers(providers)
        return out
    finally:
        store.close()


# The read side and the lookups, kept in their own modules and offered here too (the CLI and teardown use them).
from releasegate.reading import dumps as dumps  # noqa: E402
from releasegate.reading import history as history  # noqa: E402
from releasegate.reading import last_taken_down as last_taken_down  # noqa: E402
from releasegate.reading import status as status  # noqa: E402
