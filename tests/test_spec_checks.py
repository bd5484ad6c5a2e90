"""The health and smoke sections as a user writes them: smoke commands, placeholders, and their errors at
FILE:LINE:COL."""

from __future__ import annotations

import pytest

from releasegate.spec import SpecError, load_spec_text
from releasegate.spec.models import Spec
from releasegate.spec.placeholders import substitute

HEAD = 'service: shop\nplatform: {command: "app --port {port}"}\n'


def spec(body: str) -> Spec:
    return load_spec_text(HEAD + body, "shop.yaml")


def error(body: str) -> str:
    with pytest.raises(SpecError) as info:
        spec(body)
    assert len(info.value.issues) == 1, str(info.value)
    return str(info.value)


def test_the_runbooks_smoke_commands_mix_with_requests() -> None:
    s = spec("health: {path: /api/health, expect: {status: healthy, version: \"{version}\"}}\n"
             "smoke:\n"
             "  - {method: POST, path: /api/stocks/mode, body: '{\"mode\": \"all\"}'}\n"
             "  - command: npm run test:smoke:production -- --base-url={url} --timeout=30\n"
             "    timeout: 5m\n"
             "  - {command: 'pytest tests/e2e/smoke_tests.py --base-url \"{url}\"', cwd: app, env: {ENV: prod}}\n")
    req, npm, pytest_ = s.smoke_tests
    assert not req.is_command and req.body == '{"mode": "all"}'
    assert npm.command == "npm run test:smoke:production -- --base-url={url} --timeout=30" and npm.timeout == 300
    assert pytest_.cwd == "app" and pytest_.env == {"ENV": "prod"} and pytest_.timeout is None
    assert s.health.expect == {"status": "healthy", "version": "{version}"}
    assert (s.health.failure_threshold, s.health.down_after) == (3, 30.0)  # ai-model: 3 in a row; Judgify: 30 s


def test_health_during_the_rollout_is_configurable() -> None:
    h = spec("health: {failure_threshold: 5, down_after: 1m}\n").health
    assert (h.failure_threshold, h.down_after) == (5, 60.0)
    assert error("health: {failure_threshold: 0}\n") == (
        "shop.yaml:3:29: failure_threshold must be at least 1, got 0")


def test_a_smoke_entry_is_a_request_or_a_command_never_both() -> None:
    assert error("smoke:\n  - {path: /ok}\n  - {command: 'pytest --base-url {url}', expect_status: [201]}\n") == (
        "shop.yaml:5:42: a smoke entry is either an HTTP request or a command, not both: remove 'expect_status' "
        "here, or put the request in a smoke entry of its own")
    assert error("smoke:\n  - {path: /ok, cwd: tests}\n") == (
        "shop.yaml:4:22: 'cwd' applies to smoke commands only: add 'command: ...' to this entry or remove 'cwd'")
    assert error("smoke:\n  - {command: ''}\n").startswith("shop.yaml:4:6: the command is empty")


@pytest.mark.parametrize(("body", "expected"), [
    ("smoke:\n  - command: pytest --base-url {ulr}\n",
     "shop.yaml:4:14: unknown placeholder {ulr} (did you mean {url}?)"),
    ("health: {expect: {version: '{verison}'}}\n",
     "shop.yaml:3:28: unknown placeholder {verison} (did you mean {version}?)"),
    ("smoke:\n  - {path: /, expect_json: {build: {id: '{commit}'}}}\n",
     "shop.yaml:4:41: unknown placeholder {commit}; known: {url}, {host}, {port}, {version}, {service}"),
    ("smoke:\n  - {path: '/v/{vers}'}\n", "shop.yaml:4:12: unknown placeholder {vers} (did you mean {version}?)"),
    ("smoke:\n  - {path: /, headers: {X-Env: '{envv}'}}\n", "shop.yaml:4:32: unknown placeholder {envv}"),
])
def test_an_unknown_placeholder_is_refused_where_it_is_written(body: str, expected: str) -> None:
    assert error(body).startswith(expected)


def test_other_braces_stay_as_written() -> None:
    s = spec("smoke:\n  - {path: /, expect_body: '{\"ok\": true}'}\n"
             "  - {command: 'echo ${HOME} {{url}} {url}'}\n")
    assert s.smoke_tests[0].expect_body == '{"ok": true}'
    values = {"url": "http://127.0.0.1:4000", "port": 4000, "version": "2.0.0"}
    assert substitute(s.smoke_tests[1].command, values) == "echo ${HOME} {url} http://127.0.0.1:4000"
    assert substitute({"port": "{port}", "v": "v{version}", "n": [1, "{version}"]}, values) == {
        "port": 4000, "v": "v2.0.0", "n": [1, "2.0.0"]}


def test_a_stored_spec_validates_again() -> None:
    """The controller keeps the spec as JSON (every key written) and reads it back, e.g. for `gc` and `rollback`."""
    s = spec("smoke:\n  - {path: /ok}\n  - {command: 'pytest --base-url {url}', cwd: tests, env: {A: b}}\n")
    assert Spec.model_validate_json(s.model_dump_json(by_alias=True)) == s
