"""Differencing per-version totals between two looks (releasegate/providers/metrics/totals.py): each request in
exactly one increment, and a restart of the counting process (a new epoch, or totals that went down) starts over
rather than producing negative counts."""

from __future__ import annotations

from releasegate.providers.metrics.totals import Snapshot, increments
from releasegate.router.stats import NBUCKETS, dense


def snap(epoch: str, **versions: tuple[int, int, dict[str, int]]) -> Snapshot:
    return Snapshot(epoch, {v: {"requests": r, "errors": e, "hist": h} for v, (r, e, h) in versions.items()})


def test_increments_are_what_came_since_the_last_look() -> None:
    before = snap("a", v1=(10, 1, {"3": 6, "4": 4}))
    after = snap("a", v1=(15, 3, {"3": 6, "4": 7, "9": 2}), v2=(4, 0, {"2": 4}))
    assert increments(before, after) == {"v1": {"requests": 5, "errors": 2, "hist": {"4": 3, "9": 2}},
                                         "v2": {"requests": 4, "errors": 0, "hist": {"2": 4}}}
    assert increments(None, before) == {"v1": {"requests": 10, "errors": 1, "hist": {"3": 6, "4": 4}}}


def test_a_restarted_counter_starts_over_instead_of_going_negative() -> None:
    before = snap("a", v1=(10, 1, {"3": 10}))
    assert increments(before, snap("b", v1=(12, 0, {"3": 12})))["v1"]["requests"] == 12  # a new epoch
    assert increments(before, snap("a", v1=(3, 0, {"3": 3})))["v1"] == {"requests": 3, "errors": 0,
                                                                         "hist": {"3": 3}}  # went down


def test_dense_places_each_bucket_and_ignores_ones_out_of_range() -> None:
    hist = dense({"0": 1, "5": 2, str(NBUCKETS): 9, "-1": 9})
    assert len(hist) == NBUCKETS and hist[0] == 1 and hist[5] == 2 and sum(hist) == 3
