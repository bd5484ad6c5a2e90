"""Leases and fencing on a real store: who may drive a rollout, and that a writer whose lease was taken over
changes nothing (releasegate/store/leases.py)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from releasegate.engine import decide
from releasegate.engine.state import RolloutState
from releasegate.errors import UserError
from releasegate.leasing import LeaseKeeper
from releasegate.spec.models import Spec
from releasegate.store.leases import Lease, LeaseLost, new_holder
from releasegate.store.sqlite import Store, owner_alive, this_owner
from tests.support.simulated import make_spec


def _rollout(store: Store, holder: str | None = None, ttl: float = 10.0) -> tuple[RolloutState, Spec, Lease | None]:
    spec = make_spec()
    st = decide.new_rollout("shop-2.0.0-abcdef", spec, "2.0.0", "1.0.0", 1.0)
    lease = store.create_rollout(st, "/nowhere/shop.yaml", spec.model_dump_json(by_alias=True), this_owner(),
                                 holder, ttl)
    return st, spec, lease


def _other(state: Path) -> Store:
    return Store(state)


def test_a_live_lease_is_refused_to_another_holder_and_an_expired_one_is_taken_with_a_higher_token(tmp_path):
    state = tmp_path / "state"
    first = Store(state)
    st, _, lease = _rollout(first, new_holder(), ttl=0.0)  # a holder that stalled: expired as soon as written
    assert lease is not None and lease.token == 1
    rec = first.rollout(st.id)
    assert rec is not None and not owner_alive(rec.owner)
    second = _other(state)
    assert second.claim(st.id, this_owner(), new_holder()).token == 2
    rec = first.rollout(st.id)
    assert rec is not None and owner_alive(rec.owner)
    with pytest.raises(UserError, match=f"rollout {st.id} is being driven by pid"):
        first.claim(st.id, this_owner(), new_holder())
    second.release(st.id)  # no lease on this store: given up by id
    assert first.claim(st.id, this_owner(), new_holder()).token == 3  # the token only ever grows
    first.close()
    second.close()


def test_a_writer_whose_lease_was_taken_over_writes_nothing_and_cannot_renew(tmp_path):
    state = tmp_path / "state"
    old = Store(state)
    st, _, lease = _rollout(old, new_holder(), ttl=0.0)  # it stalled past its lease
    old.lease = lease
    new = _other(state)
    new.lease = new.claim(st.id, this_owner(), new_holder())
    before = (new.rollout(st.id), new.events("shop", st.id))
    moved = st.model_copy(update={"weight": 50, "phase": "step"})
    writes: list[Callable[[], None]] = [
        lambda: old.save(moved, [("step", "to 50 %", {})]),
        lambda: old.add_event("shop", st.id, 2.0, "intent", "route 50 %"),
        lambda: old.set_service("shop", "2.0.0", None, None, None, None, 2.0),
        old.hold_lease]
    for write in writes:
        with pytest.raises(LeaseLost):
            write()
    assert (new.rollout(st.id), new.events("shop", st.id)) == before
    assert new.service("shop") is None
    old.release(st.id)  # with a stale token: the new holder keeps it
    rec = new.rollout(st.id)
    assert rec is not None and owner_alive(rec.owner) and rec.owner["token"] == 2  # type: ignore[index]
    new.save(moved, [("step", "to 50 %", {})])  # the holder writes as before
    new.hold_lease()
    assert [e["kind"] for e in new.events("shop", st.id)] == ["step"]
    new.release(st.id)
    rec = new.rollout(st.id)
    assert rec is not None and rec.owner is None
    old.close()
    new.close()


def test_the_keeper_renews_every_lease_in_one_go_and_reports_those_taken_over(tmp_path):
    state = tmp_path / "state"
    store = Store(state)
    lost: list[str] = []
    keeper = LeaseKeeper(state, ttl=0.0, on_lost=lambda lease: lost.append(lease.rollout_id))  # always expired
    spec = make_spec()
    ids = []
    for n in range(3):
        st = decide.new_rollout(f"svc{n}-2.0.0-abcdef", spec.model_copy(update={"service": f"svc{n}"}), "2.0.0",
                                "1.0.0", 1.0)
        lease = store.create_rollout(st, "/x.yaml", spec.model_dump_json(), this_owner(), keeper.holder, 0.0)
        assert lease is not None
        keeper.track(lease)
        ids.append(st.id)
    thief = _other(state)
    thief.claim(ids[1], this_owner(), new_holder())
    keeper.renew()
    assert lost == [ids[1]] and sorted(keeper.leases) == [ids[0], ids[2]]
    assert sorted(i for i, _ in store.adoptable()) == [ids[0], ids[2]]  # ttl 0: expired again at once
    keeper.release_all()
    rec = store.rollout(ids[0])
    assert rec is not None and rec.owner is None
    store.close()
    thief.close()


def test_a_holder_on_this_host_whose_process_is_gone_frees_its_lease_at_once(tmp_path):
    state = tmp_path / "state"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(gone.pid).create_time()
    gone.wait()
    store = Store(state)
    st, _, _ = _rollout(store, new_holder(), ttl=3600.0)
    with sqlite3.connect(state / "releasegate.db") as db:  # as if that process had created it
        db.execute("UPDATE rollouts SET owner=? WHERE id=?",
                   (f'{{"host": "{this_owner()["host"]}", "pid": {gone.pid}, "started": {started}}}', st.id))
    assert [i for i, _ in store.adoptable()] == [st.id]
    assert store.claim(st.id, this_owner(), new_holder()).token == 2
    store.close()


def test_an_older_state_dir_gets_the_lease_columns(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / "releasegate.db") as db:
        db.execute("CREATE TABLE rollouts (id TEXT PRIMARY KEY, service TEXT NOT NULL, version TEXT NOT NULL, "
                   "previous TEXT, strategy TEXT NOT NULL, status TEXT NOT NULL, phase TEXT NOT NULL, active INTEGER "
                   "NOT NULL, spec_path TEXT NOT NULL, spec_json TEXT NOT NULL, state_json TEXT NOT NULL, owner TEXT, "
                   "created_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL)")
    store = Store(state)
    _, _, lease = _rollout(store, new_holder())
    assert lease is not None and lease.token == 1
    with sqlite3.connect(state / "releasegate.db") as db:
        names = {row[1] for row in db.execute("PRAGMA table_info(rollouts)")}
    assert {"lease_holder", "lease_token", "lease_until"} <= names
    store.close()


def test_server_refuses_a_bad_lease_ttl_in_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from releasegate.cli import app

    monkeypatch.chdir(tmp_path)
    for ttl, said in (("10", "--lease-ttl 10: cannot read duration '10': use a number with a unit"),
                      ("0s", "--lease-ttl 0s: give between 1s and 1h (e.g. 10s)"),
                      ("2h", "--lease-ttl 2h: give between 1s and 1h")):
        done = CliRunner().invoke(app, ["server", "--lease-ttl", ttl])
        assert done.exit_code == 2, (ttl, done.output)
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("releasegate: ") and said in done.stderr, (
            ttl, done.stderr)
