"""The audit log's head file: ``state_dir/audit-head.log``, one ``SEQ HASH`` line appended per audit entry.

Why a file beside the database: the chain inside SQLite cannot tell a log whose tail (and head record) was cut, or
whose rows were all deleted, from one that was never longer. The head file keeps, outside the database, the last
entry written and its hash, so ``audit verify`` can say which entries are gone. It is only ever opened for
appending (so ``chattr +a`` on it, as root, makes it impossible to cut for anyone else) and created 0600.

Ordering: the line is written after the entry's transaction commits (a line is never written for an entry that was
rolled back), while holding an exclusive ``flock`` on the state dir that the appender takes before it reads the
head; ``audit verify`` takes the same lock shared, so it never sees a committed entry whose line is still on its
way. A process killed between the commit and the line leaves the database one entry ahead of the file; the next
append writes the missing lines first (an addition is no loss, and whoever can add entries to the database can
add lines here too).

``audit_anchor`` (a one-row table) records the entry the file started at, so a deleted file is noticed as well.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from releasegate.fileio import append_private

FILE = "audit-head.log"

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_anchor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    since_seq INTEGER NOT NULL
);
"""

_LINE = re.compile(r"(\d+) ([0-9a-f]{64})")
_TAIL = 4096


class Line(NamedTuple):
    seq: int
    hash: str


class Damaged(ValueError):
    """A line of the head file that does not read back (the message names it)."""


def path_of(state_dir: Path) -> Path:
    return Path(state_dir) / FILE


def _parse(text: str, first_line: int = 1) -> list[Line]:
    """Complete lines only: a last line without its newline is a write cut short by a crash, not a record."""
    lines = []
    body = text[: text.rfind("\n") + 1]
    for number, raw in enumerate(body.splitlines(), first_line):
        match = _LINE.fullmatch(raw)
        if match is None:
            raise Damaged(f"{FILE} line {number} is damaged ({raw[:40]!r})")
        lines.append(Line(int(match[1]), match[2]))
    return lines


def read(state_dir: Path) -> list[Line] | None:
    """Every line of the file; None when there is no file. Raises ``Damaged``."""
    try:
        text = path_of(state_dir).read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    return _parse(text)


def last(state_dir: Path) -> Line | None:
    """The highest entry the file records, reading only its tail (the file grows by a line per entry)."""
    try:
        with path_of(state_dir).open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - _TAIL))
            text = fh.read().decode("ascii", errors="replace")
    except FileNotFoundError:
        return None
    if size > _TAIL:
        text = text[text.find("\n") + 1:]  # the first line read is probably partial
    try:
        lines = _parse(text)
    except Damaged:
        return None  # verify reports it; an append goes on from what the database says
    return max(lines) if lines else None


@contextmanager
def locked(state_dir: Path, exclusive: bool) -> Iterator[None]:
    """The state dir's head-file lock (a ``flock`` on the directory itself: nothing to create)."""
    fd = os.open(state_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


class Pending:
    """The lock and the lines of one transaction's entries: written when it commits, dropped when it does not."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.lines: list[Line] = []
        self._fd = os.open(state_dir, os.O_RDONLY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self._fd)
            raise
        self.on_file = last(state_dir)
        """The file's last line when the lock was taken: the head as the file knows it."""

    def end(self, committed: bool) -> None:
        try:
            if committed and self.lines:
                write(self.state_dir, self.lines)
        finally:
            os.close(self._fd)


def write(state_dir: Path, lines: list[Line]) -> None:
    """Append ``lines`` in one write and make them durable (O_APPEND: the file is never rewritten)."""
    append_private(path_of(state_dir), "".join(f"{line.seq} {line.hash}\n" for line in lines), durable=True)


__all__ = ["FILE", "SCHEMA", "Damaged", "Line", "Pending", "last", "locked", "path_of", "read", "write"]
