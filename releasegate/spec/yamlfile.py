"""YAML files read into a pydantic model, with every problem reported as ``FILE:LINE:COL: message`` at the key or
value that caused it. The spec, the release calendar and the approval policy all load through here.

PyYAML forgets where values came from and pydantic only knows paths such as ``('analysis', 'rules', 0, 'for')``,
so this module composes the YAML node tree itself, records where each key and value sits by path, and maps
pydantic's error locations back onto it. ``releasegate.spec.yamlcompose`` reads the text into that tree within
bounds a hostile file cannot push (size, depth, aliases, tags), so every file, however malformed, ends in a
``SpecError`` (exit 2) at a line and column.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Tag, ValidationError
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
from releasegate.spec.yamlcompose import MAX_BYTES, Loader, Positions, Refusal, Where, too_long

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class FileKind:
    """How messages name a kind of file: ``noun`` ("spec", "calendar"), and what a minimal one ``needs``.
    ``located_at_key``: a model's LocatedValueError points at the key it names rather than at its value."""

    noun: str
    needs: str
    located_at_key: bool = False


_YAML_BOOLEAN_WORDS = {"yes", "no", "on", "off"}


# --- reading ------------------------------------------------------------------------------------------------


Checks = Callable[[Any], list[tuple[Loc, str]]]
"""Problems a valid model still has, found by looking at it whole (e.g. a rule no metric source can feed):
(where, message) pairs, reported like validation errors."""


def load_yaml_model(path: str | Path, model: type[M], kind: FileKind, checks: Checks | None = None) -> M:
    """The validated ``model`` in ``path``; raises ``SpecError`` (exit 2) listing every problem found."""
    return load_yaml_model_text(read_yaml_text(path, kind), str(path), model, kind, checks)


def read_yaml_text(path: str | Path, kind: FileKind) -> str:
    """The file's text, read up to the size bound; a file that cannot be read as such is a ``SpecError``."""
    file = str(path)
    try:
        with Path(path).open("rb") as f:  # never more than the bound: /dev/zero is a file too
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise SpecError([SpecIssue(file, None, None, "no such file")]) from None
    except IsADirectoryError:
        raise SpecError([SpecIssue(file, None, None, f"is a directory, not a {kind.noun} file")]) from None
    except OSError as exc:
        raise SpecError([SpecIssue(file, None, None, f"cannot read: {exc.strerror or exc}")]) from None
    if len(raw) > MAX_BYTES:
        head = raw[:MAX_BYTES].decode("utf-8-sig", errors="replace")
        raise SpecError([too_long(head, file, kind.noun, len(head))])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError([SpecIssue(file, line, column, f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                                                       f"save the {kind.noun} as UTF-8")]) from None
    return text


def load_yaml_model_text(text: str, filename: str, model: type[M], kind: FileKind,
                         checks: Checks | None = None) -> M:
    """The validated ``model`` in ``text``; ``filename`` only labels the issues."""
    data, positions = _parse(text, filename, kind)
    issues = list(positions.issues)
    try:
        result = model.model_validate(data)
    except ValidationError as exc:
        issues.extend(_issue(err, positions, model, kind) for err in exc.errors())
        raise SpecError(issues) from None
    if checks is not None:
        issues.extend(_checked(loc, message, positions) for loc, message in checks(result))
    if issues:
        raise SpecError(issues)
    return result


def _checked(loc: Loc, message: str, positions: Positions) -> SpecIssue:
    """A check's problem at the deepest part of ``loc`` that is in the file (its key)."""
    found: Loc = ()
    for part in loc:
        if (*found, part) not in positions.at:
            break
        found = (*found, part)
    mark = positions.at[found].mark(prefer_key=True)
    return SpecIssue(positions.file, mark.line + 1, mark.column + 1, message, format_loc(loc))


def _parse(text: str, file: str, kind: FileKind) -> tuple[dict[str, Any], Positions]:
    if len(text) > MAX_BYTES:
        raise SpecError([too_long(text, file, kind.noun, MAX_BYTES)])
    empty = SpecError([SpecIssue(file, 1, 1, f"the {kind.noun} is empty; {kind.needs}")])
    loader: Loader | None = None
    try:
        loader = Loader(text, kind.noun)
        root = loader.get_single_node()
        if root is None:
            raise empty
        positions = Positions(file, root, loader)  # counts every value, aliases expanded, before constructing
        data = loader.construct_document(root)
    except Refusal as exc:
        raise SpecError([exc.issue(file)]) from None
    except yaml.MarkedYAMLError as exc:
        raise SpecError([yaml_issue(exc, file, text)]) from None
    except yaml.reader.ReaderError as exc:
        raise SpecError([reader_issue(exc, file, text)]) from None
    except yaml.YAMLError as exc:  # PyYAML's unmarked errors: none is known to reach here
        raise SpecError([SpecIssue(file, 1, 1, f"invalid YAML: {exc}")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if data is None:  # a document with only '---' or 'null'
        raise empty
    if not isinstance(data, dict):
        mark = root.start_mark
        raise SpecError([SpecIssue(file, mark.line + 1, mark.column + 1,
                                   f"the {kind.noun} must be a mapping of keys, not {_a(data)}; {kind.needs}")])
    return data, positions


# --- pydantic errors ----------------------------------------------------------------------------------------


def _issue(err: ErrorDetails, positions: Positions, root: type[BaseModel], kind: FileKind) -> SpecIssue:
    loc: Loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    cause = ctx.get("error")
    located = isinstance(cause, LocatedValueError)
    if isinstance(cause, LocatedValueError):
        loc = (*loc, *cause.at)
    in_file = file_loc(loc, root)
    tag = _bad_tag(err, loc, root)
    if tag is not None:
        loc, in_file = (*loc, tag[0]), (*in_file, tag[0])
    found: Loc = ()
    for part in in_file:  # skip parts that are not in the file, e.g. keys left to their default
        if (*found, part) in positions.at:
            found = (*found, part)
    where = positions.at[found]
    exact = where if found == in_file else None
    message = tag[1] if tag is not None else _message(err, loc, in_file, exact, root)
    prefer_key = err["type"] in ("missing", "extra_forbidden") or (located and kind.located_at_key)
    mark = where.mark(prefer_key=prefer_key and tag is None)
    return SpecIssue(positions.file, mark.line + 1, mark.column + 1, message, format_loc(in_file))


def _bad_tag(err: ErrorDetails, loc: Loc, root: type[BaseModel]) -> tuple[str, str] | None:
    """(key, message) when ``err`` is a tagged union refusing its tag (``router: {kind: envoy}``): the message
    names what was given and the tags allowed, and belongs at the tag's own value. The union's Discriminator
    names its key in ``custom_error_context={"key": ...}``."""
    union = _tagged_union(type_at(loc, root))
    ctx = err.get("ctx") or {}
    key = ctx.get("key")
    value = err.get("input")
    if union is None or not isinstance(key, str) or not isinstance(value, dict) or key not in value:
        return None
    tags = list(union)
    given = value[key]
    section = next((str(p) for p in reversed(loc) if isinstance(p, str)), "value")
    if not isinstance(given, str):
        return key, f"{section} {key} must be one of: {', '.join(tags)}; got {_got(given, None)}"
    hint = did_you_mean(given, tags)
    return key, (f"unknown {section} {key} {given!r}" + (f" (did you mean {hint!r}?)" if hint else "")
                 + f"; expected one of: {', '.join(tags)}")


def _message(err: ErrorDetails, loc: Loc, in_file: Loc, where: Where | None, root: type[BaseModel]) -> str:
    """``loc`` is pydantic's (with union labels, to find the model), ``in_file`` the path the user wrote."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    name = next((str(p) for p in reversed(in_file or loc) if isinstance(p, str)), "value")
    got = _got(value, where.raw() if where else None)
    parent = format_loc(in_file[:-1])

    if kind == "missing":
        return f"missing required key {name!r}" + (f" in {parent}" if parent else "")
    if kind == "extra_forbidden":
        options = _keys_at(loc[:-1], root)
        hint = did_you_mean(name, options) if options else None
        if hint:
            return f"unknown key {name!r} (did you mean {hint!r}?)"
        return f"unknown key {name!r}" + (f" in {parent}" if parent else "") + (
            f"; expected one of: {', '.join(options)}" if options else "")
    if kind in ("literal_error", "enum"):
        options = _quoted(str(ctx.get("expected", "")))
        hint = did_you_mean(value, options) if isinstance(value, str) else None
        return (f"unknown {name} {got}" + (f" (did you mean {hint!r}?)" if hint else "")
                + f"; expected one of: {', '.join(options)}")
    if kind in ("value_error", "assertion_error") and ctx.get("error") is not None:
        return str(ctx["error"])
    simple = {
        "int_type": "expected an integer", "int_parsing": "expected an integer",
        "int_from_float": "expected a whole number", "float_type": "expected a number",
        "float_parsing": "expected a number", "string_type": "expected a string",
        "bool_type": "expected true or false", "bool_parsing": "expected true or false",
        "list_type": "expected a list", "dict_type": "expected a mapping", "model_type": "expected a mapping",
        "model_attributes_type": "expected a mapping",
    }
    if kind in simple:
        hint = ""
        if kind == "string_type" and isinstance(value, int | float) and "YAML reads" not in got:
            written = where.raw() if where and where.raw() else _got(value, None)
            hint = f" (write it in quotes: '{written}')"
        if kind in ("dict_type", "model_type", "model_attributes_type") and isinstance(value, str) \
                and value in _keys_at(loc, root):  # strategy: bluegreen, meant as the key of a mapping
            hint = f" (write {name}: {{{value}: {{}}}} for {value} with its defaults)"
        return f"{simple[kind]}, got {got}{hint}"
    bounds = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "greater than"),
              "less_than_equal": ("le", "at most"), "less_than": ("lt", "less than")}
    if kind in bounds:
        key, words = bounds[kind]
        return f"{name} must be {words} {_num(ctx.get(key))}, got {got}"
    if kind in ("too_short", "too_long"):
        limit = ctx.get("min_length" if kind == "too_short" else "max_length")
        return f"{name} needs {'at least' if kind == 'too_short' else 'at most'} {limit} item(s)"
    return str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _num(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _got(value: object, raw: str | None) -> str:
    """The offending value as the user wrote it, with the YAML 1.1 boolean surprise explained."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        if raw is not None and raw.lower() in _YAML_BOOLEAN_WORDS:
            return f"{raw} (YAML reads {raw} as {str(value).lower()}; put it in quotes if you meant the text)"
        return str(value).lower()
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, int | float):
        return raw if raw is not None else _num(value)
    return _a(value)


def _a(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "nothing" if value is None else repr(value)


def _quoted(expected: str) -> list[str]:
    """Pydantic lists a Literal's values as ``'a', 'b' or 'c'``."""
    return re.findall(r"'((?:[^'\\]|\\.)*)'", expected)


def _keys_at(loc: Loc, root: type[BaseModel]) -> list[str]:
    """The keys a mapping at ``loc`` accepts, for did-you-mean; empty when that is not a model."""
    model = model_at(loc, root)
    return [f.alias or n for n, f in model.model_fields.items()] if model else []


# --- pydantic's locations and the file's ------------------------------------------------------------------------


def _tagged_union(tp: Any) -> dict[str, Any] | None:
    """A union's members by the label pydantic puts in an error's location (a ``Tag``, or a model's class name);
    None when ``tp`` is not a union. Labels pydantic makes up for other members (``str``, ``list[int]``) are not
    known here."""
    tp = unwrap(tp)
    if get_origin(tp) not in (Union, UnionType):
        return None
    members: dict[str, Any] = {}
    for member in get_args(tp):
        if member is NoneType:
            continue
        tag = next((m.tag for m in get_args(member)[1:] if isinstance(m, Tag)), None) \
            if get_origin(member) is Annotated else None
        inner = unwrap(member)
        if tag is not None:
            members[tag] = inner
        elif isinstance(inner, type) and issubclass(inner, BaseModel):
            members[inner.__name__] = inner
    return members


def _walk(loc: Loc, root: type[BaseModel]) -> tuple[Loc, Any]:
    """Follow ``loc`` through the model's types: (the parts that are keys and list indexes in the file, the type
    of the value at the end, None when it cannot be told).

    A part is a union's label exactly where the type is a union, and nowhere else: so the label of
    ``router: {kind: nginx}`` is skipped while a key of the user's that happens to be spelled like one (the nginx
    router's own ``nginx:`` key, its binary) is kept.
    """
    tp: Any = root
    out: list[str | int] = []
    for part in loc:
        if tp is None:
            out.append(part)
            continue
        members = _tagged_union(tp)
        if members is not None:  # pydantic names the member it tried; that name is not in the file
            tp = members.get(part) if isinstance(part, str) else None
            continue
        out.append(part)
        tp = unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = next((f for n, f in tp.model_fields.items() if part in (n, f.alias)), None)
            tp = field.annotation if field is not None else None
        elif get_origin(tp) in (list, dict):
            tp = get_args(tp)[-1]
        else:
            tp = None
    return tuple(out), tp


def file_loc(loc: Loc, root: type[BaseModel]) -> Loc:
    """pydantic's location of an error without the union labels it adds: the path of keys and indexes in the
    file. ``('router', 'nginx', 'access_log')`` -> ``('router', 'access_log')``."""
    return _walk(loc, root)[0]


def type_at(loc: Loc, root: type[BaseModel]) -> Any:
    """The type that validates the value at pydantic's ``loc`` (None when it cannot be told)."""
    return _walk(loc, root)[1]


def model_at(loc: Loc, root: type[BaseModel]) -> type[BaseModel] | None:
    """The model that validates the value at ``loc``, following fields, union labels, list items and mapping
    values."""
    tp = unwrap(type_at(loc, root))
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def unwrap(tp: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` -> ``X``; other unions and types unchanged."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, UnionType):
            rest = [a for a in get_args(tp) if a is not NoneType]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp


__all__ = ["FileKind", "file_loc", "load_yaml_model", "load_yaml_model_text", "model_at", "type_at", "unwrap"]
