"""Reading a hand-written YAML file into a node tree and plain data, within bounds a hostile file cannot push.

A spec, a calendar or a policy may come from anyone who can open a pull request, so nothing in it may cost more
than a hand-written file could need: the text is at most ``MAX_BYTES``, nested at most ``MAX_DEPTH`` deep, has at
most ``MAX_VALUES`` values even with every alias expanded where it is used (a "billion laughs" document of a few
hundred bytes would otherwise become billions of values), at most ``MAX_ITEMS`` items in one list or mapping, and
no number longer than ``MAX_NUMBER_CHARS``. Only plain YAML values are read (text, numbers, booleans, null, lists
and mappings): any other tag (``!!binary``, ``!!set``, ``!!timestamp``, ``!!python/...``) is refused, and a value
its tag cannot read (``!!float 'x'``) is refused at that value. Each refusal is a ``Refusal`` at the line and
column where the bound was passed, saying the bound and the fix; nothing is constructed before the whole tree has
been counted.

Three YAML 1.1 habits are switched off because they silently change a file's meaning: duplicate keys (PyYAML keeps
the last one), sexagesimal numbers (``10:00`` = 600) and implicit dates (``2025-13-01`` would escape construction
as a bare ValueError; models parse dates themselves).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from releasegate.spec.errors import Loc, SpecIssue, format_loc

MAX_BYTES = 1 << 20
"""The largest file read (1 MiB): a hand-written spec is a few kilobytes."""
MAX_DEPTH = 64
"""Lists and mappings nested deeper than this are refused (a spec nests about five levels)."""
MAX_VALUES = 10_000
"""Values in the whole file, counting an alias's values each time the alias is used."""
MAX_ITEMS = 1_000
"""Items in one list or keys in one mapping."""
MAX_NUMBER_CHARS = 100
"""The longest number (Python refuses to read integers past 4300 digits, and none of a spec's needs 20)."""
MAX_SCALAR_CHARS = 65_536
"""The longest single value, e.g. a command or a description."""

_YAML = "tag:yaml.org,2002:"
_INT = _YAML + "int"
_FLOAT = _YAML + "float"
MERGE = _YAML + "merge"
_PLAIN_TAGS = {_YAML + t for t in ("str", "int", "float", "bool", "null", "map", "seq", "merge")}
_UNWRITABLE = re.compile("[\x00\ud800-\udfff]")  # NUL (ends C strings) and lone surrogates (not UTF-8)


class Refusal(Exception):
    """A file refused at ``mark`` for ``message``: a bound passed or a value its tag cannot read."""

    def __init__(self, mark: Any, message: str) -> None:  # a yaml.Mark (PyYAML's stubs know two kinds)
        super().__init__(message)
        self.mark = mark
        self.message = message

    def issue(self, file: str) -> SpecIssue:
        line, column = (self.mark.line + 1, self.mark.column + 1) if self.mark is not None else (1, 1)
        return SpecIssue(file, line, column, self.message)


def short_tag(tag: str) -> str:
    """``tag:yaml.org,2002:binary`` -> ``!!binary``, as it is written."""
    return "!!" + tag.removeprefix(_YAML) if tag.startswith(_YAML) else tag


def too_long(text: str, file: str, noun: str, at: int) -> SpecIssue:
    """The issue of a file longer than ``MAX_BYTES``, located at ``at`` in ``text``, where the bound is passed."""
    line = text.count("\n", 0, at) + 1
    column = at - (text.rfind("\n", 0, at) + 1) + 1
    return SpecIssue(file, line, column, f"the {noun} is longer than {MAX_BYTES >> 20} MiB here; a {noun} is "
                                         "written by hand: remove what it does not need")


class Loader(yaml.SafeLoader):
    """SafeLoader with the bounds above, and whose mapping keys are always the text as written (``on:`` stays
    ``'on'``, not True)."""

    # YAML 1.1 reads 10:00 as the base-60 number 600; in a spec it is a time or a typo, so it stays a string.
    # No spec field is a date either: 2025-13-01 would otherwise escape construction as a bare ValueError.
    yaml_implicit_resolvers = {
        first: [(tag, re.compile("(?!.*:)" + rx.pattern, rx.flags) if tag in (_INT, _FLOAT) else rx)
                for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, text: str, noun: str) -> None:
        super().__init__(text)
        self.noun = noun
        self.depth = 0
        self.nodes = 0
        self.aliases = 0
        self.keys: dict[int, int] = {}
        self.alias_at: dict[tuple[int, Hashable], Any] = {}
        """Where each alias was used, by (id of its list or mapping, its index or id of its key)."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(parent, yaml.SequenceNode) and index >= MAX_ITEMS:
            raise Refusal(event.start_mark, f"more than {MAX_ITEMS} items in one list here; a {self.noun} is "
                                            "written by hand: shorten the list")
        if isinstance(parent, yaml.MappingNode) and index is None:  # a key
            self.keys[id(parent)] = count = self.keys.get(id(parent), 0) + 1
            if count > MAX_ITEMS:
                raise Refusal(event.start_mark, f"more than {MAX_ITEMS} keys in one mapping here; a {self.noun} "
                                                "is written by hand: remove keys")
        if isinstance(event, yaml.AliasEvent):
            self.aliases += 1
            where = id(index) if isinstance(parent, yaml.MappingNode) else index
            self.alias_at[(id(parent), where)] = event.start_mark
            return super().compose_node(parent, index)
        self.nodes += 1
        if self.nodes > MAX_VALUES:
            raise Refusal(event.start_mark, f"more than {MAX_VALUES} values in the {self.noun} here; a "
                                            f"{self.noun} is written by hand: remove what it does not need")
        if isinstance(event, yaml.CollectionStartEvent) and self.depth >= MAX_DEPTH:
            raise Refusal(event.start_mark, f"lists and mappings nested more than {MAX_DEPTH} levels deep here; "
                                            "flatten the structure")
        self.depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if node is not None:
            self._check(node)
        return node

    def _check(self, node: yaml.Node) -> None:
        if node.tag not in _PLAIN_TAGS:
            raise Refusal(node.start_mark, f"unsupported YAML tag {short_tag(node.tag)}; a {self.noun} uses plain "
                                           "YAML values (text, numbers, true/false, lists and mappings): remove "
                                           "the tag")
        kind = {_YAML + "map": yaml.MappingNode, _YAML + "seq": yaml.SequenceNode}.get(node.tag, yaml.ScalarNode)
        if not isinstance(node, kind):  # !!map on a text: PyYAML would fail with a bare ValueError
            raise Refusal(node.start_mark, f"the tag {short_tag(node.tag)} does not fit this value; remove the tag")
        if not isinstance(node, yaml.ScalarNode):
            return
        value: str = node.value
        if node.tag in (_INT, _FLOAT) and len(value) > MAX_NUMBER_CHARS:
            raise Refusal(node.start_mark, f"a number longer than {MAX_NUMBER_CHARS} characters here; no "
                                           f"{self.noun} setting needs one: write a shorter number (or quote it "
                                           "if it is text)")
        if len(value) > MAX_SCALAR_CHARS:
            raise Refusal(node.start_mark, f"a value longer than {MAX_SCALAR_CHARS} characters here; shorten it")
        bad = _UNWRITABLE.search(value)
        if bad is not None:
            raise Refusal(node.start_mark, f"this value holds the character U+{ord(bad.group()):04X}, which no "
                                           "command, path or URL can carry; remove it (check its \\ escapes)")

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A value its tag cannot read (``!!float 'x'``, ``!!int '0x'``, ``!!bool 'maybe'``) is refused at
        that value, rather than escaping as Python's own error."""
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, IndexError):
            raw = node.value if isinstance(node, yaml.ScalarNode) else None
            what = repr(raw) if isinstance(raw, str) else "this value"
            raise Refusal(node.start_mark, f"{what} cannot be read as {short_tag(node.tag)}; fix the value or "
                                           "remove the tag") from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        self.flatten_mapping(node)
        mapping: dict[Hashable, Any] = {}
        for key_node, value_node in node.value:
            key = key_text(key_node)
            if key is not None:
                mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def key_text(node: yaml.Node) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) else None


@dataclass(frozen=True)
class Where:
    """Where a value sits: its key (None for list items and the document) and its node."""

    key: yaml.Node | None
    value: yaml.Node

    def mark(self, *, prefer_key: bool) -> yaml.Mark:
        """The key for errors about a whole section or an empty value; otherwise the value itself."""
        scalar = isinstance(self.value, yaml.ScalarNode)
        if self.key is not None and (prefer_key or not scalar or self.raw() == ""):
            return self.key.start_mark
        return self.value.start_mark

    def raw(self) -> str | None:
        return self.value.value if isinstance(self.value, yaml.ScalarNode) else None


class Positions:
    """Walks the node tree once, expanding aliases and merges as construction will: records every path's key and
    value and every duplicate key on the way, and refuses (``Refusal``) a tree that expands past ``MAX_VALUES``
    values or ``MAX_DEPTH`` levels, before anything is constructed from it."""

    def __init__(self, file: str, root: yaml.Node, loader: Loader) -> None:
        self.file = file
        self.at: dict[Loc, Where] = {}
        self.issues: list[SpecIssue] = []
        self._loader = loader
        self._active: set[int] = set()
        self._count = 0
        self._walk((), None, root, None)

    def _walk(self, path: Loc, key: yaml.Node | None, node: yaml.Node, via: Any) -> None:
        self._count += 1
        if self._count > MAX_VALUES or len(path) > MAX_DEPTH:
            raise self._refusal(node, via, deep=len(path) > MAX_DEPTH)
        self.at[path] = Where(key, node)
        if id(node) in self._active:  # a recursive alias: its contents are already recorded above
            return
        self._active.add(id(node))
        if isinstance(node, yaml.MappingNode):
            self._check_keys(path, node)
            for key_node, value_node, parent in self._pairs(node):
                text = key_text(key_node)
                if text is not None:
                    self._walk((*path, text), key_node, value_node,
                               via or self._loader.alias_at.get((id(parent), id(key_node))))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk((*path, i), None, item, via or self._loader.alias_at.get((id(node), i)))
        self._active.discard(id(node))

    def _refusal(self, node: yaml.Node, via: Any, *, deep: bool) -> Refusal:
        mark = via or node.start_mark
        if deep:
            return Refusal(mark, f"aliases nest lists and mappings more than {MAX_DEPTH} levels deep here; write "
                                 "the values out or use fewer aliases")
        if self._loader.aliases:
            return Refusal(mark, f"YAML aliases expand to more than {MAX_VALUES} values here (a \"billion laughs\" "
                                 "document?); write the values out or use fewer aliases")
        return Refusal(mark, f"more than {MAX_VALUES} values here; remove what the file does not need")

    def _pairs(self, node: yaml.MappingNode) -> Iterator[tuple[yaml.Node, yaml.Node, yaml.MappingNode]]:
        """The pairs (and the mapping each comes from) with ``<<`` merges expanded first, so the mapping's own keys
        win, as in construction."""
        for key_node, value_node in node.value:
            if key_node.tag == MERGE:
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in reversed(sources):
                    if isinstance(source, yaml.MappingNode) and id(source) not in self._active:
                        self._count += 1
                        if self._count > MAX_VALUES:
                            raise self._refusal(source, value_node.start_mark, deep=False)
                        self._active.add(id(source))
                        try:
                            yield from self._pairs(source)
                        finally:
                            self._active.discard(id(source))
        yield from ((k, v, node) for k, v in node.value if k.tag != MERGE)

    def _check_keys(self, path: Loc, node: yaml.MappingNode) -> None:
        first: dict[str, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE:
                continue
            text = key_text(key_node)
            mark = key_node.start_mark
            if text is None:
                self.issues.append(SpecIssue(self.file, mark.line + 1, mark.column + 1,
                                             "keys must be plain text, not lists or mappings",
                                             format_loc(path)))
            elif text in first:
                self.issues.append(SpecIssue(
                    self.file, mark.line + 1, mark.column + 1,
                    f"duplicate key {text!r} (first at line {first[text].start_mark.line + 1})",
                    format_loc((*path, text))))
            else:
                first[text] = key_node
