"""``{port}``, ``{version}``, ``{service}``, ``{host}`` and ``{url}`` in spec strings: one rule for the whole spec.

Only a ``{word}`` is a placeholder. Other braces stay as written (JSON in a body, an expectation or a command,
``${HOME}`` in a shell command), and ``{{word}}`` is a literal ``{word}``. Each field substitutes what is known where
it is used (``WHERE``): a process's command knows its port but not yet a URL to check; a working directory is shared
by all instances of a version, so it has no port. A ``{word}`` a field does not substitute is refused when the spec
is loaded, at the place it is written: left in, it would reach the app as written (a request for
``/h/%7Bversion%7D``, an environment variable holding ``{bogus}``) or fail a healthy version at deploy time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from releasegate.spec.errors import Loc, LocatedValueError, did_you_mean

INSTANCE = ("url", "host", "port", "version", "service")
"""Checks of one running instance (health, smoke): its base URL ``http://HOST:PORT``, host, port, version, service."""
PROCESS = ("port", "version", "service", "host")
"""An instance's process as it starts: the port it must listen on, and the loopback host it runs on."""
VERSION = ("version", "service")
"""Settings shared by every instance of a version (its working directory)."""
SERVICE = ("service",)
"""Router settings shared by every version of the service."""
ALL = ("url", "host", "port", "version", "service")

WHERE: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("`platform.command`", PROCESS, "per instance as it starts; `{port}` is required (each instance listens on "
     "its own)"),
    ("`platform.env` values", PROCESS, "per instance as it starts: `{port}` is that instance's port"),
    ("`platform.cwd`", VERSION, "per version: its instances share the directory"),
    ("`health.path`, `health.expect`", INSTANCE, "per instance checked"),
    ("`smoke` requests: `path`, `headers`, `body`, `expect_body`, `expect_json`", INSTANCE,
     "per instance the request is sent to"),
    ("`smoke` commands: `command`, `cwd`, `env` values", INSTANCE, "the one instance the command runs against"),
    ("`router` (nginx): `config_file`, `access_log`; (haproxy): `backend`", SERVICE, "per service"),
)
"""Which placeholders each field substitutes, and when: the table in docs/spec-reference.md."""

_PLACEHOLDER = re.compile(r"\{\{([A-Za-z_]\w*)\}\}|(?<!\$)\{([A-Za-z_]\w*)\}")


def _names(allowed: tuple[str, ...]) -> str:
    return ", ".join(f"{{{p}}}" for p in allowed)


def used(text: str) -> list[str]:
    """The placeholders ``text`` substitutes, in order (literals ``{{word}}`` and ``${word}`` are not)."""
    return [m.group(2) for m in _PLACEHOLDER.finditer(text) if m.group(2) is not None]


def check(value: Any, allowed: tuple[str, ...] = ALL, where: str = "here", at: Loc = (), *,
          literals: bool = True) -> None:
    """Refuse a ``{word}`` that ``allowed`` does not name, anywhere in ``value`` (strings, and the values of
    mappings and lists, recursively), as a LocatedValueError at the string that holds it. ``literals``: whether
    the field may hold a literal ``{word}`` (not in a path written into nginx's configuration)."""
    if isinstance(value, str):
        for name in used(value):
            if name in allowed:
                continue
            literal = f" (write {{{{{name}}}}} for a literal one)" if literals else ""
            if name in ALL:
                raise LocatedValueError(f"placeholder {{{name}}} is not substituted in {where}; it takes "
                                        f"{_names(allowed)}{literal}", at)
            hint = did_you_mean(name, allowed)
            raise LocatedValueError(f"unknown placeholder {{{name}}}" + (f" (did you mean {{{hint}}}?)" if hint
                                    else "") + f"; known: {_names(allowed)}{literal}", at)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check(item, allowed, where, (*at, str(key)), literals=literals)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check(item, allowed, where, (*at, i), literals=literals)


def substitute(value: Any, values: Mapping[str, object]) -> Any:
    """``value`` with every placeholder replaced, recursively. A string that is exactly one placeholder takes the
    value's own type, so ``port: "{port}"`` matches the number a JSON health answer reports."""
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole is not None and whole.group(2) in values:
            return values[whole.group(2)]

        def one(match: re.Match[str]) -> str:
            if match.group(1) is not None:
                return "{" + match.group(1) + "}"
            name = match.group(2)
            return str(values[name]) if name in values else match.group(0)

        return _PLACEHOLDER.sub(one, value)
    if isinstance(value, Mapping):
        return {key: substitute(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, values) for item in value]
    return value


def substitute_text(text: str, values: Mapping[str, object]) -> str:
    """``substitute`` for fields that must stay text (paths, commands, headers, environment values)."""
    out = substitute(text, {k: str(v) for k, v in values.items()})
    assert isinstance(out, str)
    return out


def table_markdown() -> str:
    """Where each placeholder is substituted, for docs/spec-reference.md."""
    rows = ["| field | placeholders | substituted |", "| --- | --- | --- |"]
    rows += [f"| {field} | {', '.join(f'`{{{p}}}`' for p in allowed)} | {when} |" for field, allowed, when in WHERE]
    return "\n".join(rows) + "\n"
