"""schemathesis against the server's own OpenAPI document: no request an admin can make gets a 5xx.

In-process (ASGI, the app's lifespan started once by schemathesis), over a real state dir holding a stored policy,
a calendar and a registered release, so the generated requests reach the rules and not only "not found". Every
operation gets schema-conforming and schema-breaking requests; examples are few and derandomized, so the run is
short and the same each time. Every error must be problem+json.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_PER_OPERATION = int(os.environ.get("RELEASEGATE_SCHEMATHESIS_EXAMPLES", "8"))
"""Few, to keep the suite short; a longer hunt: RELEASEGATE_SCHEMATHESIS_EXAMPLES=200 (still derandomized)."""


def _state(state: Path) -> str:
    """A state dir with the example policy and calendar stored and a release registered; an admin's token."""
    from releasegate.governance.approvals import new_release
    from releasegate.governance.stored import apply
    from releasegate.server.auth import issue
    from releasegate.store.server import ServerStore

    ServerStore(state, create=True).close()
    for kind in ("calendar", "policy"):  # the calendar first: once a policy is stored, only its admins apply
        apply(state, kind, ROOT / "examples" / "governance" / f"{kind}.yaml")
    new_release(state, "shop", "1.4.2", "alice")
    return issue(state, "root", "admin")


def test_no_generated_request_gets_a_server_error(tmp_path):
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation.modes import GenerationMode

    from releasegate.server.app import create_app

    state = tmp_path / "state"
    auth = {"Authorization": f"Bearer {_state(state)}"}
    app = create_app(state, spec_root=tmp_path, adopt=False)
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app, headers=auth)
    found: dict[tuple[str, str, int], str] = {}
    checked = 0
    statuses: dict[int, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            @given(case=operation.as_strategy(generation_mode=mode))
            def send(case: Any) -> None:
                answer = case.call(headers=auth)
                key = (case.method, case.path, answer.status_code)
                statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
                if answer.status_code >= 500:
                    found.setdefault(key, f"{case.as_curl_command()} -> {answer.text[:300]}")
                elif answer.status_code >= 400 and answer.headers.get("content-type", [""])[0] != (
                        "application/problem+json"):
                    found.setdefault(key, f"not problem+json: {case.as_curl_command()} -> {answer.text[:300]}")
            try:
                send()
            except Unsatisfiable:  # nothing in this operation to break (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.label
                continue
            checked += 1
    assert checked >= 40, checked
    assert statuses.get(401, 0) == 0 and sum(n for code, n in statuses.items() if code < 300) > 50, statuses
    assert found == {}, "\n".join(f"{k}: {v}" for k, v in found.items())


PROBES: list[tuple[str, str, dict[str, Any], str]] = [
    ("GET", "/api/v1/calendar/check", {"params": {"at": "9999-12-31T23:00"}}, "--at '9999-12-31T23:00': out of range"),
    ("GET", "/api/v1/calendar/check", {"params": {"at": "0001-01-01T00:00-14:00"}}, "out of range"),
    ("GET", "/api/v1/audit/verify", {"params": {"expect": "99999999999999999999:abcdefabcdef"}}, "write SEQ:HASH"),
    ("POST", "/api/v1/rollouts", {"json": {"version": "1.0.0", "spec_path": "a\x00b"}}, "no such spec file"),
    ("POST", "/api/v1/rollouts", {"json": {"version": "1.0.0", "spec_path": "a" * 5000}}, "no such spec file"),
    ("POST", "/api/v1/rollouts", {"content": b'{"version": "1.0.0", "spec_yaml": "\\ud800"}'}, "lone UTF-16 surrogate"),
    ("PUT", "/api/v1/calendar", {"content": b'{"text": "\\udfff x"}'}, "lone UTF-16 surrogate"),
    ("POST", "/api/v1/alerts", {"content": b'{"alerts": [{"labels": {"service": "\\ud800"}}]}'}, "lone UTF-16"),
    ("POST", "/api/v1/specs/validate", {"content": b"[" * 100_000}, "error parsing the body"),
    ("POST", "/api/v1/tokens", {"json": {"name": "a\x00b", "role": "viewer"}}, "a token's name is the user"),
    ("POST", "/api/v1/rollouts", {"json": {"version": "1.0.0", "spec_yaml": "service: shop\n"}},
     "spec.yaml:1:1: missing required key"),  # the inline spec's problems never name the server's copy
]
"""What the generated requests did not reach and a 5xx once answered (found by hand next to schemathesis)."""


@pytest.mark.parametrize(("method", "path", "request_kw", "said"), PROBES, ids=[str(i) for i in range(len(PROBES))])
def test_requests_that_once_got_a_server_error_get_a_problem(tmp_path, method, path, request_kw, said):
    from fastapi.testclient import TestClient

    from releasegate.server.app import create_app

    state = tmp_path / "state"
    auth = {"Authorization": f"Bearer {_state(state)}", "content-type": "application/json"}
    with TestClient(create_app(state, spec_root=tmp_path, adopt=False), headers=auth,
                    raise_server_exceptions=False) as client:
        answer = client.request(method, path, **request_kw)
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert said in problem["detail"] + "".join(problem.get("errors") or []), problem
    assert str(state) not in answer.text


def test_calendar_check_far_out_is_a_one_line_refusal(tmp_path):
    from typer.testing import CliRunner

    from releasegate.commands.calendar import calendar_app

    done = CliRunner().invoke(calendar_app, ["check", "--change", "patch", "--at", "0001-01-01T00:00", "--calendar",
                                             str(ROOT / "examples" / "governance" / "calendar.yaml")])
    assert done.exit_code == 2 and done.stderr == (
        "releasegate: --at '0001-01-01T00:00': out of range; give a time between the years 1900 and 9000\n")
