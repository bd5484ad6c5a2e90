"""Spec problems as ``FILE:LINE:COL: message`` lines, the form editors and terminals turn into links.

A spec is written by hand, often under pressure during an incident, so every problem names the exact key or
value and how to fix it, and all problems are reported at once instead of one per run.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import yaml

from releasegate.errors import UserError

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class SpecIssue:
    """One problem; ``line`` and ``column`` are 1-based and None when the problem is the file itself."""

    file: str
    line: int | None
    column: int | None
    message: str
    path: str = ""
    """Where in the spec, e.g. ``strategy.canary.steps[1].weight``; empty for the document as a whole."""

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}:{self.column or 1}: {self.message}"


class SpecError(UserError):
    """Everything wrong with one spec file, sorted by position so the output reads top to bottom."""

    def __init__(self, issues: Iterable[SpecIssue]) -> None:
        self.issues: list[SpecIssue] = sorted(issues, key=lambda i: (i.line or 0, i.column or 0))
        if not self.issues:
            raise ValueError("SpecError needs at least one issue")
        super().__init__("\n".join(str(issue) for issue in self.issues))


class LocatedValueError(ValueError):
    """A model validator's error that belongs to a part of the value, e.g. the third step of a list.

    Pydantic locates a validator's error at the field it validates; ``at`` (relative to that field) lets the
    loader point at the offending item instead of the whole list.
    """

    def __init__(self, message: str, at: Loc = ()) -> None:
        super().__init__(message)
        self.at = at


def did_you_mean(word: str, options: Sequence[str]) -> str | None:
    """The closest option, also across case (``Service`` -> ``service``), or None when nothing is close."""
    by_lower = {o.lower(): o for o in options}
    if word.lower() in by_lower:
        return by_lower[word.lower()]
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def format_loc(loc: Loc) -> str:
    """``('analysis', 'rules', 0, 'for')`` -> ``analysis.rules[0].for``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


# --- YAML syntax errors -------------------------------------------------------------------------------------


def _line(lines: Sequence[str], index: int) -> str:
    return lines[index] if 0 <= index < len(lines) else ""


def _missing_colon_line(lines: Sequence[str], before: int) -> int | None:
    """The line above ``before`` that looks like a key without its ':', the usual cause of odd YAML errors."""
    for i in range(before - 1, -1, -1):
        text = lines[i].split(" #")[0].strip()
        if not text or text.startswith("#"):
            continue
        return i if ":" not in text and not text.startswith(("-", "[", "{", "'", '"')) else None
    return None


def yaml_issue(exc: yaml.MarkedYAMLError, file: str, text: str) -> SpecIssue:
    """PyYAML's scanner/parser vocabulary rewritten as what the user did wrong, at the character at fault."""
    lines = text.splitlines()
    mark = exc.problem_mark or exc.context_mark
    ctx_mark = exc.context_mark
    problem = exc.problem or ""
    context = exc.context or ""
    line, col = (mark.line, mark.column) if mark is not None else (0, 0)

    if "'\\t'" in problem:
        message = "tab character: YAML indentation and separators must be spaces, not tabs"
    elif "could not find expected ':'" in problem and ctx_mark is not None:
        line, col = ctx_mark.line, ctx_mark.column
        key = _line(lines, line)[col:].split(" #")[0].strip()
        message = f"missing ':' after {key!r} (write 'key: value')"
    elif "mapping values are not allowed here" in problem:
        above = _missing_colon_line(lines, line)
        before_colon = _line(lines, line)[:col]
        if ": " in before_colon.lstrip(" -"):
            message = "this value contains ': ', which YAML reads as a new key; put the value in quotes"
        elif above is not None:
            line, col = above, len(lines[above]) - len(lines[above].lstrip())
            key = lines[above].strip()
            message = f"missing ':' after {key.split()[0]!r} (write 'key: value')"
        else:
            message = "unexpected ':' here; a value that contains ': ' must be put in quotes"
    elif problem.startswith("expected <block end>") or "expected <block end>" in problem:
        message = "bad indentation: this line does not line up with the keys or list items above it"
    elif "found unexpected end of stream" in problem and "quoted scalar" in context and ctx_mark is not None:
        line, col = ctx_mark.line, ctx_mark.column
        message = "unclosed quote: this string never ends"
    elif "flow mapping" in context or "flow sequence" in context:
        opener, closer = ("{", "}") if "mapping" in context else ("[", "]")
        where = f" at line {ctx_mark.line + 1}" if ctx_mark is not None else ""
        if "expected ','" in problem:
            message = (f"expected ',' or '{closer}' here: a comma is missing, or the '{opener}'{where} "
                       "is never closed")
        else:
            message = f"invalid YAML inside the '{opener}'{where}: {problem}"
    elif "found another document" in problem:
        message = "a spec is a single YAML document; remove this second document (or its '---')"
    elif "found undefined alias" in problem:
        name = problem.rsplit(" ", 1)[-1]
        message = f"undefined alias {name}: no anchor &{name.strip(chr(39))} above this point"
    elif "could not determine a constructor" in problem:
        tag = re.search(r"'([^']*)'", problem)
        message = f"unsupported YAML tag {tag.group(1) if tag else '(unknown)'}; specs use plain YAML values"
    else:
        message = f"invalid YAML: {problem or context}" + (f" ({context})" if problem and context else "")
    return SpecIssue(file, line + 1, col + 1, message)


def reader_issue(exc: yaml.reader.ReaderError, file: str, text: str) -> SpecIssue:
    """PyYAML refuses control characters before parsing; its position is an offset, not a line."""
    pos = max(0, min(int(exc.position), len(text)))
    line = text.count("\n", 0, pos)
    col = pos - (text.rfind("\n", 0, pos) + 1)
    char = exc.character if isinstance(exc.character, str) else chr(exc.character)
    return SpecIssue(file, line + 1, col + 1, f"unexpected control character {char!r} (U+{ord(char):04X}); "
                                              "a spec must be plain text")
