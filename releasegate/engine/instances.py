"""Instances that die before traffic: every instance the spec asks for is running and healthy before the first
request reaches a version; one found dead is restarted once, and a second death ends the rollout.

The controller checks that the new version runs at full strength around its health check and its smoke tests and
before every increase of its traffic; an instance found dead (or missing) makes the action fail with
``details["died"]``, one entry per dead instance (its address, exit code, the tail of its log, its log file). This
module decides what that means, purely:

- before any traffic reached the version, the first time: restart. The decision is recorded (``restart``, with the
  exit codes and log tails) before anything is done; the next action is the version's Start again, which replaces
  the dead instances (the platform forgets them and starts new ones), then health and smoke run again on all of them;
- before any traffic, once the restart is used: the rollout aborts with the death as its reason (exit non-zero);
- once the version has had traffic, a dead instance is a rollback, as one noticed by the analysis would be.
"""

from __future__ import annotations

from releasegate.engine.state import Decision, Outcome, RolloutState

RESTARTS = 1
"""How many times a rollout restarts the new version's dead instances before its traffic; then it gives up."""


def deaths(result: Outcome) -> list[dict[str, object]]:
    """The dead instances an action reported (empty: it failed for another reason, or did not fail)."""
    if result.ok:
        return []
    died = result.details.get("died")
    return [d for d in died if isinstance(d, dict)] if isinstance(died, list) else []


def unreachable(result: Outcome) -> bool:
    """The action failed because a host could not be reached (an SSH fleet): what runs there is unknown, not dead
    or failing, so the rollout retries where it is instead of aborting, rolling back or restarting (docs/ssh.md)."""
    return not result.ok and bool(result.details.get("unreachable"))


def may_restart(st: RolloutState) -> bool:
    return st.restarts < RESTARTS


def restart(st: RolloutState, version: str, result: Outcome) -> tuple[RolloutState, Decision]:
    """The state counting one more restart, and the decision that says why (with what each instance left)."""
    n = st.restarts + 1
    said = (f"{result.reason}; restarting the dead instance(s) of {version} before any traffic reaches it "
            f"(restart {n} of {RESTARTS}; a second death aborts)")
    return st.model_copy(update={"restarts": n}), Decision("restart", said, {**result.details, "restart": n})


def gave_up(st: RolloutState, result: Outcome) -> str:
    """Why the rollout ends: the death, and that its restart was already used."""
    if st.restarts >= RESTARTS:
        return f"{result.reason}; it died again after the restart, so the rollout ends"
    return result.reason


def replaced(version: str | None, result: Outcome) -> list[Decision]:
    """Starting a version replaces its instances found dead (a crash, a reboot): said, with what they left."""
    found = result.details.get("replaced")
    if not found or not isinstance(found, list):
        return []
    said = "; ".join(str(d.get("message", d)) if isinstance(d, dict) else str(d) for d in found)
    return [Decision("replaced", f"{len(found)} dead instance(s) of {version} replaced: {said}", {"replaced": found})]
