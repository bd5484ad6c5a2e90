"""``release new``, ``approve``, ``reject``, ``withdraw``, ``approvals`` and ``token new``: sign-off from the shell.

Plain functions (and the ``token_app`` group) that ``releasegate.cli`` mounts. Each authenticates ``--as USER``
with ``RELEASEGATE_TOKEN`` before doing anything, raises ``UserError`` for anything refused (the CLI prints one
line and exits 2, also when these commands run outside ``releasegate.cli``, as in the tests) and leaves the rules
to ``releasegate.governance.approvals``.

The policy is the one stored in the state (``releasegate policy apply``). Only ``approvals`` still takes
``--policy FILE``, as a dry look that says it judged a file; ``approve``, ``reject`` and ``token new`` refuse the
option with a message rather than an unknown-option error, because scripts written for earlier releases pass it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.table import Table

from releasegate.commands import reported
from releasegate.errors import UserError
from releasegate.governance import approvals as gov
from releasegate.governance.identity import TOKEN_ENV, authenticate, new_token
from releasegate.governance.policy import Policy, load_policy
from releasegate.store.governance import Signoff

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

StateDir = Annotated[Path | None, typer.Option("--state-dir", envvar="RELEASEGATE_HOME", show_default=False,
                                               help="Where state, logs and the database live "
                                                    "(default ./.releasegate).")]
PolicyFile = Annotated[Path | None, typer.Option(
    "--policy", metavar="FILE", show_default=False,
    help="Dry look: judge by this policy file instead of the stored one (the output says so).")]
GonePolicy = Annotated[Path | None, typer.Option("--policy", metavar="FILE", hidden=True, show_default=False)]
AsUser = Annotated[str, typer.Option("--as", metavar="USER", show_default=False,
                                     help=f"Who you are; your token must be in {TOKEN_ENV}.")]
ReleaseRef = Annotated[str, typer.Argument(metavar="SERVICE@VERSION", show_default=False,
                                           help="The release, e.g. shop@1.4.2.")]
StageRole = Annotated[str, typer.Option("--stage", metavar="ROLE", show_default=False,
                                        help="The stage, named by its role, e.g. reviewer.")]
Env = Annotated[str, typer.Option("--env", metavar="ENV", help="The environment whose stages are meant.")]


def state_dir_of(state_dir: Path | None) -> Path:
    """The command's ``--state-dir``, else the one given before the command (``releasegate --state-dir X ...``)."""
    if state_dir is not None:
        return state_dir
    ctx = click.get_current_context(silent=True)
    value = ctx.find_root().params.get("state_dir") if ctx is not None else None
    return Path(value) if value else Path(".releasegate")


def _token() -> str | None:
    return os.environ.get(TOKEN_ENV) or None


def _stored(where: Path, what: str) -> Policy:
    from releasegate.governance.stored import require_policy

    return require_policy(where, what)


def _known(where: Path) -> Policy | None:
    """The stored policy, to check ``--as USER`` is one of its users; None (any user with a token) without one."""
    from releasegate.governance.stored import stored_policy

    return stored_policy(where)


def _gone(policy: Path | None, command: str) -> None:
    if policy is not None:
        raise UserError(f"{command} --policy {policy}: approvals are judged by the stored policy, not a file; drop "
                        f"--policy (an admin stores the file with `releasegate policy apply {policy} --as ADMIN`)")


def _signer(state_dir: Path | None, policy: Path | None, release: str, user: str,
            action: str) -> tuple[Path, Policy, str, str]:
    """State dir, stored policy, service and version, once ``user`` is authenticated for ``action`` on ``release``."""
    _gone(policy, action)
    where = state_dir_of(state_dir)
    pol = _stored(where, action)
    service, version = gov.parse_release(release)
    authenticate(where, pol, user, _token(), action=action, release=release)
    return where, pol, service, version


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def release_new(service: Annotated[str, typer.Argument(metavar="SERVICE", show_default=False,
                                                      help="The release's name: the spec's governance.release, "
                                                           "else its service.")],
                version: Annotated[str, typer.Argument(metavar="VERSION", show_default=False,
                                                      help="The version, e.g. 1.4.2.")],
                as_user: AsUser,
                digest: Annotated[str | None, typer.Option("--digest", metavar="sha256:HEX",
                                                           help="The artifact's digest; approvals are tied to it.")]
                = None,
                commit: Annotated[str | None, typer.Option("--commit", metavar="SHA",
                                                           help="The commit the artifact was built from.")] = None,
                commit_time: Annotated[str | None, typer.Option(
                    "--commit-time", metavar="ISO8601", show_default=False,
                    help="When --commit was made, e.g. \"$(git show -s --format=%cI SHA)\": where the DORA lead "
                         "time starts (docs/dora.md).")] = None,
                allow_breaking: Annotated[bool, typer.Option(
                    "--allow-breaking-migration", show_default=False,
                    help="The release carries a backward-incompatible migration; its approvals then cover it "
                         "(allowing it voids earlier approvals).")] = False,
                no_breaking: Annotated[bool, typer.Option(
                    "--no-breaking-migration", show_default=False,
                    help="It no longer does. Neither flag: unchanged.")] = False,
                state_dir: StateDir = None) -> None:
    """Register SERVICE@VERSION with you as its author; again with a new digest voids its approvals."""
    if allow_breaking and no_breaking:
        raise UserError("release new: give --allow-breaking-migration or --no-breaking-migration, not both")
    breaking = True if allow_breaking else False if no_breaking else None
    with reported():
        committed = _commit_time(commit, commit_time)
        where = state_dir_of(state_dir)
        authenticate(where, _known(where), as_user, _token(), action="release new", release=f"{service}@{version}")
        change = gov.new_release(where, service, version, as_user, digest, commit, breaking_migration=breaking,
                                 commit_at=committed)
        rel = change.release
        artifact = f"digest {rel.digest or 'none'}, commit {rel.commit or 'none'}" + (
            ", breaking migration allowed" if rel.breaking_migration else "")
        if change.created:
            out.print(f"registered {rel.name} by {rel.author} ({artifact})", markup=False)
        elif change.voided:
            out.print(f"{rel.name}: changed ({artifact}); {len(change.voided)} approval(s) are void and must be "
                      "given again: " + ", ".join(f"{s.stage} by {s.user}" for s in change.voided), markup=False)
        elif change.changed:
            out.print(f"{rel.name}: changed ({artifact})", markup=False)
        else:
            out.print(f"{rel.name}: already registered by {rel.author} ({artifact}); nothing changed", markup=False)


def _commit_time(commit: str | None, text: str | None) -> float | None:
    """``--commit-time`` as Unix time (UTC when it has no offset), or a one-line error naming the fix."""
    if text is None:
        return None
    if commit is None:
        raise UserError(f"--commit-time {text}: give --commit SHA too (the time is the commit's)")
    import datetime as dt

    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(f"--commit-time {text}: write an ISO 8601 time such as 2026-12-01T09:30:00+09:00, e.g. "
                        "from `git show -s --format=%cI SHA`") from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def approve(release: ReleaseRef, stage: StageRole, as_user: AsUser,
            check: Annotated[list[str] | None, typer.Option("--check", metavar="ITEM",
                                                            help="A checklist item you confirm (exact text); "
                                                                 "repeat for each.")] = None,
            env: Env = "prod", state_dir: StateDir = None, policy: GonePolicy = None) -> None:
    """Approve a stage of a release (for its registered artifact), under the stored policy."""
    with reported():
        where, pol, service, version = _signer(state_dir, policy, release, as_user, "approve")
        signoff = gov.approve(where, pol, service, version, stage, as_user, check or [], env)
        status = gov.release_status(where, pol, service, version, env)
        st = next(s for s in status.stages if s.role == signoff.stage)
        done = sum(1 for s in status.stages if s.complete)
        out.print(f"{release}: {as_user} approved stage {signoff.stage} for {env} ({len(st.counted)} of "
                  f"{st.needed}); {done} of {len(status.stages)} stages complete", markup=False)


def reject(release: ReleaseRef, stage: StageRole, as_user: AsUser,
           reason: Annotated[str, typer.Option("--reason", metavar="TEXT", show_default=False,
                                               help="What has to change.")],
           env: Env = "prod", state_dir: StateDir = None, policy: GonePolicy = None) -> None:
    """Reject a release at a stage: it is blocked everywhere until you withdraw the rejection."""
    with reported():
        where, pol, service, version = _signer(state_dir, policy, release, as_user, "reject")
        signoff = gov.reject(where, pol, service, version, stage, as_user, reason, env)
        out.print(f"{release}: rejected by {as_user} at stage {signoff.stage}; blocked until "
                  f"`releasegate withdraw {release} --as {as_user}`", markup=False)


def withdraw(release: ReleaseRef, as_user: AsUser, state_dir: StateDir = None) -> None:
    """Withdraw your rejection of a release."""
    with reported():
        where = state_dir_of(state_dir)
        service, version = gov.parse_release(release)
        authenticate(where, _known(where), as_user, _token(), action="withdraw", release=release)
        gone = gov.withdraw(where, service, version, as_user)
        out.print(f"{release}: {as_user} withdrew the rejection at stage {', '.join(s.stage for s in gone)}",
                  markup=False)


def approvals(release: ReleaseRef, env: Env = "prod", policy: PolicyFile = None,
              as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
              state_dir: StateDir = None) -> None:
    """Show a release's stages under the stored policy: needed, given by whom and when, what is missing."""
    with reported():
        where = state_dir_of(state_dir)
        pol = load_policy(policy) if policy is not None else _stored(where, "approvals")
        judged = (f"{pol.source}, not the stored policy (a dry look: deploys are judged by the stored one)"
                  if policy is not None else pol.source)
        service, version = gov.parse_release(release)
        status = gov.release_status(where, pol, service, version, env)
        if as_json:
            typer.echo(json.dumps(dict(_as_json(status), judged_by=judged), indent=2))
        else:
            _render(status, judged)


def _render(status: gov.ReleaseStatus, judged: str) -> None:
    render_release(_as_json(status), judged)


def render_release(data: dict[str, Any], judged: str) -> None:
    """``approvals`` as text, drawn from its JSON shape (the CLI as the server's client draws the API's)."""
    env = data["env"]
    out.print(f"judged by {judged}", markup=False)
    out.print(f"{data['release']} for {env}: " + (
        f"by {data['author']}, digest {data['digest'] or 'none'}, commit {data['commit'] or 'none'}"
        + (", breaking migration allowed" if data["breaking_migration"] else "") if data["registered"]
        else "not registered"), markup=False)
    table = Table(show_edge=False, pad_edge=False)
    for column in ("stage", "needed", "given", "missing checklist", "not counted"):
        table.add_column(column, overflow="fold")
    for st in data["stages"]:
        table.add_row(st["stage"], str(st["needed"]),
                      ", ".join(f"{s['user']} {_when(s['at'])}" for s in st["given"]) or "-",
                      ", ".join(st["missing_checklist"]) or "-",
                      ", ".join(f"{s['user']} ({s['why']})" for s in st["not_counted"]) or "-")
    if data["stages"]:
        out.print(table)
    for s in data["rejections"]:
        out.print(f"rejected by {s['user']} at stage {s['stage']} ({_when(s['at'])}): {s['reason']}", markup=False)
    for s in data["voided"]:
        out.print(f"void: {s['stage']} by {s['user']} ({_when(s['at'])}): {s['void_reason']}", markup=False)
    if data["gate"]["allowed"]:
        out.print(f"deploy to {env}: allowed", markup=False)
    else:
        out.print(f"deploy to {env}: refused\n  - " + "\n  - ".join(data["gate"]["missing"]), markup=False)


def _signoff_json(s: Signoff) -> dict[str, Any]:
    return {"user": s.user, "stage": s.stage, "env": s.env, "at": s.at, "checks": list(s.checks),
            "digest": s.digest, "reason": s.reason, "void_at": s.void_at, "void_reason": s.void_reason}


def _as_json(status: gov.ReleaseStatus) -> dict[str, Any]:
    rel = status.release
    return {
        "release": f"{status.service}@{status.version}", "env": status.env, "registered": rel is not None,
        "author": rel.author if rel else None, "digest": rel.digest if rel else None,
        "commit": rel.commit if rel else None, "breaking_migration": rel.breaking_migration if rel else False,
        "stages": [{"stage": st.role, "needed": st.needed, "complete": st.complete, "checklist": st.checklist,
                    "given": [_signoff_json(s) for s in st.counted], "missing_checklist": st.missing_checklist,
                    "not_counted": [dict(_signoff_json(s), why=why) for s, why in st.ignored]}
                   for st in status.stages],
        "rejections": [_signoff_json(s) for s in status.rejections],
        "voided": [_signoff_json(s) for s in status.voided],
        "gate": {"allowed": status.gate.allowed, "missing": status.gate.missing},
    }


token_app = typer.Typer(help=f"Tokens: identity tokens for --as USER (given in {TOKEN_ENV}), or with --role the "
                             "server's bearer tokens.", no_args_is_help=True)


@token_app.command("new")
def token_new(user: Annotated[str, typer.Argument(metavar="NAME", show_default=False,
                                                  help="A user named in the stored policy (the name the audit log "
                                                       "records).")],
              as_user: Annotated[str | None, typer.Option(
                  "--as", metavar="ADMIN", show_default=False,
                  help=f"The admin issuing it, with their token in {TOKEN_ENV}; needed once an admin holds a token "
                       "(the first admin's own token needs none).")] = None,
              role: Annotated[str | None, typer.Option(
                  "--role", metavar="ROLE", show_default=False,
                  help="A server token (`releasegate server`) with this role: viewer, deployer, approver or "
                       "admin.")] = None,
              service: Annotated[str, typer.Option(
                  "--service", metavar="PATTERN", help="With --role: the services it covers (fnmatch).")] = "*",
              store: Annotated[str | None, typer.Option("--store", metavar="URL", show_default=False,
                                                        help="With --role: sqlite:///PATH/releasegate.db or "
                                                             "postgresql://USER@HOST:PORT/DB.")] = None,
              state_dir: StateDir = None, policy: GonePolicy = None) -> None:
    """Print a new token for NAME, once (only its hash is kept); it replaces NAME's old one.

    Without --role: NAME's identity token for --as (NAME must be in the stored policy). With --role: a bearer
    token for the server, made where the store is (that is how the first admin is made; admins can also use
    POST /api/v1/tokens).
    """
    with reported():
        _gone(policy, "token new")
        if role is not None:
            _server_token(user, role, service, store, state_dir, as_user)
            return
        if store is not None or service != "*":
            raise UserError("token new: --store and --service go with --role (a server token); identity tokens "
                            "for --as have neither")
        where = state_dir_of(state_dir)
        token = new_token(where, _stored(where, "token new"), user, by=as_user, by_token=_token())
        typer.echo(token)
        err.print(f"token for {user} shown once; use it as {TOKEN_ENV}. Any previous token of {user} no longer works.",
                  markup=False)


def _server_token(name: str, role: str, service: str, store: str | None, state_dir: Path | None,
                  as_user: str | None) -> None:
    from releasegate.commands.server import store_dir
    from releasegate.server.auth import issue

    if as_user is not None:
        raise UserError("token new --role: a server token is made where the store is (recorded with your OS login) "
                        "or by an admin through POST /api/v1/tokens; drop --as")
    token = issue(store_dir(store, state_dir), name, role, service)
    typer.echo(token)
    err.print(f"server token for {name} ({role} of {service}) shown once; clients send it as `Authorization: Bearer` "
              f"(RELEASEGATE_TOKEN). Any previous server token of {name} no longer works.", markup=False)


__all__ = ["approvals", "approve", "reject", "release_new", "render_release", "reported", "state_dir_of", "token_app",
           "withdraw"]
