"""Who may do what on the server: bearer tokens with a role over a service pattern.

Roles (docs/server.md): ``viewer`` reads; ``deployer`` also deploys, promotes, aborts, rolls back and resumes;
``approver`` also approves and rejects (the stored policy still decides which stages the user may sign);
``admin`` may do everything, including issuing tokens. A role covers the services its fnmatch pattern matches
(``*`` by default); routes that name no service need the role with the pattern ``*``.

Every route but ``/healthz`` and ``/readyz`` depends on ``principal`` (401 without a valid token), and every write
route on ``need(role)`` (403 for a token that holds that role for no service): tests/test_server_api.py enumerates
the app's routes so a new route cannot skip this. A refused token is never echoed, logged or audited (refusals
are not audited at all: an unauthenticated client could otherwise grow the log at will; the access log shows the
401s).
"""

from __future__ import annotations

import fnmatch
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from fastapi import Depends, Request

from releasegate.errors import UserError
from releasegate.governance.identity import TOKEN_PREFIX, hash_token, os_user
from releasegate.server.problems import Problem
from releasegate.store.server import Grant, ServerStore

ROLES = ("viewer", "deployer", "approver", "admin")
_CAN = {"viewer": {"viewer"}, "deployer": {"viewer", "deployer"}, "approver": {"viewer", "approver"},
        "admin": set(ROLES)}
"""What each role includes: a deployer is not an approver (the four eyes stay two people)."""


def check_role(role: str, where: str = "--role") -> str:
    if role not in ROLES:
        raise UserError(f"{where} {role}: not a role; use one of {', '.join(ROLES)}")
    return role


def issue(state_dir: Path, name: str, role: str, pattern: str = "*", by: str | None = None) -> str:
    """A new server token for ``name`` (replacing theirs), returned once; only its hash is stored."""
    check_role(role)
    if not name.strip() or any(c.isspace() or not c.isprintable() for c in name):
        raise UserError(f"token new {name!r}: a token's name is the user the audit log records; use one word")
    if not pattern.strip():
        raise UserError("--service: give a service name or pattern such as 'shop-*' (default '*')")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    who = by or f"{os_user()} (os login)"
    grant = Grant(name, role, pattern, time.time(), who)
    with ServerStore(state_dir) as store:
        store.put_token(grant, hash_token(token), who, {"name": name, "role": role, "service": pattern,
                                                        "os_user": os_user()})
    return token


def allowed(grant: Grant, role: str, service: str | None) -> bool:
    """May ``grant`` act as ``role`` on ``service`` (None: a route naming no service, needing pattern ``*``)?"""
    if role not in _CAN[grant.role]:
        return False
    if grant.role == "admin" and grant.pattern == "*":
        return True
    return fnmatch.fnmatchcase(service, grant.pattern) if service is not None else grant.pattern == "*"


def principal(request: Request) -> Grant:
    """The caller's grant from ``Authorization: Bearer TOKEN``, or 401 (the same answer for missing and wrong)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(401, "unauthenticated", "this route needs `Authorization: Bearer TOKEN` (a token from "
                                              "`releasegate token new NAME --role ROLE`)")
    state_dir: Path = request.app.state.state_dir
    with ServerStore(state_dir) as store:
        grant = store.grant_for(hash_token(token.strip()))
    if grant is None:
        raise Problem(401, "unauthenticated", "the bearer token is not a current server token (a new token "
                                              "replaces the old one); ask an admin for one")
    request.state.user = grant.name
    return grant


def need(role: str) -> Callable[[Grant], Grant]:
    """A dependency: 403 unless the caller holds ``role`` (or a role including it) for some service."""

    def check(grant: Grant = Depends(principal)) -> Grant:
        if role not in _CAN[grant.role]:
            raise Problem(403, "forbidden", f"{grant.name} is {grant.role} of {grant.pattern}; this needs role "
                                            f"{role}")
        return grant
    return check


def require(grant: Grant, role: str, service: str | None) -> None:
    """403 unless ``grant`` covers ``service`` (checked in the handler, once the service is known)."""
    if not allowed(grant, role, service):
        what = f"service {service}" if service is not None else "every service ('*')"
        raise Problem(403, "forbidden", f"{grant.name} is {grant.role} of {grant.pattern}; this needs role {role} "
                                        f"for {what}")


__all__ = ["ROLES", "allowed", "check_role", "issue", "need", "principal", "require"]
