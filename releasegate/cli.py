"""The ``releasegate`` command: a thin shell over releasegate.service.

Exit codes: 0 success or promoted, 1 internal error, 2 invalid input or refused, 3 rolled back or aborted.
User errors are one line on stderr, never a traceback (set RELEASEGATE_DEBUG=1 to see one for internal errors).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from releasegate import __version__, service
from releasegate.clihelp import (
    INTEGRATIONS,
    ROLLOUTS,
    assign_panels,
    mark_read_only,
    readable_help,
    run_app,
)
from releasegate.commands import release_group as group
from releasegate.commands.mount import mount
from releasegate.commands.router import router_app
from releasegate.errors import EXIT_INTERNAL, EXIT_OK, EXIT_ROLLED_BACK, UserError
from releasegate.lookup import POINT_ELSEWHERE, shown
from releasegate.progress import ProgressPrinter, render_history, render_plan, render_status
from releasegate.spec.models import check_version
from releasegate.terminal import announce_lost_output, keep_driving

app = typer.Typer(
    name="releasegate", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Declarative progressive delivery: canary, blue-green and rolling releases with automatic rollback.\n\n"
         "Exit codes: 0 promoted/ok, 1 internal error, 2 invalid input or refused, 3 rolled back or aborted.\n\n"
         "With RELEASEGATE_SERVER=URL (or --server URL) the rollout commands, validate, report, dora, approvals, "
         "policy, calendar, audit and token new go to a releasegate server (docs/server.md).")
app.add_typer(router_app, name="router", rich_help_panel=INTEGRATIONS)


out = Console(highlight=False, soft_wrap=True)

StateDir = Annotated[Path | None, typer.Option("--state-dir", envvar="RELEASEGATE_HOME", show_default=False,
                                               metavar="DIR",
                                               help="Where state, logs and the database live "
                                                    "(default ./.releasegate).")]
SpecFile = Annotated[Path, typer.Argument(help="Release spec (YAML).", show_default=False, metavar="SPEC")]
Version = Annotated[str, typer.Option("--version", "-v", metavar="VERSION", show_default=False,
                                      help="The release's version to roll out, e.g. 1.4.2.")]
Service = Annotated[str, typer.Argument(help="Service name from the spec.", show_default=False, metavar="SERVICE")]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output (documented, stable).")]


def _flag(name: str, help: str) -> Any:
    """A plain on/off flag: off unless given, no ``--no-`` twin, no default shown."""
    return typer.Option(name, help=help, show_default=False)


class _State:
    state_dir: Path = Path(".releasegate")


def _use(state_dir: Path | None) -> Path:
    """--state-dir may come before or after the command; the one given last wins."""
    if state_dir is not None:
        _State.state_dir = state_dir
    return _State.state_dir


def _ctx() -> service.Context:
    return service.new_context(_State.state_dir)


def _version_callback(value: bool) -> None:
    if value:
        out.print(f"releasegate {__version__}")
        raise typer.Exit()


@app.callback()
def _main(ctx: typer.Context, state_dir: StateDir = None,
          version: Annotated[bool, typer.Option(
              "--version", callback=_version_callback, is_eager=True, show_default=False,
              help="Print releasegate's own version and exit (deploy --version VERSION names a release's).")]
          = False) -> None:
    from releasegate.commands.server import store_dir
    from releasegate.store import pg
    from releasegate.store.db import STORE_ENV, forget_store

    forget_store()  # each command chooses its store afresh (--store, RELEASEGATE_STORE), and forgets it at its end
    ctx.call_on_close(forget_store)
    store = os.environ.get(STORE_ENV)
    if store:  # checked here, once, so every command (status, audit verify, token new ...) uses that store
        where = store_dir(store, state_dir, STORE_ENV)
        if state_dir is None and not pg.is_url(store):
            state_dir = where
    _use(state_dir)
    if state_dir is not None:
        # Commands mounted from other modules read --state-dir with env RELEASEGATE_HOME: the global option given
        # before the command reaches them that way (their own --state-dir still wins), for this command only.
        before = os.environ.get("RELEASEGATE_HOME")
        os.environ["RELEASEGATE_HOME"] = str(state_dir)
        ctx.call_on_close(lambda: _restore_env("RELEASEGATE_HOME", before))


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _driving(service: str | None) -> None:
    """This command drives a rollout: neither a closed stdout nor a closed terminal stops it (docs/cli.md)."""
    keep_driving()
    follow = f"`releasegate status {service}`" if service else "`releasegate status`"
    announce_lost_output(f"the rollout goes on to its end without printing (follow it with {follow} and "
                         "`releasegate history`)")


def _exit_for(status: str) -> NoReturn:
    raise typer.Exit(EXIT_OK if status == "promoted" else EXIT_ROLLED_BACK if status in (
        "rolled_back", "aborted") else EXIT_INTERNAL)


@app.command(rich_help_panel=ROLLOUTS)
def validate(spec: SpecFile) -> None:
    """Check a spec or a release file; print every problem as FILE:LINE:COL: message (exit 2), or a summary."""
    from releasegate.spec import load_spec

    group.for_release_file("validate", out, spec)
    s = load_spec(spec)
    steps = " -> ".join(f"{st.weight}%" for st in s.strategy.steps) or "direct"
    j = s.analysis.judge
    judged = (f", judge ({', '.join(m.metric for m in j.metrics)}, alpha {j.alpha:g}"
              f"{', counts from Prometheus' if j.counts is not None else ''})" if j is not None else "")
    out.print(f"{spec}: ok: service {s.service} ({s.tier}), {s.strategy.kind} {steps}"
              f"{' beside a baseline' if s.analysis.baseline else ''}, {len(s.analysis.rules)} rule(s){judged}, "
              f"rollback {s.rollback_mode}")


@app.command(rich_help_panel=ROLLOUTS)
def plan(spec: SpecFile, version: group.Versions, state_dir: StateDir = None,
         env: Annotated[str | None, typer.Option(
             "--env", metavar="ENV", show_default=False,
             help="Also show what the stored policy and calendar would decide now for a deploy to ENV.")]
         = None,
         hotfix: Annotated[bool, _flag("--hotfix", "With --env: judge it as deploy --hotfix would.")] = False) -> None:
    """Dry run: the steps and timings deploy would follow. Starts nothing, changes nothing."""
    from releasegate.planning import make_plan, render_governance

    _use(state_dir)
    one = group.for_release_file("plan", out, spec, version, state_dir=_State.state_dir)
    made = make_plan(spec, one, _State.state_dir)
    render_plan(out, made)
    if env is not None:
        render_governance(out, made, spec, env, _State.state_dir, hotfix)


AllowBreaking = Annotated[bool, _flag("--allow-breaking-migration",
                                      "Apply migrations the backward-compatibility lint refuses: the release must "
                                      "be registered with this flag and carry an approval of the policy's "
                                      "emergency_role (sre by default) given since.")]


@app.command(rich_help_panel=ROLLOUTS)
def preflight(spec: SpecFile, version: Version, state_dir: StateDir = None,
              env: Annotated[str, typer.Option(metavar="ENV", help="Environment (for the next freeze).")] = "prod",
              allow_breaking_migration: AllowBreaking = False) -> None:
    """The T-60 checks deploy runs first: disk, port, platform (command, image or hosts), migrations, freezes."""
    from releasegate.preflight import preflight as run_preflight
    from releasegate.spec import load_spec

    _use(state_dir)
    s = load_spec(spec)
    check_version(version)
    checks = asyncio.run(run_preflight(s, spec, version, _State.state_dir, env,
                                      allow_breaking=allow_breaking_migration, say=ProgressPrinter(out).note))
    for c in checks:
        out.print(f"{'[green]pass[/]' if c.ok else '[bold red]FAIL[/]'}  {c.name:<16} {c.detail}")
    if not all(c.ok for c in checks):
        raise typer.Exit(2)


@app.command(rich_help_panel=ROLLOUTS)
def deploy(spec: SpecFile, version: group.Versions, state_dir: StateDir = None,
           env: Annotated[str, typer.Option(metavar="ENV", help="Environment the policy and calendar judge this "
                                                               "deploy for.")] = "prod",
           actor: Annotated[str | None, typer.Option("--as", metavar="USER", show_default=False,
                                                     help="Who deploys; needs RELEASEGATE_TOKEN.")] = None,
           hotfix: Annotated[bool, _flag("--hotfix", "Judge this as a hotfix (allowed in hotfix-only freezes and "
                                                     "outside deploy windows).")] = False,
           break_glass: Annotated[bool, _flag("--break-glass", "Emergency change past a freeze or missing stages: "
                                                               "needs --reason, --as and an approval of the "
                                                               "policy's emergency_role (sre by default).")] = False,
           reason: Annotated[str | None, typer.Option(metavar="TEXT", show_default=False,
                                                      help="Why, with --break-glass.")] = None,
           allow_breaking_migration: AllowBreaking = False,
           policy: Annotated[Path | None, typer.Option(hidden=True)] = None,
           calendar: Annotated[Path | None, typer.Option(hidden=True)] = None) -> None:
    """Roll VERSION out as the spec says, in the foreground, with live progress.

    SPEC may be a release file: its services roll out as one group (docs/multi-service.md).
    Before anything starts, the stored policy and calendar (`policy apply`, `calendar apply`) must allow it.
    """
    from releasegate.governance.gate import DeployRequest

    for option, path in (("policy", policy), ("calendar", calendar)):
        if path is not None:
            raise UserError(f"deploy --{option} {path}: deploys are judged by the stored {option}, never a file; an "
                            f"admin stores it with `releasegate {option} apply {path} --as ADMIN` (then drop "
                            f"--{option})")
    _use(state_dir)
    _driving(None)
    printer = ProgressPrinter(out)
    request = DeployRequest(env=env, actor=actor, token=os.environ.get("RELEASEGATE_TOKEN"), hotfix=hotfix,
                            break_glass=break_glass, reason=reason,
                            allow_breaking_migration=allow_breaking_migration)
    one = group.for_release_file("deploy", out, spec, version, ctx=_ctx(), request=request)
    st = asyncio.run(service.deploy(_ctx(), spec, one, on_progress=printer, request=request))
    printer.summary(st)
    _exit_for(st.status)


@app.command(rich_help_panel=ROLLOUTS)
def resume(name: group.ServiceOrRelease, state_dir: StateDir = None) -> None:
    """Continue an interrupted rollout (or release group) from its persisted state."""
    _use(state_dir)
    _driving(name)
    group.handled(out, _ctx(), "resume", name)
    printer = ProgressPrinter(out)
    st = asyncio.run(service.resume(_ctx(), name, on_progress=printer))
    printer.summary(st)
    _exit_for(st.status)


CommandActor = Annotated[str | None, typer.Option(
    "--as", metavar="USER", help="Who asks, for the audit log; needs USER's RELEASEGATE_TOKEN. Default: the OS login, "
                                 "recorded as unauthenticated.", show_default=False)]


def _identify(ctx: service.Context, name: str, kind: str, actor: str | None) -> None:
    """``--as USER`` is believed with USER's token (a wrong one is refused and audited), and, once a policy is
    stored, only for a user it names; without it, the OS login."""
    if actor is not None:
        from releasegate.governance.identity import authenticate
        from releasegate.governance.stored import stored_policy

        authenticate(ctx.state_dir, stored_policy(ctx.state_dir), actor, os.environ.get("RELEASEGATE_TOKEN"),
                     action=kind, release=name)
        ctx.actor = actor
    else:
        from releasegate.governance.identity import os_user

        ctx.actor = f"{os_user()} (os login)"


def _command(name: str, kind: str, actor: str | None) -> None:
    ctx = _ctx()
    _identify(ctx, name, kind, actor)
    _driving(name)  # abort and rollback may apply themselves, as resume would
    group.handled(out, ctx, kind, name)
    res = asyncio.run(service.send_command(ctx, name, kind))
    out.print(res.message)
    if res.needs_resume:
        if kind in ("abort", "rollback"):
            out.print(f"applying it now (as `releasegate resume {name}` would)")
            printer = ProgressPrinter(out)
            st = asyncio.run(service.resume(ctx, name, on_progress=printer))
            printer.summary(st)
            _exit_for(st.status)
        out.print(f"run `releasegate resume {name}` to apply it")


@app.command(rich_help_panel=ROLLOUTS)
def promote(name: group.ServiceOrRelease, actor: CommandActor = None, state_dir: StateDir = None) -> None:
    """Skip the remaining steps: send the new version to 100 % (after health and smoke pass)."""
    _use(state_dir)
    _command(name, "promote", actor)


@app.command(rich_help_panel=ROLLOUTS)
def abort(name: group.ServiceOrRelease, actor: CommandActor = None, state_dir: StateDir = None) -> None:
    """Stop the rollout: traffic back to the previous version at once, new instances stopped."""
    _use(state_dir)
    _command(name, "abort", actor)


@app.command(rich_help_panel=ROLLOUTS)
def rollback(name: group.ServiceOrRelease, actor: CommandActor = None, state_dir: StateDir = None) -> None:
    """Roll back now: during a rollout like abort; after one, switch back to the kept previous version."""
    _use(state_dir)
    _command(name, "rollback", actor)


@app.command(rich_help_panel=ROLLOUTS)
def down(name: Service, actor: CommandActor = None,
         force: Annotated[bool, _flag("--force", "Abort a rollout in progress first (recorded as an abort).")]
         = False, state_dir: StateDir = None) -> None:
    """Take a service down: stop every instance of every version, remove its routes, stop its router."""
    from releasegate.teardown import take_down

    _use(state_dir)
    ctx = _ctx()
    _identify(ctx, name, "down", actor)
    _driving(name)  # --force may apply an abort itself
    result = asyncio.run(take_down(ctx, name, force=force, on_progress=ProgressPrinter(out)))
    for line in result.lines:
        out.print(line, markup=False)


@app.command(rich_help_panel=ROLLOUTS)
def status(name: Annotated[str | None, typer.Argument(help="Service or release; all services when omitted.",
                                                       metavar="SERVICE")] = None,
           as_json: AsJson = False, state_dir: StateDir = None) -> None:
    """What runs (or is down), what is rolling out, and when the kept previous version is retired."""
    _use(state_dir)
    group.handled(out, _ctx(), "status", name, as_json)
    data = service.status(_ctx(), name)
    if as_json:
        out.print_json(service.dumps(data))
    elif not data:
        out.print(f"no services deployed yet in {shown(_State.state_dir)} (`releasegate deploy SPEC "
                  f"--version V`); {POINT_ELSEWHERE}", markup=False)
    else:
        render_status(out, data)


@app.command(rich_help_panel=ROLLOUTS)
def history(name: group.ServiceOrRelease, as_json: AsJson = False,
            limit: Annotated[int, typer.Option(metavar="N", help="How many rollouts, newest first.")] = 20,
            state_dir: StateDir = None) -> None:
    """Past rollouts of a service with every decision and the metric values behind it."""
    _use(state_dir)
    group.handled(out, _ctx(), "history", name, as_json, limit)
    data = service.history(_ctx(), name, limit)
    if as_json:
        out.print_json(service.dumps(data))
    else:
        render_history(out, data)


@app.command(rich_help_panel=ROLLOUTS)
def gc(name: Annotated[str | None, typer.Argument(help="Service; all when omitted.", metavar="SERVICE")] = None,
       state_dir: StateDir = None) -> None:
    """Retire previous versions whose keep_previous time has passed."""
    from releasegate.governance.identity import os_user

    _use(state_dir)
    ctx = _ctx()
    ctx.actor = f"{os_user()} (os login)"  # audited with each retirement
    stopped = asyncio.run(service.gc(ctx, name))
    if not any(stopped.values()):
        out.print("nothing to retire")
    for svc, items in stopped.items():
        for item in items:
            out.print(f"{svc}: stopped {item}")


@app.command(rich_help_panel=ROLLOUTS)
def demo(state_dir: Annotated[Path, typer.Option(
             "--state-dir", metavar="DIR", help="The demo's own state (kept for status and history afterwards; "
                                                "an earlier demo's is replaced).")] = Path(".releasegate-demo"),
         port: Annotated[int, typer.Option(metavar="PORT", help="Where the demo's router listens.")] = 18080,
         fast: Annotated[bool, _flag("--fast", "Shorter pauses (for tests).")] = False) -> None:
    """The tour in a minute: 1.0.0, a canary of 2.0.0 to 100 %, then a 3.0.0 rolled back by analysis."""
    from releasegate.commands.server import choose_store
    from releasegate.demo import run_demo

    choose_store(None)  # the demo's own SQLite in its own state dir, never the store RELEASEGATE_STORE names
    raise typer.Exit(run_demo(out, state_dir, port, fast))


mount(app)
assign_panels(app)
mark_read_only(app)
readable_help()


def main(argv: list[str] | None = None) -> None:
    from releasegate import client  # RELEASEGATE_SERVER: the CLI as the server's client (docs/server.md)

    server, args = client.split_server(sys.argv[1:] if argv is None else argv)
    client.run(server, args) if server else run_app(app, args)
