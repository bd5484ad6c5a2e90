"""Who is acting: ``--as USER`` is believed only with that user's token in ``RELEASEGATE_TOKEN``.

Without this, ``--as`` is a claim anyone can make, and "the author signs no stage but the author_role" or "two
distinct reviewers" would be rules anyone could walk around by typing another name. Tokens are random (32 bytes from
``secrets``), shown once, and only their SHA-256 is stored: a salted slow hash buys nothing for a secret with
256 bits of entropy, and the comparison is constant-time. A new token replaces the user's previous one, so a
leaked token is revoked by issuing a new one.

Who may issue a token: an admin (role ``admin`` of the policy in force), with ``--as`` and their own token, once any
admin holds a token. Before that, the first tokens (the first admin's among them) are issued by whoever can write
the state dir: they could edit the database anyway. Every issue is recorded in the audit log with the
operating-system login and the issuing admin, so a token issued behind a user's back shows, and the user's own
token stops working. The threat model is in docs/governance.md.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import secrets
import time
from pathlib import Path

from releasegate.errors import UserError
from releasegate.governance.policy import ADMIN_ROLE, Policy
from releasegate.store.audit import append_entry
from releasegate.store.governance import GovernanceStore

TOKEN_ENV = "RELEASEGATE_TOKEN"
TOKEN_PREFIX = "rg_"


def hash_token(token: str) -> str:
    return hashlib.sha256(f"releasegate-token:{token}".encode()).hexdigest()


def os_user() -> str:
    """The operating-system login, recorded as evidence next to the claimed identity."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def new_token(state_dir: Path, policy: Policy, user: str, *, by: str | None = None, by_token: str | None = None,
              now: float | None = None) -> str:
    """A new token for ``user`` (who must be in ``policy``), replacing any previous one; only its hash is kept.

    ``by`` (with ``by_token``) is the admin issuing it; needed once an admin of ``policy`` holds a token.
    """
    at = time.time() if now is None else now
    problem = policy.user_problem(user)
    if problem is None and by is not None:
        authenticate(state_dir, policy, by, by_token, action=f"token new {user}", now=at)
    who = by or f"{os_user()} (os login)"
    with GovernanceStore(state_dir) as store, store.tx() as db:
        problem = problem or _issuer_problem(store, policy, user, by)
        evidence = {"user": user, "os_user": os_user(), "policy": policy.source}
        if problem:
            append_entry(db, who, "token.refused", decision=problem, evidence=evidence, at=at)
        else:
            token = TOKEN_PREFIX + secrets.token_urlsafe(32)
            replaced = store.set_token_hash(user, hash_token(token), at)
            append_entry(db, who, "token.new", decision=f"token for {user} issued" + (
                ", replacing the previous one" if replaced else ""), evidence=evidence, at=at)
    if problem:
        raise UserError(f"token new: {problem}")
    return token


def _issuer_problem(store: GovernanceStore, policy: Policy, user: str, by: str | None) -> str | None:
    """None when ``by`` may issue ``user``'s token: an admin always; anyone until an admin holds a token."""
    admins = policy.admins()
    if by is not None:
        if by in admins:
            return None
        return (f"--as {by}: issuing tokens needs role {ADMIN_ROLE} in {policy.source}; admins: "
                f"{', '.join(admins) or 'none'}")
    if any(store.token_hash(admin) is not None for admin in admins):
        return (f"an admin holds a token, so only an admin issues tokens now: `releasegate token new {user} --as "
                f"ADMIN` with that admin's token in {TOKEN_ENV} (admins: {', '.join(admins)})")
    return None


def authenticate(state_dir: Path, policy: Policy | None, user: str, token: str | None, *,
                 action: str = "authenticate", release: str | None = None, now: float | None = None) -> None:
    """Refuse (UserError, and an ``auth.refused`` audit entry) unless ``token`` is ``user``'s current token.

    With a policy, the user must also be in it. ``action`` and ``release`` say what the user was trying to do,
    for the audit entry.
    """
    at = time.time() if now is None else now
    problem = policy.user_problem(user) if policy is not None else None
    if problem is None:
        with GovernanceStore(state_dir, readonly=True) as reader:
            stored = reader.token_hash(user)
        create = f"an admin creates one with `releasegate token new {user} --as ADMIN`"
        if stored is None:
            problem = f"--as {user}: {user} has no token; {create} (then export {TOKEN_ENV}=...)"
        elif not token:
            problem = f"--as {user} needs {user}'s token in the environment variable {TOKEN_ENV}"
        elif not hmac.compare_digest(stored, hash_token(token)):
            problem = (f"--as {user}: {TOKEN_ENV} is not {user}'s current token (a new token replaces the old "
                       f"one); {create}")
    if problem is None:
        return
    with GovernanceStore(state_dir) as store, store.tx() as db:
        append_entry(db, user, "auth.refused", release=release, decision=problem,
                     evidence={"for": action, "os_user": os_user(), "token_given": bool(token)}, at=at)
    raise UserError(problem)


__all__ = ["TOKEN_ENV", "authenticate", "hash_token", "new_token", "os_user"]
