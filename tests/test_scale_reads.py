"""The reads the server repeats at scale (issue 11, section 4): the calendar asked before every analysis, and the
rollout list of every service. Both were rewritten to be cheap (bench/bench_server_scale.py); these check they
still say what the slow versions said."""

from __future__ import annotations

import shutil
from pathlib import Path

from releasegate.engine import decide
from releasegate.governance import stored
from releasegate.governance.stored import LiveCalendar
from releasegate.store.governance import GovernanceStore
from releasegate.store.sqlite import Store
from tests.support.simulated import make_spec

CALENDAR = Path(__file__).resolve().parent.parent / "examples" / "governance" / "calendar.yaml"


def test_a_calendar_applied_after_the_first_look_is_seen_whether_or_not_the_state_existed(tmp_path: Path) -> None:
    shutil.copy(CALENDAR, tmp_path / "calendar.yaml")
    empty, ready = tmp_path / "empty", tmp_path / "ready"
    ready.mkdir()
    GovernanceStore(ready).close()  # the governance tables exist: this calendar keeps its connection
    for state in (empty, ready):
        live = LiveCalendar(state)
        assert live.get() is None
        stored.apply(state, "calendar", tmp_path / "calendar.yaml")
        first = live.get()
        assert first is not None
        (tmp_path / "calendar.yaml").write_text(CALENDAR.read_text() + "\n# v2\n")
        stored.apply(state, "calendar", tmp_path / "calendar.yaml")
        assert live.get() is not first  # the new version is parsed again
        shutil.copy(CALENDAR, tmp_path / "calendar.yaml")


def test_recent_rollouts_are_the_newest_of_the_visible_services_newest_first(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        for n, svc in enumerate(["a", "b", "c", "a", "b", "c"]):
            spec = make_spec(service=svc)
            st = decide.new_rollout(f"{svc}-{n}", spec, f"{n}.0.0", None, 1000.0 + n)
            store.create_rollout(st, "spec.yaml", spec.model_dump_json(by_alias=True), {"pid": 0})
            store.release(st.id)
            store.save(st.model_copy(update={"status": "promoted", "phase": "finish"}), [])
        assert [r.state.id for r in store.recent_rollouts(lambda s: s != "b", 3)] == ["c-5", "a-3", "c-2"]
        assert [r.state.id for r in store.recent_rollouts(lambda s: s == "a")] == ["a-3", "a-0"]
    finally:
        store.close()
