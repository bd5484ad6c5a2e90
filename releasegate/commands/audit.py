"""``releasegate audit verify|export|head``: the audit log for people who check it.

``verify`` is what an auditor runs first: exit 0 with the entry count when the chain holds, exit 2 naming the
first entry that was edited, deleted or moved, the entries missing at the end, or an empty log beside releases.
``export`` writes JSON lines (every field, the hashes included, so the chain can be checked again outside
releasegate); ``--signed`` adds an HMAC-SHA256 line with a key kept outside the state dir.

Whoever can write the state dir can rewrite the whole chain and its head file consistently; only a head kept
somewhere else shows that. ``head`` prints ``SEQ:HASH`` to keep (a ticket, the deploy log, a chat message);
``verify --expect SEQ:HASH`` and ``verify --against SIGNED-EXPORT --key-file KEY`` check the log against it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from releasegate.commands.approvals import StateDir, reported, state_dir_of
from releasegate.durations import parse_duration
from releasegate.errors import UserError
from releasegate.store.audit import AuditLog, Verification
from releasegate.store.db import has_store

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

audit_app = typer.Typer(help="Check and export the tamper-evident audit log.", no_args_is_help=True)


def _log(state_dir: Path | None) -> AuditLog:
    where = state_dir_of(state_dir)
    if not has_store(where):
        raise UserError(f"audit log: no state in {where}; pass --state-dir DIR (or set RELEASEGATE_HOME) where "
                        "releasegate ran")
    return AuditLog(where)


def parse_since(text: str, now: float) -> float:
    """A duration back from ``now`` (``24h``, ``7d``) or an ISO 8601 time (UTC when it has no offset)."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--since {text}: write an ISO 8601 time (2025-11-22 or 2025-11-22T09:00:00+09:00) or a "
                        "duration back from now (24h, 7d)") from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


Expect = Annotated[list[str] | None, typer.Option(
    "--expect", metavar="SEQ:HASH", show_default=False,
    help="A head kept outside the state dir (what `audit head` printed): entry SEQ must still have HASH.")]
Against = Annotated[Path | None, typer.Option(
    "--against", metavar="FILE", show_default=False,
    help="A signed export (`audit export --signed`): every entry in it must still be in the log, unchanged.")]
KeyFile = Annotated[Path | None, typer.Option(
    "--key-file", metavar="FILE", show_default=False,
    help="The HMAC key for --signed / --against; keep it outside the state dir.")]


@audit_app.command()
def verify(expect: Expect = None, against: Against = None, key_file: KeyFile = None,
           state_dir: StateDir = None) -> None:
    """Check the hash chain and its head file: exit 0 when intact, exit 2 naming what was altered or deleted."""
    with reported():
        anchors = [parse_anchor(text) for text in expect or []]
        if against is not None:
            anchors += signed_export(against, read_key(key_file, "--against", state_dir_of(state_dir)))
        elif key_file is not None:
            raise UserError("--key-file: it checks a signed export; give --against FILE with it")
        with _log(state_dir) as log:
            result = log.verify()
            if result.ok:
                result = check_anchors(log, anchors) or result
        if not result.ok:
            raise UserError(f"audit log: {result.reason}")
        out.print(f"audit log ok: {result.reason}" + (f"; {len(anchors)} anchored entries match" if anchors
                                                      else ""), markup=False)


@audit_app.command()
def head(state_dir: StateDir = None) -> None:
    """Print the last entry as SEQ:HASH, to keep where the state dir's writers cannot (check: verify --expect)."""
    with reported():
        with _log(state_dir) as log:
            top = log.head()
        if top is None:
            raise UserError("audit log: it is empty; there is no head to keep yet")
        out.print(f"{top[0]}:{top[1]}", markup=False)


def parse_anchor(text: str) -> tuple[int, str, str]:
    seq, sep, digest = text.strip().partition(":")
    if (not sep or not seq.isdigit() or len(seq) > 18 or len(digest) < 12
            or any(c not in "0123456789abcdef" for c in digest)):
        raise UserError(f"--expect {text}: write SEQ:HASH as `releasegate audit head` prints it (the hash may be "
                        "cut to its first 12 characters or more)")
    return int(seq), digest, f"--expect {text}"


def check_anchors(log: AuditLog, anchors: list[tuple[int, str, str]]) -> Verification | None:
    for seq, digest, source in anchors:
        found = log.hash_of(seq)
        if found is None:
            return Verification(False, seq, f"entry {seq} is missing ({source} says it was written): the log was "
                                            "cut or rebuilt")
        if not found.startswith(digest):
            return Verification(False, seq, f"entry {seq} is not the one {source} recorded (hash {found[:12]}..., "
                                            f"not {digest[:12]}...): the chain was rewritten up to it")
    return None


def read_key(key_file: Path | None, option: str, state: Path) -> bytes:
    if key_file is None:
        raise UserError(f"{option}: give --key-file FILE, the HMAC key kept outside the state dir")
    if key_file.resolve().is_relative_to(state.resolve()):
        raise UserError(f"--key-file {key_file}: it is inside the state dir {state}, where whoever can rewrite the "
                        "log can read it; keep the key elsewhere")
    try:
        key = key_file.read_bytes().strip()
    except OSError as exc:
        raise UserError(f"--key-file {key_file}: cannot read it ({exc.strerror or exc})") from None
    if len(key) < 16:
        raise UserError(f"--key-file {key_file}: the key is {len(key)} bytes; use 16 or more random bytes "
                        "(e.g. `openssl rand -hex 32 > FILE`)")
    return key


def _mac(lines: list[str], key: bytes) -> str:
    """HMAC-SHA256 over every entry line exactly as written (so the head it ends with is covered too)."""
    return hmac.new(key, "".join(lines).encode("utf-8"), hashlib.sha256).hexdigest()


def signature(lines: list[str], key: bytes) -> dict[str, object]:
    """The trailer of a signed export: the HMAC, and what it covers (for people reading the file)."""
    last = json.loads(lines[-1]) if lines else {}
    return {"signature": {"algorithm": "hmac-sha256", "key_id": hashlib.sha256(key).hexdigest()[:16],
                          "entries": len(lines), "head_seq": last.get("seq"), "head_hash": last.get("hash"),
                          "hmac": _mac(lines, key)}}


def signed_export(path: Path, key: bytes) -> list[tuple[int, str, str]]:
    """Every entry of a signed export as an anchor, once its HMAC is right."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--against {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        trailer = json.loads(lines[-1])["signature"] if lines else None
        entries = [json.loads(line) for line in lines[:-1]]
    except (ValueError, KeyError, TypeError):
        trailer = None
    if not isinstance(trailer, dict):
        raise UserError(f"--against {path}: not a signed export (its last line is not the signature of "
                        "`audit export --signed`)")
    if not hmac.compare_digest(str(trailer.get("hmac")), _mac(lines[:-1], key)):
        raise UserError(f"--against {path}: the signature does not match (the export was altered, or "
                        "--key-file is not the key it was signed with)")
    return [(int(e["seq"]), str(e["hash"]), f"the signed export {path}") for e in entries]


Since = Annotated[str | None, typer.Option("--since", metavar="ISO8601|DURATION", show_default=False,
                                          help="Only entries from this time on, e.g. 2025-11-01 or 7d.")]
Output = Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE", show_default=False,
                                             help="Write here instead of standard output.")]
"""``audit export``'s options, shared with the server's client (client_governance.py)."""


@audit_app.command()
def export(since: Since = None, output: Output = None,
           signed: Annotated[bool, typer.Option("--signed", show_default=False,
                                                help="End with an HMAC-SHA256 line over the entries, keyed with "
                                                     "--key-file (check it with verify --against).")] = False,
           key_file: KeyFile = None,
           state_dir: StateDir = None) -> None:
    """Write the audit log as JSON lines, one entry per line, for auditors."""
    with reported():
        start = parse_since(since, time.time()) if since is not None else None
        key = read_key(key_file, "--signed", state_dir_of(state_dir)) if signed else None
        if key_file is not None and not signed:
            raise UserError("--key-file: it signs the export; give --signed with it")
        with _log(state_dir) as log:
            lines = [entry.to_json() + "\n" for entry in log.entries(start)]
        write_export(lines, key, output)


def write_export(lines: list[str], key: bytes | None, output: Path | None) -> None:
    """The export as JSON lines (signed when ``key``), to ``output`` or standard output: one shape whether the
    entries came from the state dir or from the server (client mode)."""
    if key is not None:
        lines = [*lines, json.dumps(signature(lines, key), sort_keys=True) + "\n"]
    if output is None:
        typer.echo("".join(lines), nl=False)
        return
    try:
        output.write_text("".join(lines), encoding="utf-8")
    except OSError as exc:
        raise UserError(f"--output {output}: cannot write it ({exc.strerror or exc})") from None
    count = len(lines) - (1 if key is not None else 0)
    err.print(f"wrote {count} audit entries to {output}" + (" (signed)" if key is not None else ""), markup=False)


__all__ = [
    "Output",
    "Since",
    "audit_app",
    "check_anchors",
    "parse_anchor",
    "parse_since",
    "read_key",
    "signature",
    "signed_export",
    "write_export",
]
