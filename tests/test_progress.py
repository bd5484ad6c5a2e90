"""What a foreground deploy prints while its rollout is paused for an operator, which can last hours: an analysis
line when something changes (a value crossing its rule's bound, data appearing, the reason changing) or once a
minute, not one every interval. The engine's own states and decisions, hours of them in simulated time."""

from __future__ import annotations

import datetime as dt
import io

from rich.console import Console

from releasegate.engine import decide
from releasegate.engine.state import Decision, Pause, RolloutState
from releasegate.progress import ProgressPrinter
from tests.support.simulated import T0, make_spec

SPEC = make_spec(analysis={"interval": "10s", "rules": [{"metric": "error_rate", "max": 0.05, "for": "30s"}]})
REASON = ("paused: no data for error_rate on 2.0.0 for 10m (no traffic to 2.0.0 in the last 10s); "
          "`releasegate promote shop` promotes 2.0.0 to 100% without that evidence; `releasegate rollback shop` "
          "rolls back")


def paused(at: float, reason: str = REASON) -> RolloutState:
    st = decide.new_rollout("shop-2.0.0-abc123", SPEC, "2.0.0", "1.0.0", T0)
    return st.model_copy(update={"phase": "step", "weight": 20, "updated_at": at, "waiting": reason,
                                 "paused": Pause(kind="no_data", reason=reason, since=T0)})


def clock(at: float) -> str:
    return dt.datetime.fromtimestamp(at).strftime("%H:%M:%S")


def test_a_paused_rollout_prints_its_analysis_on_change_or_once_a_minute():
    out = io.StringIO()
    printer = ProgressPrinter(Console(file=out, width=300, highlight=False))
    printer.use_spec(SPEC)
    at = {}
    for i in range(1, 61):  # ten minutes of evaluations every 10 s
        value = None if i <= 30 else 0.5 if i <= 32 else 0.01  # data appears above the bound, then within it
        reason = REASON if i <= 45 else REASON.replace("10m", "20m")
        at[i] = T0 + 10 * i
        printer(paused(at[i], reason), [Decision("analysis", "analysis while paused",
                                                 {"values": {"0:error_rate": value}})])
    lines = out.getvalue().splitlines()
    times = [line.split()[0] for line in lines]
    # the first; then once a minute; at 31 the value appears over its bound, at 33 within it, at 46 the reason
    # changes, each at once; a minute after each of them again
    assert times == [clock(at[i]) for i in (1, 7, 13, 19, 25, 31, 33, 39, 45, 46, 52, 58)], lines
    assert all("analysis while paused" in line for line in lines)


def test_routine_analysis_of_a_running_rollout_still_ticks_every_few_seconds():
    out = io.StringIO()
    printer = ProgressPrinter(Console(file=out, width=300, highlight=False), tick_every=5.0)
    st = paused(T0).model_copy(update={"paused": None, "waiting": None})
    for i in range(1, 13):
        printer(st.model_copy(update={"updated_at": T0 + 2.5 * i}),
                [Decision("analysis", "analysis", {"values": {"0:error_rate": 0.01}})])
    assert len(out.getvalue().splitlines()) == 6  # 30 s of evaluations every 2.5 s: one line per 5 s


def test_a_long_reason_is_printed_once_and_the_end_points_back_at_it():
    """A failed migration's reason (the error, then what was restored) came out three times: with the decision,
    with the end of the rollout and in the summary."""
    out = io.StringIO()
    printer = ProgressPrinter(Console(file=out, width=300, highlight=False))
    reason = ("migrate failed for 2.0.0, no user traffic reached it: migration 002_bad.sql failed: syntax error\n"
              "the database (app.db) was restored from backups/app.db (as before the deploy)")
    st = paused(T0).model_copy(update={"paused": None, "waiting": None, "weight": 0})
    printer(st, [Decision("abort", reason), Decision("aborted", reason)])
    printer.summary(st.model_copy(update={"status": "aborted", "reason": reason, "finished_at": T0 + 1}))
    text = out.getvalue()
    assert text.count("was restored from") == 1, text
    lines = text.splitlines()
    assert lines[1] == " " * 10 + "the database (app.db) was restored from backups/app.db (as before the deploy)"
    assert lines[2].endswith("0%  aborted (the reason is above)")
    assert lines[3].startswith("shop 2.0.0: aborted after ") and lines[3].endswith(": syntax error (details above)")
