"""The audit log: a hash chain that names the first edited, deleted or reordered entry, export, concurrent writers.

Tampering is done the way an attacker with the database file would do it: plain SQL on ``releasegate.db``.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from releasegate.commands.audit import audit_app, parse_since
from releasegate.errors import UserError
from releasegate.store.audit import GENESIS, AuditLog, entry_hash

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def fill(sd: Path, n: int = 5, start: float = T0, step: float = 60.0) -> None:
    with AuditLog(sd) as log:
        for i in range(n):
            log.append(f"user{i}", "approval.given", release="shop@1.4.2", commit="abc1234",
                       decision=f"stage {i}: allowed", evidence={"stage": i, "checks": ["unit tests pass"]},
                       at=start + i * step)


def sql(sd: Path, *statements: str) -> None:
    db = sqlite3.connect(sd / "releasegate.db")
    with db:
        for statement in statements:
            db.execute(statement)
    db.close()


def verify(sd: Path) -> tuple[bool, int | None, str]:
    with AuditLog(sd) as log:
        return tuple(log.verify())  # type: ignore[return-value]


def test_entries_are_chained_by_hash_from_a_zero_genesis(tmp_path: Path) -> None:
    with AuditLog(tmp_path) as log:
        first = log.append("alice", "release.new", release="shop@1.4.2", commit="abc1234", decision="registered",
                           evidence={"digest": "sha256:aa", "path": Path("/x")}, at=T0)
        second = log.append("bob", "approval.given", at=T0 + 1)
    assert (first.seq, first.prev_hash, second.seq, second.prev_hash) == (1, GENESIS, 2, first.hash)
    assert first.evidence == {"digest": "sha256:aa", "path": "/x"}
    assert first.hash == entry_hash(1, T0, "alice", "release.new", "shop@1.4.2", "abc1234", "registered",
                                    {"digest": "sha256:aa", "path": "/x"}, GENESIS)
    assert verify(tmp_path) == (True, None, "2 entries")


@pytest.mark.parametrize("column, value", [("decision", "'allowed'"), ("actor", "'mallory'"), ("at", "0"),
                                           ("evidence", "'{\"stage\": 9, \"checks\": []}'"), ("release", "NULL")])
def test_an_edited_entry_is_named(tmp_path: Path, column: str, value: str) -> None:
    fill(tmp_path)
    sql(tmp_path, f"UPDATE audit_log SET {column}={value} WHERE seq=3")
    assert verify(tmp_path) == (False, 3, "entry 3 was altered (hash mismatch)")


def test_an_entry_edited_with_its_hash_recomputed_breaks_the_link_to_the_next(tmp_path: Path) -> None:
    fill(tmp_path)
    with AuditLog(tmp_path) as log:
        third = list(log.entries())[2]
    forged = entry_hash(3, third.at, third.actor, third.action, third.release, third.commit, "forged",
                        third.evidence, third.prev_hash)
    sql(tmp_path, f"UPDATE audit_log SET decision='forged', hash='{forged}' WHERE seq=3")
    ok, bad, reason = verify(tmp_path)
    assert (ok, bad) == (False, 4) and reason.startswith("entry 4 does not follow entry 3 (prev_hash mismatch")


@pytest.mark.parametrize("seq, message", [
    (3, "entry 3 was deleted (entry 4 follows entry 2)"),
    (1, "entry 1 was deleted (the log starts at 2)"),
    (5, "entry 5 was deleted (the log was written up to entry 5, it ends at entry 4)"),
])
def test_a_deleted_entry_is_named(tmp_path: Path, seq: int, message: str) -> None:
    fill(tmp_path)
    sql(tmp_path, f"DELETE FROM audit_log WHERE seq={seq}")
    assert verify(tmp_path) == (False, seq, message)


def test_a_deleted_entry_with_the_rest_renumbered_is_named(tmp_path: Path) -> None:
    fill(tmp_path)
    sql(tmp_path, "DELETE FROM audit_log WHERE seq=2", "UPDATE audit_log SET seq=seq-1 WHERE seq>2",
        "UPDATE audit_head SET seq=4")
    assert verify(tmp_path) == (False, 2, "entry 2 is out of order: it was written as entry 3 (entries were "
                                          "reordered)")


def test_swapped_entries_are_named(tmp_path: Path) -> None:
    fill(tmp_path)
    columns = "at, actor, action, release, commit_sha, decision, evidence, prev_hash, hash"
    sql(tmp_path, f"CREATE TABLE t AS SELECT seq, {columns} FROM audit_log WHERE seq IN (2, 3)",
        *[f"UPDATE audit_log SET {c}=(SELECT {c} FROM t WHERE t.seq = 5 - audit_log.seq) WHERE seq IN (2, 3)"
          for c in columns.split(", ")], "DROP TABLE t")
    assert verify(tmp_path) == (False, 2, "entry 2 is out of order: it was written as entry 3 (entries were "
                                          "reordered)")


def test_appends_continue_the_chain_after_a_deleted_tail_so_the_gap_stays_visible(tmp_path: Path) -> None:
    fill(tmp_path)
    sql(tmp_path, "DELETE FROM audit_log WHERE seq=5")
    fill(tmp_path, 1)
    assert verify(tmp_path) == (False, 5, "entry 5 was deleted (entry 6 follows entry 4)")


def test_concurrent_appends_from_two_processes_keep_the_chain_valid(tmp_path: Path) -> None:
    script = ("import sys, time; from pathlib import Path; from releasegate.store.audit import AuditLog\n"
              "log = AuditLog(Path(sys.argv[1]))\n"
              "time.sleep(max(0.0, float(sys.argv[3]) - time.time()))\n"  # both start appending at the same instant
              "for i in range(150): log.append(sys.argv[2], 'rollout.step', evidence={'i': i})\n")
    start = str(time.time() + 1.0)
    writers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), name, start]) for name in ("a", "b")]
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    with AuditLog(tmp_path) as log:
        entries = list(log.entries())
    assert [e.seq for e in entries] == list(range(1, 301))
    assert sorted(e.actor for e in entries) == ["a"] * 150 + ["b"] * 150
    assert verify(tmp_path) == (True, None, "300 entries")


def test_since_reads_iso8601_and_durations() -> None:
    now = T0 + 86400
    assert parse_since("24h", now) == T0
    assert parse_since("2026-01-01", now) == T0
    assert parse_since("2026-01-01T09:00:00+09:00", now) == T0
    with pytest.raises(UserError, match="--since soon: write an ISO 8601 time"):
        parse_since("soon", now)


# --- the command line ---------------------------------------------------------------------------------------------


def run(sd: Path, *args: str) -> Result:
    app = typer.Typer()
    app.add_typer(audit_app, name="audit")
    return CliRunner().invoke(app, ["audit", *args, "--state-dir", str(sd)])


def test_cli_verify_exit_codes_and_messages(tmp_path: Path) -> None:
    fill(tmp_path, 17)
    ok = run(tmp_path, "verify")
    assert (ok.exit_code, ok.stdout) == (0, "audit log ok: 17 entries\n")
    sql(tmp_path, "UPDATE audit_log SET decision='allowed' WHERE seq=17")
    bad = run(tmp_path, "verify")
    assert (bad.exit_code, bad.stderr) == (2, "releasegate: audit log: entry 17 was altered (hash mismatch)\n")
    missing = run(tmp_path / "nowhere", "verify")
    assert missing.exit_code == 2 and missing.stderr.startswith("releasegate: audit log: no state in ")
    assert not (tmp_path / "nowhere").exists()


def test_cli_export_writes_json_lines_since_a_time(tmp_path: Path) -> None:
    fill(tmp_path, 5, start=T0, step=3600)
    out = tmp_path / "audit.jsonl"
    result = run(tmp_path, "export", "--since", "2026-01-01T02:00:00Z", "--output", str(out))
    assert result.exit_code == 0 and result.stderr == f"wrote 3 audit entries to {out}\n"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seq"] for r in rows] == [3, 4, 5]
    assert rows[0]["time"] == "2026-01-01T02:00:00Z" and rows[0]["evidence"] == {"stage": 2,
                                                                                 "checks": ["unit tests pass"]}
    assert rows[0]["hash"] == entry_hash(3, rows[0]["at"], rows[0]["actor"], rows[0]["action"], rows[0]["release"],
                                         rows[0]["commit"], rows[0]["decision"], rows[0]["evidence"],
                                         rows[0]["prev_hash"])  # auditors can check the chain themselves
    recent = tmp_path / "recent"
    fill(recent, 3, start=time.time() - 3 * 3600, step=3600)
    lines = run(recent, "export", "--since", "150m").stdout.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [2, 3]
    assert run(tmp_path, "export", "--since", "later").exit_code == 2
