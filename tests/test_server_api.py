"""The server's API surface over real HTTP: auth on every route, problem+json, limits, tokens, the OpenAPI file.

One server (a real ``releasegate server`` subprocess on loopback) serves the module; nothing here starts a
rollout (tests/test_server_rollouts.py does).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from releasegate.server.openapi import render
from tests.support.server import ServerProc

ROOT = Path(__file__).resolve().parent.parent
OPEN = {"/healthz", "/readyz"}
READING_POSTS = {"/api/v1/specs/validate"}
"""POST routes that change nothing (a viewer may use them); every other POST must refuse a viewer."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    base = tmp_path_factory.mktemp("server")
    proc = ServerProc(base / "state", base).start()
    yield proc
    proc.stop()


def _routes() -> list[tuple[str, str]]:
    """Every (method, path) the app serves, read from the app and its routers (not only what its OpenAPI lists).

    The app's own routes, and those of the routers it includes under /api/v1 (the dashboard's, at /, is signed in
    with a session cookie, and tests/test_dashboard.py enumerates it); a router included anywhere
    else makes this fail until it is listed here."""
    from starlette.routing import Route

    from releasegate.server.app import create_app
    from releasegate.server.dashboard.routes import router as dashboard
    from releasegate.server.routes_dora import router as dora
    from releasegate.server.routes_governance import router as governance
    from releasegate.server.routes_rollouts import router as rollouts

    app = create_app(ROOT / "no-such-state", adopt=False)
    own = [r for r in app.routes if isinstance(r, Route)]
    assert dashboard.routes, "the dashboard's routes need a session, not a token: tests/test_dashboard.py"
    included = (rollouts, governance, dora)
    assert len(app.routes) - len(own) == len(included) + 1, "a router was included that this test does not enumerate"
    routes = [(r.path, r) for r in own] + [("/api/v1" + r.path, r) for router in included for r in router.routes
                                           if isinstance(r, Route)]
    found = [(method, path) for path, r in routes for method in sorted(r.methods or ()) if method != "HEAD"]
    assert len(found) == len(set(found))
    return found


def test_every_route_but_health_refuses_a_missing_or_wrong_token_and_writes_refuse_a_viewer(server):
    viewer = server.token("vera", "viewer")
    routes = _routes()
    assert {p for _, p in routes} >= {"/api/v1/rollouts", "/metrics", "/healthz", "/api/v1/openapi.json"}
    assert {p for _, p in routes} - OPEN - {"/metrics", "/api/v1/openapi.json"} == {
        p for p in json.loads(render())["paths"]} - OPEN - {"/metrics"}
    for method, path in routes:
        url = re.sub(r"\{[^}]+\}", "x", path)
        for headers in ({}, {"Authorization": "Bearer rg_wrong"}, {"Authorization": "Basic dmVyYQ=="}):
            with server.client() as c:
                answer = c.request(method, url, headers=headers, json={} if method == "POST" else None)
            if path in OPEN:
                assert answer.status_code == 200, (method, path)
                continue
            assert answer.status_code == 401, (method, path, headers, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.headers["www-authenticate"] == "Bearer"
        if method != "GET" and path not in READING_POSTS:
            with server.client(viewer) as c:
                answer = c.request(method, url, json={})
            assert answer.status_code == 403, (method, path, answer.text)
            assert answer.json()["detail"].startswith("vera is viewer of *; this needs role")


def test_no_route_answers_a_malformed_request_with_a_server_error(server):
    """A small stand-in for schemathesis: every route, as an admin, with a broken body and odd parameters."""
    admin = server.token("root", "admin")
    odd = {"limit": "-1", "after": "x", "env": "\x00", "change": "yearly", "at": "not-a-time", "since": "soon"}
    with server.client(admin) as c:
        for method, path in _routes():
            url = re.sub(r"\{[^}]+\}", "x%00y", path)
            for body in (b"{", b"[]", b'{"version": 3, "spec_yaml": null, "text": 1}'):
                answer = c.request(method, url, params=odd, content=body if method != "GET" else None,
                                   headers={"content-type": "application/json"})
                assert answer.status_code < 500, (method, url, body, answer.text)
                if answer.status_code >= 400:
                    assert answer.headers["content-type"] == "application/problem+json", (method, url, answer.text)


def test_health_needs_no_token_and_metrics_carry_the_server_series(server):
    with server.client() as c:
        assert c.get("/healthz").json()["status"] == "ok"
        assert c.get("/readyz").json()["status"] == "ready"
        assert c.get("/openapi.json").status_code == c.get("/docs").status_code == 404  # nothing public but probes
    with server.client(server.token("prom", "viewer")) as c:
        text = c.get("/metrics").text
        assert c.get("/api/v1/openapi.json").json() == json.loads(render())
    assert "releasegate_server_active_rollouts 0.0" in text
    assert "releasegate_server_request_seconds_bucket" in text
    for labels in ('method="GET",route="/healthz",status="200"', 'method="GET",route="unmatched",status="404"'):
        assert re.search(r"releasegate_server_request_seconds_count\{" + labels + r"\} [1-9]", text), labels
    assert "releasegate_store_up" in text


def test_errors_are_problem_json_with_the_cli_messages(server):
    with server.client(server.token("dora", "deployer")) as c:
        missing = c.get("/api/v1/rollouts/shop-9.9.9-abcdef")
        bad = c.post("/api/v1/rollouts", json={"version": "1.0.0", "spec_yaml": "service: shop\nplatform: [\n"})
        both = c.post("/api/v1/rollouts", json={"version": "1.0.0"})
        outside = c.post("/api/v1/rollouts", json={"version": "1.0.0", "spec_path": "../../etc/passwd"})
        shape = c.post("/api/v1/rollouts", json={"spec_yaml": 3})
        checked = c.post("/api/v1/specs/validate", json={"spec_yaml": "service: shop\nstrategy: sideways\n"})
    assert missing.status_code == 404
    assert missing.json() == {"type": "urn:releasegate:problem:not-found", "title": "Not Found", "status": 404,
                              "detail": "rollout shop-9.9.9-abcdef: no such rollout (GET /api/v1/rollouts lists "
                                        "them)"}
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"
    assert re.search(r"\.yaml:\d+:\d+: ", bad.json()["detail"] + "".join(bad.json().get("errors", []))), bad.text
    assert both.status_code == 400 and "exactly one of spec_path" in both.json()["detail"]
    assert outside.status_code == 400 and "under the server's spec root" in outside.json()["detail"]
    assert shape.status_code == 422 and shape.json()["errors"]
    assert checked.status_code == 200 and checked.json()["ok"] is False
    assert all(re.match(r"spec\.yaml:\d+:\d+: ", e) for e in checked.json()["errors"]), checked.json()


def test_a_body_over_the_limit_is_413_whether_declared_or_not(server):
    token = server.token("dora", "deployer")
    big = b'{"spec_yaml": "' + b"x" * (1 << 20) + b'"}'
    with server.client(token) as c:
        declared = c.post("/api/v1/specs/validate", content=big, headers={"content-type": "application/json"})
        chunked = c.post("/api/v1/specs/validate", content=iter([big[:1000], big[1000:]]),
                         headers={"content-type": "application/json"})
    for answer in (declared, chunked):
        assert answer.status_code == 413, answer.text
        assert answer.json()["title"] == "Content Too Large"


def test_admin_tokens_through_the_cli_and_the_api_never_show_a_secret_again(server):
    made = subprocess.run([sys.executable, "-m", "releasegate", "token", "new", "ada", "--role", "admin",
                           "--store", f"sqlite:///{server.state}/releasegate.db"],
                          capture_output=True, text=True, check=True)
    admin = made.stdout.strip()
    assert admin.startswith("rg_") and "shown once" in made.stderr
    with server.client(admin) as c:
        created = c.post("/api/v1/tokens", json={"name": "dev", "role": "deployer", "service": "shop-*"})
        listed = c.get("/api/v1/tokens")
        export = c.get("/api/v1/audit/export").text
        verified = c.get("/api/v1/audit/verify").json()
    assert created.status_code == 201 and created.json()["token"].startswith("rg_")
    dev = created.json()["token"]
    assert {"name": "ada", "role": "admin", "service": "*"}.items() <= listed.json()[0].items()
    for secret in (admin, dev):
        assert secret not in listed.text and secret not in export
        assert secret not in server.log.read_text()
        assert secret.encode() not in (server.state / "releasegate.db").read_bytes()
    assert '"action": "server_token.new"' in export and verified["ok"] is True
    with server.client(dev) as c:
        assert c.get("/api/v1/tokens").status_code == 403
        assert c.post("/api/v1/services/other/promote").status_code == 403
        assert c.post("/api/v1/services/shop-web/promote").status_code == 400  # allowed; nothing in progress


def test_token_new_and_server_refuse_bad_input_in_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from releasegate.cli import app

    monkeypatch.chdir(tmp_path)
    cases = [
        (("token", "new", "x", "--role", "boss"), "--role boss: not a role; use one of viewer, deployer"),
        (("server", "--listen", "0.0.0.0:8700"), "--listen 0.0.0.0:8700: not a loopback address; serve TLS"),
        (("server", "--store", "mysql://db/rg"), "expected sqlite:///PATH/releasegate.db (e.g. "),
        (("server", "--store", "postgresql://rg:pw@127.0.0.1:1/rg"), "--store postgresql://rg:***@127.0.0.1:1/rg: "
                                                                      "cannot reach the PostgreSQL server"),
        (("server", "--store", "sqlite:///x/other.db"), "the database file is named releasegate.db"),
        (("server", "--tls-cert", "c.pem"), "--tls-cert and --tls-key go together"),
        (("server", "--listen", "nowhere"), "--listen: expected HOST:PORT"),
        (("server", "--public-url", "releases.example.com"), "--public-url releases.example.com: give the address "
                                                             "browsers open, scheme and host only"),
        (("server", "--public-url", "https://releases.example.com/rg"), "scheme and host only, e.g. https://"),
    ]
    for args, said in cases:
        done = CliRunner().invoke(app, list(args))
        assert done.exit_code == 2, (args, done.output)
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("releasegate: ") and said in done.stderr, (
            args, done.stderr)


def test_the_checked_in_openapi_document_is_the_apps():
    """Regenerate with `python -m releasegate.server.openapi > docs/openapi.json` (docs/server.md)."""
    assert (ROOT / "docs" / "openapi.json").read_text() == render()


def _self_signed(where: Path) -> tuple[Path, Path]:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "releasegate-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = where / "cert.pem", where / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_on_a_non_loopback_address_serves_https_without_a_warning(tmp_path):
    cert, key = _self_signed(tmp_path)
    server = ServerProc(tmp_path / "state", tmp_path, listen_host="0.0.0.0",
                        extra=("--tls-cert", str(cert), "--tls-key", str(key)), ca=cert)
    try:
        server.start()
        with server.client() as c:
            assert c.get("/healthz").json()["status"] == "ok"
            assert c.get("/api/v1/rollouts").status_code == 401
    finally:
        server.stop()
    assert "warning" not in server.log.read_text()


def test_insecure_http_on_a_non_loopback_address_starts_with_a_warning(tmp_path):
    server = ServerProc(tmp_path / "state", tmp_path, listen_host="0.0.0.0", extra=("--insecure-http",))
    try:
        server.start()
        with server.client() as c:
            assert c.get("/healthz").status_code == 200
    finally:
        server.stop()
    assert "warning: serving plain HTTP on 0.0.0.0:" in server.log.read_text()


def test_an_admin_uploads_the_policy_and_calendar_and_approvers_sign_as_themselves(server):
    from releasegate.governance.approvals import new_release

    examples = ROOT / "examples" / "governance"
    with server.client(server.token("root", "admin")) as c:
        assert c.put("/api/v1/policy", json={"text": "users: [\n"}).status_code == 400
        policy = c.put("/api/v1/policy", json={"text": (examples / "policy.yaml").read_text()})
        calendar = c.put("/api/v1/calendar", json={"text": (examples / "calendar.yaml").read_text()})
        again = c.put("/api/v1/calendar", json={"text": (examples / "calendar.yaml").read_text()})
        check = c.get("/api/v1/calendar/check", params={"change": "minor", "at": "2025-11-04T03:00"})
    assert policy.status_code == 200 and policy.json()["changed"] is True, policy.text
    assert calendar.json()["version"] == 1
    assert again.json() == {**calendar.json(), "changed": False, "diff": "", "previous": 1}
    assert check.status_code == 200 and check.json()["judged"] == "stored calendar v1"
    assert check.json()["allowed"] is False  # the example's exam-season freeze
    new_release(server.state, "shop", "1.4.2", "alice")
    bob, dave = server.token("bob", "approver", "shop"), server.token("dave", "approver")
    with server.client(bob) as c:
        signed = c.post("/api/v1/releases/shop/1.4.2/approvals", json={"stage": "reviewer"})
        status = c.get("/api/v1/releases/shop/1.4.2").json()
    assert signed.status_code == 200 and signed.json()["user"] == "bob", signed.text
    [reviewers] = [st for st in status["stages"] if st["stage"] == "reviewer"]
    assert [g["user"] for g in reviewers["given"]] == ["bob"]
    with server.client(dave) as c:
        refused = c.post("/api/v1/releases/shop/1.4.2/approvals", json={"stage": "reviewer"})
    assert refused.status_code == 400 and "dave" in refused.json()["detail"], refused.text
    with server.client(server.token("dora", "deployer")) as c:
        assert c.post("/api/v1/releases/shop/1.4.2/rejections", json={"stage": "qa", "reason": "x"}).status_code == 403
        assert c.put("/api/v1/policy", json={"text": "x"}).status_code == 403
    with server.client(server.token("ada", "admin")) as c:
        audit = [json.loads(line) for line in c.get("/api/v1/audit/export").text.splitlines()]
    actors = {e["action"]: e["actor"] for e in audit}
    assert actors["policy.applied"] == "root" and actors["approval.given"] == "bob"


def test_the_alertmanager_webhook_answers_with_what_it_did(server):
    from tests.test_alert_receiver import alert, notification

    with server.client(server.token("am", "deployer")) as c:
        done = c.post("/api/v1/alerts", json=notification(alert("HighErrorRate", "nowhere")))
        malformed = c.post("/api/v1/alerts", json={"version": "4"})
    assert done.status_code == 200 and len(done.json()["results"]) == 1, done.text
    assert malformed.status_code == 400 and "'alerts' list" in malformed.json()["detail"]
    with server.client(server.token("shopdev", "deployer", "shop")) as c:
        assert c.post("/api/v1/alerts", json=notification(alert())).status_code == 403


async def test_a_release_groups_member_is_not_adopted_alone(tmp_path):
    """A member moves with its group (switch together or in order): the server leaves it to `resume RELEASE`."""
    from releasegate.engine import decide
    from releasegate.engine.group import GroupState, Member
    from releasegate.server.runner import Supervisor
    from releasegate.spec import load_spec
    from releasegate.store.groups import GroupStore
    from releasegate.store.sqlite import Store
    from tests.support.rollouts import free_port, write_spec

    state = tmp_path / "state"
    spec_path = write_spec(tmp_path, free_port(), "{canary: {steps: [{weight: 20, pause: 1h}]}}")
    spec = load_spec(spec_path)
    st = decide.new_rollout("shop-2.0.0-abcdef", spec, "2.0.0", "1.0.0", 1.0)
    dead = {"host": "elsewhere", "pid": 1, "started": 0.0, "lease_until": 0.0}
    store = Store(state)
    store.create_rollout(st, str(spec_path), spec.model_dump_json(by_alias=True), dead)
    store.set_service("shop", "1.0.0", None, None, str(spec_path), None, 1.0)
    store.close()
    member = Member(service="shop", spec_path=str(spec_path), tier="important", version="2.0.0",
                    rollout_id=st.id, status="running")
    groups = GroupStore(state)
    groups.create(GroupState(id="g1", release="web", switch="together", release_path=str(tmp_path / "web.yaml"),
                             members=[member], created_at=1.0, updated_at=1.0), dead)
    groups.close()
    supervisor = Supervisor(state)
    assert await supervisor.adopt() == [] and supervisor.tasks == {}
    from releasegate.server.problems import Problem

    with pytest.raises(Problem, match="belongs to release web, which moves as one: `releasegate resume web`"):
        supervisor.resume("shop")
