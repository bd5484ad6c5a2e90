"""The dashboard's release pages: the list of releases, a release's approvals with its Approve / Reject / Withdraw
forms, and the environment choice of the release and calendar pages.

Why the governance functions themselves: a form here is ``POST /api/v1/releases/{s}/{v}/approvals`` (``rejections``)
by other means, so it calls ``releasegate.governance.approvals.approve`` / ``reject`` / ``withdraw`` exactly as the
API does, as the token's name: the stored policy decides which stage that user may sign, and the audit log records
the sign-off, or its refusal, the same way. The server role check (an approver of the service) comes first and
whatever the page showed: a forged POST from a viewer changes nothing. Every refusal is the rule's one line.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from releasegate.errors import UserError
from releasegate.server.auth import allowed
from releasegate.server.dashboard import governance
from releasegate.server.dashboard.routes import SECURITY, _page, _refused, _sessions, _to_signin, signed_post
from releasegate.server.dashboard.sessions import Session, seal, unsealed
from releasegate.store.server import Grant

_FORM_WORDS = ((re.compile(r"^--stage "), "stage "), (re.compile(r"^--check "), "checklist item "),
               (re.compile(r"^--env "), "environment "), (re.compile(r"--reason TEXT"), "the reason"),
               (re.compile(r" \(add --check 'ITEM' for each once it is true\)"), "; tick each once it is true"),
               (re.compile(r"\(`releasegate withdraw \S+ --as \S+`\)"), "(the Withdraw button on this page)"),
               (re.compile(r"`releasegate withdraw \S+ --as \S+` first"), "withdraw it first (the Withdraw button)"))
"""The governance rules' refusals name the CLI's options (the API's say the same); on a page they name its form."""


def on_the_page(refusal: UserError) -> str:
    """The rule's one line, in the page's words (``--stage qa:`` is the stage picked, ``--check`` an item ticked)."""
    line = str(refusal).splitlines()[0] if str(refusal) else type(refusal).__name__
    for pattern, words in _FORM_WORDS:
        line = pattern.sub(words, line)
    return line


LISTED = 100
"""Releases on the list page, newest first (``releasegate approvals SERVICE@VERSION`` reads any other)."""
SIGNS = ("approve", "reject", "withdraw")

router = APIRouter(include_in_schema=False)


def when(at: float) -> str:
    """A sign-off's time as the page first shows it (UTC); the page's script turns it into the browser's local time."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")


def environments(state_dir: Path, calendar_too: bool) -> list[str]:
    """The environments to choose from: the stored policy's (and with ``calendar_too`` the ones the stored calendar's
    windows and freezes name), in their order; ``prod`` alone when nothing is stored."""
    from releasegate.governance.stored import latest, parse_calendar, stored_policy

    names: list[str] = []
    policy = stored_policy(state_dir)
    if policy is not None:
        names += list(policy.environments)
    doc = latest(state_dir, "calendar") if calendar_too else None
    if doc is not None:
        cal = parse_calendar(doc)
        names += [e for w in cal.windows for e in w.envs] + [e for f in cal.freezes for e in f.envs or ()]
    return list(dict.fromkeys(names)) or ["prod"]


def chosen(request: Request, names: list[str]) -> tuple[str, str | None]:
    """The page's ``?env=`` (default ``prod``, else the first named) and the one-line refusal of an unknown one."""
    default = "prod" if "prod" in names else names[0]
    env = request.query_params.get("env", "").strip() or default
    if env not in names:
        return default, (f"env {env[:60]!r}: no such environment in the stored policy or calendar; choose one of "
                         f"{', '.join(names)}")
    return env, None


def _found(request: Request) -> tuple[Session, Grant] | None:
    return _sessions(request).find(request)


async def _env_page(request: Request, *, calendar_too: bool) -> tuple[Session, Grant, Path, list[str], str] | Response:
    """A page with an environment choice: its session, grant, state dir, the environments and the one chosen; or
    the sign-in redirect, or the one-line refusal of an unknown ``?env=``."""
    found = _found(request)
    if found is None:
        return _to_signin(request)
    session, grant = found
    state_dir: Path = request.app.state.state_dir
    names = await run_in_threadpool(environments, state_dir, calendar_too)
    env, bad = chosen(request, names)
    if bad is not None:
        return _refused(400, bad, session)
    return session, grant, state_dir, names, env


@router.get("/governance", response_class=HTMLResponse)
async def governance_page(request: Request) -> Response:
    """The stored calendar for the chosen environment, and the audit log's check (viewer of every service) and entries
    (admin)."""
    page = await _env_page(request, calendar_too=True)
    if isinstance(page, Response):
        return page
    session, grant, state_dir, names, env = page
    data = await run_in_threadpool(governance.page, state_dir, grant, env, dict(request.query_params))
    return _page("governance.html", data=data, grant=grant, session=session, envs=names, env=env)


@router.get("/releases", response_class=HTMLResponse)
async def release_list(request: Request) -> Response:
    """The registered releases the user may view, newest first, with their approval state for the chosen env."""
    page = await _env_page(request, calendar_too=False)
    if isinstance(page, Response):
        return page
    session, grant, state_dir, names, env = page
    rows = await run_in_threadpool(listing, state_dir, grant, env)
    return _page("releases.html", rows=rows, grant=grant, session=session, envs=names, env=env, listed=LISTED)


def listing(state_dir: Path, grant: Grant, env: str) -> list[dict[str, Any]] | str:
    """One row per release ``grant`` may view (newest ``LISTED``): its stages complete and what its gate misses, or
    the one line saying why there is no list (no stored policy)."""
    from releasegate.governance.approvals import release_status
    from releasegate.governance.stored import require_policy
    from releasegate.store.governance import GovernanceStore

    try:
        policy = require_policy(state_dir, "releases")
    except UserError as exc:
        return str(exc).splitlines()[0]
    with GovernanceStore(state_dir, readonly=True) as store:
        found = [r for r in store.releases(10 * LISTED) if allowed(grant, "viewer", r.service)][:LISTED]
    rows = []
    for r in found:
        status = release_status(state_dir, policy, r.service, r.version, env)
        rows.append({"service": r.service, "version": r.version, "author": r.author, "at": r.created_at,
                     "when": when(r.created_at), "stages": len(status.stages),
                     "complete": sum(1 for st in status.stages if st.complete),
                     "allowed": status.gate.allowed, "missing": status.gate.missing,
                     "rejected": bool(status.rejections)})
    return rows


@router.get("/releases/{service}/{version}", response_class=HTMLResponse)
async def release_page(service: str, version: str, request: Request, said: str | None = None,
                       sig: str | None = None) -> Response:
    """A release's approval stages for the chosen env: who signed what and when, what is missing, and for an
    approver of its service the forms to sign it."""
    found = _found(request)
    if found is None:
        return _to_signin(request)
    session, grant = found
    if not allowed(grant, "viewer", service):
        return _refused(404, f"release {service}@{version}: no such release you may see", session)
    names = await run_in_threadpool(environments, request.app.state.state_dir, False)
    env, bad = chosen(request, names)
    if bad is not None:
        return _refused(400, bad, session)
    return await _release(request, session, grant, service, version, env, said=unsealed(session, said, sig))


async def _release(request: Request, session: Session, grant: Grant, service: str, version: str, env: str, *,
                   said: str | None = None, error: str | None = None, status: int = 200) -> Response:
    state_dir = request.app.state.state_dir
    data = await run_in_threadpool(governance.release, state_dir, service, version, env, grant.name)
    names = await run_in_threadpool(environments, state_dir, False)
    if not isinstance(data, str):
        for who in [g for st in data["stages"] for g in st["given"] + st["not_counted"]] + data["rejections"]:
            who["when"] = when(who["at"])
    return _page("release.html", status, data=data, service=service, release_version=version, grant=grant,
                 session=session, envs=names, env=env, said=said, error=error,
                 may_sign=allowed(grant, "approver", service))


@router.post("/releases/{service}/{version}/{sign}", response_class=HTMLResponse)
async def sign(service: str, version: str, sign: str, request: Request) -> Response:
    """Approve a stage, reject, or withdraw one's rejection, as the token's user: an approver (or admin) of the
    service; the stored policy decides the rest, as for the API."""
    signed = await signed_post(request, sign, SIGNS)
    if isinstance(signed, HTMLResponse):
        return signed
    session, grant = signed
    if not allowed(grant, "approver", service):
        return _refused(403, f"refused: {grant.name} ({grant.role} of {grant.pattern}) may not sign releases of "
                             f"{service}; that needs an approver (or admin) token covering it", session)
    form = parse_qs((await request.body()).decode("utf-8", "replace"), keep_blank_values=True)
    env = (form.get("env") or ["prod"])[0].strip() or "prod"
    try:
        said = await run_in_threadpool(_signed, request.app.state.state_dir, sign, service, version, grant.name,
                                       env, form)
    except UserError as exc:  # the rule that refused it, as the API's 400: the page again, with that line
        return await _release(request, session, grant, service, version, env, error=on_the_page(exc), status=400)
    target = f"/releases/{quote(service)}/{quote(version)}?" + urlencode({"env": env, "said": said,
                                                                         "sig": seal(session, said)})
    return RedirectResponse(target, status_code=303, headers=SECURITY)


def _signed(state_dir: Path, sign: str, service: str, version: str, user: str, env: str,
            form: dict[str, list[str]]) -> str:
    """Do it through the governance use cases (which audit it, or its refusal); what the page then says."""
    from releasegate.governance import approvals as gov
    from releasegate.governance.stored import require_policy

    name = f"{service}@{version}"
    if sign == "withdraw":
        gone = gov.withdraw(state_dir, service, version, user)
        return f"{user} withdrew the rejection of {name} (stage {', '.join(s.stage for s in gone)})"
    stage = (form.get("stage") or [""])[0].strip()
    if not stage:
        raise UserError(f"{sign} {name}: choose the stage to {sign} (a stage of {env} you hold the role of)")
    policy = require_policy(state_dir, sign)
    if sign == "approve":
        s = gov.approve(state_dir, policy, service, version, stage, user, form.get("check", []), env)
        return f"{user} approved stage {s.stage} of {name} for {s.env}"
    s = gov.reject(state_dir, policy, service, version, stage, user, (form.get("reason") or [""])[0], env)
    return f"{user} rejected {name} at stage {s.stage}: it is blocked until {user} withdraws"


__all__ = ["LISTED", "environments", "listing", "on_the_page", "router", "when"]
