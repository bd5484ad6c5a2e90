"""The dashboard's services overview per service and environment, over a store with a known history.

The history is made by the real engine (``engine.simulate`` in simulated time) and written through the real
``Store``, as tests/test_dora.py does; one real ``releasegate server`` serves it. What a person must see: a row per
service and environment with the version that went out there and how it ended, the environment a service's
instances serve now, rows needing attention first (a rule breaching before it has held long enough), and a choice
of one environment that the live stream keeps.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from releasegate.engine.analysis import rule_key
from releasegate.engine.simulate import simulate
from releasegate.engine.state import Sample
from releasegate.governance.stored import apply
from releasegate.store.sqlite import Store, this_owner
from tests.support.server import ServerProc
from tests.support.simulated import errors_when, make_spec

EXAMPLE_POLICY = Path(__file__).parent.parent / "examples" / "governance" / "policy.yaml"
DAY = 86400.0


def _record(store: Store, service: str, version: str, previous: str, start: float, env: str, *,
            breach: bool = False, release: str | None = None) -> None:
    spec = make_spec(service=service, governance={"release": release} if release else {})
    trace = simulate(spec, version, previous, t0=start,
                     metric=errors_when(lambda t, w: w > 0) if breach else None)
    st = trace.state.model_copy(update={"env": env, "id": f"{service}-{version}-{env}"})
    store.create_rollout(st, "spec.yaml", spec.model_dump_json(), {})
    for at, d in trace.decisions:
        store.add_event(service, st.id, start + at, d.kind, d.message, d.data)
    store.save(st)
    if st.status == "promoted":
        store.set_service(service, version, previous, None, "spec.yaml", spec.model_dump_json(), st.finished_at or 0)


def _troubled(store: Store, name: str, start: float, **trouble: Any) -> None:
    """An active canary of ``name`` at 25 % with ``trouble`` in its state (breaching samples, failing checks)."""
    spec = make_spec(service=name)
    st = simulate(spec, "3.1.0", "3.0.0", t0=start).state
    st = st.model_copy(update={"id": f"{name}-3.1.0", "status": "running", "phase": "canary", "step": 1,
                               "weight": 25, "finished_at": None, "outcome": None, "env": "prod", **trouble})
    store.set_service(name, "3.0.0", None, None, "spec.yaml", spec.model_dump_json(), start)
    # Driven, as far as the server can tell, by a controller on another host whose lease runs for a day: not this
    # test's process (the server must never adopt it and start its router, whatever happens to the test worker).
    far = {**this_owner(), "host": "another-host", "lease_until": time.time() + DAY}
    store.create_rollout(st, "spec.yaml", spec.model_dump_json(), far, holder="another-host-controller", ttl=DAY)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    base = tmp_path_factory.mktemp("overview")
    state = base / "state"
    b = time.time() - 3 * DAY
    store = Store(state)
    try:
        _record(store, "shop", "1.0.0", "0.9.0", b, "stage")  # stage first, then the same service to prod
        _record(store, "shop", "1.0.0", "0.9.0", b + DAY, "prod")
        _record(store, "web-stage", "2.0.0", "1.9.0", b, "stage", release="web")  # one spec per environment
        _record(store, "web", "1.9.0", "1.8.0", b, "prod", release="web")
        _record(store, "web", "2.0.0", "1.9.0", b + DAY, "prod", breach=True, release="web")  # rolled back
        rule = make_spec().analysis.rules[0]  # error_rate > 5% for 5m
        now = time.time()
        _troubled(store, "pay", b, samples={rule_key(0, rule): [Sample(at=now, start=now - 60, value=0.07)]})
        _troubled(store, "cart", b, health_failures={"127.0.0.1:9": 2, "127.0.0.1:8": 1})
    finally:
        store.close()
    apply(state, "policy", EXAMPLE_POLICY)  # its pipeline orders the environments: dev, stage, prod
    proc = ServerProc(state, base).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def viewer(server: ServerProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30, headers={"Origin": server.url}) as c:
        answer = c.post("/signin", data={"token": server.token("vera", "viewer"), "next": "/"})
        assert answer.status_code == 303, answer.text
        yield c


def _rows(page: str) -> list[tuple[str, str, list[str]]]:
    """(service, env, the row's cells as text) in page order."""
    found = []
    for service, env, body in re.findall(r'<tr data-service="([^"]+)" data-env="([^"]*)"[^>]*>(.*?)</tr>',
                                         page.split('id="services"')[1].split("</table>")[0], re.S):
        cells = [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", c)).strip()
                 for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", body, re.S)]
        found.append((service, env, cells))
    return found


def test_each_service_has_a_row_per_environment_with_what_went_out_there(viewer: httpx.Client) -> None:
    rows = _rows(viewer.get("/").text)
    keys = [(s, e) for s, e, _ in rows]
    # Needing attention first: the canaries in trouble (failing health checks, a breaching rule), then web's
    # rollback, then what is not running (nothing runs here: the history is recorded, no instance was started);
    # then by release, environment in the policy's pipeline order (stage before prod), service.
    assert keys == [("cart", "prod"), ("pay", "prod"), ("web", "prod"), ("shop", "prod"), ("web-stage", "stage"),
                    ("shop", "stage")], keys
    by = {(s, e): cells for s, e, cells in rows}
    pay = by["pay", "prod"]
    assert pay[-1].startswith("breaching: error_rate 7% &gt; 5%") and "holds for 5m" in pay[-1], pay
    assert "3.1.0: canary step 2, 25%" in pay[5]
    assert by["cart", "prod"][-1] == ("health checks failing: 127.0.0.1:9 (2 in a row), 127.0.0.1:8 (1 in a row); "
                                      "rolls back at 3 in a row")
    assert by["web", "prod"][-1].startswith("last rollout rolled back"), by["web", "prod"]
    # shop went to stage, then to prod: stage's row says what went out there and that the instances moved on.
    stage = by["shop", "stage"]
    assert stage[2] == "superseded" and stage[3] == "last 1.0.0" and "now serve the prod rollout" in stage[4]
    assert "1.0.0 promoted" in stage[6]
    assert by["shop", "prod"][1] == "prod" and "1.0.0 promoted" in by["shop", "prod"][6]
    assert by["shop", "prod"][-1] == "not running"
    rollout = viewer.get("/rollouts/shop-1.0.0-stage").text
    assert re.search(r"<dt>Environment</dt><dd id=\"env\">stage</dd>", rollout), rollout
    assert by["web-stage", "stage"][0] == "web-stage (web)"  # its release, for the one in prod beside it


def test_one_environment_can_be_chosen_and_the_live_stream_keeps_the_choice(viewer: httpx.Client) -> None:
    page = viewer.get("/", params={"env": "stage"}).text
    assert [(s, e) for s, e, _ in _rows(page)] == [("web-stage", "stage"), ("shop", "stage")]
    assert 'data-live="/live?env=stage"' in page and '<option value="stage" selected>' in page
    with viewer.stream("GET", "/live", params={"env": "stage"}) as stream:
        data = next(line for line in stream.iter_lines() if line.startswith("data: "))
    assert {(r["service"], r["env"]) for r in json.loads(data.removeprefix("data: "))["rows"]} == {
        ("shop", "stage"), ("web-stage", "stage")}
    unknown = viewer.get("/", params={"env": "prdo"}).text
    said = re.search(r'id="no-env" class="error">([^<]+)<', unknown)
    assert said is not None and said.group(1) == (
        "No service you may see was deployed to prdo; environments: prod, stage.")
