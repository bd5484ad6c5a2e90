"""``${env:NAME}`` in the spec values that hold secrets (docs/security.md, section 5): validate checks the syntax,
deploy resolves the references only where the values are used, the state dir never holds the secret, and an unset
variable stops the deploy before anything starts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.receiver import Receiver
from tests.support.rollouts import cleanup, free_port, marked_processes, write_spec
from tests.support.wait import wait_until

SECRET = "s3cr3t-Token-9f8e7d"
APP_SECRET = "app-Password-4c3b2a"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("RELEASEGATE_HOME", "HOOK_TOKEN", "APP_PASSWORD")}
    return subprocess.run([sys.executable, "-m", "releasegate", *args], capture_output=True, text=True,
                          env=base | (env or {}), timeout=60)


def spec_with_refs(tmp_path: Path, hook: str) -> Path:
    path = write_spec(tmp_path, free_port(), "{bluegreen: {}}", rules="[]", post_promotion="0s", instances=1,
                      extra=f'notify:\n  - url: "{hook}"\n')
    text = path.read_text().replace('env: {FAULTS: ""}', 'env: {FAULTS: "", APP_PASSWORD: "${env:APP_PASSWORD}"}')
    path.write_text(text)
    return path


def test_validate_accepts_env_references_in_secret_fields(tmp_path: Path) -> None:
    spec = spec_with_refs(tmp_path, "slack://${env:SLACK_A}/${env:SLACK_B}/${env:SLACK_C}")  # tokens unknown here
    spec.write_text(spec.read_text() + "migrations: {database: 'postgresql://rg:${env:PGPASSWORD_APP}@db/app'}\n")
    done = run("validate", str(spec))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("written", "wrong"), [
    ("${HOOK_TOKEN}", "'${HOOK_TOKEN}' is not a reference"),
    ("${file:/etc/token}", "'${file:/etc/token}' is not a reference"),
    ("${env:1BAD}", "'${env:1BAD}' is not a reference"),
    ("${env:HOOK_TOKEN", "unclosed '${'"),
])
def test_validate_refuses_other_forms_at_the_value(tmp_path: Path, written: str, wrong: str) -> None:
    spec = spec_with_refs(tmp_path, f"json://127.0.0.1:9/{written}")
    line = next(i for i, text in enumerate(spec.read_text().splitlines(), 1) if "url: " in text)
    done = run("validate", str(spec))
    assert done.returncode == 2
    out = done.stdout + done.stderr
    assert f"{spec}:{line}:" in out and wrong in out and "write ${env:NAME}" in out, out


def test_a_malformed_reference_in_platform_env_is_refused_but_other_dollar_braces_stay_literal(tmp_path: Path) -> None:
    spec = spec_with_refs(tmp_path, "json://127.0.0.1:9/hook")
    text = spec.read_text()
    spec.write_text(text.replace("${env:APP_PASSWORD}", "${env:APP_PASSWORD}-{port}-${env:1APP}"))
    done = run("validate", str(spec))
    assert done.returncode == 2 and "'${env:1APP}' is not a reference" in done.stdout + done.stderr, done.stdout
    spec.write_text(text.replace("${env:APP_PASSWORD}", "${env:APP_PASSWORD}-{port}-${APP}"))  # ${APP}: literal
    assert run("validate", str(spec)).returncode == 0


def test_deploy_resolves_references_where_used_and_the_state_never_holds_the_secret(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Receiver() as hook:
        spec = spec_with_refs(tmp_path, hook.url("${env:HOOK_TOKEN}"))
        try:
            done = run("deploy", str(spec), "--version", "1.0.0", "--state-dir", str(state),
                       env={"HOOK_TOKEN": SECRET, "APP_PASSWORD": APP_SECRET})
            assert done.returncode == 0, done.stdout + done.stderr
            assert SECRET not in done.stdout + done.stderr and APP_SECRET not in done.stdout + done.stderr
            instances = [p.environ() for p in marked_processes(state)]  # the shell and the app it runs
            assert instances and all(e.get("APP_PASSWORD") == APP_SECRET for e in instances)
            wait_until(lambda: hook.events("promoted"), what="the promoted event at the resolved URL")
            assert {r.path for r in hook.received} == {f"/{SECRET}"}
            database = b"".join(p.read_bytes() for p in state.glob("releasegate.db*"))  # with its -wal
            assert b"${env:HOOK_TOKEN}" in database and b"${env:APP_PASSWORD}" in database  # the spec is stored
            stored = b"".join(p.read_bytes() for p in state.rglob("*") if p.is_file())
            assert SECRET.encode() not in stored and APP_SECRET.encode() not in stored
        finally:
            asyncio.run(cleanup(state, spec))


def test_deploy_without_the_variable_refuses_in_one_line_and_starts_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    spec = spec_with_refs(tmp_path, "json://127.0.0.1:9/${env:HOOK_TOKEN}")
    done = run("deploy", str(spec), "--version", "1.0.0", "--state-dir", str(state), env={"APP_PASSWORD": "x"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(
        "notify[0].url: ${env:HOOK_TOKEN} is not set in this environment; export HOOK_TOKEN before deploy"), \
        done.stderr
    assert "Traceback" not in done.stderr
    assert marked_processes(state) == [] and not (state / "releasegate.db").exists()
    pre = run("preflight", str(spec), "--version", "1.0.0", "--state-dir", str(state), env={"HOOK_TOKEN": "x"})
    assert pre.returncode != 0 and "platform.env.APP_PASSWORD: ${env:APP_PASSWORD} is not set" in pre.stdout + \
        pre.stderr, pre.stdout + pre.stderr
