"""The policy and the calendar in force: validated copies kept in the state, versioned, replaced only by an admin.

Whoever writes a spec, or a command line, must not be able to switch governance off: a spec without
``governance:``, or one naming a laxer file, used to deploy to prod unapproved, and ``deploy --calendar`` replaced
the freeze calendar. So ``releasegate policy apply FILE`` and ``calendar apply FILE`` validate the file and store
its exact text as a new version (sha256, who, when), audited with a unified diff against the previous version,
and every deploy, approval and freeze check reads the stored copy.

Who may change them: an admin (role ``admin``) of the policy stored now, proven with their token. Before any policy
is stored there are no admins, so the first ``policy apply`` (and a calendar applied with no policy) is allowed to
whoever can write the state dir, recorded with the operating-system login; that policy must name an admin.

A spec's ``governance.policy``/``calendar`` keys decide nothing any more; they still load, and a deploy is refused
when the file they name is not what is stored (``spec_drift``): someone expects rules that are not in force.
"""

from __future__ import annotations

import difflib
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from releasegate.errors import UserError
from releasegate.governance.calendar_models import CALENDAR_FILE, Calendar, load_calendar_text
from releasegate.governance.identity import TOKEN_ENV, authenticate, os_user
from releasegate.governance.policy import ADMIN_ROLE, POLICY_FILE, Policy, load_policy_text
from releasegate.spec.models import Spec
from releasegate.spec.yamlfile import read_yaml_text
from releasegate.store.audit import append_entry
from releasegate.store.governance import GovernanceStore, StoredDocument

Kind = Literal["policy", "calendar"]


def sha256_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_file(kind: Kind, path: Path, *, storing: bool = False) -> tuple[str, Policy | Calendar]:
    """The file's text and what it says, validated (every problem as ``FILE:LINE:COL``, exit 2): the text that is
    stored. ``storing``: also what only a policy going into the state must not have (no admin, say)."""
    if kind == "policy":
        text = read_yaml_text(path, POLICY_FILE)
        return text, load_policy_text(text, str(path), storing=storing)
    text = read_yaml_text(path, CALENDAR_FILE)
    return text, load_calendar_text(text, str(path))


# --- reading what is stored (never creates nor changes anything) ---------------------------------------------------


def latest(state_dir: Path, kind: Kind, version: int | None = None) -> StoredDocument | None:
    with GovernanceStore(state_dir, readonly=True) as store:
        return store.document(kind, version)


def history(state_dir: Path, kind: Kind) -> list[StoredDocument]:
    with GovernanceStore(state_dir, readonly=True) as store:
        return store.documents(kind)


def parse_policy(doc: StoredDocument) -> Policy:
    """The stored policy; its messages name it ``stored policy v3``."""
    return load_policy_text(doc.content, doc.label, doc.label)


def parse_calendar(doc: StoredDocument) -> Calendar:
    return load_calendar_text(doc.content, doc.label)


@dataclass(frozen=True)
class InForce:
    """The stored policy and calendar, parsed; None where none is stored."""

    policy: Policy | None = None
    policy_doc: StoredDocument | None = None
    calendar: Calendar | None = None
    calendar_doc: StoredDocument | None = None

    def evidence(self) -> dict[str, str | None]:
        """What the audit log records about the rules a decision was taken under."""
        return {kind: f"v{doc.version} {doc.sha256}" if doc else None
                for kind, doc in (("policy", self.policy_doc), ("calendar", self.calendar_doc))}


def in_force(state_dir: Path) -> InForce:
    with GovernanceStore(state_dir, readonly=True) as store:
        policy_doc, calendar_doc = store.document("policy"), store.document("calendar")
    return InForce(parse_policy(policy_doc) if policy_doc else None, policy_doc,
                   parse_calendar(calendar_doc) if calendar_doc else None, calendar_doc)


def stored_policy(state_dir: Path) -> Policy | None:
    doc = latest(state_dir, "policy")
    return parse_policy(doc) if doc else None


def require_policy(state_dir: Path, what: str) -> Policy:
    """The stored policy, or a refusal saying how to store one."""
    policy = stored_policy(state_dir)
    if policy is None:
        raise UserError(f"{what}: no policy is stored in {state_dir}; an admin stores one with `releasegate policy "
                        "apply FILE` (users, roles and the stages of each environment)")
    return policy


class LiveCalendar:
    """The stored calendar as it is at each call (an admin may add a freeze during a rollout), parsed again only
    when a new version was applied.

    Why it keeps its read-only connection: it is asked before every analysis of every rollout, and opening one
    costs far more than the query (with 1,000 rollouts in one server it was a third of the process's time,
    bench/bench_server_scale.py). Reads outside a transaction see the last commit, so the kept connection sees a
    calendar applied meanwhile. Only a connection whose file already has the documents table is kept: one opened
    without it reads an empty stand-in (``_open_readonly``) that would hide a table created later."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._cached: tuple[int, Calendar] | None = None
        self._store: GovernanceStore | None = None

    def _latest(self) -> StoredDocument | None:
        if self._store is None:
            store = GovernanceStore(self.state_dir, readonly=True)
            if not store.has_table("gov_documents"):
                with store:
                    return store.document("calendar")
            self._store = store
        return self._store.document("calendar")

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def get(self) -> Calendar | None:
        doc = self._latest()
        if doc is None:
            return None
        if self._cached is None or self._cached[0] != doc.version:
            self._cached = (doc.version, parse_calendar(doc))
        return self._cached[1]


# --- the spec's old keys -------------------------------------------------------------------------------------------


def _named(spec_path: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else spec_path.parent / path


def spec_drift(spec: Spec, spec_path: Path, force: InForce, state_dir: Path) -> list[str]:
    """Refusals for a spec whose ``governance.policy``/``calendar`` names a file that is not what is stored.

    Those keys decide nothing; but someone who wrote them expects those rules, so deploying under others (or none)
    would be a surprise either way. The comparison is on the rules, not the text: comments do not count.
    """
    problems = []
    pairs: tuple[tuple[Kind, str | None, Policy | Calendar | None, StoredDocument | None], ...] = (
        ("policy", spec.governance.policy, force.policy, force.policy_doc),
        ("calendar", spec.governance.calendar, force.calendar, force.calendar_doc))
    for kind, name, stored, doc in pairs:
        if not name:
            continue
        path = _named(spec_path, name)
        key = f"{spec_path}: governance.{kind} names {path}"
        if doc is None or stored is None:
            problems.append(f"{key}, but no {kind} is stored in {state_dir} and deploys are judged by the stored "
                            f"one: `releasegate {kind} apply {path}`")
            continue
        try:
            _text, in_file = read_file(kind, path)
        except UserError as exc:
            problems.append(f"{key}, which does not load ({str(exc).splitlines()[0]}); deploys are judged by "
                            f"{doc.label}: fix the file or drop the key")
            continue
        if in_file.model_dump() != stored.model_dump():
            show = "policy show" if kind == "policy" else "calendar show --yaml"
            problems.append(f"{key}, which differs from {doc.label} (applied by {doc.actor}) that deploys are judged "
                            f"by: `releasegate {kind} apply {path} --as ADMIN` stores it, `releasegate {show} > "
                            f"{path}` brings the file up to date, or drop the key")
    return problems


# --- changing them -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Applied:
    """What ``apply`` did: the new version (None when unchanged or a dry run), the one it replaced and the diff."""

    kind: Kind
    document: StoredDocument | None
    previous: StoredDocument | None
    diff: str
    changed: bool

    def counts(self) -> tuple[int, int]:
        lines = self.diff.splitlines()[2:]
        return (sum(1 for x in lines if x.startswith("+")), sum(1 for x in lines if x.startswith("-")))


def unified_diff(kind: Kind, previous: StoredDocument | None, text: str, source: str) -> str:
    old = previous.content if previous else ""
    before = f"{kind} v{previous.version}" if previous else "/dev/null"
    lines = difflib.unified_diff([line + "\n" for line in old.splitlines()],
                                 [line + "\n" for line in text.splitlines()], fromfile=before, tofile=source)
    return "".join(lines)


def _refuse(state_dir: Path, who: str, kind: Kind, problem: str, at: float) -> UserError:
    with GovernanceStore(state_dir) as store, store.tx() as db:
        append_entry(db, who, f"{kind}.refused", decision=problem, evidence={"os_user": os_user()}, at=at)
    return UserError(problem)


def _authorize(state_dir: Path, kind: Kind, current: Policy | None, actor: str | None, token: str | None,
               at: float) -> str:
    """Who applies: an authenticated admin of the stored policy, or (none stored yet) the OS login."""
    if current is None:
        if actor is not None:
            raise UserError(f"--as {actor}: no policy is stored yet, so there is no admin to authenticate; run it "
                            f"without --as (it is recorded with your OS login, {os_user()})")
        return f"{os_user()} (os login)"
    admins = ", ".join(current.admins())
    if actor is None:
        raise _refuse(state_dir, f"{os_user()} (os login)", kind, f"{kind} apply: changing the stored {kind} needs an "
                      f"admin of {current.source}: add --as ADMIN with that admin's token in {TOKEN_ENV} (admins: "
                      f"{admins})", at)
    authenticate(state_dir, current, actor, token, action=f"{kind} apply", now=at)
    if actor not in current.admins():
        held = ", ".join(current.roles_of(actor)) or "no role"
        raise _refuse(state_dir, actor, kind, f"--as {actor}: {kind} apply needs role {ADMIN_ROLE} in "
                      f"{current.source}; {actor} holds {held}; admins: {admins}", at)
    return actor


def _keeps_an_admin(state_dir: Path, path: Path, new: Policy) -> None:
    """A new policy must leave an admin who holds a token, or nobody could prove they may change it again."""
    with GovernanceStore(state_dir, readonly=True) as store:
        holding = [a for a in new.admins() if store.token_hash(a) is not None]
    if not holding:
        admins = new.admins()
        raise UserError(f"{path}: none of its admins ({', '.join(admins)}) holds a token, so nobody could change the "
                        "policy again; keep an admin who has one in this version, issue the new admins' tokens "
                        f"(`releasegate token new {admins[0]} --as ADMIN`), then remove the old admin")


def apply(state_dir: Path, kind: Kind, path: Path, *, actor: str | None = None, token: str | None = None,
          dry_run: bool = False, now: float | None = None, server_admin: str | None = None,
          source: str | None = None) -> Applied:
    """Validate ``path`` and store it as the next version of ``kind``; nothing is stored on any error.

    ``server_admin``: an admin the server authenticated with its bearer token (docs/server.md) applies it; the
    policy's own admins and their identity tokens are then not asked for. ``source``: where the text came from
    when ``path`` is only the server's copy of an upload (the client's file name, recorded and shown in the diff).

    The same text as the stored version changes nothing and needs no admin (re-running a script is harmless).
    """
    at = time.time() if now is None else now
    text, parsed = read_file(kind, path, storing=True)
    force = in_force(state_dir)
    previous = force.policy_doc if kind == "policy" else force.calendar_doc
    source = source or str(path)
    diff = unified_diff(kind, previous, text, source)
    if previous is not None and previous.content == text:
        return Applied(kind, None, previous, "", changed=False)
    if dry_run:
        return Applied(kind, None, previous, diff, changed=True)
    who = server_admin or _authorize(state_dir, kind, force.policy, actor, token, at)
    if isinstance(parsed, Policy) and force.policy is not None and server_admin is None:
        _keeps_an_admin(state_dir, path, parsed)
    with GovernanceStore(state_dir) as store, store.tx() as db:
        now_stored = store.document(kind)
        stored_now = now_stored.version if now_stored else 0
        if stored_now != (previous.version if previous else 0):
            raise UserError(f"{kind} apply: the stored {kind} changed meanwhile (now v{stored_now}); look at "
                            f"`releasegate {kind} history` and apply again")
        doc = store.add_document(kind, text, sha256_of(text), who, os_user(), source, at)
        result = Applied(kind, doc, previous, diff, changed=True)
        added, removed = result.counts()
        append_entry(db, who, f"{kind}.applied",
                     decision=f"{doc.label} from {source} (+{added} -{removed} lines"
                              + (f" against v{previous.version})" if previous else ", the first)"),
                     evidence={"version": doc.version, "sha256": doc.sha256, "source": source,
                               "previous": previous.version if previous else None,
                               "previous_sha256": previous.sha256 if previous else None, "os_user": os_user(),
                               "diff": diff}, at=at)
    return result


__all__ = ["Applied", "InForce", "Kind", "LiveCalendar", "apply", "history", "in_force", "latest", "parse_calendar",
           "parse_policy", "read_file", "require_policy", "sha256_of", "spec_drift", "stored_policy",
           "unified_diff"]
