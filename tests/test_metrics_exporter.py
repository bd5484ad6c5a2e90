"""Controller metrics: the store collector behind `releasegate metrics`, scraped over real HTTP.

The story fixture runs real rollouts (demo app processes, the real router, SQLite) through releasegate.service
while the exporter runs as its own process on a loopback port, and scrapes it at each stage; a private
Prometheus then scrapes the same exporter. The trigger attribution (manual, alert, automatic, a rollback after
the promotion) is checked on a store written through the Store API, without processes.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from releasegate import service
from releasegate.alert_receiver import AlertReceiver
from releasegate.engine import decide
from releasegate.engine.state import RolloutState
from releasegate.metrics_exporter import DECISIONS, StoreCollector
from releasegate.spec.models import Spec
from releasegate.store.sqlite import Command, Store
from tests.support.prometheus import available, start_prometheus
from tests.support.rollouts import Load, cleanup, free_port, write_spec
from tests.support.wait import eventually, terminate, wait_until

CANARY = "{canary: {steps: [{weight: 20, pause: 1500ms}, {weight: 50, pause: 1500ms}]}}"
Labels = tuple[tuple[str, str], ...]
Samples = dict[str, dict[Labels, float]]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get(name, {}).get(tuple(sorted(labels.items())))


def series(samples: Samples, name: str, **match: str) -> dict[Labels, float]:
    return {k: v for k, v in samples.get(name, {}).items() if set(match.items()) <= set(k)}


def weights(samples: Samples, svc: str = "shop") -> dict[str, float]:
    return {dict(k)["version"]: v for k, v in series(samples, "releasegate_route_weight", service=svc).items()}


def collect(registry_or_collector: StoreCollector | CollectorRegistry) -> Samples:
    from prometheus_client import generate_latest

    registry = registry_or_collector
    if isinstance(registry, StoreCollector):
        registry = CollectorRegistry()
        registry.register(registry_or_collector)
    return parse(generate_latest(registry).decode())


# --- the exporter process ------------------------------------------------------------------------------------


@dataclass
class Exporter:
    proc: subprocess.Popen[bytes]
    address: str
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def scrape(self) -> Samples:
        r = httpx.get(self.url, timeout=5, trust_env=False)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
        return parse(r.text)

    async def ascrape(self) -> Samples:
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            return parse((await client.get(self.url)).text)

    def stop(self) -> None:
        terminate(self.proc)


def rg(*args: str) -> list[str]:
    return [sys.executable, "-m", "releasegate", *args]


def start_exporter(state_dir: Path, log: Path) -> Exporter:
    """`releasegate metrics` on port 0; the bound address is read from the line it prints when listening."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(rg("metrics", "--listen", "127.0.0.1:0", "--state-dir", str(state_dir)),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def bound() -> str | None:
        assert proc.poll() is None, f"releasegate metrics exited: {log.read_text()}"
        found = re.search(r"on http://(127\.0\.0\.1:\d+)/metrics", log.read_text())
        return found.group(1) if found else None

    exporter = Exporter(proc, wait_until(bound, timeout=20, what="releasegate metrics to listen"), log)
    wait_until(lambda: httpx.get(exporter.url, timeout=2, trust_env=False).status_code == 200, timeout=10,
               what="the exporter to answer")
    return exporter


# --- real rollouts, scraped at each stage --------------------------------------------------------------------


@dataclass
class Story:
    state: Path
    exporter: Exporter
    scrapes: dict[str, Samples]
    finals: dict[str, RolloutState]
    events: Counter[str]  # decisions by kind, as `releasegate history` lists them


async def _live(exporter: Exporter) -> Samples | None:
    """A scrape taken while the 2.0.0 canary is at a step with traffic on it."""
    samples = await exporter.ascrape()
    at_step = series(samples, "releasegate_rollout_phase", service="shop", version="2.0.0", phase="step")
    if value(samples, "releasegate_rollout_active", service="shop") == 1 and at_step and \
            (weights(samples).get("2.0.0") or 0) > 0:
        return samples
    return None


async def _tell(state: Path, spec: Path, port: int, exporter: Exporter) -> Story:
    ctx = service.new_context(state)
    scrapes = {"empty": exporter.scrape()}
    finals: dict[str, RolloutState] = {}
    try:
        finals["1.0.0"] = await asyncio.wait_for(service.deploy(ctx, spec, "1.0.0"), 60)
        async with Load(f"http://127.0.0.1:{port}/api/items") as load:
            await load.wait_for(20)
            canary = asyncio.create_task(service.deploy(ctx, spec, "2.0.0"))
            scrapes["live"] = await eventually(lambda: _live(exporter), within=30, what="a scrape mid-canary")
            finals["2.0.0"] = await asyncio.wait_for(canary, 60)
            scrapes["promoted"] = await exporter.ascrape()
            finals["3.0.0"] = await asyncio.wait_for(service.deploy(ctx, spec, "3.0.0"), 60)
            scrapes["rolled_back"] = await exporter.ascrape()
        events = Counter(e["kind"] for run in service.history(ctx, "shop") for e in run["events"])
    finally:
        await cleanup(state, spec)
    return Story(state, exporter, scrapes, finals, events)


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    tmp = tmp_path_factory.mktemp("exporter")
    state = tmp / "state"
    port = free_port()
    spec = write_spec(tmp, port, CANARY, faults="3.0.0:error_rate=0.5", smoke_path="/health")
    exporter = start_exporter(state, tmp / "exporter.log")  # before the state dir exists
    try:
        yield asyncio.run(_tell(state, spec, port, exporter))
    finally:
        exporter.stop()


@pytest.mark.slow
def test_an_empty_state_dir_is_store_down_not_an_error(story: Story) -> None:
    assert story.scrapes["empty"] == {"releasegate_store_up": {(): 0.0},
                                      "releasegate_dora_period_seconds": {(): 30 * 86400.0}}
    assert "warning: no store in" in story.exporter.log.read_text()


@pytest.mark.slow
def test_a_running_canary_shows_its_phase_and_weights(story: Story) -> None:
    live = story.scrapes["live"]
    assert value(live, "releasegate_store_up") == 1
    [labels] = series(live, "releasegate_rollout_phase", service="shop")
    assert dict(labels)["rollout"] == story.finals["2.0.0"].id and dict(labels)["phase"] == "step"
    w = weights(live)
    assert set(w) == {"1.0.0", "2.0.0"} and w["2.0.0"] in (20, 50) and sum(w.values()) == 100
    assert value(live, "releasegate_rollout_step", service="shop") in (0, 1)
    assert value(live, "releasegate_rollouts_total", service="shop", outcome="promoted") == 1  # 1.0.0 only


@pytest.mark.slow
def test_a_promoted_canary(story: Story) -> None:
    done, st = story.scrapes["promoted"], story.finals["2.0.0"]
    assert st.status == "promoted", st.reason
    assert weights(done) == {"2.0.0": 100, "1.0.0": 0}
    assert series(done, "releasegate_rollout_phase", service="shop") == {
        (("phase", "finish"), ("rollout", st.id), ("service", "shop"), ("version", "2.0.0")): 1}
    assert value(done, "releasegate_rollout_active", service="shop") == 0
    assert value(done, "releasegate_rollout_step", service="shop") == 1  # the last of the two steps
    assert value(done, "releasegate_rollout_started_timestamp_seconds", service="shop") == pytest.approx(
        st.created_at)
    outcomes = {dict(k)["outcome"]: v for k, v in series(done, "releasegate_rollouts_total").items()}
    assert outcomes == {"promoted": 2, "rolled_back": 0, "aborted": 0, "failed": 0}
    decided = {dict(k)["decision"]: v for k, v in series(done, "releasegate_decisions_total").items()}
    assert set(decided) == set(DECISIONS)
    assert decided["step"] == 2 and decided["switched"] == 2 and decided["promoted"] == 2
    assert decided["analysis_passed"] == 2 and decided["rollback"] == 0
    assert set(series(done, "releasegate_rollbacks_total").values()) == {0}


@pytest.mark.slow
def test_an_automatic_rollback(story: Story) -> None:
    done, st = story.scrapes["rolled_back"], story.finals["3.0.0"]
    assert st.status == "rolled_back", st.reason
    assert weights(done) == {"3.0.0": 0, "2.0.0": 100}
    assert value(done, "releasegate_rollbacks_total", service="shop", trigger="automatic") == 1
    assert value(done, "releasegate_rollbacks_total", service="shop", trigger="manual") == 0
    assert value(done, "releasegate_rollbacks_total", service="shop", trigger="alert") == 0
    assert value(done, "releasegate_rollouts_total", service="shop", outcome="rolled_back") == 1
    assert value(done, "releasegate_rollouts_total", service="shop", outcome="promoted") == 2
    assert series(done, "releasegate_rollout_phase", service="shop", version="3.0.0", phase="finish")
    # Every decision counter agrees with what `releasegate history` lists.
    decided = {dict(k)["decision"]: v for k, v in series(done, "releasegate_decisions_total").items()}
    assert decided == {kind: story.events[kind] for kind in DECISIONS}
    assert decided["rollback"] >= 1 and decided["rolled_back"] == 1
    # The 30-day DORA gauges (docs/dora.md) are served too, recomputed at most once a minute (so this scrape, seconds
    # after the first, still shows the first one's figures; their values are tests/test_dora.py's).
    assert value(done, "releasegate_dora_period_seconds") == 30 * 86400.0


@pytest.mark.slow
def test_prometheus_scrapes_the_exporter(story: Story, tmp_path: Path) -> None:
    if not available():
        pytest.skip("prometheus not installed")
    prometheus = start_prometheus(tmp_path / "prometheus", [story.exporter.address])
    try:
        def answer(query: str) -> dict[str, float] | None:
            result = prometheus.query(query)["data"]["result"]
            return {r["metric"].get("version", ""): float(r["value"][1]) for r in result} or None

        got = wait_until(lambda: answer('releasegate_route_weight{service="shop"}'), timeout=20,
                         what="Prometheus to scrape the exporter")
        assert got == {"2.0.0": 100, "3.0.0": 0}
        assert answer('releasegate_route_weight{service="shop"} == 100') == {"2.0.0": 100}
        assert answer('sum(releasegate_rollbacks_total{service="shop",trigger="automatic"})') == {"": 1}
    finally:
        prometheus.stop()


# --- triggers and outcomes from a store written directly ----------------------------------------------------


def _spec(name: str) -> Spec:
    return Spec.model_validate({"service": name, "platform": {"command": "app --port {port}"}})


class Seeder:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.t = 1000.0

    def start(self, name: str, version: str, previous: str | None) -> RolloutState:
        self.t += 10
        spec = _spec(name)
        st = decide.new_rollout(f"{name}-{version}", spec, version, previous, self.t)
        self.store.create_rollout(st, f"/x/{name}.yaml", spec.model_dump_json(by_alias=True), {})
        return st

    def save(self, st: RolloutState, *kinds: str, **changes: object) -> RolloutState:
        self.t += 1
        st = st.model_copy(update={"updated_at": self.t, **changes})
        self.store.save(st, [(kind, f"{kind} ({st.version})", {}) for kind in kinds])
        return st

    def command(self, st: RolloutState, actor: str, error: str | None = None) -> RolloutState:
        """A `rollback` queued by ``actor`` and applied (or refused) by the controller, as it records them."""
        cid = self.store.add_command(st.service, st.id, "rollback", actor, self.t)
        self.store.apply_command(st, Command(cid, "rollback", actor, self.t), error)
        return st

    def end(self, st: RolloutState, outcome: str, *kinds: str, weight: int) -> RolloutState:
        return self.save(st, *kinds, outcome, status=outcome, outcome=outcome, phase="finish", weight=weight,
                         finished_at=self.t)


def test_triggers_outcomes_and_weights_come_from_the_stored_history(tmp_path: Path) -> None:
    store = Store(tmp_path)
    seed = Seeder(store)
    try:
        seed.end(seed.start("api", "1.0.0", None), "promoted", "switched", weight=100)
        manual = seed.save(seed.start("api", "2.0.0", "1.0.0"), "step", weight=20, phase="step")
        seed.end(seed.command(manual, "cli"), "rolled_back", "rollback_step", weight=0)
        alerted = seed.start("api", "3.0.0", "1.0.0")
        seed.end(seed.command(alerted, "alertmanager"), "rolled_back", weight=0)
        automatic = seed.save(seed.start("api", "4.0.0", "1.0.0"), "step", "rollback", weight=20, phase="rollback",
                              outcome="rolled_back")
        seed.command(automatic, "alertmanager")  # arrives after the engine decided: the cause stays automatic
        seed.end(automatic, "rolled_back", weight=0)
        promoted = seed.end(seed.start("api", "5.0.0", "1.0.0"), "promoted", "step", "switched", weight=100)
        store.set_service("api", "5.0.0", "1.0.0", None, None, None, seed.t)
        collector = StoreCollector(tmp_path)
        before = collect(collector)
        assert weights(before, "api") == {"5.0.0": 100, "1.0.0": 0}
        # `releasegate rollback api` after the promotion: recorded on the promoted rollout, the service switched.
        seed.command(promoted, "cli", error="rollout api-5.0.0 has already finished (promoted)")  # refused
        store.add_event("api", promoted.id, seed.t, "rolled_back", "rolled back by cli: 1.0.0 serves 100%")
        store.set_service("api", "1.0.0", None, None, None, None, seed.t)
        # Another service whose rollout is rolling back right now.
        going = seed.start("web", "2.0.0", "1.0.0")
        seed.save(going, "step", "step", "rollback", weight=10, step=1, phase="rollback", outcome="rolled_back")
        after = collect(collector)
        again = collect(collector)
        # An operator aborts the rollback half-way: the rollback stays counted (counters never go down).
        seed.end(going, "aborted", "abort", weight=0)
        aborted = collect(collector)
    finally:
        store.close()
    assert after == again  # events are folded once, however often Prometheus scrapes
    rollbacks = {(dict(k)["service"], dict(k)["trigger"]): v for k, v in after["releasegate_rollbacks_total"].items()}
    assert rollbacks == {("api", "manual"): 2, ("api", "alert"): 1, ("api", "automatic"): 1,
                         ("web", "manual"): 0, ("web", "alert"): 0, ("web", "automatic"): 1}
    assert aborted["releasegate_rollbacks_total"] == after["releasegate_rollbacks_total"]
    assert value(aborted, "releasegate_rollouts_total", service="web", outcome="aborted") == 1
    assert weights(after, "api") == {"5.0.0": 0, "1.0.0": 100}
    assert weights(after, "web") == {"2.0.0": 10, "1.0.0": 90}
    assert value(after, "releasegate_rollout_active", service="web") == 1
    assert value(after, "releasegate_rollout_step", service="web") == 1
    outcomes = {(dict(k)["service"], dict(k)["outcome"]): v for k, v in after["releasegate_rollouts_total"].items()}
    assert outcomes[("api", "promoted")] == 2 and outcomes[("api", "rolled_back")] == 3
    assert {v for (s, _), v in outcomes.items() if s == "web"} == {0}  # nothing finished yet
    assert value(after, "releasegate_decisions_total", service="api", decision="step") == 3
    assert value(after, "releasegate_decisions_total", service="web", decision="rollback") == 1
    assert value(before, "releasegate_decisions_total", service="api", decision="rolled_back") == 3
    assert value(after, "releasegate_decisions_total", service="api", decision="rolled_back") == 4


def test_the_kept_states_follow_every_change_even_within_one_clock_tick(tmp_path: Path) -> None:
    """The collector keeps each service's parsed latest state between scrapes (a scrape at 1,000 rollouts parses
    only what changed); a change must still show at the next scrape: a save with the same ``updated_at``, a new
    rollout of the service, a second service, a finished rollout."""
    store = Store(tmp_path)
    seed = Seeder(store)
    collector = StoreCollector(tmp_path)
    try:
        first = seed.save(seed.start("api", "2.0.0", "1.0.0"), "step", weight=20, phase="step")
        assert weights(collect(collector), "api") == {"2.0.0": 20, "1.0.0": 80}
        same_tick = first.model_copy(update={"weight": 50, "step": 1})  # updated_at unchanged
        store.save(same_tick, [("step", "step (2.0.0)", {})])
        seen = collect(collector)
        assert weights(seen, "api") == {"2.0.0": 50, "1.0.0": 50}
        assert value(seen, "releasegate_rollout_step", service="api") == 1
        assert collect(collector) == seen  # nothing changed: the same answer from the kept state
        assert parse(collector.render().decode()) == seen  # the server's writer says what prometheus_client says
        seed.end(same_tick, "aborted", "abort", weight=0)
        seed.save(seed.start("web", "1.0.0", None), "step", weight=10, phase="step")
        after = collect(collector)
        assert value(after, "releasegate_rollouts_total", service="api", outcome="aborted") == 1
        assert value(after, "releasegate_rollout_active", service="api") == 0
        assert weights(after, "web") == {"1.0.0": 10}
        again = seed.save(seed.start("api", "3.0.0", "1.0.0"), "step", weight=5, phase="step")
        newest = collect(collector)
        assert parse(collector.render().decode()) == newest
        assert weights(newest, "api") == {"3.0.0": 5, "1.0.0": 95}
        assert series(newest, "releasegate_rollout_phase", service="api") == {
            (("phase", "step"), ("rollout", again.id), ("service", "api"), ("version", "3.0.0")): 1.0}
    finally:
        store.close()


def test_a_replaced_or_missing_database_is_read_afresh(tmp_path: Path) -> None:
    collector = StoreCollector(tmp_path / "state")
    assert collect(collector) == {"releasegate_store_up": {(): 0.0}}
    assert collector.last_error is not None and "releasegate.db" in collector.last_error
    for n in (3, 1):  # the second database has fewer events than the first had
        store = Store(tmp_path / "state")
        seed = Seeder(store)
        st = seed.start("api", "1.0.0", None)
        seed.end(st, "promoted", *["step"] * n, weight=100)
        store.close()
        assert value(collect(collector), "releasegate_decisions_total", service="api", decision="step") == n
        for leftover in (tmp_path / "state").iterdir():
            leftover.unlink()


async def test_receive_alerts_serves_the_same_metrics(tmp_path: Path) -> None:
    store = Store(tmp_path)
    seed = Seeder(store)
    seed.end(seed.start("api", "1.0.0", None), "promoted", weight=100)
    store.close()
    receiver = AlertReceiver(tmp_path, secret="s3cret")
    host, port = await receiver.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", trust_env=False) as client:
            assert (await client.get("/metrics")).status_code == 401
            r = await client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert weights(parse(r.text), "api") == {"1.0.0": 100}
            assert value(parse(r.text), "releasegate_rollouts_total", service="api", outcome="promoted") == 1
    finally:
        await receiver.close()


# --- the command's errors ---------------------------------------------------------------------------------------


def test_bad_listen_and_busy_port_are_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        for listen, said in (("nonsense", "--listen: expected HOST:PORT"), ("127.0.0.1:99999", "expected HOST:PORT"),
                             (taken, f"--listen {taken}: cannot listen there")):
            done = subprocess.run(rg("metrics", "--listen", listen, "--state-dir", str(tmp_path)),
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 2, (listen, done.stdout, done.stderr)
            assert done.stderr.count("\n") == 1 and said in done.stderr and "Traceback" not in done.stderr, \
                done.stderr
            assert done.stdout == ""
