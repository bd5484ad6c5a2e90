"""Who is acting: ``--as USER`` is believed only with that user's token in ``RELEASEGATE_TOKEN``.

Without this, ``--as`` is a claim anyone can make, and "the author signs no stage but developer" or "two distinct
reviewers" would be rules anyone could walk around by typing another name. Tokens are random (32 bytes from
``secrets``), shown once, and only their SHA-256 is stored: a salted slow hash buys nothing for a secret with
256 bits of entropy, and the comparison is constant-time. A new token replaces the user's previous one, so a
leaked token is revoked by issuing a new one.

Who may issue tokens is whoever can write the state dir (the same people who could edit the database): issuing is
recorded in the audit log with the operating-system login that did it, so a token issued behind a user's back
shows, and the user's own token stops working.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import secrets
import time
from pathlib import Path

from releasegate.errors import UserError
from releasegate.governance.policy import Policy
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


def new_token(state_dir: Path, policy: Policy, user: str, *, now: float | None = None) -> str:
    """A new token for ``user`` (who must be in the policy), replacing any previous one; only its hash is kept."""
    at = time.time() if now is None else now
    problem = policy.user_problem(user)
    with GovernanceStore(state_dir) as store, store.tx() as db:
        if problem:
            append_entry(db, user, "token.refused", decision=problem, evidence={"os_user": os_user()}, at=at)
        else:
            token = TOKEN_PREFIX + secrets.token_urlsafe(32)
            replaced = store.set_token_hash(user, hash_token(token), at)
            append_entry(db, user, "token.new", decision="issued, replacing the previous token" if replaced
                         else "issued", evidence={"os_user": os_user(), "policy": policy.source}, at=at)
    if problem:
        raise UserError(f"token new: {problem}")
    return token


def authenticate(state_dir: Path, policy: Policy | None, user: str, token: str | None, *,
                 action: str = "authenticate", release: str | None = None, now: float | None = None) -> None:
    """Refuse (UserError, and an ``auth.refused`` audit entry) unless ``token`` is ``user``'s current token.

    With a policy, the user must also be in it. ``action`` and ``release`` say what the user was trying to do,
    for the audit entry.
    """
    at = time.time() if now is None else now
    problem = policy.user_problem(user) if policy is not None else None
    with GovernanceStore(state_dir) as store:
        if problem is None:
            stored = store.token_hash(user)
            given = hash_token(token or "")
            create = f"`releasegate token new {user} --policy FILE` creates one"
            if stored is None:
                problem = f"--as {user}: {user} has no token; {create} (then export {TOKEN_ENV}=...)"
            elif not token:
                problem = f"--as {user} needs {user}'s token in the environment variable {TOKEN_ENV}"
            elif not hmac.compare_digest(stored, given):
                problem = (f"--as {user}: {TOKEN_ENV} is not {user}'s current token (a new token replaces the old "
                           f"one); {create}")
        if problem is None:
            return
        with store.tx() as db:
            append_entry(db, user, "auth.refused", release=release, decision=problem,
                         evidence={"for": action, "os_user": os_user(), "token_given": bool(token)}, at=at)
    raise UserError(problem)


__all__ = ["TOKEN_ENV", "authenticate", "hash_token", "new_token", "os_user"]
