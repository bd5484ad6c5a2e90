"""The browser dashboard over real HTTP, without a browser: sign-in sessions, cookie flags, CSRF and Origin checks,
role checks, the static files and the server-sent events' framing.

One real ``releasegate server`` serves the module; the browser itself (real Chromium, a live canary) is
tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator

import httpx
import pytest

from releasegate.server.dashboard.sessions import COOKIE
from tests.support.server import ServerProc


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    base = tmp_path_factory.mktemp("dashboard")
    proc = ServerProc(base / "state", base).start()
    yield proc
    proc.stop()


def browser(server: ServerProc) -> httpx.Client:
    """A client that sends what a browser's same-origin form POST sends (Origin), without following redirects."""
    return httpx.Client(base_url=server.url, timeout=30, headers={"Origin": server.url})


@contextlib.contextmanager
def signed_in(server: ServerProc, token: str) -> Iterator[httpx.Client]:
    with browser(server) as c:
        answer = c.post("/signin", data={"token": token, "next": "/"})
        assert answer.status_code == 303 and answer.headers["location"] == "/", answer.text
        yield c


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, "no CSRF field on the page"
    return found.group(1)


def test_every_dashboard_route_but_sign_in_and_static_needs_a_session(server):
    """Enumerated from the router, so a new page cannot skip the session (the API's own check skips these)."""
    from starlette.routing import Route

    from releasegate.server.dashboard.releases import router as releases
    from releasegate.server.dashboard.routes import router

    public = {("GET", "/signin"), ("POST", "/signin"), ("GET", "/static/{name}")}
    routes = [(m, r.path) for r in router.routes + releases.routes if isinstance(r, Route)
              for m in sorted(r.methods or ()) if m != "HEAD"]
    assert {p for _, p in routes} >= {"/", "/rollouts/{rollout_id}", "/live", "/governance", "/signout", "/releases",
                                      "/releases/{service}/{version}/{sign}"}
    with browser(server) as c:
        for method, path in routes:
            if (method, path) in public:
                continue
            url = re.sub(r"\{[^}]+\}", "x", path)
            answer = c.request(method, url, data={"csrf": "x"} if method == "POST" else None)
            if path.endswith("/live"):
                assert answer.status_code == 401, (method, path)
            elif method == "GET" or path == "/signout":
                assert answer.status_code == 303, (method, path)
                assert answer.headers["location"] == f"/signin?next={url}"
            else:
                assert answer.status_code == 403 and "not signed in" in answer.text, (method, path)


def test_the_sign_in_page_and_the_static_files_are_public_and_nothing_else_of_the_package(server):
    with browser(server) as c:
        page = c.get("/signin")
        assert page.status_code == 200 and 'type="password"' in page.text
        assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self': no inline script
        assert "default-src 'self'" in page.headers["content-security-policy"]
        js = c.get("/static/uPlot.iife.min.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
        assert "MIT" in c.get("/static/uPlot.LICENSE").text
        assert c.get("/static/../app.py").status_code == 404
        assert c.get("/static/routes.py").status_code == 404


def test_signing_in_sets_a_session_cookie_that_is_not_the_token_and_signing_out_ends_it(server):
    token = server.token("dora", "deployer")
    with browser(server) as c:
        answer = c.post("/signin", data={"token": token, "next": "/rollouts/x"})
        assert answer.status_code == 303 and answer.headers["location"] == "/rollouts/x"
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain http on loopback; over TLS the cookie is Secure
        assert token not in cookie and token.removeprefix("rg_") not in cookie
        page = c.get("/")
        assert page.status_code == 200 and "dora (deployer of *)" in page.text
        assert "No service has been deployed yet" in page.text
        csrf = csrf_of(page.text)
        assert c.post("/signout", data={}).status_code == 403  # no CSRF token
        assert c.post("/signout", data={"csrf": csrf}, headers={"Origin": "http://evil.example"}).status_code == 403
        assert c.post("/signout", data={"csrf": csrf}, headers={"Origin": ""}).status_code == 403
        assert c.get("/").status_code == 200  # none of the refused sign-outs ended the session
        gone = c.post("/signout", data={"csrf": csrf})
        assert gone.status_code == 303 and gone.headers["location"] == "/signin"
        assert f'{COOKIE}=""' in gone.headers["set-cookie"] or "Max-Age=0" in gone.headers["set-cookie"]
    with browser(server) as stale:  # the old session id, replayed after sign-out, is refused
        stale.cookies.set(COOKIE, answer.cookies[COOKIE])
        assert stale.get("/").status_code == 303


def test_a_bad_token_or_a_cross_site_sign_in_is_refused_in_one_line(server):
    with browser(server) as c:
        for token in ("", "rg_wrong", "x" * 500):
            answer = c.post("/signin", data={"token": token})
            assert answer.status_code == 401 and "set-cookie" not in answer.headers
            error = re.search(r'id="error">([^<]+)<', answer.text)
            assert error is not None and "\n" not in error.group(1)
            assert "not a current server token" in error.group(1)
        forged = c.post("/signin", data={"token": server.token("eve", "admin")},
                        headers={"Origin": "http://evil.example"})
        assert forged.status_code == 403 and "set-cookie" not in forged.headers
        assert c.post("/signin", data={"token": "x", "next": "//evil.example/"}).status_code == 401
        good = c.post("/signin", data={"token": server.token("otto", "viewer"), "next": "//evil.example/"})
        assert good.headers["location"] == "/"  # only a path on this server may follow a sign-in


def test_a_replaced_token_ends_its_sessions(server):
    with signed_in(server, server.token("rita", "viewer")) as c:
        assert c.get("/").status_code == 200
        server.token("rita", "viewer")  # a new token for rita replaces the old one
        assert c.get("/").status_code == 303


def test_a_viewer_is_refused_a_forged_action_and_a_scoped_grant_sees_only_its_services(server):
    with signed_in(server, server.token("vera", "viewer")) as c:
        csrf = csrf_of(c.get("/").text)
        for data in ({}, {"csrf": csrf}):
            answer = c.post("/rollouts/no-such/promote", data=data)
            assert answer.status_code in (403, 404), answer.text
            assert answer.status_code == 403 or "no such rollout" in answer.text
        assert c.post("/rollouts/no-such/reboot", data={"csrf": csrf}).status_code == 404


def test_the_live_streams_are_server_sent_events_with_json_updates(server):
    with signed_in(server, server.token("sam", "viewer")) as c, c.stream("GET", "/live") as live:
        assert live.status_code == 200
        assert live.headers["content-type"].startswith("text/event-stream")
        lines = live.iter_lines()
        assert next(lines) == "retry: 2000"
        assert next(lines) == ""
        assert next(lines) == "event: update"
        data = next(lines)
        assert data.startswith("data: ") and json.loads(data.removeprefix("data: ")) == {"rows": []}
        assert next(lines) == ""


def test_a_stopping_server_ends_its_live_streams_with_a_closing_event(tmp_path):
    own = ServerProc(tmp_path / "state", tmp_path).start()
    try:
        with signed_in(own, own.token("sam", "viewer")) as c, c.stream("GET", "/live") as live:
            lines = live.iter_lines()
            assert [next(lines) for _ in range(3)] == ["retry: 2000", "", "event: update"]
            own.stop()  # SIGTERM, as an operator's stop
            rest = list(lines)
        assert "event: closing" in rest  # the stream ended itself, not cut by the shutdown's deadline
    finally:
        own.stop()


def test_the_governance_page_shows_the_stored_calendar_and_the_audit_log_by_role(server):
    from pathlib import Path

    examples = Path(__file__).resolve().parent.parent / "examples" / "governance"
    root = server.token("root", "admin")
    with signed_in(server, root) as c:
        empty = c.get("/governance")
    assert empty.status_code == 200 and "No calendar is stored" in empty.text
    with server.client(root) as api:
        assert api.put("/api/v1/calendar", json={"text": (examples / "calendar.yaml").read_text()}).status_code == 200
    with signed_in(server, root) as c:
        page = c.get("/governance").text
    assert "stored calendar v1, applied by root" in page
    for change in ("major", "minor", "patch", "hotfix", "config"):
        assert f'data-change="{change}"' in page
    # The freezes in force or ahead, and the deploy window's next openings (the weekend freeze recurs every week,
    # the window every Tuesday: both are within 30 days whatever today is).
    freezes = page[page.index('id="freezes"'):page.index('id="windows"')]
    assert "<strong>weekend</strong> (full): " in freezes and ("starts in" in freezes or "in force" in freezes)
    assert re.search(r'id="windows">\s*<li>tue: \d{4}-\d\d-\d\d 02:00 \u2013 06:00 KST</li>', page), page
    assert "The hash chain verifies" in page and 'id="entries"' in page and "calendar.applied" in page
    with signed_in(server, root) as c:  # the entries filtered (a part of the actor, action or release; days back)
        mine = c.get("/governance", params={"actor": "ROO", "action": "calendar"}).text
        nobody = c.get("/governance", params={"actor": "nobody-at-all"}).text
        bad = c.get("/governance", params={"days": "soon"})
    assert re.search(r'id="matched">1 entry of the last 30 day', mine) and "calendar.applied" in mine, mine
    assert 'id="matched">0 entries' in nobody and "calendar.applied" not in nobody
    assert bad.status_code == 200 and "days soon: give a number of days between 1 and 3650" in bad.text
    with signed_in(server, server.token("sid", "viewer")) as c:
        viewer = c.get("/governance").text
    assert "The hash chain verifies" in viewer and 'id="entries"' not in viewer  # entries: admins only
    with signed_in(server, server.token("shopper", "viewer", "shop")) as c:
        scoped = c.get("/governance").text
    assert "needs a viewer of every service" in scoped and "hash chain" not in scoped


def test_a_release_page_shows_its_stages_and_sign_offs_to_viewers_of_its_service(server):
    from pathlib import Path

    from releasegate.governance.approvals import new_release

    with signed_in(server, server.token("rae", "viewer", "shop")) as c:
        none = c.get("/releases/shop/9.9.9")
    assert none.status_code == 200 and "no policy" in none.text.lower(), none.text
    examples = Path(__file__).resolve().parent.parent / "examples" / "governance"
    with server.client(server.token("root", "admin")) as api:
        assert api.put("/api/v1/policy", json={"text": (examples / "policy.yaml").read_text()}).status_code == 200
    new_release(server.state, "shop", "1.4.2", "alice")
    with server.client(server.token("bob", "approver", "shop")) as api:
        assert api.post("/api/v1/releases/shop/1.4.2/approvals", json={"stage": "reviewer"}).status_code == 200
    with signed_in(server, server.token("rae", "viewer", "shop")) as c:
        page = c.get("/releases/shop/1.4.2").text
    row = re.search(r'<tr data-stage="reviewer"[^>]*>(.*?)</tr>', page, re.S)
    assert row is not None and "bob" in row.group(1)
    assert "Not yet approved for prod (judged by stored policy v1); missing:" in page and "Author alice" in page
    assert "<li>stage qa: 0 of 1 approvals</li>" in page
    with signed_in(server, server.token("bill", "viewer", "billing-*")) as c:
        hidden = c.get("/releases/shop/1.4.2")
    assert hidden.status_code == 404 and "no such release you may see" in hidden.text


def test_behind_a_tls_proxy_the_public_url_is_the_origin_and_the_cookie_is_secure(tmp_path):
    """A reverse proxy terminates TLS and forwards plain HTTP: with `--public-url`, a form from the public page
    signs in (Secure cookie), and one claiming the server's own plain-HTTP address is refused."""
    public = "https://releases.example.test"
    proc = ServerProc(tmp_path / "state", tmp_path, extra=("--public-url", public)).start()
    try:
        token = proc.token("pat", "viewer")
        with httpx.Client(base_url=proc.url, timeout=30, headers={"Origin": public}) as c:
            answer = c.post("/signin", data={"token": token, "next": "/"})
            assert answer.status_code == 303, answer.text
            cookie = answer.headers["set-cookie"]
            assert "secure" in cookie.lower() and "httponly" in cookie.lower()
        with browser(proc) as c:  # Origin: the server's own http://127.0.0.1:PORT, not what browsers see
            refused = c.post("/signin", data={"token": token, "next": "/"})
            assert refused.status_code == 403 and "Origin" in refused.text
    finally:
        proc.stop()


def test_per_version_charts_are_rates_between_analyses_from_the_recorded_counts():
    """The counts the controller records are cumulative since the rollout began (docs/reports.md): the charts
    show what happened between two analyses, per version, not the running totals; past the router's hour of
    history there is no since-the-start count, so no point."""
    from releasegate.server.dashboard.views import charts
    from releasegate.spec.models import Spec

    spec = Spec.model_validate({"service": "shop", "platform": {"command": "app --port {port}"},
                                "analysis": {"rules": [{"metric": "error_rate", "max": 0.05, "for": "2s"}]}})

    def tick(at: float, new: tuple[int, int], old: tuple[int, int], window: float) -> dict[str, object]:
        return {"at": at, "kind": "analysis", "data": {
            "values": {"0:error_rate": 0.0}, "traffic_window": window,
            "traffic": {"2.0.0": {"requests": new[0], "errors": new[1], "p95": at / 1000},
                        "1.0.0": {"requests": old[0], "errors": old[1], "p95": None}}}}
    events = [tick(100.0, (10, 0), (90, 1), 10.0), tick(102.0, (30, 5), (170, 1), 12.0),
              tick(104.0, (30, 5), (250, 3), 14.0), tick(106.0, (99, 9), (999, 9), 3600.0)]
    shown = {c["key"]: c for c in charts(spec, events, now=106.0)}
    rps, errors = shown["rps"], shown["errors"]
    assert rps["x"] == errors["x"] == [102.0, 104.0, 106.0]
    assert rps["series"] == {"1.0.0": [40.0, 40.0, None], "2.0.0": [10.0, 0.0, None]}
    assert errors["series"] == {"1.0.0": [0.0, 0.025, None], "2.0.0": [0.25, None, None]}
    assert errors["title"].endswith("the rule's max is 0.05")
    assert shown["p95"]["series"] == {"1.0.0": [None, None, None], "2.0.0": [0.102, 0.104, 0.106]}


def test_a_session_outlives_a_restart_and_the_store_holds_only_hashes(tmp_path):
    """Sessions are kept in the store (hashed ids): a restarted server, or another one on the same store, keeps the
    browser signed in; signing out ends it for every server."""
    import sqlite3

    state = tmp_path / "state"
    first = ServerProc(state, tmp_path).start()
    try:
        token = first.token("pat", "viewer")
        with browser(first) as c:
            answer = c.post("/signin", data={"token": token, "next": "/"})
            assert answer.status_code == 303, answer.text
            sid = c.cookies[COOKIE]
    finally:
        first.stop()
    with sqlite3.connect(state / "releasegate.db") as db:
        kept = db.execute("SELECT id_hash, token_hash FROM server_sessions").fetchall()
    assert len(kept) == 1 and sid not in kept[0] and token not in kept[0]
    second = ServerProc(state, tmp_path).start()
    try:
        with browser(second) as c:
            c.cookies.set(COOKIE, sid)
            page = c.get("/")
            assert page.status_code == 200 and "pat (viewer of *)" in page.text
            assert c.post("/signout", data={"csrf": csrf_of(page.text)}).status_code == 303
            assert c.get("/").status_code == 303  # ended: to the sign-in page
    finally:
        second.stop()
