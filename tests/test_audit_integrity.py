"""The audit log against someone with write access to the state dir (docs/security.md, section 6).

A real state dir written by the CLI (a stored policy, tokens, a release), tampered with the way an attacker would
(plain SQL on ``releasegate.db``, editing ``audit-head.log``), then checked with ``releasegate audit verify``: exit 2
and one line naming what is missing, or exit 0 on a clean state. The attacks run the CLI in subprocesses
(``real=True``); the rest run the same app in-process, to keep the file fast.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from typer.testing import CliRunner

from releasegate.cli import app
from releasegate.store.audit import GENESIS, entry_hash

POLICY = Path(__file__).resolve().parents[1] / "examples" / "governance" / "policy.yaml"


class Done(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def rg(state: Path, *args: str, token: str | None = None, real: bool = False) -> Done:
    """``releasegate ARGS --state-dir STATE``: a subprocess when ``real``, else the same app under CliRunner."""
    if real:
        env = {k: v for k, v in os.environ.items() if k not in ("RELEASEGATE_HOME", "RELEASEGATE_TOKEN")}
        env |= {"RELEASEGATE_TOKEN": token} if token is not None else {}
        done = subprocess.run([sys.executable, "-m", "releasegate", *args, "--state-dir", str(state)],
                              capture_output=True, text=True, env=env, timeout=60)
        return Done(done.returncode, done.stdout, done.stderr)
    result = CliRunner().invoke(app, [*args, "--state-dir", str(state)],
                                env={"RELEASEGATE_TOKEN": token, "RELEASEGATE_HOME": None})
    return Done(result.exit_code, result.stdout, result.stderr)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """policy apply, the admin's token, a second token, a release: 4 audit entries, 1 policy, 2 tokens, 1 release."""
    state = tmp_path_factory.mktemp("template") / "state"
    assert rg(state, "policy", "apply", str(POLICY), real=True).returncode == 0
    token = rg(state, "token", "new", "erin").stdout.strip()
    assert rg(state, "token", "new", "alice", "--as", "erin", token=token).returncode == 0
    done = rg(state, "release", "new", "shop", "1.4.0", "--as", "erin", token=token)
    assert done.returncode == 0, done.stderr
    return state, token


@pytest.fixture
def state(template: tuple[Path, str], tmp_path: Path) -> Path:
    copy = tmp_path / "state"
    shutil.copytree(template[0], copy)
    return copy


def sql(state: Path, *statements: str) -> None:
    db = sqlite3.connect(state / "releasegate.db")
    with db:
        for statement in statements:
            db.execute(statement)
    db.close()


def failure(state: Path, real: bool = False) -> str:
    """``audit verify``'s one line, after checking it failed with exit 2."""
    done = rg(state, "audit", "verify", real=real)
    assert done.returncode == 2 and done.stdout == "", (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1, done.stderr
    return done.stderr.removeprefix("releasegate: audit log: ").strip()


def head_lines(state: Path) -> list[str]:
    return (state / "audit-head.log").read_text().splitlines()


def test_a_clean_state_passes_and_every_entry_has_its_line_in_the_head_file(state: Path) -> None:
    done = rg(state, "audit", "verify")
    assert (done.returncode, done.stdout) == (0, "audit log ok: 4 entries\n"), done.stderr
    head = rg(state, "audit", "head").stdout.strip()
    assert head_lines(state)[-1] == head.replace(":", " ") and [line.split()[0] for line in head_lines(state)] == [
        "1", "2", "3", "4"]


def test_cutting_the_tail_and_the_head_record_then_running_an_audited_command_is_named(
        state: Path, template: tuple[Path, str]) -> None:
    sql(state, "DELETE FROM audit_log WHERE seq >= 3", "DELETE FROM audit_head")
    assert rg(state, "token", "new", "bob", "--as", "erin", token=template[1], real=True).returncode == 0  # 5
    assert failure(state, real=True) == "entries 3 to 4 were deleted (entry 5 follows entry 2)"


def test_a_tail_cut_with_the_head_record_made_to_match_is_named_from_the_head_file(state: Path) -> None:
    db = sqlite3.connect(state / "releasegate.db")
    second = db.execute("SELECT hash FROM audit_log WHERE seq = 2").fetchone()[0]
    db.close()
    sql(state, "DELETE FROM audit_log WHERE seq >= 3", f"UPDATE audit_head SET seq = 2, hash = '{second}'")
    assert failure(state) == "entries 3 to 4 were deleted (audit-head.log records entry 4, the log ends at entry 2)"


def test_deleting_every_entry_beside_a_release_is_named(state: Path) -> None:
    sql(state, "DELETE FROM audit_log", "DELETE FROM audit_head")
    assert failure(state, real=True) == "entries 1 to 4 were deleted (audit-head.log records entry 4, the log is empty)"


def test_dropping_the_audit_tables_and_the_head_file_is_named_by_what_remains(state: Path) -> None:
    sql(state, "DROP TABLE audit_log", "DROP TABLE audit_head", "DROP TABLE audit_anchor")
    (state / "audit-head.log").unlink()
    assert failure(state, real=True) == ("the log is empty (its entries were deleted or its tables dropped) but the "
                                         "state dir holds 1 release, 2 tokens, 1 stored policy or calendar version")


def test_a_deleted_head_file_is_named(state: Path) -> None:
    (state / "audit-head.log").unlink()
    assert failure(state) == "audit-head.log is missing (the log has been anchored in it since entry 1): it was deleted"


def rebuild(state: Path, seq: int, decision: str) -> str:
    """What a careful attacker does: change one entry and recompute every hash after it; the new head's hash."""
    db = sqlite3.connect(state / "releasegate.db")
    db.row_factory = sqlite3.Row
    prev = GENESIS
    with db:
        for row in db.execute("SELECT * FROM audit_log ORDER BY seq").fetchall():
            fields = dict(row) | ({"decision": decision} if row["seq"] == seq else {})
            digest = entry_hash(fields["seq"], fields["at"], fields["actor"], fields["action"], fields["release"],
                                fields["commit_sha"], fields["decision"], json.loads(fields["evidence"]), prev)
            db.execute("UPDATE audit_log SET decision = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                       (fields["decision"], prev, digest, row["seq"]))
            prev = digest
        db.execute("UPDATE audit_head SET hash = ?", (prev,))
    db.close()
    return prev


def test_a_rebuilt_chain_shows_against_the_head_file_and_an_external_head_but_not_once_both_are_rebuilt(
        state: Path) -> None:
    kept = rg(state, "audit", "head").stdout.strip()  # what a team keeps outside the state dir
    rebuilt = rebuild(state, 2, "forged")
    assert failure(state) == ("entry 2 was replaced: its hash is not the one audit-head.log recorded when it was "
                              "written (the chain was rewritten up to it)")
    db = sqlite3.connect(state / "releasegate.db")
    hashes = [h for (h,) in db.execute("SELECT hash FROM audit_log ORDER BY seq")]
    db.close()
    (state / "audit-head.log").write_text("".join(f"{i} {h}\n" for i, h in enumerate(hashes, 1)))
    assert rg(state, "audit", "verify").returncode == 0  # the documented limit: a full rebuild is consistent
    done = rg(state, "audit", "verify", "--expect", kept, real=True)
    assert done.returncode == 2 and done.stderr == (
        f"releasegate: audit log: entry 4 is not the one --expect {kept} recorded (hash {rebuilt[:12]}..., not "
        f"{kept.split(':')[1][:12]}...): the chain was rewritten up to it\n")


def test_a_line_lost_by_a_killed_writer_is_named_and_written_by_the_next_append(
        state: Path, template: tuple[Path, str]) -> None:
    lines = head_lines(state)
    (state / "audit-head.log").write_text("".join(line + "\n" for line in lines[:-1]))
    assert failure(state) == ("entry 4 is not in audit-head.log (it ends at entry 3): added to the database "
                              "directly, or the file was cut")
    assert rg(state, "token", "new", "bob", "--as", "erin", token=template[1]).returncode == 0
    assert rg(state, "audit", "verify").stdout == "audit log ok: 5 entries\n"
    assert head_lines(state)[3] == lines[3]


def test_a_signed_export_checks_the_log_later_and_refuses_a_key_in_the_state_dir(state: Path,
                                                                                  tmp_path: Path) -> None:
    key, export = tmp_path / "audit.key", tmp_path / "audit.jsonl"
    key.write_text(os.urandom(32).hex())
    done = rg(state, "audit", "export", "--signed", "--key-file", str(key), "--output", str(export))
    assert (done.returncode, done.stderr) == (0, f"wrote 4 audit entries to {export} (signed)\n")
    signature = json.loads(export.read_text().splitlines()[-1])["signature"]
    assert (signature["algorithm"], signature["entries"], signature["head_seq"]) == ("hmac-sha256", 4, 4)
    ok = rg(state, "audit", "verify", "--against", str(export), "--key-file", str(key))
    assert ok.stdout == "audit log ok: 4 entries; 4 anchored entries match\n", ok.stderr
    rebuild(state, 3, "forged")
    (state / "audit-head.log").unlink()
    sql(state, "DELETE FROM audit_anchor")  # everything in the state dir made consistent again
    done = rg(state, "audit", "verify", "--against", str(export), "--key-file", str(key))
    assert done.returncode == 2 and "entry 3 is not the one the signed export" in done.stderr
    export.write_text(export.read_text().replace("erin", "eve"))
    done = rg(state, "audit", "verify", "--against", str(export), "--key-file", str(key))
    assert done.returncode == 2 and "the signature does not match" in done.stderr
    inside = state / "audit.key"
    shutil.copy(key, inside)
    done = rg(state, "audit", "export", "--signed", "--key-file", str(inside))
    assert done.returncode == 2 and done.stderr.startswith(f"releasegate: --key-file {inside}: it is inside the "
                                                           "state dir")
