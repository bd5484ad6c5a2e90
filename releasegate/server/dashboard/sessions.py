"""The dashboard's sign-in sessions: a random id in the cookie, everything else kept in the store.

Why server-side: the cookie must not carry the token (a copied cookie would then be a copied API token, valid
until revoked). The cookie holds a random session id; the store maps the id's *hash* to the token's *hash* (never
the token, never the id: a copy of the database opens no session) and the grant is looked up again on every
request, so revoking or replacing the token ends its sessions at once, and the role is always the API's current
one. Why in the store and not in memory: a session then outlives a server's restart, and every server sharing the
store (docs/server.md, failover) honours it, so a browser behind a load balancer stays signed in.

CSRF: each session has its own random token, put in every form and checked (in constant time) on every POST,
together with the request's Origin (or Referer) against the server's own address.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request

from releasegate.governance.identity import hash_token
from releasegate.server.reads import Reads
from releasegate.store.server import Grant

COOKIE = "releasegate_session"
LIFETIME = 8 * 3600.0
"""Seconds a session lasts from sign-in (a working day); then the user signs in again."""


@dataclass
class Session:
    token_hash: str
    csrf: str
    expires: float


@dataclass
class Sessions:
    """Sessions of ``lifetime`` seconds each, in the store's ``server_sessions`` (through the app's kept
    connection: ``request.app.state.reads``)."""

    lifetime: float = LIFETIME

    def open(self, request: Request, token: str) -> str:
        """A new session for ``token`` (already checked); its id, for the cookie."""
        sid, now = secrets.token_urlsafe(32), time.time()
        _reads(request).server.open_session(hash_token(sid), hash_token(token), secrets.token_urlsafe(32),
                                            now + self.lifetime, now)
        return sid

    def close(self, request: Request, sid: str | None) -> None:
        if sid is not None:
            _reads(request).server.close_session(hash_token(sid))

    def find(self, request: Request) -> tuple[Session, Grant] | None:
        """The request's live session and its token's current grant, or None (no, unknown, expired or revoked)."""
        sid = request.cookies.get(COOKIE)
        if not sid:
            return None
        store = _reads(request).server
        kept = store.session(hash_token(sid))
        if kept is None:
            return None
        found = Session(*kept)
        if found.expires <= time.time():
            store.close_session(hash_token(sid))
            return None
        grant = store.grant_for(found.token_hash)
        if grant is None:  # the token was revoked or replaced: so is every session it opened
            store.close_session(hash_token(sid))
            return None
        request.state.user = grant.name
        return found, grant


def _reads(request: Request) -> Reads:
    reads: Reads = request.app.state.reads
    return reads


def public_origin(request: Request) -> str:
    """``scheme://host`` browsers see: ``--public-url`` behind a reverse proxy (which terminates TLS, so the server
    itself sees plain HTTP and the proxy's Host may differ), else this request's own scheme and Host."""
    public: str | None = getattr(request.app.state, "public_origin", None)
    return public or f"{request.url.scheme}://{request.headers.get('host', '')}"


def secure_cookie(request: Request) -> bool:
    """Whether the session cookie gets ``Secure``: the browser's side of the connection is HTTPS."""
    return public_origin(request).startswith("https://")


def same_origin(request: Request) -> bool:
    """Does the POST come from a page of this server? Browsers send Origin on form POSTs (Referer as a fallback);
    a request with neither is refused too, so a forged cross-site form cannot pass by omitting them."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if not claimed or claimed == "null":
        return False
    parts = urlsplit(claimed)
    return f"{parts.scheme}://{parts.netloc.lower()}" == public_origin(request).lower()


def csrf_ok(session: Session, sent: str | None) -> bool:
    return sent is not None and secrets.compare_digest(session.csrf.encode(), sent.encode())


__all__ = ["COOKIE", "LIFETIME", "Session", "Sessions", "csrf_ok", "public_origin", "same_origin", "secure_cookie"]


def seal(session: Session, said: str) -> str:
    """A tag for the message a page shows after a button (``?said=...&sig=...``). Why: the message travels in the
    redirect's address, and a link made elsewhere must not put words on this server's page ("your session expired,
    paste your token at ..."); only this session's own redirects carry a tag its CSRF secret matches."""
    return hmac.new(session.csrf.encode(), said.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:32]


def unsealed(session: Session, said: str | None, sig: str | None) -> str | None:
    """``said`` when ``sig`` is this session's tag of it (``seal``); else nothing is shown."""
    if not said or not sig:
        return None
    return said if hmac.compare_digest(seal(session, said), sig) else None

