"""``releasegate policy apply|show|history``, and the ``apply``/``history`` the calendar group shares with it.

The policy and the calendar in force live in the state (``releasegate.governance.stored``): ``apply`` validates a
file and stores it as a new version, audited with who and a diff; ``show`` and ``history`` read them back without
creating or changing anything. ``show`` prints the exact stored text on stdout (what it was, where from, on
stderr), so ``releasegate policy show > policy.yaml`` brings a file up to date.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Annotated

import typer

from releasegate.commands import reported
from releasegate.commands.approvals import state_dir_of
from releasegate.errors import UserError
from releasegate.governance import stored
from releasegate.governance.identity import TOKEN_ENV
from releasegate.store.governance import StoredDocument

policy_app = typer.Typer(help="The approval policy in force: users, roles (admin among them) and the stages of each "
                              "environment, stored in the state and versioned.", no_args_is_help=True)

StateDir = Annotated[Path | None, typer.Option("--state-dir", envvar="RELEASEGATE_HOME", show_default=False,
                                               help="Where state, logs and the database live "
                                                    "(default ./.releasegate).")]
AsAdmin = Annotated[str | None, typer.Option(
    "--as", metavar="USER", show_default=False,
    help=f"An admin of the stored policy, with their token in {TOKEN_ENV}; not needed for the very first policy.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Validate and show the diff; store nothing.")]
VersionOpt = Annotated[int | None, typer.Option("--version", metavar="N", min=1, show_default=False,
                                                help="A past version (default: the one in force).")]
Diff = Annotated[bool, typer.Option("--diff", help="The diff against the version before it, instead of the text.")]


class Documents:
    """Where ``show``, ``history`` and the calendar's views read the stored documents: the state dir.

    Why a seam: the CLI as the server's client (releasegate.client_governance) runs these same commands with the
    documents read through the API, so their output cannot drift from standalone's."""

    def latest(self, where: Path, kind: stored.Kind, version: int | None = None) -> StoredDocument | None:
        return stored.latest(where, kind, version)

    def history(self, where: Path, kind: stored.Kind) -> list[StoredDocument]:
        return stored.history(where, kind)

    def shown(self, where: Path) -> str:
        """How messages name where the documents are."""
        return str(where)


class Source:
    documents: Documents = Documents()


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M %Z")


def apply_file(kind: stored.Kind, file: Path, as_user: str | None, dry_run: bool, state_dir: Path | None) -> None:
    """``policy apply`` and ``calendar apply``."""
    with reported():
        where = state_dir_of(state_dir)
        result = stored.apply(where, kind, file, actor=as_user, token=os.environ.get(TOKEN_ENV) or None,
                              dry_run=dry_run)
    previous = result.previous
    if not result.changed:
        typer.echo(f"{kind}: {file} is the same as {previous.label if previous else 'what is stored'}; nothing "
                   "stored")
        return
    added, removed = result.counts()
    against = f" (+{added} -{removed} lines against v{previous.version})" if previous else ""
    if result.document is None:
        nxt = previous.version + 1 if previous else 1
        typer.echo(f"{kind}: {file} is valid; applying it would store v{nxt}{against}; nothing stored (--dry-run)")
        typer.echo(result.diff, nl=False)
        return
    doc = result.document
    typer.echo(f"{doc.label} from {file} ({doc.sha256}), applied by {doc.actor}{against}")
    if previous is not None:
        typer.echo(result.diff, nl=False)
    policy = stored.stored_policy(where)
    if kind == "policy" and previous is None and policy is not None:
        typer.echo(f"next: the first admin's token, `releasegate token new {policy.admins()[0]}` (no --as needed for "
                   "it; after it, only an admin issues tokens)")
    if kind == "calendar" and policy is None:
        typer.echo("note: no policy is stored, so anyone who can write the state dir may replace this calendar; "
                   "`releasegate policy apply FILE` names the admins who may")


def show_document(kind: stored.Kind, version: int | None, diff: bool, state_dir: Path | None) -> None:
    """``policy show`` (and ``calendar show --yaml``): the stored text on stdout, what it is on stderr."""
    with reported():
        where = state_dir_of(state_dir)
        doc = Source.documents.latest(where, kind, version)
        if doc is None:
            raise UserError(_missing(kind, where, version))
    typer.echo(f"{doc.label}, {doc.sha256}, applied by {doc.actor} at {_when(doc.at)} from {doc.source}", err=True)
    if diff:
        previous = Source.documents.latest(where, kind, doc.version - 1) if doc.version > 1 else None
        typer.echo(stored.unified_diff(kind, previous, doc.content, f"{kind} v{doc.version}"), nl=False)
        return
    typer.echo(doc.content, nl=not doc.content.endswith("\n"))


def _missing(kind: str, where: Path, version: int | None) -> str:
    shown = Source.documents.shown(where)
    if version is None:
        return f"no {kind} is stored in {shown}; an admin stores one with `releasegate {kind} apply FILE`"
    return f"--version {version}: there is no {kind} v{version} in {shown} (see `releasegate {kind} history`)"


def history_of(kind: stored.Kind, state_dir: Path | None) -> None:
    """``policy history`` and ``calendar history``: every version, who applied it, when, from where."""
    with reported():
        where = state_dir_of(state_dir)
        docs = Source.documents.history(where, kind)
        if not docs:
            raise UserError(_missing(kind, where, None))
    rows = [("version", "applied", "by", "sha256", "from")]
    rows += [(f"v{d.version}" + (" *" if d is docs[-1] else ""), _when(d.at), d.actor, d.sha256[:19], d.source or "-")
             for d in docs]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[4])
    typer.echo(f"* in force; `releasegate {kind} show --version N --diff` shows what a version changed")


@policy_app.command("apply")
def policy_apply(file: Annotated[Path, typer.Argument(metavar="FILE", show_default=False,
                                                      help="Policy (YAML) to validate and store.")],
                 as_user: AsAdmin = None, dry_run: DryRun = False, state_dir: StateDir = None) -> None:
    """Validate FILE and store it as the policy in force: a new version, audited with who and the diff.

    Replacing it needs an admin of the stored policy (--as, with their token); the first needs none (OS login).
    """
    apply_file("policy", file, as_user, dry_run, state_dir)


@policy_app.command("show")
def policy_show(version: VersionOpt = None, diff: Diff = False, state_dir: StateDir = None) -> None:
    """Print the stored policy exactly as applied (`policy show > policy.yaml` updates a file)."""
    show_document("policy", version, diff, state_dir)


@policy_app.command("history")
def policy_history(state_dir: StateDir = None) -> None:
    """Every version of the stored policy: when, by whom, its sha256 and the file it came from."""
    history_of("policy", state_dir)


__all__ = ["Documents", "Source", "apply_file", "history_of", "policy_app", "show_document"]
