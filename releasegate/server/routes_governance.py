"""``/api/v1`` governance: releases and their approvals, the calendar check, the audit log, and tokens.

The rules stay in ``releasegate.governance``: the API adds only who the caller is. An approval is given as the
token's name, so the stored policy judges that user's stage roles exactly as it judges ``approve --as USER``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from releasegate.errors import UserError
from releasegate.server.auth import ROLES, issue, need, principal, require
from releasegate.server.problems import Problem
from releasegate.store.governance import StoredDocument
from releasegate.store.server import Grant, ServerStore

router = APIRouter()


class SignBody(BaseModel):
    stage: str = Field(description="The stage, named by its role, e.g. reviewer.")
    env: str = "prod"
    checks: list[str] = []


class RejectBody(BaseModel):
    stage: str
    reason: str
    env: str = "prod"


class Signed(BaseModel):
    release: str
    user: str
    stage: str
    env: str
    kind: str


class CalendarAnswer(BaseModel):
    judged: str
    allowed: bool
    reason: str
    next_allowed: str | None


class Verified(BaseModel):
    ok: bool
    first_bad_seq: int | None
    reason: str


class DocumentBody(BaseModel):
    text: str = Field(description="The policy or calendar YAML, as `policy apply FILE` / `calendar apply FILE` read.")
    dry_run: bool = False
    source: str | None = Field(None, max_length=500, description="Where the text came from (the client's file "
                                                                 "name): recorded, and named in errors and the diff.")


class DocumentOut(BaseModel):
    kind: str
    changed: bool
    version: int | None
    diff: str
    previous: int | None = Field(None, description="The version it replaced (or would replace).")
    sha256: str | None = None
    actor: str | None = None


class StoredOut(BaseModel):
    """One stored version of the policy or calendar, its exact text included."""

    kind: str
    version: int
    label: str
    content: str
    sha256: str
    actor: str
    source: str | None
    at: float


class Withdrawn(BaseModel):
    release: str
    user: str
    stages: list[str]


class Head(BaseModel):
    seq: int
    hash: str


class TokenBody(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    role: Literal["viewer", "deployer", "approver", "admin"]
    service: str = "*"


class TokenOut(BaseModel):
    name: str
    role: str
    service: str
    created_at: float
    created_by: str


class NewToken(TokenOut):
    token: str = Field(description="Shown once; only its hash is kept.")


def _state_dir(request: Request) -> Path:
    return Path(request.app.state.state_dir)


def _policy(state_dir: Path, what: str) -> Any:
    from releasegate.governance.stored import require_policy

    return require_policy(state_dir, what)


@router.get("/releases/{service}/{version}", tags=["releases"], response_model=dict[str, Any])
def release(service: str, version: str, request: Request, grant: Grant = Depends(principal),
            env: str = "prod") -> dict[str, Any]:
    """The release's stages, sign-offs and gate for ``env`` (the ``approvals --json`` shape)."""
    from releasegate.commands.approvals import _as_json
    from releasegate.governance.approvals import release_status

    require(grant, "viewer", service)
    where = _state_dir(request)
    policy = _policy(where, "approvals")
    return dict(_as_json(release_status(where, policy, service, version, env)), judged_by=policy.source)


@router.post("/releases/{service}/{version}/approvals", tags=["releases"], response_model=Signed)
def approve(service: str, version: str, body: SignBody, request: Request,
            grant: Grant = Depends(need("approver"))) -> Signed:
    """Approve a stage as the token's user (the stored policy decides whether that user may sign it)."""
    from releasegate.governance.approvals import approve as give

    require(grant, "approver", service)
    where = _state_dir(request)
    s = give(where, _policy(where, "approve"), service, version, body.stage, grant.name, body.checks, body.env)
    return Signed(release=f"{service}@{version}", user=s.user, stage=s.stage, env=s.env, kind="approval")


@router.post("/releases/{service}/{version}/rejections", tags=["releases"], response_model=Signed)
def reject(service: str, version: str, body: RejectBody, request: Request,
           grant: Grant = Depends(need("approver"))) -> Signed:
    """Reject the release as the token's user: it is blocked until they withdraw."""
    from releasegate.governance.approvals import reject as block

    require(grant, "approver", service)
    where = _state_dir(request)
    s = block(where, _policy(where, "reject"), service, version, body.stage, grant.name, body.reason, body.env)
    return Signed(release=f"{service}@{version}", user=s.user, stage=s.stage, env=s.env, kind="rejection")


@router.delete("/releases/{service}/{version}/rejections", tags=["releases"], response_model=Withdrawn)
def withdraw(service: str, version: str, request: Request,
             grant: Grant = Depends(need("approver"))) -> Withdrawn:
    """Withdraw the token's user's rejection of the release (as ``withdraw``)."""
    from releasegate.governance.approvals import withdraw as unblock

    require(grant, "approver", service)
    gone = unblock(_state_dir(request), service, version, grant.name)
    return Withdrawn(release=f"{service}@{version}", user=grant.name, stages=[s.stage for s in gone])


@router.get("/calendar/check", tags=["calendar"], response_model=CalendarAnswer)
def calendar_check(request: Request, _: Grant = Depends(principal),
                   change: Literal["major", "minor", "patch", "hotfix", "config"] = "major",
                   env: str = "prod", at: str | None = None) -> CalendarAnswer:
    """May ``change`` start now (or ``at``, ISO 8601) under the stored calendar?"""
    from releasegate.commands.calendar import parse_at
    from releasegate.governance.calendar import decide, format_local
    from releasegate.governance.stored import latest, parse_calendar

    doc = latest(_state_dir(request), "calendar")
    if doc is None:
        raise Problem(404, "not-found", "no calendar is stored; an admin stores one with `releasegate calendar "
                                        "apply FILE`")
    cal = parse_calendar(doc)
    decision = decide(cal, parse_at(at, cal), change, env)
    nxt = format_local(decision.next_allowed, cal.tz) if decision.next_allowed is not None else None
    return CalendarAnswer(judged=doc.label, allowed=decision.allowed, reason=decision.reason, next_allowed=nxt)


@router.get("/audit/verify", tags=["audit"], response_model=Verified)
def audit_verify(request: Request, grant: Grant = Depends(principal),
                 expect: list[str] = Query([], max_length=1000,
                                           description="SEQ:HASH heads kept elsewhere (`audit head`), as "
                                                       "`audit verify --expect`.")) -> Verified:
    """Check the hash chain (as ``audit verify``), and that each ``expect``ed entry still has its hash."""
    from releasegate.commands.audit import check_anchors, parse_anchor
    from releasegate.store.audit import AuditLog

    require(grant, "viewer", None)
    anchors = [parse_anchor(text) for text in expect]
    with AuditLog(_state_dir(request)) as log:
        v = log.verify()
        if v.ok:
            v = check_anchors(log, anchors) or v
    return Verified(ok=v.ok, first_bad_seq=v.first_bad_seq, reason=v.reason)


@router.get("/audit/head", tags=["audit"], response_model=Head,
            responses={404: {"description": "the audit log is empty"}})
def audit_head(request: Request, grant: Grant = Depends(principal)) -> Head:
    """The last entry as SEQ and HASH (as ``audit head``), to keep where the state's writers cannot."""
    from releasegate.store.audit import AuditLog

    require(grant, "viewer", None)
    with AuditLog(_state_dir(request)) as log:
        top = log.head()
    if top is None:
        raise Problem(404, "not-found", "audit log: it is empty; there is no head to keep yet")
    return Head(seq=top[0], hash=top[1])


@router.get("/audit/export", tags=["audit"], response_class=PlainTextResponse)
def audit_export(request: Request, grant: Grant = Depends(need("admin")),
                 since: str | None = Query(None, description="ISO 8601 time or a duration back, e.g. 7d.")
                 ) -> PlainTextResponse:
    """The audit log as JSON lines (as ``audit export``); admins only."""
    from releasegate.commands.audit import parse_since
    from releasegate.store.audit import AuditLog

    require(grant, "admin", None)
    start = parse_since(since, time.time()) if since is not None else None
    with AuditLog(_state_dir(request)) as log:
        body = "".join(entry.to_json() + "\n" for entry in log.entries(start))
    return PlainTextResponse(body, media_type="application/x-ndjson")


def _upload(request: Request, grant: Grant, kind: Literal["policy", "calendar"], body: DocumentBody) -> DocumentOut:
    """Store the next version of ``kind`` as ``policy apply`` does, applied by the token's admin."""
    import hashlib

    from releasegate.fileio import private_dir
    from releasegate.governance.stored import apply

    require(grant, "admin", None)
    where = _state_dir(request) / "uploads"
    private_dir(where)
    path = where / f"{kind}-{hashlib.sha256(body.text.encode()).hexdigest()[:16]}.yaml"
    path.write_text(body.text, encoding="utf-8")
    source = body.source or f"{kind}.yaml"
    try:
        done = apply(_state_dir(request), kind, path, dry_run=body.dry_run, server_admin=grant.name, source=source)
    except UserError as exc:  # name the client's file, not the server's copy of it
        raise UserError(str(exc).replace(str(path), source)) from None
    doc, previous = done.document, done.previous
    version = doc.version if doc is not None else (previous.version if previous else None)
    shown = doc or (previous if not done.changed else None)  # unchanged: the stored version it equals
    return DocumentOut(kind=kind, changed=done.changed, version=version, diff=done.diff,
                       previous=previous.version if previous else None, sha256=shown.sha256 if shown else None,
                       actor=shown.actor if shown else None)


def _stored_out(doc: StoredDocument) -> StoredOut:
    return StoredOut(kind=doc.kind, version=doc.version, label=doc.label, content=doc.content, sha256=doc.sha256,
                     actor=doc.actor, source=doc.source, at=doc.at)


def _document(request: Request, kind: Literal["policy", "calendar"], version: int | None) -> StoredOut:
    from releasegate.governance.stored import latest

    doc = latest(_state_dir(request), kind, version)
    if doc is None:
        raise Problem(404, "not-found", f"no {kind} is stored" + (f" as v{version}" if version else "") +
                      f"; an admin stores one with `releasegate {kind} apply FILE`")
    return _stored_out(doc)


def _documents(request: Request, kind: Literal["policy", "calendar"]) -> list[StoredOut]:
    from releasegate.governance.stored import history

    return [_stored_out(d) for d in history(_state_dir(request), kind)]


Version = Query(None, ge=1, le=1_000_000, description="A past version (default: the one in force).")


@router.get("/policy", tags=["governance"], response_model=StoredOut)
def get_policy(request: Request, _: Grant = Depends(principal), version: int | None = Version) -> StoredOut:
    """The stored policy's text as applied, and who applied it when (as `policy show`)."""
    return _document(request, "policy", version)


@router.get("/policy/history", tags=["governance"], response_model=list[StoredOut])
def policy_history(request: Request, _: Grant = Depends(principal)) -> list[StoredOut]:
    """Every version of the stored policy, oldest first (as `policy history`)."""
    return _documents(request, "policy")


@router.get("/calendar", tags=["governance"], response_model=StoredOut)
def get_calendar(request: Request, _: Grant = Depends(principal), version: int | None = Version) -> StoredOut:
    """The stored calendar's text as applied (`calendar show --yaml`; the CLI's views are drawn from it)."""
    return _document(request, "calendar", version)


@router.get("/calendar/history", tags=["governance"], response_model=list[StoredOut])
def calendar_history(request: Request, _: Grant = Depends(principal)) -> list[StoredOut]:
    """Every version of the stored calendar, oldest first (as `calendar history`)."""
    return _documents(request, "calendar")


@router.put("/policy", tags=["governance"], response_model=DocumentOut)
def put_policy(body: DocumentBody, request: Request, grant: Grant = Depends(need("admin"))) -> DocumentOut:
    """Store a new version of the approval policy (as `policy apply`); admins only."""
    return _upload(request, grant, "policy", body)


@router.put("/calendar", tags=["governance"], response_model=DocumentOut)
def put_calendar(body: DocumentBody, request: Request, grant: Grant = Depends(need("admin"))) -> DocumentOut:
    """Store a new version of the change calendar (as `calendar apply`); admins only."""
    return _upload(request, grant, "calendar", body)


@router.get("/tokens", tags=["tokens"], response_model=list[TokenOut])
def tokens(request: Request, grant: Grant = Depends(need("admin"))) -> list[TokenOut]:
    """The server's tokens (names, roles, patterns; never a token or its hash)."""
    require(grant, "admin", None)
    with ServerStore(_state_dir(request)) as store:
        return [TokenOut(name=g.name, role=g.role, service=g.pattern, created_at=g.created_at,
                         created_by=g.created_by) for g in store.grants()]


@router.post("/tokens", tags=["tokens"], response_model=NewToken, status_code=201)
def new_token(body: TokenBody, request: Request, grant: Grant = Depends(need("admin"))) -> NewToken:
    """Issue a token (shown once in this answer, replacing the name's previous one)."""
    require(grant, "admin", None)
    assert body.role in ROLES
    token = issue(_state_dir(request), body.name, body.role, body.service, by=grant.name)
    return NewToken(name=body.name, role=body.role, service=body.service, created_at=time.time(),
                    created_by=grant.name, token=token)


__all__ = ["router"]
