"""The CLI side of multi-service releases (docs/multi-service.md): `deploy` and `plan` given a release file, and
`status`, `promote`, `abort`, `rollback`, `history`, `resume` given a release's name.

cli.py keeps its commands and hands them here first (``for_release_file``, ``handled``): when SPEC is a release
file or NAME a release, this module does the command and exits; otherwise cli.py goes on as for one service.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from releasegate import group_service, service
from releasegate.engine.group import GroupState, waves
from releasegate.errors import EXIT_INTERNAL, EXIT_OK, EXIT_ROLLED_BACK, UserError
from releasegate.governance.gate import DeployRequest
from releasegate.spec.release import is_release_file, load_release, member_versions

__all__ = ["ServiceOrRelease", "Versions", "deploy", "for_release_file", "handled", "is_release", "plan",
           "single_version", "validate"]

Versions = Annotated[list[str], typer.Option(
    "--version", "-v", metavar="VERSION", show_default=False, help="The release's version to roll out, e.g. 1.4.2; "
    "for a release file (docs/multi-service.md): one for every member, or SERVICE=VERSION once per member.")]

ServiceOrRelease = Annotated[str, typer.Argument(
    help="Service name from the spec, or a release's name (docs/multi-service.md).", show_default=False,
    metavar="SERVICE")]

TIERS = {"critical": "the whole group goes back to its previous versions",
         "important": "the group pauses: `promote RELEASE` goes on without it, `rollback RELEASE` takes all back",
         "supporting": "only it goes back; the others complete"}


def single_version(versions: list[str], spec: Path) -> str:
    """A service's spec takes one --version (SERVICE=VERSION and repeats are for release files)."""
    if len(versions) != 1 or "=" in versions[0]:
        raise UserError(f"{spec}: --version takes one VERSION for a service's spec (SERVICE=VERSION, repeated, "
                        "is for a release file)")
    return versions[0]


def is_release(ctx: service.Context, name: str | None) -> bool:
    return name is not None and group_service.known(ctx, name)


def _exit(gs: GroupState) -> NoReturn:
    raise typer.Exit(EXIT_OK if gs.status == "promoted" else EXIT_ROLLED_BACK if gs.status in (
        "partial", "rolled_back", "aborted") else EXIT_INTERNAL)


def deploy(out: Console, ctx: service.Context, path: Path, versions: list[str], request: DeployRequest) -> NoReturn:
    gs = asyncio.run(group_service.deploy(ctx, path, versions, request, say=_printer(out)))
    render_status(out, group_service.status(ctx, gs.release))
    _exit(gs)


def _printer(out: Console) -> group_service.Say:
    def say(line: str) -> None:
        out.print(line, markup=False, highlight=False)
    return say


def validate(out: Console, path: Path) -> None:
    """`validate` of a release file: every member's spec and the file itself, or a one-line summary."""
    release = load_release(path)
    out.print(f"{path}: ok: release {release.release}, {len(release.members)} member(s) ("
              + ", ".join(f"{m.service} {m.tier}" for m in release.members) + f"), switch {release.switch}",
              markup=False)


def plan(out: Console, path: Path, versions: list[str], state_dir: Path) -> None:
    """The group's steps: who starts when, how the switch happens, what each tier's failure does."""
    from releasegate.engine.group import Member
    from releasegate.planning import make_plan
    from releasegate.progress import render_plan

    release = load_release(path)
    wanted = member_versions(release, versions)
    members = [Member(service=m.service, spec_path=str(m.spec_path), tier=m.tier, depends_on=list(m.depends_on),
                      version=wanted[m.service], rollout_id="") for m in release.members]
    order = waves(members)
    made = {m.service: make_plan(m.spec_path, wanted[m.service], state_dir) for m in release.members}
    out.print(f"release {release.release}: {len(members)} member(s), switch {release.switch}", markup=False)
    for m in members:
        p = made[m.service]
        out.print(f"  {m.service:<16} {p.previous or '-'} -> {m.version}  {m.tier:<10} "
                  f"{p.spec.strategy.kind if p.previous else 'first deploy'}"
                  + (f", after {', '.join(m.depends_on)}" if m.depends_on else ""), markup=False)
    if release.switch == "together":
        out.print("1. every member, in parallel: start the new version beside the running one, health, smoke; "
                  "then hold with no traffic", markup=False)
        out.print("2. once every member holds, switch each to 100 % at once, in depends_on order: "
                  + "; then ".join(", ".join(w) for w in order), markup=False)
        out.print("3. each member's post-promotion watch, then promoted (a member's analysis still rolls it back)",
                  markup=False)
    else:
        out.print("members roll out one after another by depends_on (each after the ones it needs are promoted), "
                  "independent ones in parallel: " + "; then ".join(", ".join(w) for w in order), markup=False)
        for wave in order:
            for name in wave:
                render_plan(out, made[name])
    out.print("a member's failure, by tier: " + "; ".join(f"{t}: {what}" for t, what in TIERS.items()),
              markup=False)


def for_release_file(kind: str, out: Console, path: Path, versions: list[str] | None = None, *,
                     state_dir: Path | None = None, ctx: service.Context | None = None,
                     request: DeployRequest | None = None) -> str:
    """`validate`, `plan` or `deploy` of a release file, then exit; for a service's spec, return its one
    ``--version`` (refusing SERVICE=VERSION and repeats, which are for release files)."""
    if not is_release_file(path):
        return single_version(versions, path) if versions is not None else ""
    if kind == "validate":
        validate(out, path)
    elif kind == "plan":
        assert versions is not None and state_dir is not None
        plan(out, path, versions, state_dir)
    else:
        assert versions is not None and ctx is not None and request is not None
        deploy(out, ctx, path, versions, request)
    raise typer.Exit(EXIT_OK)


def handled(out: Console, ctx: service.Context, kind: str, name: str | None, as_json: bool = False,
            limit: int = 20) -> None:
    """Run ``kind`` for the release group ``name`` and exit; return at once when ``name`` is not a release
    (`status` of everything, as text, first says which releases there are)."""
    if kind == "status" and name is None and not as_json:
        for gs in group_service.latest_groups(ctx):
            out.print(f"release {gs.release}: {gs.status.replace('_', ' ')}, {len(gs.members)} member(s) "
                      f"(`releasegate status {gs.release}`)", markup=False)
    if not is_release(ctx, name):
        return
    assert name is not None
    if kind == "status":
        data = group_service.status(ctx, name)
        out.print_json(service.dumps(data)) if as_json else render_status(out, data)
    elif kind == "history":
        runs = group_service.history(ctx, name, limit)
        out.print_json(service.dumps(runs)) if as_json else render_history(out, runs)
    elif kind == "resume":
        _exit(asyncio.run(group_service.resume(ctx, name, say=_printer(out))))
    else:
        res = asyncio.run(group_service.send_command(ctx, name, kind))
        out.print(res.message, markup=False)
        if res.needs_resume:
            if kind in ("abort", "rollback"):
                out.print(f"applying it now (as `releasegate resume {name}` would)", markup=False)
                _exit(asyncio.run(group_service.resume(ctx, name, say=_printer(out))))
            out.print(f"run `releasegate resume {name}` to apply it", markup=False)
    raise typer.Exit(EXIT_OK)


def _member_line(m: dict[str, Any]) -> str:
    live = m["status"] in ("running", "held", "switching", "switched") and m.get("phase")
    where = f", {m['phase']} at {m['weight']}%" if live else ""
    reason = f": {m['reason']}" if m.get("reason") and m["status"] != "promoted" else ""
    return (f"  {m['service']:<16} {m['tier']:<10} {m['previous'] or '-'} -> {m['version']:<10} "
            f"{m['status'].replace('_', ' ')}{where}{reason}")


def render_status(out: Console, data: dict[str, Any]) -> None:
    head = f"release {data['release']} ({data['id']}, switch {data['switch']}): {data['status'].replace('_', ' ')}"
    if data.get("paused"):
        head += f" - {data['paused']}"
    elif data.get("reason"):
        head += f" - {data['reason']}"
    out.print(head, markup=False)
    for m in data["members"]:
        out.print(_member_line(m), markup=False)


def render_history(out: Console, runs: list[dict[str, Any]]) -> None:
    for run in runs:
        when = dt.datetime.fromtimestamp(run["created_at"]).astimezone().strftime("%Y-%m-%d %H:%M:%S")
        out.print(f"{when}  {run['id']}  {run['status'].replace('_', ' ')}: {run.get('reason') or ''}",
                  markup=False)
        for m in run["members"]:
            out.print(_member_line({**m, "phase": None}), markup=False)
        for e in run["events"]:
            out.print(f"    {e['kind']:<18} {e['message']}", markup=False)
