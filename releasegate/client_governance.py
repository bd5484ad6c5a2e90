"""The governance commands of the CLI as the server's client: ``approvals``, ``withdraw``, ``audit``, ``policy``,
``calendar`` and ``token new`` through the API (docs/server.md, "The CLI as a client").

Why the read-only ones run the standalone commands themselves: ``policy show|history`` and ``calendar
check|show|upcoming|history`` get the stored documents from the server (``GET /api/v1/policy``, ``/calendar``)
through ``commands.policy.Source`` and draw them with the same code, so their output and exit codes cannot
drift from standalone's. The writes (``apply``, ``withdraw``, ``token new``) send their request and print what
the standalone command prints, with the token's user as the one who acted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from releasegate.client import SERVER_ENV, call, err, where
from releasegate.commands.audit import Output, Since
from releasegate.commands.policy import Documents, Source
from releasegate.errors import UserError
from releasegate.governance.stored import Kind
from releasegate.store.governance import StoredDocument

ReleaseRef = Annotated[str, typer.Argument(metavar="SERVICE@VERSION", show_default=False,
                                           help="The release, e.g. shop@1.4.2.")]
KeyFile = Annotated[Path | None, typer.Option("--key-file", metavar="FILE", show_default=False,
                                              help="The HMAC key for --signed; keep it outside the state dir.")]
FileArg = Annotated[Path, typer.Argument(metavar="FILE", show_default=False, help="The YAML to validate and store.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Validate and show the diff; store nothing.")]


class RemoteDocuments(Documents):
    """The stored policy and calendar as the server has them."""

    def latest(self, where_: Path, kind: Kind, version: int | None = None) -> StoredDocument | None:
        found = call("GET", f"/api/v1/{kind}", absent_ok=True, params={"version": version} if version else None)
        return None if found is None else _document(found)

    def history(self, where_: Path, kind: Kind) -> list[StoredDocument]:
        return [_document(d) for d in call("GET", f"/api/v1/{kind}/history")]

    def shown(self, where_: Path) -> str:
        return f"the server {where()}"


def _document(d: dict[str, Any]) -> StoredDocument:
    return StoredDocument(kind=d["kind"], version=d["version"], content=d["content"], sha256=d["sha256"],
                          actor=d["actor"], os_user="", source=d["source"], at=d["at"])


def approvals(release: ReleaseRef,
              env: Annotated[str, typer.Option("--env", metavar="ENV", help="The environment whose stages are "
                                                                            "meant.")] = "prod",
              as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
              policy: Annotated[Path | None, typer.Option("--policy", metavar="FILE", hidden=True)] = None) -> None:
    """Show a release's stages under the server's stored policy: needed, given by whom and when, what is missing."""
    from releasegate.commands.approvals import render_release
    from releasegate.governance.approvals import parse_release

    if policy is not None:
        raise UserError(f"approvals --policy {policy}: a dry look at a policy file runs standalone (unset "
                        f"{SERVER_ENV}); through the server, approvals judges by the stored policy")
    service, version = parse_release(release)
    data = call("GET", f"/api/v1/releases/{service}/{version}", params={"env": env})
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        render_release(data, data["judged_by"])


def withdraw(release: ReleaseRef) -> None:
    """Withdraw your token's user's rejection of a release."""
    from releasegate.governance.approvals import parse_release

    service, version = parse_release(release)
    gone = call("DELETE", f"/api/v1/releases/{service}/{version}/rejections")
    typer.echo(f"{release}: {gone['user']} withdrew the rejection at stage {', '.join(gone['stages'])}")


def verify(expect: Annotated[list[str] | None, typer.Option(
               "--expect", metavar="SEQ:HASH", show_default=False,
               help="A head kept outside the state (what `audit head` printed): entry SEQ must still have HASH.")]
           = None,
           against: Annotated[Path | None, typer.Option(
               "--against", metavar="FILE", show_default=False,
               help="A signed export (`audit export --signed`): every entry in it must still be in the log.")] = None,
           key_file: KeyFile = None) -> None:
    """Check the server's audit log (hash chain and head): exit 0 when intact, exit 2 naming what was altered.

    --against checks the export's signature here (the key stays here) and sends the server the last entry it
    holds: the chain links every entry to the one before, so that entry unchanged means every earlier one is."""
    from releasegate.commands.audit import read_key, signed_export

    anchors = list(expect or [])
    count = len(anchors)
    if against is not None:
        entries = signed_export(against, read_key(key_file, "--against", Path.cwd() / ".releasegate"))
        anchors += [f"{seq}:{digest}" for seq, digest, _ in entries[-1:]]
        count += len(entries)
    elif key_file is not None:
        raise UserError("--key-file: it checks a signed export; give --against FILE with it")
    result = call("GET", "/api/v1/audit/verify", params={"expect": anchors})
    if not result["ok"]:
        raise UserError(f"audit log: {result['reason']}")
    typer.echo(f"audit log ok: {result['reason']}" + (f"; {count} anchored entries match" if count else ""))


def head() -> None:
    """Print the server's last audit entry as SEQ:HASH, to keep where the state's writers cannot."""
    top = call("GET", "/api/v1/audit/head")
    typer.echo(f"{top['seq']}:{top['hash']}")


def export(since: Since = None, output: Output = None,
           signed: Annotated[bool, typer.Option("--signed", show_default=False,
                                                help="End with an HMAC-SHA256 line over the entries, keyed with "
                                                     "--key-file (signed here: the key never goes to the "
                                                     "server).")] = False,
           key_file: KeyFile = None) -> None:
    """Write the server's audit log as JSON lines, one entry per line (admins)."""
    from releasegate.commands.audit import read_key, write_export

    if key_file is not None and not signed:
        raise UserError("--key-file: it signs the export; give --signed with it")
    key = read_key(key_file, "--signed", Path.cwd() / ".releasegate") if signed else None
    text = call("GET", "/api/v1/audit/export", params={"since": since} if since is not None else None)
    write_export(str(text).splitlines(keepends=True), key, output)


def _apply(kind: Kind, file: Path, dry_run: bool) -> None:
    """``policy apply`` / ``calendar apply`` through ``PUT /api/v1/{kind}``, printed as standalone prints it."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{file}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    done = call("PUT", f"/api/v1/{kind}", json={"text": text, "dry_run": dry_run, "source": str(file)})
    previous = done["previous"]
    if not done["changed"]:
        typer.echo(f"{kind}: {file} is the same as {f'stored {kind} v{previous}' if previous else 'what is stored'}; "
                   "nothing stored")
        return
    lines = done["diff"].splitlines()[2:]
    added, removed = sum(1 for x in lines if x.startswith("+")), sum(1 for x in lines if x.startswith("-"))
    against = f" (+{added} -{removed} lines against v{previous})" if previous else ""
    if dry_run:
        typer.echo(f"{kind}: {file} is valid; applying it would store v{(previous or 0) + 1}{against}; nothing "
                   "stored (--dry-run)")
        typer.echo(done["diff"], nl=False)
        return
    typer.echo(f"stored {kind} v{done['version']} from {file} ({done['sha256']}), applied by {done['actor']}{against}")
    if previous is not None:
        typer.echo(done["diff"], nl=False)


def policy_apply(file: FileArg, dry_run: DryRun = False) -> None:
    """Validate FILE and store it on the server as the policy in force (admins): a new version, audited."""
    _apply("policy", file, dry_run)


def calendar_apply(file: FileArg, dry_run: DryRun = False) -> None:
    """Validate FILE and store it on the server as the calendar in force (admins): a new version, audited."""
    _apply("calendar", file, dry_run)


def token_new(name: Annotated[str, typer.Argument(metavar="NAME", show_default=False,
                                                  help="The user the audit log records.")],
              role: Annotated[str | None, typer.Option("--role", metavar="ROLE", show_default=False,
                                                       help="viewer, deployer, approver or admin.")] = None,
              service: Annotated[str, typer.Option("--service", metavar="PATTERN",
                                                   help="The services it covers (fnmatch).")] = "*",
              store: Annotated[str | None, typer.Option("--store", metavar="URL", hidden=True)] = None) -> None:
    """Have the server issue a token for NAME (admins), printed once; it replaces NAME's old one."""
    from releasegate.server.auth import check_role

    if role is None:
        raise UserError("token new: through the server only server tokens are made; give --role ROLE (identity "
                        f"tokens for --as are for standalone use: unset {SERVER_ENV})")
    if store is not None:
        raise UserError(f"token new --store: the server issues the token in its own store; drop --store (or unset "
                        f"{SERVER_ENV} to make it where the store is)")
    check_role(role)
    made = call("POST", "/api/v1/tokens", json={"name": name, "role": role, "service": service})
    typer.echo(made["token"])
    err.print(f"server token for {name} ({role} of {service}) shown once; clients send it as `Authorization: Bearer` "
              f"(RELEASEGATE_TOKEN). Any previous server token of {name} no longer works.", markup=False)


def mount(app: typer.Typer) -> None:
    """Add these commands to the client's app, and read the stored documents through the server."""
    from releasegate.commands.calendar import calendar_history, check, show, upcoming_command
    from releasegate.commands.dora import dora_client
    from releasegate.commands.policy import policy_history, policy_show

    Source.documents = RemoteDocuments()
    app.command()(approvals)
    app.command()(withdraw)
    audit = typer.Typer(help="Verify or export the server's audit log.", no_args_is_help=True)
    for command in (verify, head, export):
        audit.command()(command)
    app.add_typer(audit, name="audit")
    policy = typer.Typer(help="The server's stored policy: apply (admins), show, history.", no_args_is_help=True)
    policy.command("apply")(policy_apply)
    policy.command("show")(policy_show)
    policy.command("history")(policy_history)
    app.add_typer(policy, name="policy")
    calendar = typer.Typer(help="The server's stored calendar: apply (admins), check, show, upcoming, history.",
                           no_args_is_help=True)
    commands: list[tuple[str, Callable[..., None]]] = [
        ("apply", calendar_apply), ("check", check), ("show", show), ("upcoming", upcoming_command),
        ("history", calendar_history)]
    for name, command in commands:
        calendar.command(name)(command)
    app.add_typer(calendar, name="calendar")
    token = typer.Typer(help="Server tokens, issued by the server (admins).", no_args_is_help=True)
    token.command("new")(token_new)
    app.add_typer(token, name="token")
    app.command("dora")(dora_client)


__all__ = ["RemoteDocuments", "mount"]
