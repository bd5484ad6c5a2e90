"""How the command line presents itself: help panels, plain flags, read-only commands, one-line usage errors.

typer renders help and reports usage errors itself. The few places where releasegate wants something else live
here, so that cli.py stays a list of commands:

- commands are grouped into panels (rollouts, governance, integrations) by name, after every module has mounted
  its commands, so a command added later lands in a panel without touching the others;
- a flag takes no value, so its help shows none (typer 0.2x prints ``<bool>`` after every flag);
- a usage error (missing value, unknown option) is one line on stderr naming the command and its ``--help``, like
  every other user error, instead of a framed box, and ``--version`` mix-ups say which version is meant;
- read-only commands open a missing state database as an empty one instead of creating ``.releasegate``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import typer

from releasegate.store.db import reading_only

ROLLOUTS = "Rollouts"
GOVERNANCE = "Governance"
INTEGRATIONS = "Integrations"

INTEGRATION_COMMANDS = frozenset({"router", "alerts", "receive-alerts", "metrics", "migrations", "schema"})
"""Commands that connect releasegate to other tools; any other command without a panel is governance."""

READ_ONLY = frozenset({
    "status", "history", "plan", "preflight", "validate", "alerts", "approvals", "gc", "promote", "abort",
    "rollback", "resume", "down", "calendar check", "calendar show", "calendar upcoming", "calendar history",
    "policy show", "policy history", "audit verify", "audit export", "router status", "router stop"})
"""Commands that never need to create state: in a directory where releasegate never ran they find nothing (and
say so) rather than leave an empty ``.releasegate`` behind. Writers (deploy, approve, token new, ...) create it."""


def _commands(app: typer.Typer, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(full name, typer CommandInfo or TyperInfo) of every command and group, depth first."""
    for info in app.registered_commands:
        name = info.name or (info.callback.__name__.replace("_", "-") if info.callback else "")
        yield prefix + name, info
    for group in app.registered_groups:
        sub = group.typer_instance
        name = group.name or (sub.info.name if sub is not None and isinstance(sub.info.name, str) else "")
        yield prefix + name, group
        if sub is not None:
            yield from _commands(sub, f"{prefix}{name} ")


PANELS = (ROLLOUTS, GOVERNANCE, INTEGRATIONS)


def assign_panels(app: typer.Typer) -> None:
    """Every top-level command without a help panel goes to Integrations (by name) or Governance; panels are
    listed in PANELS order (typer shows them in the order their first command was registered)."""
    for name, info in _commands(app):
        if " " not in name and _panel(info) is None:
            info.rich_help_panel = INTEGRATIONS if name in INTEGRATION_COMMANDS else GOVERNANCE
    rank = {panel: i for i, panel in enumerate(PANELS)}
    app.registered_commands.sort(key=lambda info: rank.get(str(_panel(info)), len(PANELS)))
    app.registered_groups.sort(key=lambda info: rank.get(str(_panel(info)), len(PANELS)))


def _panel(info: Any) -> str | None:
    """The panel a command was given; typer keeps "not given" as a placeholder object holding None."""
    panel = getattr(info, "rich_help_panel", None)
    value = getattr(panel, "value", panel)
    return value if isinstance(value, str) else None


def _reading(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)  # typer reads the signature through __wrapped__
    def run(*args: Any, **kwargs: Any) -> Any:
        with reading_only():
            return callback(*args, **kwargs)
    return run


def mark_read_only(app: typer.Typer) -> None:
    for name, info in _commands(app):
        callback = getattr(info, "callback", None)
        if name in READ_ONLY and callback is not None and not hasattr(callback, "__wrapped__"):
            info.callback = _reading(callback)


def plain_flags() -> None:
    """Show nothing after a flag in help (typer 0.2x shows ``<bool>``); a typer without the hook is left alone."""
    from typer import core

    option = getattr(core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if option is None or shown is None or getattr(shown, "releasegate_plain_flags", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None
        result: str | None = shown(self, ctx)
        return result

    display_type_rich.releasegate_plain_flags = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich


# --- usage errors -------------------------------------------------------------------------------------------

_USAGE = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
CLICK_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
"""The base of typer's (click's) own errors, found from a public class so it works with bundled or real click."""

_VERSION_OPTS = ("--version", "-v")


def _version_hint(exc: Exception, path: str) -> str:
    """``--version`` is the program's own before a command and the release's after deploy/plan/preflight."""
    option = getattr(exc, "option_name", None)
    param = getattr(exc, "param", None)
    takes_release = param is not None and getattr(param, "name", None) == "version"
    message = str(getattr(exc, "message", ""))
    if option in _VERSION_OPTS and "requires an argument" in message:
        return (f"; {option} takes the version to roll out, e.g. `{path} SPEC --version 1.4.2` "
                "(`releasegate --version` alone prints releasegate's own version)")
    if takes_release:
        return f"; give the version to roll out, e.g. `{path} SPEC --version 1.4.2`"
    if option in _VERSION_OPTS or "--version" in message:
        return "; releasegate's own version is `releasegate --version` (before any command)"
    return ""


def command_path(app: typer.Typer, argv: list[str]) -> str:
    """``releasegate calendar check`` from the arguments, for errors typer raises without knowing the command."""
    names = {name for name, _ in _commands(app)}
    path: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token.startswith("-"):
            skip = token == "--state-dir"  # the one global option that takes a value
        elif " ".join([*path, token]) in names:
            path.append(token)
        else:
            break
    return " ".join(["releasegate", *path])


def usage_line(exc: Exception, path: str) -> str:
    """One line for a usage error: ``releasegate deploy: Missing option '--version'...; see `... --help```."""
    ctx = getattr(exc, "ctx", None)
    path = str(getattr(ctx, "command_path", "") or path)
    show = getattr(exc, "format_message", None)
    text = " ".join(str(show() if callable(show) else exc).split())
    if not isinstance(exc, _USAGE):
        return f"{path}: {text}"
    return f"{path}: {text.rstrip('.')}{_version_hint(exc, path)} (see `{path} --help`)"
