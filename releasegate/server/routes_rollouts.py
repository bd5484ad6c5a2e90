"""``/api/v1`` services and rollouts: state, create (deploy), list, get, events, promote/abort/rollback/resume.

Each handler is the CLI command's use case (``releasegate.service``, ``releasegate.reading``) with the caller's
token name as the actor, so the API answers and audits exactly as the CLI does. A deploy is admitted in the
request (a refusal is a problem+json with the CLI's lines) and then driven by the supervisor: 202 names the
rollout, which ``GET /rollouts/{id}`` and ``/events`` follow.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from releasegate import reading, service
from releasegate.errors import UserError
from releasegate.server.auth import need, principal, require
from releasegate.server.problems import Problem
from releasegate.server.reads import Reads
from releasegate.server.runner import Supervisor
from releasegate.store.server import Grant, ServerStore
from releasegate.store.sqlite import RolloutRecord, Store, owner_alive

router = APIRouter(tags=["rollouts"])


class Rollout(BaseModel):
    id: str
    service: str
    version: str
    previous: str | None
    strategy: str
    status: str
    phase: str
    active: bool
    step: int
    weight: int
    reason: str | None
    waiting: str | None
    actor: str | None
    created_at: float
    updated_at: float
    finished_at: float | None
    controller_alive: bool


class Created(BaseModel):
    id: str
    service: str
    version: str
    status_url: str


class Event(BaseModel):
    seq: int
    rollout: str | None
    at: float
    kind: str
    message: str
    data: dict[str, Any]


class CommandAnswer(BaseModel):
    message: str
    applied: bool
    rollout: str | None = None


class DeployBody(BaseModel):
    """Deploy ``version`` of a spec: ``spec_path`` (a file under the server's spec root) or ``spec_yaml``."""

    version: str = Field(min_length=1, max_length=128)
    spec_path: str | None = None
    spec_yaml: str | None = None
    env: str = "prod"
    hotfix: bool = False
    break_glass: bool = Field(False, description="As `deploy --break-glass`: past a freeze or missing stages, with "
                                                 "`reason` and an approval of the policy's emergency_role; owned by "
                                                 "the token's user.")
    reason: str | None = Field(None, max_length=2000)
    allow_breaking_migration: bool = False


class ValidateBody(BaseModel):
    spec_yaml: str


class Validation(BaseModel):
    ok: bool
    summary: str | None = None
    errors: list[str] = []


def _out(rec: RolloutRecord, alive: Callable[[dict[str, Any] | None], bool] = owner_alive) -> Rollout:
    st = rec.state
    return Rollout(id=st.id, service=st.service, version=st.version, previous=st.previous, strategy=st.strategy,
                   status=st.status, phase=st.phase, active=st.active, step=st.step, weight=st.weight,
                   reason=st.reason, waiting=st.waiting, actor=st.actor, created_at=st.created_at,
                   updated_at=st.updated_at, finished_at=st.finished_at, controller_alive=alive(rec.owner))


def _state_dir(request: Request) -> Path:
    return Path(request.app.state.state_dir)


def _supervisor(request: Request) -> Supervisor:
    sup = request.app.state.supervisor
    assert isinstance(sup, Supervisor)
    return sup


def _reads(request: Request) -> Reads:
    reads = request.app.state.reads
    assert isinstance(reads, Reads)
    return reads


def _record(request: Request, rollout_id: str, store: Store | None = None) -> RolloutRecord:
    """One rollout, or 404; on the loop's kept connection unless ``store`` (a worker thread's) is given."""
    rec = (store or _reads(request).store).rollout(rollout_id)
    if rec is None:
        raise Problem(404, "not-found", f"rollout {rollout_id}: no such rollout (GET /api/v1/rollouts lists them)")
    return rec


@router.get("/services", response_model=list[dict[str, Any]])
def services(request: Request, grant: Grant = Depends(principal)) -> list[dict[str, Any]]:
    """Every service the caller may see, in the ``status --json`` shape (docs/cli.md)."""
    ctx = service.new_context(_state_dir(request))
    return [s for s in reading.status(ctx) if _sees(grant, s["service"])]


def _sees(grant: Grant, svc: str) -> bool:
    from releasegate.server.auth import allowed

    return allowed(grant, "viewer", svc)


@router.get("/services/{name}", response_model=dict[str, Any])
def service_state(name: str, request: Request, grant: Grant = Depends(principal)) -> dict[str, Any]:
    """One service in the ``status --json`` shape."""
    require(grant, "viewer", name)
    try:
        found = reading.status(service.new_context(_state_dir(request)), name)
    except UserError as exc:
        raise Problem(404, "not-found", str(exc).splitlines()[0]) from None
    return found[0]


@router.get("/services/{name}/history", response_model=list[dict[str, Any]])
def service_history(name: str, request: Request, grant: Grant = Depends(principal),
                    limit: int = Query(20, ge=1, le=500)) -> list[dict[str, Any]]:
    """The service's rollouts with their events, newest first, in the ``history --json`` shape (docs/cli.md)."""
    require(grant, "viewer", name)
    return reading.history(service.new_context(_state_dir(request)), name, limit)


@router.get("/rollouts", response_model=list[Rollout])
async def rollouts(request: Request, grant: Grant = Depends(principal),
                   service_name: str | None = Query(None, alias="service"),
                   limit: int = Query(50, ge=1, le=500)) -> list[Rollout]:
    """Rollouts, newest first, of every service the caller may see (or of ``service``)."""
    # In the event loop, never waiting for a worker thread: it reads only the page (Store.recent_rollouts) and
    # asks once per owner whether it lives (the server's 1,000 rollouts have one owner), so it is short.
    found = _reads(request).store.recent_rollouts(lambda n: service_name in (None, n) and _sees(grant, n), limit)
    alive = functools.lru_cache(maxsize=None)(lambda key: owner_alive(dict(key)))
    return [_out(r, lambda owner: owner is not None and alive(tuple(sorted(owner.items())))) for r in found]


@router.get("/rollouts/{rollout_id}", response_model=Rollout)
async def rollout(rollout_id: str, request: Request, grant: Grant = Depends(principal)) -> Rollout:
    rec = _record(request, rollout_id)
    require(grant, "viewer", rec.state.service)
    return _out(rec)


@router.get("/rollouts/{rollout_id}/events", response_model=list[Event])
def events(rollout_id: str, request: Request, grant: Grant = Depends(principal),
           after: int = Query(0, ge=0, description="Only events with a larger seq (poll with the last seen).")
           ) -> list[Event]:
    """The rollout's decisions and progress, oldest first (what ``history`` shows)."""
    store = Store(_state_dir(request))  # a worker thread's: a long rollout has many events
    try:
        rec = _record(request, rollout_id, store)
        require(grant, "viewer", rec.state.service)
        found = store.events(rec.state.service, rollout_id=rollout_id, limit=100_000)
    finally:
        store.close()
    return [Event(**e) for e in found if e["seq"] > after]


@router.get("/rollouts/{rollout_id}/report", response_class=Response, responses={200: {"content": {
    "text/markdown": {}, "text/html": {}, "application/json": {}}}})
def rollout_report(rollout_id: str, request: Request, grant: Grant = Depends(principal),
                   fmt: Literal["md", "html", "json"] = Query("md", alias="format"),
                   postmortem: bool = Query(False, description="Only the post-mortem draft (failed rollouts).")
                   ) -> Response:
    """The deployment report (docs/reports.md) as `releasegate report` prints it; a service name: its latest."""
    from releasegate.reports.serve import report_answer

    return report_answer(_state_dir(request), rollout_id, fmt, postmortem, lambda s: require(grant, "viewer", s))


def _spec_file(request: Request, body: DeployBody) -> Path:
    """The spec to deploy as a file: a path under the spec root, or the inline YAML written into the state."""
    if (body.spec_path is None) == (body.spec_yaml is None):
        raise Problem(400, "invalid", "give exactly one of spec_path (a spec file the server can read) and "
                                      "spec_yaml (the spec's text)")
    if body.spec_yaml is not None:
        return _inline(_state_dir(request), body.spec_yaml)
    root: Path = request.app.state.spec_root
    try:
        path = (root / body.spec_path).resolve() if body.spec_path else root
        usable = path.is_relative_to(root) and path.is_file()
    except (OSError, ValueError):  # a NUL byte, a name too long for the file system
        usable = False
    if not usable:
        raise Problem(400, "invalid", f"spec_path {body.spec_path}: no such spec file under the server's spec root "
                                      f"{root} (start the server with --spec-root DIR, or send spec_yaml)")
    return path


def _inline(state_dir: Path, text: str) -> Path:
    """Inline specs are kept by content in the state (a resumed rollout reads its spec's directory)."""
    from releasegate.fileio import private_dir

    where = state_dir / "specs"
    private_dir(where)
    path = where / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.yaml"
    if not path.exists():
        path.write_text(text, encoding="utf-8")
    return path


@router.post("/rollouts", status_code=202, response_model=Created,
             responses={409: {"description": "a rollout is in progress, or the Idempotency-Key was used for "
                                             "another body"}})
async def create(body: DeployBody, request: Request, grant: Grant = Depends(need("deployer")),
                 idempotency_key: str | None = Header(None, max_length=200)) -> Any:
    """Deploy ``version``: admitted now (preflight, stored policy and calendar), then driven by the server."""
    state_dir = _state_dir(request)
    digest = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
    sup = _supervisor(request)
    # One admission per Idempotency-Key and per service at a time: a retry waits for the first answer, and two
    # deploys of one service cannot pass the same checks; deploys of different services admit in parallel.
    async with sup.locks.hold(f"key:{idempotency_key}") if idempotency_key else contextlib.nullcontext():
        if idempotency_key is not None:
            with ServerStore(state_dir) as store:
                seen = store.idempotent(idempotency_key)
            if seen is not None:
                if seen[0] != digest:
                    raise Problem(409, "idempotency-conflict", "Idempotency-Key was already used for a different "
                                                               "request body; use a new key for a new deploy")
                rec = _record(request, seen[1])
                require(grant, "deployer", rec.state.service)
                return _created(rec.state.id, rec.state.service, rec.state.version)
        path = _spec_file(request, body)
        from releasegate.spec import load_spec

        try:
            spec = load_spec(path)
        except UserError as exc:  # spec_yaml's problems name spec.yaml, not the server's copy of it
            raise UserError(str(exc).replace(str(path), "spec.yaml") if body.spec_yaml is not None else str(exc)
                            ) from None
        require(grant, "deployer", spec.service)
        async with sup.locks.hold(f"service:{spec.service}"):
            try:
                rollout_id = await sup.deploy(path, body.version, grant.name, body.env, body.hotfix,
                                              break_glass=body.break_glass, reason=body.reason,
                                              allow_breaking=body.allow_breaking_migration)
            except UserError as exc:
                if "is in progress" in str(exc):
                    raise Problem(409, "conflict", str(exc).splitlines()[0]) from None
                raise
        if idempotency_key is not None:
            with ServerStore(state_dir) as store:
                store.remember(idempotency_key, digest, rollout_id, grant.name, time.time())
    return _created(rollout_id, spec.service, body.version)


def _created(rollout_id: str, svc: str, version: str) -> JSONResponse:
    url = f"/api/v1/rollouts/{rollout_id}"
    return JSONResponse(Created(id=rollout_id, service=svc, version=version, status_url=url).model_dump(),
                        status_code=202, headers={"Location": url})


async def _command(request: Request, grant: Grant, name: str, kind: str) -> CommandAnswer:
    """Queue ``kind`` for the controller driving ``name`` (as the CLI does) and wait for its answer."""
    require(grant, "deployer", name)
    sup = _supervisor(request)
    res = await service.send_command(sup.context(grant.name), name, kind, wait=30.0)
    if res.needs_resume:
        rollout_id = sup.resume(name)  # nobody drives it: this server applies it now
        return CommandAnswer(message=f"{res.message}; the server drives it now", applied=False, rollout=rollout_id)
    return CommandAnswer(message=res.message, applied=res.applied)


@router.post("/services/{name}/promote", response_model=CommandAnswer)
async def promote(name: str, request: Request, grant: Grant = Depends(need("deployer"))) -> CommandAnswer:
    """Skip the remaining steps of ``name``'s rollout: the new version to 100 % (after health and smoke)."""
    return await _command(request, grant, name, "promote")


@router.post("/services/{name}/abort", response_model=CommandAnswer)
async def abort(name: str, request: Request, grant: Grant = Depends(need("deployer"))) -> CommandAnswer:
    """Stop ``name``'s rollout: traffic back to the previous version at once."""
    return await _command(request, grant, name, "abort")


@router.post("/services/{name}/rollback", response_model=CommandAnswer)
async def rollback(name: str, request: Request, grant: Grant = Depends(need("deployer"))) -> CommandAnswer:
    """During a rollout like abort; after one, switch back to the kept previous version."""
    return await _command(request, grant, name, "rollback")


@router.post("/services/{name}/resume", response_model=CommandAnswer)
async def resume(name: str, request: Request, grant: Grant = Depends(need("deployer"))) -> CommandAnswer:
    """Drive ``name``'s interrupted rollout in this server."""
    require(grant, "deployer", name)
    rollout_id = _supervisor(request).resume(name)
    return CommandAnswer(message=f"resuming rollout {rollout_id}", applied=True, rollout=rollout_id)


def _active(request: Request, grant: Grant, rollout_id: str) -> str:
    """The service of ``rollout_id`` while it is in progress (409 once it is over)."""
    rec = _record(request, rollout_id)
    require(grant, "deployer", rec.state.service)
    if not rec.state.active:
        raise Problem(409, "conflict", f"rollout {rollout_id} is over ({rec.state.status}); to switch back after a "
                                       f"promotion: POST /api/v1/services/{rec.state.service}/rollback")
    return rec.state.service


@router.post("/rollouts/{rollout_id}/promote", response_model=CommandAnswer)
async def promote_rollout(rollout_id: str, request: Request,
                          grant: Grant = Depends(need("deployer"))) -> CommandAnswer:
    """As ``/services/{name}/promote``, named by the rollout (409 once it is over)."""
    return await _command(request, grant, _active(request, grant, rollout_id), "promote")


@router.post("/rollouts/{rollout_id}/abort", response_model=CommandAnswer)
async def abort_rollout(rollout_id: str, request: Request, grant: Grant = Depends(need("deployer"))) -> CommandAnswer:
    """As ``/services/{name}/abort``, named by the rollout."""
    return await _command(request, grant, _active(request, grant, rollout_id), "abort")


@router.post("/rollouts/{rollout_id}/rollback", response_model=CommandAnswer)
async def rollback_rollout(rollout_id: str, request: Request,
                           grant: Grant = Depends(need("deployer"))) -> CommandAnswer:
    """As ``/services/{name}/rollback`` during the rollout."""
    return await _command(request, grant, _active(request, grant, rollout_id), "rollback")


@router.post("/rollouts/{rollout_id}/resume", response_model=CommandAnswer)
async def resume_rollout(rollout_id: str, request: Request, grant: Grant = Depends(need("deployer"))) -> CommandAnswer:
    """Drive the interrupted rollout in this server."""
    resumed = _supervisor(request).resume(_active(request, grant, rollout_id))
    return CommandAnswer(message=f"resuming rollout {resumed}", applied=True, rollout=resumed)


@router.post("/specs/validate", response_model=Validation)
def validate(body: ValidateBody, request: Request, _: Grant = Depends(need("viewer"))) -> Validation:
    """Check a spec's text: ok with a summary, or every problem as ``spec.yaml:LINE:COL: message``."""
    import tempfile

    from releasegate.spec import load_spec

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.yaml"
        path.write_text(body.spec_yaml, encoding="utf-8")
        try:
            s = load_spec(path)
        except UserError as exc:
            lines = [line.replace(str(path), "spec.yaml") for line in str(exc).splitlines()]
            return Validation(ok=False, errors=lines)
    steps = " -> ".join(f"{st.weight}%" for st in s.strategy.steps) or "direct"
    return Validation(ok=True, summary=f"service {s.service} ({s.tier}), {s.strategy.kind} {steps}, "
                                       f"{len(s.analysis.rules)} rule(s), rollback {s.rollback_mode}")


@router.post("/alerts", tags=["alerts"])
def alerts(payload: dict[str, Any], request: Request, grant: Grant = Depends(need("deployer"))) -> dict[str, Any]:
    """Alertmanager webhook (as ``receive-alerts``): a firing alert in a rollout's ``rollback.on_alerts`` rolls
    it back. Needs a deployer (or admin) token of every service ('*')."""
    from releasegate.alert_receiver import PayloadError, handle

    require(grant, "deployer", None)
    try:
        return {"results": handle(payload, _state_dir(request), time.time())}
    except PayloadError as exc:
        raise Problem(400, "invalid", str(exc)) from None


__all__ = ["router"]
