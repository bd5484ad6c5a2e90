"""Secrets never leave the server: a deploy through the server (the CLI as its client) whose spec holds
notification URLs with credentials, and a token made through the API, then every answer, the server's log and the
audit export are searched for them (issue 11: tokens, passwords and notification URLs never appear in a response,
a log line or an audit export).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.receiver import Receiver
from tests.support.rollouts import RolloutEnv
from tests.support.server import ServerProc, served
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

HOOK_PASSWORD = "hook-Pw-5e6f7a8b"
DEAD_PASSWORD = "dead-Pw-1a2b3c4d"
"""The password of a webhook nobody answers: its failure is recorded, and must not carry the URL."""


@pytest.fixture
def env(tmp_path) -> Iterator[tuple[RolloutEnv, ServerProc]]:
    with served(tmp_path) as pair:
        yield pair


def test_no_answer_log_line_or_audit_export_holds_a_token_or_a_notification_url(env):
    made, server = env
    with Receiver() as hook:
        live = f"json://alerts:{HOOK_PASSWORD}@127.0.0.1:{hook.port}/hook"
        dead = f"json://alerts:{DEAD_PASSWORD}@127.0.0.1:9/hook"
        spec = made.spec("{canary: {steps: [{weight: 50, pause: 100ms}], keep_previous: 1h}}",
                         extra=f'notify:\n  - {{url: "{live}"}}\n  - {{url: "{dead}"}}\n')
        admin = server.token("ada", "admin")
        environ = {**os.environ, "RELEASEGATE_SERVER": server.url, "RELEASEGATE_TOKEN": admin}
        deployed = subprocess.run([sys.executable, "-m", "releasegate", "deploy", str(spec), "--version", "1.0.0"],
                                  capture_output=True, text=True, env=environ, timeout=120)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        wait_until(lambda: hook.events("promoted"), 30, "the promoted notification")
    made_token = subprocess.run([sys.executable, "-m", "releasegate", "token", "new", "ci", "--role", "deployer"],
                                capture_output=True, text=True, env=environ, timeout=60)
    assert made_token.returncode == 0, made_token.stderr
    secrets = [admin, made_token.stdout.strip(), HOOK_PASSWORD, DEAD_PASSWORD, live, dead]
    exported = subprocess.run([sys.executable, "-m", "releasegate", "audit", "export"], capture_output=True,
                              text=True, env=environ, timeout=60)
    assert exported.returncode == 0 and '"action": "server_token.new"' in exported.stdout, exported.stderr
    with server.client(admin) as c:
        [rollout] = c.get("/api/v1/rollouts").json()
        rid = rollout["id"]
        answers = [c.get(path) for path in (
            "/api/v1/rollouts", f"/api/v1/rollouts/{rid}", f"/api/v1/rollouts/{rid}/events", "/api/v1/services",
            "/api/v1/services/shop", "/api/v1/services/shop/history", "/api/v1/audit/export", "/api/v1/tokens",
            "/metrics")]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    events = answers[2].json()
    assert any(e["kind"] == "promoted" for e in events)
    server.stop()
    said = {"answers": "\n".join(a.text for a in answers), "server log": server.log.read_text(),
            "audit export": exported.stdout, "deploy output": deployed.stdout + deployed.stderr}
    for where, text in said.items():
        for secret in secrets:
            assert secret not in text, f"{where} holds {secret[:12]}..."
