"""The browser dashboard's routes: sign-in, the overview, a rollout's page, its buttons and the live streams.

Why the same calls as the API: a button is ``POST /api/v1/rollouts/{id}/promote`` by other means, so it goes
through the same role check (releasegate/server/auth.py) and the same command path (routes_rollouts), audited
under the token's name. Pages need a session (releasegate/server/dashboard/sessions.py); without one a page
redirects to the sign-in form, a POST or a stream is refused. Every answer carries a Content-Security-Policy that
allows only this server's own scripts and styles: no CDN, nothing inline.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from releasegate import __version__
from releasegate.dora_metrics import panel
from releasegate.errors import UserError
from releasegate.governance.identity import hash_token
from releasegate.server.auth import allowed
from releasegate.server.dashboard import views
from releasegate.server.dashboard.sessions import (
    COOKIE,
    Session,
    Sessions,
    csrf_ok,
    same_origin,
    seal,
    secure_cookie,
    unsealed,
)
from releasegate.server.problems import Problem
from releasegate.server.reads import Reads
from releasegate.store.server import Grant
from releasegate.store.sqlite import Store

HERE = Path(__file__).parent
STATIC = {"dashboard.css": "text/css", "dashboard.js": "text/javascript", "uPlot.min.css": "text/css",
          "uPlot.iife.min.js": "text/javascript", "uPlot.LICENSE": "text/plain"}
"""The files under /static/ (a fixed list: nothing else of the package is reachable)."""
POLL = 0.5
"""Seconds between a live stream's looks at the store (one indexed read of the rollout's row)."""
OVERVIEW_POLL = 2.0
"""The overview's looks also ask the platforms what runs, so they are rarer."""
STREAM_LIFETIME = 300.0
"""A stream ends after this long and the browser reconnects (EventSource does): a closed tab's stream, or one
across a token's revocation, does not live on."""
ACTIONS = ("promote", "abort", "rollback")
SECURITY = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                       "form-action 'self'; base-uri 'none'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}

router = APIRouter(include_in_schema=False)
templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))


def _sessions(request: Request) -> Sessions:
    held = request.app.state.sessions
    assert isinstance(held, Sessions)
    return held


def _overview(request: Request) -> views.Overview:
    held = request.app.state.overview
    assert isinstance(held, views.Overview)
    return held


def _page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = templates.get_template(name).render(version=__version__, **context)
    return HTMLResponse(html, status_code=status, headers=SECURITY)


def _refused(status: int, message: str, session: Session | None = None) -> HTMLResponse:
    return _page("message.html", status, message=message, session=session)


def _to_signin(request: Request) -> RedirectResponse:
    target = quote(request.url.path, safe="/")
    return RedirectResponse(f"/signin?next={target}", status_code=303, headers=SECURITY)


async def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict (first value of each field)."""
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


@router.get("/static/{name}")
def static(name: str) -> Response:
    """The dashboard's own files (public: the sign-in page needs its stylesheet)."""
    if name not in STATIC:
        raise Problem(404, "not-found", f"/static/{name}: no such dashboard file")
    return Response((HERE / "static" / name).read_bytes(), media_type=STATIC[name],
                    headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=3600"})


@router.get("/signin", response_class=HTMLResponse)
def signin_form(request: Request, next: str = "/") -> HTMLResponse:
    return _page("signin.html", next=_local(next), error=None, session=None)


def _local(target: str) -> str:
    """Only a path on this server (never ``//host`` or a URL) may follow a sign-in."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


@router.post("/signin", response_class=HTMLResponse)
async def signin(request: Request) -> Response:
    """Token in, session cookie out: the token is checked once and then only its hash is kept (server-side)."""
    form = await _form(request)
    target = _local(form.get("next", "/"))
    if not same_origin(request):
        return _refused(403, "sign-in refused: the form was not sent from this server's own page (Origin); "
                             "open the dashboard's address directly and sign in there")
    token = form.get("token", "").strip()
    reads: Reads = request.app.state.reads
    if not token or reads.server.grant_for(hash_token(token)) is None:
        return _page("signin.html", 401, next=target, session=None,
                     error="that is not a current server token; paste a token from `releasegate token new NAME "
                           "--role ROLE` (ask an admin)")
    answer = RedirectResponse(target, status_code=303, headers=SECURITY)
    answer.set_cookie(COOKIE, _sessions(request).open(request, token), max_age=int(_sessions(request).lifetime),
                      httponly=True, samesite="strict", secure=secure_cookie(request), path="/")
    return answer


@router.post("/signout")
async def signout(request: Request) -> Response:
    found = _sessions(request).find(request)
    if found is None:
        return _to_signin(request)
    refused = await _checked_post(request, found[0])
    if refused is not None:
        return refused
    _sessions(request).close(request, request.cookies.get(COOKIE))
    answer = RedirectResponse("/signin", status_code=303, headers=SECURITY)
    answer.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=secure_cookie(request))
    return answer


async def signed_post(request: Request, action: str, actions: tuple[str, ...]) -> tuple[Session, Grant] | HTMLResponse:
    """The session and grant behind a form's POST of ``action`` (one of ``actions``), or the refusal: not signed in,
    not sent from this server's page with the session's CSRF token, or no such action. Every POST of the dashboard
    but sign-in and sign-out starts here."""
    found = _sessions(request).find(request)
    if found is None:
        return _refused(403, "refused: not signed in (or the session ended); sign in at /signin")
    refused = await _checked_post(request, found[0])
    if refused is not None:
        return refused
    if action not in actions:
        return _refused(404, f"{request.url.path}: no such action; use one of {', '.join(actions)}", found[0])
    return found


async def _checked_post(request: Request, session: Session) -> HTMLResponse | None:
    """None when the POST came from this server's page with the session's CSRF token; else the refusal."""
    if not same_origin(request):
        return _refused(403, "refused: the form was not sent from this server's own page (Origin); reload the "
                             "dashboard and use its buttons", session)
    if not csrf_ok(session, (await _form(request)).get("csrf")):
        return _refused(403, "refused: the form's CSRF token is missing or stale; reload the page and try again",
                        session)
    return None


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request) -> Response:
    found = _sessions(request).find(request)
    if found is None:
        return _to_signin(request)
    session, grant = found
    rows = await run_in_threadpool(_overview(request).rows, grant)
    envs = sorted({r["env"] for r in rows if r["env"]})
    env = request.query_params.get("env", "")
    delivery = await run_in_threadpool(panel, request.app.state.dora, lambda s: allowed(grant, "viewer", s))
    return _page("overview.html", rows=views.in_env(rows, env), envs=envs, env=env, grant=grant, session=session,
                 delivery=delivery, live=f"/live?env={quote(env)}" if env else "/live")


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
async def rollout_page(rollout_id: str, request: Request, said: str | None = None, sig: str | None = None) -> Response:
    found = _sessions(request).find(request)
    if found is None:
        return _to_signin(request)
    session, grant = found
    view = await _with_data_plane(request, rollout_id, grant)
    if isinstance(view, str):
        return _refused(404, view, session)
    may_act = allowed(grant, "deployer", view["state"]["service"])
    return _page("rollout.html", view=view, grant=grant, session=session, may_act=may_act, actions=ACTIONS,
                 said=unsealed(session, said, sig))


async def _with_data_plane(request: Request, rollout_id: str, grant: Grant) -> dict[str, Any] | str:
    """The page's data with the weights the router itself reports (``reported``)."""
    state_dir = request.app.state.state_dir
    view = await run_in_threadpool(_rollout_view, state_dir, rollout_id, grant)
    rec = request.app.state.reads.store.rollout(rollout_id)
    if not isinstance(view, str) and rec is not None:
        view["reported"], view["instances"] = await views.data_plane(state_dir, rec)
    return view


def _rollout_view(state_dir: Path, rollout_id: str, grant: Grant) -> dict[str, Any] | str:
    """The page's data, or the one-line reason it cannot be shown (unknown, or a service the grant cannot see)."""
    store = Store(state_dir)
    try:
        rec = store.rollout(rollout_id)
        if rec is None or not allowed(grant, "viewer", rec.state.service):
            return f"rollout {rollout_id}: no such rollout you may see (the overview lists them)"
        return views.rollout(rec, store.events(rec.state.service, rollout_id=rollout_id, limit=100_000))
    finally:
        store.close()


@router.post("/rollouts/{rollout_id}/{action}", response_class=HTMLResponse)
async def act(rollout_id: str, action: str, request: Request) -> Response:
    """A button: the API's promote/abort/rollback of this rollout, for a deployer of its service."""
    from releasegate.server.routes_rollouts import _active, _command

    signed = await signed_post(request, action, ACTIONS)
    if isinstance(signed, HTMLResponse):
        return signed
    session, grant = signed
    try:
        answer = await _command(request, grant, _active(request, grant, rollout_id), action)
    except Problem as exc:
        return _refused(exc.status, exc.detail, session)
    except UserError as exc:  # what the CLI would say (e.g. the rollout ended meanwhile): one line, as the API's 400
        return _refused(400, str(exc).splitlines()[0], session)
    return RedirectResponse(f"/rollouts/{quote(rollout_id)}?" + urlencode(
        {"said": answer.message, "sig": seal(session, answer.message)}), status_code=303, headers=SECURITY)


def _stream(request: Request, every: float, look: Callable[[Grant], Awaitable[tuple[Any, Any]]]
            ) -> Response:
    """Server-sent events: ``look`` returns (a change key, the data); an ``update`` event is sent whenever the key
    changes, a comment line otherwise (keeps proxies from closing the stream); the session is checked every
    time, so signing out or revoking the token ends the stream, and so does the server's stop (the browser
    reconnects to the next server)."""
    if _sessions(request).find(request) is None:
        return Response("not signed in: sign in at /signin\n", status_code=401, media_type="text/plain")

    async def events() -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        ends, last = loop.time() + STREAM_LIFETIME, None
        yield "retry: 2000\n\n"
        closing: Callable[[], bool] = getattr(request.app.state, "closing", lambda: False)
        while loop.time() < ends:
            if closing():  # the server stops: end now rather than hold its graceful shutdown for 10 s
                yield "event: closing\ndata: {}\n\n"
                return
            found = _sessions(request).find(request)
            if found is None:
                yield "event: signed-out\ndata: {}\n\n"
                return
            key, data = await look(found[1])
            if key != last:
                last = key
                yield f"event: update\ndata: {json.dumps(data, default=str)}\n\n"
            else:
                yield ": unchanged\n\n"
            naps = max(1, round(every / 0.25))  # a stop is noticed within a quarter second
            for _ in range(naps):
                if closing():
                    break
                await asyncio.sleep(every / naps)
    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/live")
async def overview_live(request: Request) -> Response:
    """The overview's rows whenever they change."""
    async def look(grant: Grant) -> tuple[Any, Any]:
        rows = views.in_env(await run_in_threadpool(_overview(request).rows, grant),
                            request.query_params.get("env", ""))
        return json.dumps(rows, sort_keys=True, default=str), {"rows": rows}
    return _stream(request, OVERVIEW_POLL, look)


@router.get("/rollouts/{rollout_id}/live")
async def rollout_live(rollout_id: str, request: Request) -> Response:
    """The rollout page's data whenever the rollout's row changes (each controller save updates it)."""
    reads: Reads = request.app.state.reads
    seen: list[Any] = [None]

    async def look(grant: Grant) -> tuple[Any, Any]:
        rec = reads.store.rollout(rollout_id)
        if rec is None:
            return None, {"error": f"rollout {rollout_id}: no such rollout"}
        key = (rec.state.updated_at, rec.state.status, rec.state.weight, rec.state.phase)
        if key == seen[0]:
            return key, None  # unchanged: the events are not read again
        seen[0] = key
        view = await _with_data_plane(request, rollout_id, grant)
        return key, view if not isinstance(view, str) else {"error": view}
    return _stream(request, POLL, look)


__all__ = ["router"]
