"""The Alertmanager webhook receiver, over real HTTP on loopback against a real store (no rollout processes:
the receiver only queues commands, so a rollout record in the store is all it needs)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from releasegate.alert_receiver import AlertReceiver, PayloadError, handle
from releasegate.commands.alerts_receiver import read_secret, receive_alerts
from releasegate.engine import decide
from releasegate.errors import UserError
from releasegate.spec.models import Spec
from releasegate.store.audit import AuditLog
from releasegate.store.sqlite import Store
from tests.support.wait import eventually

SECRET = "s3cret-token"


def make_spec(service: str = "shop", on_alerts: list[str] | None = None) -> Spec:
    return Spec.model_validate({"service": service, "platform": {"command": "app --port {port}"},
                                "rollback": {"on_alerts": ["HighErrorRate"] if on_alerts is None else on_alerts}})


def add_rollout(state_dir: Path, service: str = "shop", on_alerts: list[str] | None = None) -> str:
    spec = make_spec(service, on_alerts)
    st = decide.new_rollout(f"{service}-2.0.0-abc123", spec, "2.0.0", "1.0.0", 1000.0)
    store = Store(state_dir)
    try:
        store.create_rollout(st, "/nowhere/release.yaml", spec.model_dump_json(by_alias=True), {})
    finally:
        store.close()
    return st.id


def alert(name: str = "HighErrorRate", service: str | None = "shop", status: str = "firing") -> dict[str, Any]:
    labels = {"alertname": name, "severity": "page"} | ({"service": service} if service else {})
    return {"status": status, "labels": labels, "annotations": {"summary": f"{name} on {service}"},
            "startsAt": "2026-11-22T12:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://prom/x",
            "fingerprint": "f00"}


def notification(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    return {"version": "4", "groupKey": "{}:{alertname=\"x\"}", "truncatedAlerts": 0, "status": status,
            "receiver": "releasegate", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093", "alerts": list(alerts)}


def pending(state_dir: Path, rollout_id: str) -> list[tuple[str, str]]:
    store = Store(state_dir)
    try:
        return [(c.kind, c.actor) for c in store.pending_commands(rollout_id)]
    finally:
        store.close()


def audit_actions(state_dir: Path) -> list[tuple[str, str | None, dict[str, Any]]]:
    with AuditLog(state_dir) as log:
        return [(e.action, e.decision, e.evidence) for e in log.entries() if e.actor == "alertmanager"]


@dataclass
class Running:
    url: str
    client: httpx.AsyncClient
    state_dir: Path


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Running]:
    state_dir = tmp_path / "state"
    r = AlertReceiver(state_dir, secret=SECRET)
    host, port = await r.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            yield Running(f"http://{host}:{port}/alerts", client, state_dir)
    finally:
        await r.close()


def bearer(secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_a_listed_firing_alert_queues_one_rollback_and_is_audited(receiver: Running) -> None:
    rid = add_rollout(receiver.state_dir)
    resp = await receiver.client.post(receiver.url, json=notification(alert()), headers=bearer())
    assert resp.status_code == 200, resp.text
    assert "rollback of rollout" in resp.json()["results"][0]
    assert await eventually(lambda: pending(receiver.state_dir, rid), within=5, what="queued rollback") == [
        ("rollback", "alertmanager")]
    actions = audit_actions(receiver.state_dir)
    assert [a for a, _, _ in actions] == ["alert.rollback"]
    evidence = actions[0][2]
    assert evidence["labels"]["alertname"] == "HighErrorRate" and evidence["labels"]["severity"] == "page"
    assert evidence["annotations"] == {"summary": "HighErrorRate on shop"}
    assert evidence["rollout"] == rid

    # Alertmanager re-sends a firing alert every repeat_interval: the rollback is not queued twice.
    again = await receiver.client.post(receiver.url, json=notification(alert()), headers=bearer())
    assert again.status_code == 200 and "already queued" in again.json()["results"][0]
    assert pending(receiver.state_dir, rid) == [("rollback", "alertmanager")]


async def test_alerts_that_do_not_apply_are_recorded_and_change_nothing(receiver: Running) -> None:
    rid = add_rollout(receiver.state_dir)
    payload = notification(alert(status="resolved"), alert(name="DiskFull"), alert(service="billing"),
                           alert(service=None), status="firing")
    resp = await receiver.client.post(receiver.url, json=payload, headers=bearer())
    assert resp.status_code == 200, resp.text
    results = resp.json()["results"]
    assert ["status resolved" in results[0], "not in rollback.on_alerts" in results[1],
            "billing has no rollout in progress" in results[2], "no service label" in results[3]] == [True] * 4
    assert pending(receiver.state_dir, rid) == []
    actions = audit_actions(receiver.state_dir)
    assert [a for a, _, _ in actions] == ["alert.ignored"] * 4
    assert actions[1][2]["labels"]["alertname"] == "DiskFull"


async def test_a_finished_rollout_is_not_rolled_back_by_an_alert(receiver: Running) -> None:
    rid = add_rollout(receiver.state_dir)
    store = Store(receiver.state_dir)
    try:
        rec = store.rollout(rid)
        assert rec is not None
        store.save(rec.state.model_copy(update={"active": False, "status": "promoted", "phase": "finish"}))
    finally:
        store.close()
    resp = await receiver.client.post(receiver.url, json=notification(alert()), headers=bearer())
    assert resp.status_code == 200 and "shop has no rollout in progress" in resp.json()["results"][0]
    assert pending(receiver.state_dir, rid) == []
    assert [a for a, _, _ in audit_actions(receiver.state_dir)] == ["alert.ignored"]


async def test_a_missing_or_wrong_secret_is_refused_with_401_and_recorded(receiver: Running) -> None:
    rid = add_rollout(receiver.state_dir)
    missing = await receiver.client.post(receiver.url, json=notification(alert()))
    wrong = await receiver.client.post(receiver.url, json=notification(alert()), headers=bearer("guess"))
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert "missing Authorization" in missing.json()["error"] and "wrong bearer" in wrong.json()["error"]
    assert pending(receiver.state_dir, rid) == []
    actions = audit_actions(receiver.state_dir)
    assert [a for a, _, _ in actions] == ["alert.unauthorized"] * 2
    assert all(SECRET not in str(e) and "guess" not in str(e) for e in actions)


async def test_a_malformed_body_is_refused_with_400_and_one_line(receiver: Running) -> None:
    add_rollout(receiver.state_dir)
    bad_json = await receiver.client.post(receiver.url, content=b"{not json", headers=bearer())
    no_alerts = await receiver.client.post(receiver.url, json={"version": "4"}, headers=bearer())
    assert (bad_json.status_code, no_alerts.status_code) == (400, 400)
    assert bad_json.json()["error"].startswith("body is not JSON") and "\n" not in bad_json.json()["error"]
    assert "'alerts' list" in no_alerts.json()["error"]
    assert [a for a, _, _ in audit_actions(receiver.state_dir)] == ["alert.malformed"] * 2


async def test_other_methods_and_the_health_probe(receiver: Running) -> None:
    base = receiver.url.rsplit("/", 1)[0]
    assert (await receiver.client.get(f"{base}/healthz")).json() == {"status": "ok"}
    assert (await receiver.client.get(receiver.url)).status_code == 405


async def test_without_a_secret_any_request_is_accepted(tmp_path: Path) -> None:
    r = AlertReceiver(tmp_path, secret=None)
    host, port = await r.start("127.0.0.1", 0)
    try:
        rid = add_rollout(tmp_path)
        async with httpx.AsyncClient(timeout=5.0) as client:
            resp = await client.post(f"http://{host}:{port}/", json=notification(alert()))
        assert resp.status_code == 200
        assert pending(tmp_path, rid) == [("rollback", "alertmanager")]
    finally:
        await r.close()


def test_handle_takes_each_alert_on_its_own(tmp_path: Path) -> None:
    shop = add_rollout(tmp_path, "shop")
    cart = add_rollout(tmp_path, "cart", on_alerts=["CartDown", "HighErrorRate"])
    results = handle(notification(alert(service="cart", name="CartDown"), alert(service="shop", name="CartDown"),
                                  alert(service="shop")), tmp_path, 2000.0)
    assert len(results) == 3
    assert pending(tmp_path, cart) == [("rollback", "alertmanager")]
    assert pending(tmp_path, shop) == [("rollback", "alertmanager")]
    with AuditLog(tmp_path) as log:
        entries = list(log.entries())
        assert log.verify().ok
    assert [(e.action, e.release, e.at) for e in entries] == [
        ("alert.rollback", "cart@2.0.0", 2000.0), ("alert.ignored", "shop@2.0.0", 2000.0),
        ("alert.rollback", "shop@2.0.0", 2000.0)]
    with pytest.raises(PayloadError):
        handle({"alerts": [1]}, tmp_path, 2000.0)


def test_the_secret_comes_from_an_environment_variable_or_a_file(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AM_SECRET", " abc \n")
    (tmp_path / "secret").write_text("xyz\n")
    assert read_secret("AM_SECRET", None) == "abc"
    assert read_secret(None, tmp_path / "secret") == "xyz"
    assert read_secret(None, None) is None
    for env, file in (("AM_SECRET", tmp_path / "secret"), ("UNSET_VAR_XYZ", None), (None, tmp_path / "nope")):
        with pytest.raises(UserError):
            read_secret(env, file)


def test_the_command_refuses_a_bad_listen_address_with_exit_2(tmp_path: Path) -> None:
    import typer

    app = typer.Typer()
    app.command()(receive_alerts)
    result = CliRunner().invoke(app, ["--listen", "nowhere", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "expected HOST:PORT" in result.output
