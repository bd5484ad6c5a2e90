"""The little HTTP/1.1 the hot path needs, done with bytes.find on the raw head instead of a header parser.

Why not a parser library: a reverse proxy only needs the framing (Content-Length, Transfer-Encoding), the
connection semantics and two or three routing headers; everything else is passed through byte for byte.
Searching a lower-cased copy of the head for ``\\r\\nname:`` costs a few C-level scans, where splitting every
header into Python objects would cost an allocation per header per request.
"""

from __future__ import annotations

import re

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade"})
"""Headers that describe one connection, not the message: a proxy must not forward them (RFC 9110 7.6.1)."""

MAX_CHUNK_LINE = 8192
MAX_CHUNK_SIZE = (1 << 63) - 1
"""nginx's limit (off_t): a larger size is a 400, not a wait for an exabyte."""
_HEX = b"0123456789abcdefABCDEF"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class ProtocolError(ValueError):
    """The peer broke HTTP/1.1 framing; the connection cannot be trusted any more."""


def header_value(head: bytes, low: bytes, key: bytes) -> bytes | None:
    """The first value of a header; ``key`` is ``b"\\r\\nname:"`` lower-cased, ``low`` is ``head.lower()``."""
    i = low.find(key)
    if i < 0:
        return None
    start = i + len(key)
    j = low.find(b"\r\n", start)
    return head[start:j if j >= 0 else len(head)].strip()


def bad_field_names(head: bytes) -> bool:
    """True when a header line has no colon or a name that is not a token (RFC 9110 5.1), e.g. whitespace before
    the colon or a line folded with a tab: a request smuggling vector, since proxies and servers disagree on what
    such a line means. The slow path, taken only when the head has a space before a colon or a tab anywhere."""
    for line in head.split(b"\r\n")[1:]:
        name, sep, _ = line.partition(b":")
        if not sep or _TOKEN.fullmatch(name) is None:
            return True
    return False


def head_problem(head: bytes, low: bytes, le: int, http10: bool) -> tuple[int, str] | None:
    """(status, reason) when a request head breaks RFC 9112 where nginx and HAProxy refuse it, else None.

    C-level scans of bytes already in hand: every CR and LF pairs up as CRLF, no NUL, no obs-fold (a line that
    starts with SP or HTAB), no whitespace between a field name and its colon, exactly one Host on HTTP/1.1.
    """
    crlf = head.count(b"\r\n")
    # A tab anywhere (rare in real heads) sends the head to the exact per-line check, which also catches a
    # tab-folded line: one scan fewer on every request than looking for "\n\t" and "\t:" separately.
    if (head.count(b"\n") != crlf or head.count(b"\r") != crlf or head.find(b"\0") >= 0
            or head.find(b"\n ") >= 0
            or ((head.find(b" :") >= 0 or head.find(b"\t") >= 0) and bad_field_names(head))):
        return 400, "malformed request head (RFC 9112)"
    if head.startswith(b"CONNECT "):
        return 405, "CONNECT is not supported by the router"
    i = low.find(b"\r\nhost:", le)
    if (i < 0 and not http10) or (i >= 0 and low.find(b"\r\nhost:", i + 7) >= 0):
        return 400, "an HTTP/1.1 request needs exactly one Host header"
    return None


def connection_tokens(value: bytes | None) -> set[bytes]:
    if not value:
        return set()
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def strip_headers(head: bytes, drop: frozenset[bytes] | set[bytes]) -> tuple[bytes, dict[bytes, bytes]]:
    """``head`` (start line and headers, no final CRLF) without the ``drop`` headers; also returns the dropped
    headers' last values by lower-cased name, so a caller can merge (X-Forwarded-For) instead of losing them."""
    lines = head.split(b"\r\n")
    out = [lines[0]]
    dropped: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        key = name.strip().lower()
        if sep and key in drop:
            prev = dropped.get(key)
            dropped[key] = value.strip() if prev is None else prev + b", " + value.strip()
            continue
        out.append(line)
    return b"\r\n".join(out), dropped


class Chunked:
    """Finds where a chunked body ends while the bytes are passed through untouched.

    ``feed(data, pos)`` returns the index just past the body's last byte in ``data``, or -1 when the body goes on
    in later data. Tolerates bare LF line ends like most servers do; rejects what cannot be framed.
    """

    __slots__ = ("line", "remaining", "state")

    def __init__(self) -> None:
        self.state = 0  # 0 size line, 1 data, 2 line end after data, 3 trailer lines, 4 done
        self.remaining = 0
        self.line = b""

    def feed(self, data: bytes, pos: int = 0) -> int:
        n = len(data)
        while pos < n:
            st = self.state
            if st == 1:
                left = n - pos
                if self.remaining > left:
                    self.remaining -= left
                    return -1
                pos += self.remaining
                self.remaining = 0
                self.state = 2
                continue
            i = data.find(b"\n", pos)
            if i < 0:
                self.line += data[pos:]
                if len(self.line) > MAX_CHUNK_LINE:
                    raise ProtocolError("chunk line too long")
                return -1
            line = self.line + data[pos:i] if self.line else data[pos:i]
            self.line = b""
            pos = i + 1
            if st == 0:
                digits = line.split(b";", 1)[0].strip()
                # Hex digits only: int() would also take "+1", "0x1", "1_0" and sizes past any real body.
                if not digits or len(digits) > 64 or digits.strip(_HEX):
                    raise ProtocolError("bad chunk size")
                size = int(digits, 16)
                if size > MAX_CHUNK_SIZE:
                    raise ProtocolError("chunk size too large")
                if size:
                    self.state, self.remaining = 1, size
                else:
                    self.state = 3
            elif line.strip():
                if st == 2:
                    raise ProtocolError("missing CRLF after chunk data")
            elif st == 2:
                self.state = 0
            else:
                self.state = 4
                return pos
        return -1


REASONS = {400: b"Bad Request", 405: b"Method Not Allowed", 408: b"Request Timeout",
           431: b"Request Header Fields Too Large", 501: b"Not Implemented", 502: b"Bad Gateway",
           503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported"}


def simple_response(status: int, message: str, keep_alive: bool) -> bytes:
    """A response the router makes itself; the body says which of the router's rules produced it."""
    body = f"{status} {REASONS.get(status, b'Error').decode()}: {message}\n".encode()
    conn = b"keep-alive" if keep_alive else b"close"
    return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
            b"Connection: %s\r\nX-Releasegate-Router: 1\r\n\r\n%s"
            % (status, REASONS.get(status, b"Error"), len(body), conn, body))
