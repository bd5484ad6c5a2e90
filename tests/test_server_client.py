"""The CLI's governance commands as the server's client: the real CLI (a subprocess, RELEASEGATE_SERVER and
RELEASEGATE_TOKEN set) against a real ``releasegate server``, compared line for line with the standalone CLI
reading the same state dir.

No rollout runs here (tests/test_server_rollouts.py drives those); the server and its state serve the module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProc

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "governance"
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    base = tmp_path_factory.mktemp("client")
    proc = ServerProc(base / "state", base).start()
    yield proc
    proc.stop()


def _run(args: tuple[str, ...], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "releasegate", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def cli(server: ServerProc) -> Run:
    """``cli(*args, token=...)``: the CLI as the server's client."""
    def run(*args: str, token: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "RELEASEGATE_SERVER": server.url, "RELEASEGATE_TOKEN": token}
        return _run(args, env, server.spec_root)
    return run


@pytest.fixture(scope="module")
def standalone(server: ServerProc) -> Run:
    """The standalone CLI on the server's own state dir (the reference output)."""
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RELEASEGATE_SERVER", "RELEASEGATE_TOKEN")}
        return _run(("--state-dir", str(server.state), *args), env, server.spec_root)
    return run


@pytest.fixture(scope="module")
def admin(server: ServerProc) -> str:
    return server.token("erin", "admin")


@pytest.fixture(scope="module")
def applied(server: ServerProc, cli: Run, admin: str) -> None:
    """The example policy and calendar, applied through the client by an admin."""
    for kind in ("policy", "calendar"):
        done = cli(kind, "apply", str(EXAMPLES / f"{kind}.yaml"), token=admin)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"stored {kind} v1 from {EXAMPLES / f'{kind}.yaml'} (sha256:"), done.stdout
        assert done.stdout.rstrip().endswith("applied by erin")


def test_policy_and_calendar_apply_through_the_server_as_the_tokens_admin(server, cli, admin, applied, tmp_path):
    policy = EXAMPLES / "policy.yaml"
    again = cli("policy", "apply", str(policy), token=admin)
    assert again.returncode == 0 and again.stdout == f"policy: {policy} is the same as stored policy v1; nothing " \
                                                     "stored\n", again.stdout
    changed = tmp_path / "policy.yaml"
    changed.write_text(policy.read_text().replace("frank: [pm]}", "frank: [pm], gina: [qa]}"))
    dry = cli("policy", "apply", str(changed), "--dry-run", token=admin)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith(f"policy: {changed} is valid; applying it would store v2 (+1 -1 lines against v1); "
                                 "nothing stored (--dry-run)\n--- policy v1\n+++ " + str(changed)), dry.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text("users: {alice: [developer]\n")
    bad = cli("policy", "apply", str(broken), token=admin)
    assert bad.returncode == 2 and bad.stderr.startswith(f"releasegate: {broken}:"), bad.stderr
    assert str(server.state) not in bad.stderr  # the server's copy of the upload is never named
    refused = cli("calendar", "apply", str(changed), token=server.token("dora", "deployer"))
    assert refused.returncode == 2 and refused.stderr == "releasegate: dora is deployer of *; this needs role admin\n"
    as_someone = cli("policy", "apply", str(changed), "--as", "erin", token=admin)
    assert as_someone.returncode == 2 and as_someone.stderr.count("\n") == 1, as_someone.stderr
    assert as_someone.stderr.startswith("releasegate: --as: through the server"), as_someone.stderr
    history = standalone_history = None
    for kind in ("policy", "calendar"):
        history = cli(kind, "history", token=server.token("vera", "viewer"))
        standalone_history = subprocess.run(
            [sys.executable, "-m", "releasegate", "--state-dir", str(server.state), kind, "history"],
            capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "RELEASEGATE_SERVER"})
        assert history.returncode == standalone_history.returncode == 0, history.stderr
        assert history.stdout == standalone_history.stdout
        assert "erin" in history.stdout and str(EXAMPLES / f"{kind}.yaml") in history.stdout


def test_read_only_governance_commands_print_what_standalone_prints(server, cli, standalone, applied):
    viewer = server.token("vera", "viewer")
    same = [
        ("policy", "show"),
        ("policy", "show", "--version", "1"),
        ("calendar", "show", "--month", "2025-11"),
        ("calendar", "show", "--yaml"),
        ("calendar", "show", "--ics", "--from", "2025-11-01", "--to", "2025-12-31"),
        ("calendar", "check", "--change", "minor", "--at", "2025-11-04T03:00"),
        ("calendar", "check", "--change", "patch", "--at", "2025-11-25T03:00"),
        ("calendar", "upcoming", "--at", "2025-11-18T09:00", "--days", "14"),
        ("policy", "show", "--version", "9"),
        ("audit", "verify"),
        ("audit", "head"),
    ]
    # What the client printed, by command: read-only commands, asked once and checked below as well.
    seen: dict[tuple[str, ...], subprocess.CompletedProcess[str]] = {}
    for args in same:
        through, alone = cli(*args, token=viewer), standalone(*args)
        seen[args] = through
        assert (through.returncode, _stamped(through.stdout)) == (alone.returncode, _stamped(alone.stdout)), (
            args, through.stderr)
        if args[:2] != ("policy", "show") or "9" not in args:
            assert through.stderr == alone.stderr, (args, through.stderr, alone.stderr)
    missing = seen[("policy", "show", "--version", "9")]
    assert missing.returncode == 2 and missing.stderr == (
        f"releasegate: --version 9: there is no policy v9 in the server {server.url} (see `releasegate policy "
        "history`)\n")
    assert seen[("policy", "show")].stdout == (EXAMPLES / "policy.yaml").read_text()
    frozen = seen[("calendar", "check", "--change", "minor", "--at", "2025-11-04T03:00")]
    assert frozen.returncode == 2 and frozen.stdout.startswith("judged by stored calendar v1\n")


def _stamped(text: str) -> str:
    """An iCalendar feed without its DTSTAMP lines (the second it was made)."""
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("DTSTAMP:"))


def test_approve_reject_withdraw_and_approvals_sign_as_the_tokens_user(server, cli, standalone, applied):
    from releasegate.governance.approvals import new_release

    new_release(server.state, "shop", "1.4.2", "alice")
    bob, dave = server.token("bob", "approver", "shop"), server.token("dave", "approver")
    signed = cli("approve", "shop@1.4.2", "--stage", "reviewer", token=bob)
    assert signed.returncode == 0, signed.stderr
    rejected = cli("reject", "shop@1.4.2", "--stage", "qa", "--reason", "flaky login", token=dave)
    assert rejected.stdout == "shop@1.4.2: rejected by dave at stage qa; blocked until `releasegate withdraw " \
                              "shop@1.4.2`\n", rejected.stderr
    viewer = server.token("vera", "viewer")
    for args in (("approvals", "shop@1.4.2"), ("approvals", "shop@1.4.2", "--json"),
                 ("approvals", "shop@1.4.2", "--env", "stage")):
        through, alone = cli(*args, token=viewer), standalone(*args)
        assert (through.returncode, through.stdout) == (alone.returncode, alone.stdout), args
    assert "rejected by dave at stage qa" in through.stdout
    not_his = cli("withdraw", "shop@1.4.2", token=bob)
    assert not_his.returncode == 2 and not_his.stderr.count("\n") == 1, not_his.stderr
    withdrawn = cli("withdraw", "shop@1.4.2", token=dave)
    assert withdrawn.returncode == 0 and withdrawn.stdout == "shop@1.4.2: dave withdrew the rejection at stage qa\n"
    assert cli("withdraw", "shop@1.4.2", token=viewer).returncode == 2
    entries = [json.loads(line) for line in standalone("audit", "export").stdout.splitlines()]
    actors = {e["action"]: e["actor"] for e in entries if e.get("release") == "shop@1.4.2"}
    assert actors["approval.given"] == "bob" and actors["rejection.given"] == "dave", actors


def test_audit_export_is_the_same_and_a_client_signed_export_verifies_standalone(server, cli, standalone, admin,
                                                                                 applied, tmp_path):
    through, alone = cli("audit", "export", token=admin), standalone("audit", "export")
    assert through.returncode == 0 and through.stdout == alone.stdout and through.stdout
    assert cli("audit", "export", token=server.token("vera", "viewer")).returncode == 2  # admins only
    key = tmp_path / "audit.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    out = tmp_path / "signed.jsonl"
    signed = cli("audit", "export", "--signed", "--key-file", str(key), "-o", str(out), token=admin)
    assert signed.returncode == 0 and signed.stderr.startswith("wrote ") and "(signed)" in signed.stderr
    checked = standalone("audit", "verify", "--against", str(out), "--key-file", str(key))
    assert checked.returncode == 0, checked.stderr
    remote = cli("audit", "verify", "--against", str(out), "--key-file", str(key), token=admin)
    assert (remote.returncode, remote.stdout) == (0, checked.stdout), remote.stderr
    out.write_text(out.read_text().replace('"actor": "erin"', '"actor": "eve"', 1))
    forged = cli("audit", "verify", "--against", str(out), "--key-file", str(key), token=admin)
    assert forged.returncode == 2 and "the signature does not match" in forged.stderr, forged.stderr
    top = cli("audit", "head", token=admin).stdout.strip()
    assert cli("audit", "verify", "--expect", top, token=admin).stdout.endswith("; 1 anchored entries match\n")
    wrong = cli("audit", "verify", "--expect", top.split(":")[0] + ":" + "0" * 64, token=admin)
    assert wrong.returncode == 2 and wrong.stderr.startswith("releasegate: audit log: entry "), wrong.stderr
    since = cli("audit", "export", "--since", "soon", token=admin)
    assert since.returncode == 2 and since.stderr.startswith("releasegate: --since soon: write an ISO 8601"), since


def test_token_new_through_the_server_by_an_admin_only(server, cli, admin):
    made = cli("token", "new", "ci", "--role", "deployer", "--service", "shop-*", token=admin)
    assert made.returncode == 0 and made.stdout.startswith("rg_"), made.stderr
    assert "server token for ci (deployer of shop-*) shown once" in made.stderr
    with server.client(made.stdout.strip()) as c:
        assert c.get("/api/v1/services").status_code == 200
    for args, said in [
        (("token", "new", "ci", "--role", "deployer"), "releasegate: dora is deployer of *; this needs role admin"),
        (("token", "new", "ci"), "releasegate: token new: through the server only server tokens are made"),
        (("token", "new", "ci", "--role", "boss"), "releasegate: --role boss: not a role"),
        (("token", "new", "ci", "--role", "viewer", "--store", "sqlite:///x/releasegate.db"),
         "releasegate: token new --store: the server issues the token"),
        (("deploy", "shop.yaml", "--version", "1.0.0", "--as", "dora"), "releasegate: --as: through the server"),
        (("release", "new", "shop", "1.0.0", "--as", "dora"), "releasegate: release: not available through"),
    ]:
        done = cli(*args, token=server.token("dora", "deployer") if "boss" not in args else admin)
        assert done.returncode == 2 and done.stderr.startswith(said) and done.stderr.count("\n") == 1, (
            args, done.stderr)


def test_a_deploy_the_server_refuses_names_the_clients_spec_file(server, cli, tmp_path):
    spec = tmp_path / "shop.yaml"
    spec.write_text("service: shop\n")
    done = cli("deploy", str(spec), "--version", "1.0.0", token=server.token("dora", "deployer"))
    assert done.returncode == 2 and done.stderr.startswith(f"releasegate: {spec}:1:1: missing required key"), (
        done.stderr)
    assert str(server.state) not in done.stderr
