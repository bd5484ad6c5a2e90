"""The staircase and pauses as people hear about them: reaching 0 % after a staircase is an incident for every tier,
a pause for an operator is announced with its kind, and a promotion after a held stair makes the next breach news."""

from __future__ import annotations

from typing import Any

from releasegate.engine.state import Decision, Pause, RolloutState
from releasegate.notifications import Notifications
from releasegate.spec.notify import NotifyTarget
from tests.support.receiver import Receiver

FAST: dict[str, Any] = {"attempts": 3, "backoff": 0.02, "max_backoff": 0.1, "timeout": 2.0}


def rollout(**update: object) -> RolloutState:
    st = RolloutState(id="shop-2.0.0-abc123", service="shop", version="2.0.0", previous="1.0.0", strategy="canary",
                      phase_started=0.0, created_at=0.0)
    return st.model_copy(update=update)


async def test_reaching_0_after_the_staircase_is_an_incident_for_an_important_service(tmp_path):
    with Receiver() as r:
        n = Notifications([NotifyTarget(url=r.url(), events=["rolled_back"])], tmp_path, "important", "shop", **FAST)
        why = "error_rate > 5% for 5m held (now 30%) at 100%"
        n.on_decision(rollout(weight=100), Decision("rollback", why, {"weight": 100}))
        n.on_decision(rollout(weight=50), Decision("errors_persist", "errors persist at 50%; down to 10%"))
        n.on_decision(rollout(weight=0), Decision("incident", f"incident: 2.0.0 rolled back to 0% after the "
                                                              f"staircase from 100%: {why}",
                                                  {"weight": 0, "from": 100, "reason": why}))
        assert await n.drain(10)
        started, incident = r.events()
        assert started["incident"] == "false"
        assert (incident["phase"], incident["incident"], incident["weight"]) == ("incident", "true", "0")
        assert incident["type"] == "failure" and incident["title"].startswith("INCIDENT: shop 2.0.0")
        assert "after the staircase from 100%" in incident["reason"]


async def test_a_pause_for_an_operator_is_announced_with_its_kind_and_a_new_breach_after_promote_is_news(tmp_path):
    with Receiver() as r:
        n = Notifications([NotifyTarget(url=r.url(), events=["paused", "rolled_back"])], tmp_path, "important",
                          "shop", **FAST)
        n.on_decision(rollout(weight=100), Decision("rollback", "breach at 100%", {"weight": 100}))
        hold = "paused at 50%: errors stopped; `releasegate promote shop` promotes 2.0.0 to 100% again"
        held = rollout(weight=50, phase="rollback", paused=Pause(kind="stair", reason=hold, since=1.0))
        n.on_decision(held, Decision("paused", hold, {"pause": "stair"}))
        n.on_decision(rollout(weight=100), Decision("switched", "2.0.0 at 100%", {"weight": 100}))
        n.on_decision(rollout(weight=100), Decision("rollback", "breach again at 100%", {"weight": 100}))
        assert await n.drain(10)
        assert [(e["event"], e["reason"]) for e in r.events()] == [
            ("rolled_back", "breach at 100%"), ("paused", hold), ("rolled_back", "breach again at 100%")]
        assert r.events("paused")[0]["pause"] == "stair"
