"""Who may use the router's admin API: a per-router secret in a 0600 file, and who a caller is.

The token file sits in the state dir beside the routes file (``routers/<service>.admin-token``). Whoever starts
the router creates it before the router starts (``ensure_admin_token``), and the router creates it too when started
by hand without one; it is never passed on the command line (``/proc/<pid>/cmdline`` is world-readable). Every
admin request except ``GET /health`` and ``GET /metrics`` must carry ``Authorization: Bearer <token>``.

``peer_uid`` reads, from the kernel's socket table, the uid of the local account that opened a loopback
connection, so a route change is recorded with the account that made it, not only with the name it claims.

Imports stay light: the router process loads this module at start-up.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import socket
import stat
import tempfile
from pathlib import Path

TOKEN_BYTES = 32
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
MAX_ACTOR = 200


class AdminTokenError(Exception):
    """The token file cannot be trusted or read; the message is one line naming the file and the fix."""


def default_token_file(routes_file: Path, service: str) -> Path:
    """``<service>.admin-token`` beside the routes file: ``routers/shop.admin-token`` in a state dir."""
    return routes_file.parent / f"{service}.admin-token"


def _valid(token: str) -> bool:
    return len(token) >= 16 and set(token) <= _TOKEN_CHARS


def read_admin_token(path: Path, *, strict: bool = False) -> str | None:
    """The token in ``path``; None when there is no such file.

    ``strict`` (the router at start-up): the file must be a regular file of the running user that no other
    account can read or write; anything else raises AdminTokenError, so a router never serves with a token other
    accounts could have read or planted.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AdminTokenError(f"router: cannot read the admin token file {path}: {exc.strerror or exc} (a "
                              "symbolic link is refused); delete it to get a new one") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if strict:
            if not stat.S_ISREG(st.st_mode):
                raise AdminTokenError(f"router: the admin token file {path} is not a regular file; delete it to "
                                      "get a new one")
            if st.st_uid != os.geteuid():
                raise AdminTokenError(f"router: the admin token file {path} belongs to uid {st.st_uid}, not to "
                                      f"the account running the router (uid {os.geteuid()}); delete it to get a "
                                      "new one")
            if st.st_mode & 0o077:
                raise AdminTokenError(f"router: the admin token file {path} is open to other accounts (mode "
                                      f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`, or delete it "
                                      "to get a new one")
        token = fh.read(4096).decode("ascii", errors="replace").strip()
    if not _valid(token):
        raise AdminTokenError(f"router: the admin token file {path} does not hold a token; delete it to get a "
                              "new one")
    return token


def ensure_admin_token(path: Path) -> str:
    """The token in ``path``, created first (mode 0600, atomically) when there is none.

    Written to a temporary file and linked into place, so a concurrent starter never reads a half-written token
    and never replaces one a running router uses.
    """
    found = read_admin_token(path, strict=True)
    if found is not None:
        return found
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(token + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another starter won the race: use its token
            os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    found = read_admin_token(path, strict=True)
    if found is None:  # pragma: no cover - deleted between link and read
        raise AdminTokenError(f"router: the admin token file {path} disappeared while it was being created")
    return found


def bearer_matches(header: str, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    scheme, _, credential = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credential.strip().encode("latin-1", "replace"), token.encode("ascii"))


def clean_actor(value: str) -> str:
    """The name a client gives in ``X-Releasegate-Actor``: printable, one line, bounded."""
    text = "".join(c if c.isprintable() else "?" for c in value.strip())[:MAX_ACTOR]
    return text or "unnamed"


# --- who is on the other end of a loopback connection ---------------------------------------------------------


def _proc_address(host: str, port: int) -> str | None:
    """An address as /proc/net/tcp{,6} prints it: the IP in 32-bit words of host byte order, the port in hex."""
    try:
        raw = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return None
    words = "".join(f"{int.from_bytes(raw[i:i + 4], 'little'):08X}" for i in range(0, len(raw), 4))
    return f"{words}:{port:04X}"


def peer_uid(peer: tuple[str, int], local: tuple[str, int]) -> int | None:
    """The uid owning the client end of a loopback TCP connection (Linux; None elsewhere or when not found).

    The kernel lists every socket of the network namespace with its owner's uid; the client's socket is the one
    whose local address is our peer and whose remote address is us. Slow with many sockets: call it in a thread.
    """
    mine = _proc_address(*local[:2])
    theirs = _proc_address(*peer[:2])
    if mine is None or theirs is None:
        return None
    table = "/proc/net/tcp6" if len(theirs) > 13 else "/proc/net/tcp"
    try:
        with open(table, encoding="ascii") as fh:
            next(fh, None)
            for line in fh:
                fields = line.split()
                if len(fields) > 7 and fields[1] == theirs and fields[2] == mine:
                    return int(fields[7])
    except (OSError, ValueError):
        return None
    return None


def user_name(uid: int | None) -> str | None:
    if uid is None:
        return None
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return None
