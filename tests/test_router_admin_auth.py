"""The router's admin API answers only the holder of its token (docs/security.md, section 1).

Against real router processes: a change without the token (none, a wrong one, another router's) is refused with
401 and the traffic does not move, as real requests through the router show; the token lives in a 0600 file and
never on a command line; every change is recorded with who made it and `router status` shows it with the
backends and weights the router applies; a restarted router refuses the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from releasegate import service
from releasegate.errors import ProviderError
from releasegate.providers.base import Routes, VersionRoute
from releasegate.providers.routers.builtin import (
    admin_token_path,
    changes_path,
    ensure_router,
    read_router_state,
    router_paths,
    stop_router,
)
from releasegate.router.adminauth import bearer_matches, clean_actor, peer_uid
from releasegate.spec.models import BuiltinRouter
from tests.support.rollouts import RolloutEnv
from tests.support.router_helpers import KeepAliveBackend, router_args, start_router

pytestmark = pytest.mark.slow


@pytest.fixture
def backends() -> Iterator[tuple[KeepAliveBackend, KeepAliveBackend]]:
    good, evil = KeepAliveBackend("good").start(), KeepAliveBackend("evil").start()
    yield good, evil
    good.stop()
    evil.stop()


def answers(listen: str, n: int = 20) -> set[str]:
    """Which backends answer real requests through the router (no sticky cookie kept: each request may move)."""
    seen = set()
    for _ in range(n):
        with httpx.Client(trust_env=False, timeout=5) as c:
            seen.add(c.get(f"http://{listen}/").text)
    return seen


def rg(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "releasegate", "--state-dir", str(state), *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"})


def routes_body(*versions: tuple[str, int, list[str]]) -> dict[str, Any]:
    return {"versions": [{"version": v, "weight": w, "backends": b} for v, w, b in versions]}


# --- refusals ------------------------------------------------------------------------------------------------


def test_changes_without_this_routers_token_are_refused_and_traffic_does_not_move(
        tmp_path: Path, backends: tuple[KeepAliveBackend, KeepAliveBackend]) -> None:
    good, evil = backends
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = start_router(tmp_path / "a"), start_router(tmp_path / "b")
    try:
        assert a.put_routes(routes_body(("v1", 100, [good.address]))["versions"]).status_code == 200
        assert a.token != b.token  # one secret per router
        hijack = routes_body(("evil", 100, [evil.address]))
        attempts: dict[str, dict[str, str]] = {
            "no header": {},
            "wrong token": {"Authorization": "Bearer " + "x" * 43},
            "another router's token": {"Authorization": f"Bearer {b.token}"},
            "token as Basic": {"Authorization": f"Basic {a.token}"},
            "token with a suffix": {"Authorization": f"Bearer {a.token}x"},
            "token prefix": {"Authorization": f"Bearer {a.token[:20]}"},
            "empty bearer": {"Authorization": "Bearer"},
            "token in another header": {"X-Releasegate-Token": a.token, "X-Releasegate-Actor": "mallory"},
        }
        for what, headers in attempts.items():
            r = httpx.put(f"http://{a.admin}/routes", json=hijack, headers=headers, trust_env=False, timeout=5)
            assert r.status_code == 401, what
            assert r.headers["www-authenticate"].startswith("Bearer") and "token" in r.json()["error"], what
        # Reading the routes (internal addresses) and the statistics needs the token too; a liveness probe and
        # the Prometheus scrape do not, and change nothing.
        for path in ("/routes", "/stats", "/totals", "/nope"):
            assert httpx.get(f"http://{a.admin}{path}", trust_env=False).status_code == 401, path
        health = httpx.get(f"http://{a.admin}/health", trust_env=False).json()
        assert health["ok"] is True and health["admin_auth"] == "bearer" and "versions" not in health
        assert httpx.get(f"http://{a.admin}/metrics", trust_env=False).status_code == 200

        assert answers(a.listen) == {"good"}  # real requests: nobody was moved
        assert evil.total() == 0
        now = a.admin_get("/routes")
        assert now["generation"] == 1 and [v["version"] for v in now["versions"]] == ["v1"]
        assert json.loads(a.routes_file.read_text())["versions"][0]["backends"] == [good.address]
        records = [json.loads(line) for line in (tmp_path / "a" / "shop.changes.jsonl").read_text().splitlines()]
        assert [r["generation"] for r in records] == [1]  # a refused request leaves no record and no change
        # The scheme is case-insensitive (RFC 9110): this is the real token, accepted.
        r = httpx.put(f"http://{a.admin}/routes", json=routes_body(("v1", 100, [good.address])),
                      headers={"Authorization": f"bearer {a.token}"}, trust_env=False)
        assert r.status_code == 200 and r.json()["generation"] == 2
    finally:
        a.stop()
        b.stop()


def test_an_unauthenticated_request_is_refused_before_its_body_is_read(tmp_path: Path) -> None:
    r = start_router(tmp_path)
    try:
        host, port = r.admin.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            # Announces a megabyte it never sends: the answer must not wait for it.
            s.sendall(b"PUT /routes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000000\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head = data.split(b"\r\n", 1)[0]
        assert head == b"HTTP/1.1 401 Unauthorized" and b"Connection: close" in data
        assert r.admin_get("/routes")["generation"] == 0
    finally:
        r.stop()


def test_the_router_refuses_to_start_with_a_token_file_others_can_read_or_a_link(tmp_path: Path) -> None:
    token = tmp_path / "shop.admin-token"
    token.write_text("t" * 43 + "\n")
    token.chmod(0o644)
    done = subprocess.run(router_args(tmp_path), capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert str(token) in line and "open to other accounts (mode 0644)" in line and f"chmod 600 {token}" in line

    token.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("t" * 43 + "\n")
    elsewhere.chmod(0o600)
    token.symlink_to(elsewhere)
    done = subprocess.run(router_args(tmp_path), capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "symbolic link is refused" in done.stderr

    token.unlink()
    token.write_text("short\n")
    token.chmod(0o600)
    done = subprocess.run(router_args(tmp_path), capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "does not hold a token" in done.stderr


# --- the controller's side: the token file, the command line -----------------------------------------------------


async def test_the_token_is_in_a_0600_file_never_on_the_command_line(
        tmp_path: Path, backends: tuple[KeepAliveBackend, KeepAliveBackend]) -> None:
    good, _ = backends
    client = await ensure_router(tmp_path, "shop", BuiltinRouter(listen="127.0.0.1:0", sticky="none"))
    try:
        path = admin_token_path(tmp_path, "shop")
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
        token = path.read_text().strip()
        assert len(token) >= 43  # 32 random bytes
        state = read_router_state(tmp_path, "shop")
        assert state is not None and state["admin_auth"] == "bearer"
        pid = int(state["pid"])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if Path("/proc").is_dir() else \
            "\0".join(psutil.Process(pid).cmdline()).encode()
        assert token.encode() not in cmdline and str(path).encode() in cmdline
        assert token not in " ".join(psutil.Process(pid).environ().values())
        state_text = router_paths(tmp_path, "shop")[0].read_text()
        assert token not in state_text and token not in (tmp_path / "routers" / "shop.log").read_text()

        # The controller's client carries it and is recorded; the router started before our call kept its token.
        await client.set_routes("shop", Routes((VersionRoute("v1", 100, (good.address,)),)))
        assert path.read_text().strip() == token
        again = await ensure_router(tmp_path, "shop", BuiltinRouter(listen="127.0.0.1:0", sticky="none"))
        assert (await again.get_routes("shop")).weights() == {"v1": 100}
        await again.aclose()

        # A token file replaced under a running router: refused, and the error says what to do.
        path.unlink()
        with pytest.raises(ProviderError, match=r"HTTP 401.*no token file .*releasegate router restart"):
            await client.get_routes("shop")
    finally:
        await client.aclose()
        stop_router(tmp_path, "shop", 10)


# --- who changed what: the record and `router status` -------------------------------------------------------------


async def test_a_change_by_a_person_with_the_token_is_recorded_and_shown_by_router_status(
        tmp_path: Path, backends: tuple[KeepAliveBackend, KeepAliveBackend]) -> None:
    good, evil = backends
    state = tmp_path / "state"
    client = await ensure_router(state, "shop", BuiltinRouter(listen="127.0.0.1:0", sticky="none"))
    try:
        await client.set_routes("shop", Routes((VersionRoute("v1", 100, (good.address,)),)))
        # What docs/security.md shows: curl with the token from the state dir, naming oneself.
        token = admin_token_path(state, "shop").read_text().strip()
        body = routes_body(("v2", 30, [evil.address]), ("v1", 70, [good.address]))
        r = await asyncio.to_thread(
            httpx.put, f"http://{client.admin}/routes", json=body, trust_env=False,
            headers={"Authorization": f"Bearer {token}", "X-Releasegate-Actor": "alice\x1b[2J hotfix"})
        assert r.status_code == 200, r.text
        assert r.json()["changed"]["actor"] == "alice?[2J hotfix"  # one printable line, whatever is sent

        records = [json.loads(line) for line in changes_path(state, "shop").read_text().splitlines()]
        assert stat.S_IMODE(changes_path(state, "shop").stat().st_mode) == 0o600
        first, second = records
        assert first["actor"].startswith("releasegate (os login ") and first["generation"] == 1
        assert second["actor"] == "alice?[2J hotfix" and second["generation"] == 2
        me = os.geteuid()
        if sys.platform == "linux":  # the kernel's word, not the client's: the account behind the connection
            assert first["uid"] == me and second["uid"] == me
        assert second["versions"][0] == {"version": "v2", "weight": 30, "backends": [evil.address]}
        assert second["replaced"] == {"generation": 1, "weights": {"v1": 100}, "actor": first["actor"]}

        status = await asyncio.to_thread(rg, state, "router", "status", "shop")
        assert status.returncode == 0, status.stderr
        lines = status.stdout.splitlines()
        assert lines[0].endswith(f"v2 30% to {evil.address}; v1 70% to {good.address} (generation 2)"), lines[0]
        assert "admin API not authenticated" not in status.stdout
        assert any("generation 2 by alice?[2J hotfix (uid " in line and line.endswith("v2 30%, v1 70%")
                   for line in lines), lines
        assert any("generation 1 by releasegate (os login " in line and line.endswith("v1 100%") for line in lines)

        # The controller's next change overrides it: on record, with what it replaced and who had set that.
        await client.set_routes("shop", Routes((VersionRoute("v1", 100, (good.address,)),)))
        third = json.loads(changes_path(state, "shop").read_text().splitlines()[-1])
        assert third["replaced"] == {"generation": 2, "weights": {"v2": 30, "v1": 70}, "actor": "alice?[2J hotfix"}
    finally:
        await client.aclose()
        stop_router(state, "shop", 10)
    # The history outlives the router: status still shows it.
    status = await asyncio.to_thread(rg, state, "router", "status", "shop")
    assert "not running" in status.stdout and "generation 2 by alice?[2J hotfix" in status.stdout


def test_a_restarted_router_still_refuses_and_keeps_its_token_routes_and_last_change(
        tmp_path: Path, backends: tuple[KeepAliveBackend, KeepAliveBackend]) -> None:
    good, evil = backends
    r = start_router(tmp_path, "--sticky", "none")
    assert r.put_routes(routes_body(("v1", 100, [good.address]))["versions"], actor="bob").status_code == 200
    token = r.token
    assert r.stop() == 0
    r = start_router(tmp_path, "--sticky", "none")
    try:
        assert r.token == token
        hijack = routes_body(("evil", 100, [evil.address]))
        for headers in ({}, {"Authorization": "Bearer nope-nope-nope-nope"}):
            assert httpx.put(f"http://{r.admin}/routes", json=hijack, headers=headers,
                             trust_env=False).status_code == 401
        assert answers(r.listen) == {"good"} and evil.total() == 0
        now = r.admin_get("/routes")
        assert now["generation"] == 1 and now["changed"]["actor"] == "bob"
    finally:
        r.stop()


def test_a_change_with_a_stale_lease_token_is_refused_even_after_a_restart(
        tmp_path: Path, backends: tuple[KeepAliveBackend, KeepAliveBackend]) -> None:
    """A controller that lost its rollout's lease (another server took it over, token 3) and wakes up with token 2
    cannot move traffic, though it holds the router's admin token; a change for another rollout, or without a
    fence (an operator's `router set`), is not judged by that rollout's fence."""
    good, evil = backends
    r = start_router(tmp_path, "--sticky", "none")

    def put(version: str, backend: str, fence: dict[str, Any] | None) -> httpx.Response:
        body: dict[str, Any] = routes_body((version, 100, [backend]))
        if fence is not None:
            body["fence"] = fence
        return httpx.put(f"http://{r.admin}/routes", json=body, headers=r.auth("server-b"), trust_env=False)
    try:
        assert put("v1", good.address, {"rollout": "shop-2.0.0-aaaaaa", "token": 3}).status_code == 200
        stale = put("v2", evil.address, {"rollout": "shop-2.0.0-aaaaaa", "token": 2})
        assert stale.status_code == 409 and "lost the lease" in stale.json()["error"]
        assert put("v2", evil.address, {"rollout": "shop-2.0.0-aaaaaa", "token": "3"}).status_code == 400
        assert answers(r.listen) == {"good"} and evil.total() == 0
        assert r.stop() == 0
        r = start_router(tmp_path, "--sticky", "none")
        assert put("v2", evil.address, {"rollout": "shop-2.0.0-aaaaaa", "token": 2}).status_code == 409
        assert answers(r.listen) == {"good"} and evil.total() == 0
        assert r.admin_get("/routes")["generation"] == 1
        assert put("v1", good.address, {"rollout": "shop-2.0.0-aaaaaa", "token": 3}).status_code == 200  # the holder
        assert put("v1", good.address, {"rollout": "shop-3.0.0-bbbbbb", "token": 1}).status_code == 200  # the next
        assert put("v1", good.address, None).status_code == 200
    finally:
        r.stop()


# --- a router from before admin tokens ---------------------------------------------------------------------------


class _OldRouter(BaseHTTPRequestHandler):
    """What a router started by an older releasegate answers: no token asked, no admin_auth in /health."""

    routes: dict[str, Any] = {"versions": []}
    seen_auth: list[str | None] = []

    def do_GET(self) -> None:
        if self.path == "/health":
            self._json({"ok": True, "service": "shop", "pid": os.getpid(), "generation": 0})
        else:
            self._json({"service": "shop", **self.routes, "generation": 3, "inflight": {}})

    def do_PUT(self) -> None:
        type(self).seen_auth.append(self.headers.get("Authorization"))
        data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).routes = {"versions": data["versions"]}
        self._json({"service": "shop", **self.routes, "generation": 4, "inflight": {}})

    def _json(self, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


async def test_a_router_from_before_tokens_keeps_working_and_status_says_it_is_open(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OldRouter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state = tmp_path / "state"
    state_file, routes_file, _ = router_paths(state, "shop")
    state_file.parent.mkdir(parents=True)
    admin = f"127.0.0.1:{server.server_address[1]}"
    # The old layout: a state file without admin_auth, no token file. This test process stands in for its pid.
    state_file.write_text(json.dumps({"pid": os.getpid(), "service": "shop", "listen": "127.0.0.1:1",
                                      "admin": admin, "routes_file": str(routes_file), "started_at": time.time()}))
    try:
        info = read_router_state(state, "shop")
        assert info is not None and info["admin_auth"] is None
        # The controller keeps steering it (no token to send), so an upgrade in the middle of things breaks nothing.
        client = await ensure_router(state, "shop", BuiltinRouter(listen="127.0.0.1:0"))
        await client.set_routes("shop", Routes((VersionRoute("v1", 100, ("127.0.0.1:9",)),)))
        await client.aclose()
        assert _OldRouter.seen_auth == [None] and not admin_token_path(state, "shop").exists()
        status = await asyncio.to_thread(rg, state, "router", "status", "shop")
        assert status.returncode == 0, status.stderr
        assert "v1 100% to 127.0.0.1:9" in status.stdout
        assert ("admin API not authenticated: this router was started by a releasegate from before admin tokens, "
                "and any local account can change its routes; `releasegate router restart shop` restarts it with "
                "a token") in status.stdout
    finally:
        server.shutdown()
        server.server_close()


# --- `router restart` --------------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> Iterator[RolloutEnv]:
    made = RolloutEnv(tmp_path)
    yield made
    made.close()


async def test_router_restart_keeps_the_routes_and_new_token_replaces_the_secret(env: RolloutEnv) -> None:
    spec = env.spec("{bluegreen: {}}", post_promotion="0s", rules="[]")
    st = await asyncio.wait_for(service.deploy(env.ctx, spec, "1.0.0"), 60)
    assert st.status == "promoted", st.reason
    before = read_router_state(env.state, "shop")
    assert before is not None
    old_token = admin_token_path(env.state, "shop").read_text().strip()
    done = await asyncio.to_thread(rg, env.state, "router", "restart", "shop", "--new-token")
    assert done.returncode == 0, done.stderr
    assert f"router for shop restarted (was pid {before['pid']})" in done.stdout and "a new admin token" in \
        done.stdout
    after = read_router_state(env.state, "shop")
    assert after is not None and after["pid"] != before["pid"] and after["listen"] == before["listen"]
    assert (await env.routes()) == {"1.0.0": 100}
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        assert (await http.get(env.url)).status_code == 200
        new_token = admin_token_path(env.state, "shop").read_text().strip()
        assert new_token != old_token
        r = await http.get(f"http://{after['admin']}/routes", headers={"Authorization": f"Bearer {old_token}"})
        assert r.status_code == 401


def test_router_restart_of_a_service_without_a_stored_spec_says_what_to_do(tmp_path: Path) -> None:
    done = rg(tmp_path / "state", "router", "restart", "shop")
    assert done.returncode == 2 and "unknown service" in done.stderr and "restart it there" in done.stderr


# --- the pure parts ------------------------------------------------------------------------------------------------


def test_bearer_comparison_and_actor_cleaning() -> None:
    token = "a" * 43
    assert bearer_matches(f"Bearer {token}", token) and bearer_matches(f"  bearer   {token} ", token)
    for header in ("", "Bearer", f"Basic {token}", f"Bearer {token[:-1]}", f"Bearer {token}é", token):
        assert not bearer_matches(header, token), header
    assert clean_actor("") == "unnamed" and clean_actor("  ") == "unnamed"
    assert clean_actor("a\nb\tc") == "a?b?c" and len(clean_actor("x" * 1000)) == 200


def test_peer_uid_finds_the_account_behind_a_loopback_connection() -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("Linux only")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname()) as client:
            conn, peer = server.accept()
            with conn:
                assert peer_uid(peer, conn.getsockname()) == os.geteuid()
                assert peer_uid(("127.0.0.1", 1), conn.getsockname()) is None
            assert client  # kept open until the lookup is done

