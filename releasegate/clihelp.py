"""How the command line presents itself: help panels, plain flags, read-only commands, one-line usage errors.

typer renders help and reports usage errors itself. The few places where releasegate wants something else live
here, so that cli.py stays a list of commands:

- commands are grouped into panels (rollouts, governance, integrations) by name, after every module has mounted
  its commands, so a command added later lands in a panel without touching the others;
- help readable at 80 columns with one metavar convention (``readable_help``);
- a usage error (missing value, unknown option) is one line on stderr naming the command and its ``--help``, like
  every other user error, instead of a framed box, and ``--version`` mix-ups say which version is meant;
- read-only commands open a missing state database as an empty one instead of creating ``.releasegate``;
- ``run_app`` runs it all: exit codes by the contract, errors as one line (output that went away: terminal.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

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
    "policy show", "policy history", "audit verify", "audit export", "router status", "router stop", "report"})
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


def readable_help() -> None:
    """Help readable at 80 columns with one metavar convention (typer 0.2x hooks; a typer without them is left
    alone, and a panel that cannot be drawn our way is drawn typer's way):

    - a flag takes no value, so nothing follows it (typer shows ``<bool>``);
    - an argument is shown by its name (``SPEC``), in the usage line too (typer writes ``{SPEC}``), never with a
      type after it (``SPEC <path>``);
    - an option without a metavar gets one from its name, ``--env ENV``, ``--state-dir DIR`` (typer shows
      ``<str>``, ``<path>``); choices stay listed, ``[major|minor]``;
    - an options panel has one column for the names and the metavar and one for the help, so one long flag
      (``--allow-breaking-migration``) no longer squeezes every description into a 28-character column."""
    from typer import core, rich_utils

    option = getattr(core, "TyperOption", None)
    argument = getattr(core, "TyperArgument", None)
    if option is None or argument is None or getattr(option, "releasegate_readable", False):
        return
    shown = getattr(option, "display_type_rich", None)
    if shown is not None:
        def option_type(self: Any, ctx: Any) -> str | None:
            if getattr(self, "is_flag", False) and not getattr(self, "count", False):
                return None
            if self.metavar is not None:
                return str(self.metavar)
            return _metavar(self, shown(self, ctx))

        option.display_type_rich = option_type
    if hasattr(argument, "display_type_rich"):
        argument.display_type_rich = lambda self, ctx: None
    if hasattr(argument, "_usage_display_name"):
        def usage_name(self: Any) -> str:
            name = _argument_name(self)
            name = name if self.required else f"[{name}]"
            return name + ("..." if self.nargs != 1 else "")

        argument._usage_display_name = usage_name
    typer_panel = getattr(rich_utils, "_print_options_panel", None)
    if typer_panel is not None:
        def panel(**kwargs: Any) -> None:
            try:
                drawn = _options_panel(**kwargs)
            except Exception:  # a typer whose internals changed: its own layout rather than no help at all
                drawn = None
            if drawn is None:
                typer_panel(**kwargs)
            else:
                kwargs["console"].print(drawn)

        rich_utils._print_options_panel = panel
    option.releasegate_readable = True


def _argument_name(param: Any) -> str:
    return str(param.metavar or param.name or "").upper()


def _metavar(param: Any, typer_type: str | None) -> str | None:
    """``<str>`` -> the option's name (``--env`` -> ENV), ``<path>`` -> DIR or FILE, choices as ``[a|b]``."""
    if typer_type is None or not typer_type.startswith("<"):
        return typer_type
    inner = typer_type.strip("<>.")
    if "|" in inner:
        return f"[{inner}]" + ("..." if typer_type.endswith("...") else "")
    longs = [o for o in param.opts if o.startswith("--")] or list(param.opts)
    name = longs[0].lstrip("-").upper().replace("-", "_") if longs else "VALUE"
    if inner in ("path", "dir", "file"):
        name = "DIR" if inner == "dir" or name.endswith("DIR") else "FILE"
    return name + ("..." if typer_type.endswith("...") else "")


NAMES_WIDTH = 28
"""The names column never needs more than this (the longest flag, ``--allow-breaking-migration``, is 26): a long
metavar goes below its option, and a long list of choices is broken after a ``|``."""


def _fold_choices(metavar: str) -> str:
    if len(metavar) <= NAMES_WIDTH or "|" not in metavar:
        return metavar
    lines, line = [], ""
    for part in metavar.split("|"):
        piece = part if not line else f"|{part}"
        if line and len(line) + len(piece) > NAMES_WIDTH - 1:
            lines.append(line + "|")
            line = part
        else:
            line += piece
    return "\n".join([*lines, line])


def _options_panel(*, name: str, params: list[Any], ctx: Any, markup_mode: Any, console: Any) -> Any:
    """The panel typer draws, with the names and the metavar in one column and the help in the rest."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text
    from typer import core
    from typer import rich_utils as ru

    if not params:
        return None
    rows = []
    for param in params:
        if isinstance(param, core.TyperArgument):
            names = Text(_argument_name(param), style=ru.STYLE_OPTION)
        else:
            opts = [o for o in param.opts if o.startswith("--")] + [o for o in param.opts if not o.startswith("--")]
            names = ru.highlighter(", ".join(opts))
            metavar = param.display_type_rich(ctx=ctx)
            if metavar:
                long = names.cell_len + 1 + len(str(metavar)) > NAMES_WIDTH
                names.append("\n" if long else " ")
                names.append(ru.types_highlighter(Text(_fold_choices(str(metavar)), style=ru.STYLE_TYPES)))
            for other in param.secondary_opts:
                names.append("\n")
                names.append(ru.negative_highlighter(other))
        required = Text(ru.REQUIRED_SHORT_STRING, style=ru.STYLE_REQUIRED_SHORT) if param.required else Text("")
        rows.append((required, names, ru._get_parameter_help(param=param, ctx=ctx, markup_mode=markup_mode)))
    table = Table(highlight=True, show_header=False, expand=True, box=None, padding=ru.STYLE_OPTIONS_TABLE_PADDING,
                  pad_edge=ru.STYLE_OPTIONS_TABLE_PAD_EDGE)
    marked = any(r[0].plain for r in rows)
    if marked:
        table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column(ratio=1)
    for required, names, help_text in rows:
        table.add_row(*((required,) if marked else ()), names, help_text)
    return Panel(table, border_style=ru.STYLE_OPTIONS_PANEL_BORDER, title=name, title_align=ru.ALIGN_OPTIONS_PANEL)


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


# --- running the app ------------------------------------------------------------------------------------------


def run_app(app: typer.Typer, args: list[str]) -> NoReturn:
    """Run the command and exit with the contract's code; every error is one line on stderr, never a traceback
    (RELEASEGATE_DEBUG=1 shows one for internal errors)."""
    import os
    import sys

    from rich.console import Console

    from releasegate.errors import EXIT_INTERNAL, EXIT_OK, ReleasegateError
    from releasegate.terminal import guard_std_streams

    guard_std_streams()  # a closed stdout (`| head`) ends no command with an error (releasegate.terminal)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        code = app(args=args, prog_name="releasegate", standalone_mode=False)
    except CLICK_ERROR as exc:  # a usage error: one line, like every other user error
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one has printed the help already
            err.print(usage_line(exc, command_path(app, args)), markup=False)
        sys.exit(int(getattr(exc, "exit_code", 2)))
    except typer.Abort:
        err.print("releasegate: aborted")
        sys.exit(EXIT_INTERNAL)
    except ReleasegateError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            err.print(f"releasegate: {line}", markup=False)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print(_INTERRUPTED)
        sys.exit(130)
    except Exception as exc:  # an internal error: one line, the traceback only on request
        if os.environ.get("RELEASEGATE_DEBUG"):
            raise
        err.print(f"releasegate: internal error: {type(exc).__name__}: {exc} (RELEASEGATE_DEBUG=1 shows the "
                  "traceback)", markup=False)
        sys.exit(EXIT_INTERNAL)
    if code == 130:  # typer turns Ctrl-C into exit code 130
        err.print(_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


_INTERRUPTED = "releasegate: interrupted; a rollout in progress continues with `releasegate resume SERVICE`"
