"""Every problem of a hand-written policy or calendar in one run, also those only the whole file can show.

Validation stops at the first broken level: a policy whose ``soak`` is written ``5`` never got as far as asking
who holds its stages' roles, and a calendar with a bad timezone never checked that its freeze names are unique,
so a newcomer fixed one error only to be shown the next two. When the model does not validate, the checks that
look at the whole file run on what was written (a ``Salvage`` of the parsed YAML, told which paths are broken so
it can skip what depends on them), and their problems are reported with the structural ones, each as
``FILE:LINE:COL: message``, sorted top to bottom.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, RootModel

from releasegate.spec.errors import Loc, SpecError, SpecIssue, format_loc
from releasegate.spec.yamlfile import FileKind, load_yaml_model_text

M = TypeVar("M", bound=BaseModel)
Problem = tuple[Loc, str]
"""Where (a path into the file) and what is wrong there."""


class Broken:
    """The paths that already have a structural error: whatever is at or below them cannot be judged."""

    def __init__(self, issues: Iterable[SpecIssue]) -> None:
        self.paths = {issue.path for issue in issues}

    def at(self, *loc: str | int) -> bool:
        """Whether the value at ``loc``, or a part of it, is broken (``at()`` is the whole file)."""
        here = format_loc(loc)
        return any(not here or p == here or p.startswith((here + ".", here + "[")) for p in self.paths)


Checks = Callable[[M], list[Problem]]
Salvage = Callable[[dict[str, Any], Broken], list[Problem]]


class _Raw(RootModel[dict[str, Any]]):
    """Accepts any mapping: the file as written, read by the same loader (and its YAML rules) as the real model."""


def _raw(text: str, filename: str, kind: FileKind) -> dict[str, Any] | None:
    try:
        return load_yaml_model_text(text, filename, _Raw, kind).root
    except SpecError:  # not YAML, not a mapping, duplicate keys: nothing to look at beyond that
        return None


def load_text(text: str, filename: str, model: type[M], kind: FileKind, checks: Checks[M],
              salvage: Salvage, *, at_key: bool = False) -> M:
    """The validated ``model`` in ``text``, or a ``SpecError`` naming every problem: structural ones, and those
    ``checks`` finds in the whole model (or ``salvage`` in what was written, when the model is broken), located
    as ``locate`` does."""
    try:
        result = load_yaml_model_text(text, filename, model, kind)
    except SpecError as exc:
        raw = _raw(text, filename, kind)
        if raw is None:
            raise
        extra = locate(filename, text, salvage(raw, Broken(exc.issues)), at_key=at_key)
        seen = {(i.path, i.message) for i in exc.issues}
        raise SpecError([*exc.issues, *(i for i in extra if (i.path, i.message) not in seen)]) from None
    problems = checks(result)
    if problems:
        raise SpecError(locate(filename, text, problems, at_key=at_key))
    return result


def locate(file: str, text: str, problems: list[Problem], *, at_key: bool = False) -> list[SpecIssue]:
    """Each problem at its value in ``text`` (``at_key``: at its key, as the calendar's own validators point), or
    at the deepest part of the path that is written, for a key left out."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    issues = []
    for loc, message in problems:
        key, node = _node_at(root, loc)
        mark = (key if at_key and key is not None else node).start_mark if node is not None else None
        issues.append(SpecIssue(file, mark.line + 1 if mark else 1, mark.column + 1 if mark else 1, message,
                                format_loc(loc)))
    return issues


def _node_at(node: yaml.Node | None, loc: Loc) -> tuple[yaml.Node | None, yaml.Node | None]:
    key: yaml.Node | None = None
    for part in loc:
        pair: tuple[yaml.Node | None, yaml.Node] | None = None
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            pair = (None, node.value[part])
        if pair is None:
            return key, node
        key, node = pair
    return key, node


__all__ = ["Broken", "Problem", "load_text", "locate"]
