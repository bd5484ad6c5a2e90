"""Refuse schema changes an application rollback cannot survive (megacity guide §5.3).

A rollback puts the previous version of the application back, never the previous schema: so every migration must
keep working for the version before it. Dropping or renaming a column or table, changing a column's type, or adding
a NOT NULL column without a default breaks the old version at once. Each refusal names the expand/contract step to
write instead: expand now (add, copy, switch reads), contract in a later release once no running version needs the
old shape.

The statements are split by a small scanner that knows comments, string literals, quoted identifiers, PostgreSQL
dollar quotes and SQLite trigger bodies, so a ``DROP`` inside ``'text'`` or after ``--`` is never flagged.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from releasegate.errors import UserError

_DOLLAR = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
_NAME = r'(?:"(?:[^"]|"")+"|`[^`]+`|\[[^\]]+\]|[\w.$]+)'
_ALTER_TABLE = re.compile(rf"^ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?(?P<table>{_NAME})\s*(?P<body>.*)$",
                          re.IGNORECASE | re.DOTALL)
_ATOMIC = re.compile(r"\bBEGIN\s+ATOMIC\b", re.IGNORECASE)
_DROP_TABLE = re.compile(rf"^DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?P<table>{_NAME})", re.IGNORECASE)
_NOT_A_COLUMN = {"CONSTRAINT", "DEFAULT", "NOT", "IDENTITY", "EXPRESSION", "INDEX", "PRIMARY", "FOREIGN", "KEY",
                 "CHECK", "UNIQUE"}


@dataclass(frozen=True)
class Statement:
    """One SQL statement: where it starts, its text, and a ``clean`` form (comments removed, string literals
    emptied, whitespace collapsed) that the rules match against."""

    line: int
    text: str
    clean: str


@dataclass(frozen=True)
class LintIssue:
    """A backward-incompatible statement and the expand/contract step to write instead."""

    file: Path
    line: int
    statement: str
    problem: str
    fix: str

    def format(self) -> str:
        return f"{self.file}:{self.line}: {self.problem} — {self.fix}"


def _complete(clean: str) -> bool:
    """Does the cleaned text up to a ``;`` end a statement? SQLite's own rule (``sqlite3.complete_statement``)
    keeps ``CREATE TRIGGER ... BEGIN ...; END;`` whole; a PostgreSQL SQL-standard function body
    (``BEGIN ATOMIC ...; END;``) is whole once its ``END`` closes it, i.e. there is one more END than CASEs
    (``CASE ... END`` may appear inside)."""
    if not sqlite3.complete_statement(clean):
        return False
    atomic = _ATOMIC.search(clean)
    if atomic is None:
        return True
    words = [w.upper() for w in re.findall(r"\w+", clean[atomic.end():])]
    return words[-1:] == ["END"] and words.count("END") > words.count("CASE")


def split_statements(sql: str) -> list[Statement]:
    """Split on top-level ``;`` only; a ``CREATE TRIGGER ... BEGIN ...; END;`` and a ``BEGIN ATOMIC ...; END;``
    function body stay one statement (decided on the cleaned text, where no string or comment can confuse it)."""
    out: list[Statement] = []
    clean: list[str] = []
    start = -1
    start_line = line = 1
    i, n = 0, len(sql)

    def emit(end: int) -> None:
        nonlocal start
        text = " ".join("".join(clean).split())
        if start >= 0 and text.strip(" ;"):
            out.append(Statement(start_line, sql[start:end].strip(), text))
        clean.clear()
        start = -1

    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
            continue
        if sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            j = n if j < 0 else j + 2
            line += sql.count("\n", i, j)
            clean.append(" ")
            i = j
            continue
        if start < 0 and not ch.isspace():
            start, start_line = i, line
        if ch in "'\"":
            j = i + 1
            while j < n:
                if sql[j] == ch:
                    if j + 1 < n and sql[j + 1] == ch:
                        j += 2
                        continue
                    break
                j += 1
            j = min(j + 1, n)
            clean.append("''" if ch == "'" else sql[i:j])
            line += sql.count("\n", i, j)
            i = j
            continue
        dollar = _DOLLAR.match(sql, i) if ch == "$" and (i == 0 or not (sql[i - 1].isalnum() or sql[i - 1] == "_")) \
            else None
        if dollar:
            j = sql.find(dollar.group(), dollar.end())
            j = n if j < 0 else j + len(dollar.group())
            clean.append("''")
            line += sql.count("\n", i, j)
            i = j
            continue
        if ch == "\n":
            line += 1
        clean.append(ch)
        i += 1
        if ch == ";" and _complete("".join(clean)):
            emit(i)
    emit(n)
    return out


def _unquote(name: str) -> str:
    return name[1:-1].replace('""', '"') if name[:1] in "\"`[" else name


def _clauses(body: str) -> list[str]:
    """The comma-separated actions of one ALTER TABLE (PostgreSQL allows several), ignoring commas in brackets."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in body:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip(" ;"))
    return [p for p in parts if p]


def _check_alter(table: str, clause: str) -> tuple[str, str] | None:
    """(problem, fix) for one ALTER TABLE action, or None when the old application version keeps working."""
    m = re.match(rf"^DROP\s+(?:COLUMN\s+)?(?:IF\s+EXISTS\s+)?(?P<col>{_NAME})", clause, re.IGNORECASE)
    if m and (clause.upper().startswith("DROP COLUMN") or m.group("col").upper() not in _NOT_A_COLUMN):
        col = _unquote(m.group("col"))
        return (f"drops column {table}.{col}: the previous version still reads it, so a rollback breaks",
                f"stop reading and writing {col} in this release; drop the column in a later release, once no "
                "running version uses it")
    m = re.match(r"^RENAME\s+TO\b", clause, re.IGNORECASE)
    if m:
        return (f"renames table {table}: the previous version still uses the old name",
                f"create the new table, copy the rows (and keep writing both, e.g. with a trigger), switch reads; "
                f"drop {table} in a later release")
    m = re.match(rf"^RENAME\s+(?:COLUMN\s+)?(?P<old>{_NAME})\s+TO\s+(?P<new>{_NAME})", clause, re.IGNORECASE)
    if m and m.group("old").upper() != "CONSTRAINT":
        old, new = _unquote(m.group("old")), _unquote(m.group("new"))
        return (f"renames column {table}.{old} to {new}: the previous version still uses {old}",
                f"add the new column {new}, copy {old} into it (write both), switch reads; drop {old} in a later "
                "release")
    m = re.match(rf"^(?:ALTER|MODIFY)\s+(?:COLUMN\s+)?(?P<col>{_NAME})\s+(?:SET\s+DATA\s+)?TYPE\b", clause,
                 re.IGNORECASE)
    if m:
        col = _unquote(m.group("col"))
        return (f"changes the type of {table}.{col}: the previous version may not read or write the new type",
                f"add a new column with the new type, copy {col} into it (write both), switch reads; drop {col} in "
                "a later release")
    m = re.match(rf"^ADD\s+(?:COLUMN\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(?P<col>{_NAME})(?P<rest>.*)$", clause,
                 re.IGNORECASE | re.DOTALL)
    if m and m.group("col").upper() not in _NOT_A_COLUMN and re.search(r"\bNOT\s+NULL\b", m.group("rest"), re.I) \
            and not re.search(r"\b(?:DEFAULT|GENERATED)\b", m.group("rest"), re.IGNORECASE):
        col = _unquote(m.group("col"))
        return (f"adds NOT NULL column {table}.{col} without a default: the previous version's INSERTs fail "
                "(and existing rows have no value)",
                f"add {col} as nullable or with a DEFAULT, backfill it; add the NOT NULL constraint in a later "
                "release")
    return None


def lint_statement(stmt: Statement) -> list[tuple[str, str]]:
    """Every (problem, fix) in one statement."""
    m = _DROP_TABLE.match(stmt.clean)
    if m:
        table = _unquote(m.group("table"))
        return [(f"drops table {table}: the previous version still reads it, so a rollback breaks",
                 f"stop using {table} in this release; drop the table in a later release, once no running "
                 "version uses it")]
    m = _ALTER_TABLE.match(stmt.clean)
    if not m:
        return []
    table = _unquote(m.group("table"))
    found = (_check_alter(table, clause) for clause in _clauses(m.group("body")))
    return [issue for issue in found if issue]


def lint_sql(sql: str, file: Path) -> list[LintIssue]:
    return [LintIssue(file, stmt.line, stmt.text, problem, fix)
            for stmt in split_statements(sql) for problem, fix in lint_statement(stmt)]


def migration_files(directory: Path) -> list[Path]:
    """The ``*.sql`` files of a migrations directory, in the order they apply (by name)."""
    if not directory.is_dir():
        raise UserError(f"{directory}: no such migrations directory; create it or fix migrations.dir")
    return sorted(p for p in directory.glob("*.sql") if p.is_file())


def read_sql(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{file}: cannot read the migration ({exc})") from None


def lint_files(files: list[Path]) -> list[LintIssue]:
    return [issue for file in files for issue in lint_sql(read_sql(file), file)]


def lint(directory: Path) -> list[LintIssue]:
    """Every backward-incompatible statement in the ``*.sql`` files of ``directory``."""
    return lint_files(migration_files(directory))
