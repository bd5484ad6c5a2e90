"""Notifications: decisions -> events, per-target filtering, retries recorded in the outbox, nothing blocks."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from releasegate.engine.state import Decision, RolloutState
from releasegate.errors import UserError
from releasegate.notifications import Notifications, build_notifications
from releasegate.providers.base import Event
from releasegate.providers.notifiers.apprise import render, with_extras
from releasegate.spec.notify import NotifyTarget
from tests.support.receiver import Receiver
from tests.support.wait import eventually

FAST = {"attempts": 3, "backoff": 0.02, "max_backoff": 0.1, "timeout": 2.0}


def rollout(**update: object) -> RolloutState:
    st = RolloutState(id="shop-2.0.0-abc123", service="shop", version="2.0.0", previous="1.0.0", strategy="canary",
                      phase_started=0.0, created_at=0.0)
    return st.model_copy(update=update)


def notifications(tmp_path, targets, tier="important", **options) -> Notifications:
    return Notifications(targets, tmp_path, tier, "shop", **{**FAST, **options})


def statuses(n: Notifications, status: str) -> list[dict[str, Any]]:
    return [line for line in n.outbox.latest().values() if line["status"] == status]


async def test_events_reach_only_subscribed_targets_with_their_details(tmp_path):
    with Receiver() as everything, Receiver() as ends:
        n = notifications(tmp_path, [NotifyTarget(url=everything.url()),
                                     NotifyTarget(url=ends.url(), events=["started", "promoted"])])
        n.on_decision(rollout(), Decision("started", "2.0.0 started"))
        n.on_decision(rollout(weight=25), Decision("step", "step 2/3: 2.0.0 at 25%", {"weight": 25}))
        n.on_decision(rollout(weight=25), Decision("analysis", "analysis passed"))  # not worth a message
        n.on_decision(rollout(weight=100), Decision("switched", "2.0.0 at 100%", {"weight": 100}))
        done = rollout(weight=100, status="promoted")
        n.on_decision(done, Decision("promoted", "promoted: 2.0.0 serves 100%"))
        assert await n.drain(10)
        assert [e["event"] for e in everything.events()] == ["started", "step", "step", "promoted"]
        assert [e["event"] for e in ends.events()] == ["started", "promoted"]
        step = everything.events("step")[0]
        assert (step["service"], step["service_version"], step["weight"]) == ("shop", "2.0.0", "25")
        assert step["reason"] == "step 2/3: 2.0.0 at 25%"
        assert step["title"] == "shop 2.0.0: step" and "weight: 25" in step["message"]
        assert step["version"] == "1.0"  # apprise's own payload version is left alone
        assert everything.events("promoted")[0]["type"] == "success"
        assert len(statuses(n, "delivered")) == 6


async def test_rollback_is_announced_when_it_starts_and_when_it_ends(tmp_path):
    with Receiver() as r:
        n = notifications(tmp_path, [NotifyTarget(url=r.url(), events=["rolled_back"])])
        why = "error_rate 0.3 > 0.05 for 5m"
        n.on_decision(rollout(weight=50), Decision("rollback", why, {"rule": "error_rate", "weight": 50}))
        n.on_decision(rollout(weight=0), Decision("rollback", "still failing, straight to 0%"))  # same rollback
        n.on_decision(rollout(weight=0, status="rolled_back"), Decision("rolled_back", why))
        assert await n.drain(10)
        started, finished = r.events()
        assert (started["phase"], started["weight"], started["reason"]) == ("started", "50", why)
        assert started["automatic"] == "true" and started["incident"] == "false"
        assert (finished["phase"], finished["status"]) == ("finished", "rolled_back")
        assert not started["title"].startswith("INCIDENT")


async def test_automatic_rollback_of_a_critical_service_is_an_incident(tmp_path):
    with Receiver() as r:
        n = notifications(tmp_path, [NotifyTarget(url=r.url(), events=["rolled_back"])], tier="critical")
        n.on_decision(rollout(weight=5), Decision("rollback", "error_rate 0.4 > 0.05"))
        assert await n.drain(10)
        (event,) = r.events()
        assert event["incident"] == "true" and event["tier"] == "critical"
        assert event["type"] == "failure"  # what apprise's PagerDuty plugin sends with severity critical
        assert event["title"].startswith("INCIDENT: shop 2.0.0")


async def test_a_receiver_failing_twice_still_gets_the_event_and_the_failures_are_recorded(tmp_path):
    with Receiver(fail_first=2) as r:
        n = notifications(tmp_path, [NotifyTarget(url=r.url())])
        n.on_decision(rollout(), Decision("started", "2.0.0 started"))
        await eventually(lambda: r.events("started"), within=10, what="the retried delivery")
        assert r.failed == 2
        # The receiver keeps the event before it answers; the sender records "delivered" once it has the answer.
        lines = await eventually(lambda: (x := n.outbox.lines()) and x[-1]["status"] == "delivered" and x,
                                 within=10, what="the delivery recorded in the outbox")
        assert [(x["status"], x["attempt"]) for x in lines] == [("queued", 0), ("retrying", 1), ("retrying", 2),
                                                                  ("delivered", 3)]
        assert all(x["error"] for x in lines[1:3])
        assert await n.drain(5)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_target_never_blocks_and_ends_recorded_as_failed(tmp_path):
    url = f"json://127.0.0.1:{closed_port()}/hook"
    with Receiver() as healthy:
        n = notifications(tmp_path, [NotifyTarget(url=url), NotifyTarget(url=healthy.url())], attempts=2)
        # Seen as returning an unknown value, so the check that nothing is left to await is not statically moot.
        on_decision: Callable[[RolloutState, Decision], object] = n.on_decision
        assert on_decision(rollout(), Decision("started", "2.0.0 started")) is None  # returned, nothing awaited
        await eventually(lambda: healthy.events("started"), within=10, what="the healthy target's delivery")
        failed = await eventually(lambda: statuses(n, "failed"), within=10, what="the failure to be recorded")
        assert failed[0]["attempt"] == 2 and failed[0]["target"].startswith("json://127.0.0.1")
        assert await n.drain(5)


async def test_a_target_that_never_answers_times_out_and_drain_is_bounded(tmp_path):
    with Receiver(hang=True) as r:
        n = notifications(tmp_path, [NotifyTarget(url=r.url())], attempts=2, timeout=0.3)
        n.on_decision(rollout(), Decision("started", "2.0.0 started"))
        failed = await eventually(lambda: statuses(n, "failed"), within=10, what="the timeouts to be recorded")
        assert "no answer within 0.3 s" in failed[0]["error"]
        n.on_decision(rollout(weight=5), Decision("step", "at 5%", {"weight": 5}))
        assert not await n.drain(0.1)  # still trying: abandoned, and said so
        (abandoned,) = statuses(n, "failed")[1:]
        assert abandoned["event"] == "step" and "abandoned" in abandoned["error"]


async def test_paused_is_announced_once_per_reason(tmp_path):
    with Receiver() as r:
        n = notifications(tmp_path, [NotifyTarget(url=r.url(), events=["paused"])])
        st = rollout(weight=25)
        n.on_decision(st, Decision("waiting", "waiting: error_rate has no data for 12s"))
        n.on_decision(st, Decision("waiting", "waiting: error_rate has no data for 22s"))  # same reason, later
        n.on_decision(st, Decision("held", "change freeze until Monday"))
        n.on_decision(st, Decision("held", "change freeze until Monday"))
        n.on_decision(st, Decision("step", "at 50%", {"weight": 50}))
        n.on_decision(st, Decision("held", "change freeze until Monday"))  # a new pause after moving on
        assert await n.drain(10)
        assert [e["reason"] for e in r.events("paused")] == [
            "waiting: error_rate has no data for 12s", "change freeze until Monday", "change freeze until Monday"]


async def test_refusals_and_notifier_crashes(tmp_path):
    class Broken:
        async def post(self, event: Event) -> None:
            raise RuntimeError("boom")

    with Receiver() as r:
        n = notifications(tmp_path, [NotifyTarget(url=r.url(), events=["refused"])])
        n.on_refused("shop@2.0.0", ["no approval from release-managers", "change freeze"])
        n.on_decision(rollout(), Decision("started", "2.0.0 started"))  # not subscribed
        assert await n.drain(10)
        (refused,) = r.events()
        assert refused["event"] == "refused" and "change freeze" in refused["reason"]
        assert refused["release"] == "shop@2.0.0"
    broken = notifications(tmp_path / "b", [NotifyTarget(url="json://localhost/x")], attempts=2,
                           notifier=lambda url: Broken())
    broken.on_decision(rollout(), Decision("started", "2.0.0 started"))
    assert await broken.drain(5)
    (failed,) = statuses(broken, "failed")
    assert failed["error"] == "RuntimeError: boom" and failed["attempt"] == 2


def test_build_notifications_checks_urls_and_skips_specs_without_targets(tmp_path):
    spec = SimpleNamespace(notify=[], tier="critical", service="shop")
    assert build_notifications(spec, tmp_path) is None  # type: ignore[arg-type]
    # the spec refuses such a URL (test_spec_hostile); a rollout stored by an older releasegate may still hold one
    spec.notify = [NotifyTarget(url="json://127.0.0.1:9/hook"), NotifyTarget.model_construct(url="nosuch://x")]
    with pytest.raises(UserError, match=r"notify\[1\]\.url"):
        build_notifications(spec, tmp_path)  # type: ignore[arg-type]
    spec.notify = spec.notify[:1]
    built = build_notifications(spec, tmp_path)  # type: ignore[arg-type]
    assert built is not None and built.tier == "critical"


def test_payload_extras_only_for_json_webhooks_and_secrets_not_in_titles():
    event = Event("shop", "step", "at 5%", {"version": "2.0.0", "weight": 5, "values": {"x": 1.0}})
    url = with_extras("json://h:1/p?:keep=1", event)
    assert url.startswith("json://h:1/p?:keep=1&:event=step&:service=shop&:service_version=2.0.0&:weight=5")
    assert "values" not in url
    assert with_extras("slack://a/b/c", event) == "slack://a/b/c"
    title, body = render(event)
    assert title == "shop 2.0.0: step" and body.startswith("at 5%\n\nversion: 2.0.0\nweight: 5")


async def test_a_pagerduty_target_gets_a_critical_trigger(tmp_path, monkeypatch):
    """Apprise's PagerDuty plugin, with its HTTP call captured: FAILURE becomes severity critical, a new incident."""
    sent: list[dict[str, Any]] = []

    def post(url, data=None, **kwargs):
        sent.append(json.loads(data))
        return SimpleNamespace(status_code=202, content=b"")

    # The plugin's own ``requests`` (a module it imports but does not export), patched by its import path.
    monkeypatch.setattr("apprise.plugins.pagerduty.requests.post", post)
    n = notifications(tmp_path, [NotifyTarget(url="pagerduty://myroutekey@myapikey", events=["rolled_back"])],
                      tier="critical")
    n.on_decision(rollout(weight=25), Decision("rollback", "error_rate 0.4 > 0.05", {"weight": 25}))
    assert await n.drain(10)
    (event,) = sent
    assert event["event_action"] == "trigger" and event["payload"]["severity"] == "critical"
    assert "shop 2.0.0" in event["payload"]["summary"]
