"""YAML files validated by a pydantic model, with every problem reported as ``FILE:LINE:COL: message``.

A small, model-agnostic equivalent of ``releasegate.spec.loader``: that loader's node-position machinery
(``_Loader``, ``_Positions``, ``_issue``) is private and its messages are bound to ``Spec`` (did-you-mean looks
keys up in the spec models), so it cannot load a release calendar without being edited. This module reuses the
public parts (``SpecIssue``/``SpecError``, ``did_you_mean``, ``yaml_issue``, ``model_at``) and keeps the same
rules: duplicate keys are errors, ``10:00`` stays text, and, unlike the spec loader, ``2025-11-01`` stays text
too so that the model (not PyYAML, which raises a bare ValueError for ``2025-13-01``) reports a bad date at its
line and column.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from releasegate.spec.errors import (
    Loc,
    LocatedValueError,
    SpecError,
    SpecIssue,
    did_you_mean,
    format_loc,
    reader_issue,
    yaml_issue,
)
from releasegate.spec.loader import model_at

M = TypeVar("M", bound=BaseModel)

_TEXT_ONLY = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps keys, times (``02:00``) and dates (``2025-11-01``) as the text written."""

    yaml_implicit_resolvers = {
        first: [(tag, re.compile("(?!.*:)" + rx.pattern, rx.flags) if tag in _TEXT_ONLY else rx)
                for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        self.flatten_mapping(node)
        return {k.value: self.construct_object(v, deep=deep) for k, v in node.value
                if isinstance(k, yaml.ScalarNode)}


class _Positions:
    """Where each path's key and value sit in the file; duplicate and non-text keys become issues."""

    def __init__(self, file: str, root: yaml.Node) -> None:
        self.file = file
        self.at: dict[Loc, tuple[yaml.Node | None, yaml.Node]] = {}
        self.issues: list[SpecIssue] = []
        self._active: set[int] = set()
        self._walk((), None, root)

    def _walk(self, path: Loc, key: yaml.Node | None, node: yaml.Node) -> None:
        self.at[path] = (key, node)
        if id(node) in self._active:  # a recursive alias
            return
        self._active.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, yaml.Node] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    self._issue(key_node, "keys must be plain text, not lists or mappings")
                elif key_node.value in first:
                    line = first[key_node.value].start_mark.line + 1
                    self._issue(key_node, f"duplicate key {key_node.value!r} (first at line {line})")
                else:
                    first[key_node.value] = key_node
                    self._walk((*path, key_node.value), key_node, value_node)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk((*path, i), None, item)
        self._active.discard(id(node))

    def _issue(self, node: yaml.Node, message: str) -> None:
        self.issues.append(SpecIssue(self.file, node.start_mark.line + 1, node.start_mark.column + 1, message))

    def mark(self, loc: Loc, *, prefer_key: bool) -> yaml.Mark:
        """Where ``loc`` (or its closest parent in the file) sits: the key for whole sections, else the value."""
        found: Loc = ()
        for part in loc:
            if (*found, part) in self.at:
                found = (*found, part)
        key, value = self.at[found]
        use_key = key is not None and (prefer_key or not isinstance(value, yaml.ScalarNode) or value.value == "")
        return key.start_mark if use_key and key is not None else value.start_mark


def load_yaml_model(path: str | Path, model: type[M], *, empty: str) -> M:
    """The validated ``model`` in ``path``; raises ``SpecError`` (exit 2) listing every problem found.

    ``empty`` says what a minimal file needs, for the message about an empty one.
    """
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise SpecError([SpecIssue(file, None, None, "no such file")]) from None
    except IsADirectoryError:
        raise SpecError([SpecIssue(file, None, None, "is a directory, not a YAML file")]) from None
    except OSError as exc:
        raise SpecError([SpecIssue(file, None, None, f"cannot read: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError([SpecIssue(file, line, column, f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                                                       "save the file as UTF-8")]) from None
    return load_yaml_model_text(text, file, model, empty=empty)


def load_yaml_model_text(text: str, filename: str, model: type[M], *, empty: str) -> M:
    """The validated ``model`` in ``text``; ``filename`` only labels the issues."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        positions = _Positions(filename, root) if root is not None else None
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        raise SpecError([yaml_issue(exc, filename, text)]) from None
    except yaml.reader.ReaderError as exc:
        raise SpecError([reader_issue(exc, filename, text)]) from None
    finally:
        loader.dispose()
    if data is None or positions is None:
        raise SpecError([SpecIssue(filename, 1, 1, f"the file is empty; {empty}")])
    if not isinstance(data, dict):
        raise SpecError([SpecIssue(filename, 1, 1, f"the file must be a mapping of keys, not {_a(data)}; {empty}")])
    issues = list(positions.issues)
    try:
        result = model.model_validate(data)
    except ValidationError as exc:
        issues.extend(_issue(err, positions, model) for err in exc.errors())
        raise SpecError(issues) from None
    if issues:
        raise SpecError(issues)
    return result


def _issue(err: ErrorDetails, positions: _Positions, root: type[BaseModel]) -> SpecIssue:
    loc: Loc = tuple(err["loc"])
    cause = (err.get("ctx") or {}).get("error")
    located = isinstance(cause, LocatedValueError)
    if isinstance(cause, LocatedValueError):
        loc = (*loc, *cause.at)
    kind = err["type"]
    mark = positions.mark(loc, prefer_key=located or kind in ("missing", "extra_forbidden"))
    return SpecIssue(positions.file, mark.line + 1, mark.column + 1, _message(err, loc, root),
                     format_loc(loc))


def _message(err: ErrorDetails, loc: Loc, root: type[BaseModel]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    name = next((str(p) for p in reversed(loc) if isinstance(p, str)), "value")
    parent = format_loc(loc[:-1])
    if kind == "missing":
        return f"missing required key {name!r}" + (f" in {parent}" if parent else "")
    if kind == "extra_forbidden":
        owner = model_at(loc[:-1], root)
        options = [f.alias or n for n, f in owner.model_fields.items()] if owner else []
        hint = did_you_mean(name, options)
        if hint:
            return f"unknown key {name!r} (did you mean {hint!r}?)"
        return f"unknown key {name!r}" + (f"; expected one of: {', '.join(options)}" if options else "")
    if kind == "literal_error":
        options = re.findall(r"'((?:[^'\\]|\\.)*)'", str(ctx.get("expected", "")))
        hint = did_you_mean(value, options) if isinstance(value, str) else None
        return (f"unknown {name} {_got(value)}" + (f" (did you mean {hint!r}?)" if hint else "")
                + f"; expected one of: {', '.join(options)}")
    if kind in ("value_error", "assertion_error") and ctx.get("error") is not None:
        return str(ctx["error"])
    simple = {"string_type": "expected a string", "list_type": "expected a list", "dict_type": "expected a mapping",
              "model_type": "expected a mapping", "model_attributes_type": "expected a mapping",
              "int_type": "expected an integer", "bool_type": "expected true or false"}
    if kind in simple:
        return f"{simple[kind]}, got {_got(value)}"
    if kind == "too_short":
        return f"{name} needs at least {ctx.get('min_length')} item(s)"
    return str(err["msg"]).removeprefix("Value error, ")


def _got(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return str(value).lower()
    return _a(value)


def _a(value: object) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


__all__ = ["load_yaml_model", "load_yaml_model_text"]
