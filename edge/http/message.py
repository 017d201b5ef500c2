"""HTTP/1.1 field rules shared by the node: hop-by-hop fields, Accept-Encoding normalised,
error responses, header blocks and validators.

Kept free of I/O (in the spirit of h11) so the protocol, the request steps and the upstream can
all speak the same small types. The request record (``Request``) and the status line are the
request readers' vocabulary and live beside them, in ``reelcdn.extensions.message``.
"""

from __future__ import annotations

from reelcdn.extensions.message import REASONS, status_line

# RFC 9110 §7.6.1: connection-specific fields never forwarded by an intermediary.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Content codings a fill may ask for on behalf of its clients (normalise_accept_encoding).
KNOWN_CODINGS: tuple[bytes, ...] = (b"br", b"deflate", b"gzip", b"zstd")


def normalise_accept_encoding(value: bytes) -> bytes:
    """One spelling per set of accepted codings: those of ``KNOWN_CODINGS`` the client accepts
    (q > 0, ``*`` counting for all not named), sorted; ``identity`` when none.

    Why: a shared fill and a ``Vary: Accept-Encoding`` variant are keyed by this value, so
    ``gzip, deflate, br`` and ``br;q=1.0, gzip, deflate`` share one copy, and a client's odd
    value never reaches the origin."""
    named: dict[bytes, bool] = {}
    star: bool | None = None
    for item in value.lower().split(b","):
        coding, _, params = item.partition(b";")
        coding = coding.strip()
        accepted = True
        for param in params.split(b";"):
            key, _, q = param.strip().partition(b"=")
            if key.strip() == b"q":
                try:
                    accepted = float(q.strip() or b"1") > 0
                except ValueError:
                    accepted = False
        if coding == b"*":
            star = accepted
        elif coding:
            named[coding] = accepted
    kept = [c for c in KNOWN_CODINGS if named.get(c, bool(star))]
    return b", ".join(kept) if kept else b"identity"


def error_response(status: int, reason: str, *, close: bool, head_only: bool = False,
                   extra: bytes = b"") -> bytes:
    """A complete plain-text error response: the status, and a body saying why (only the
    head for a HEAD request, with the Content-Length the body would have had). ``extra``:
    more header lines, each ending in CRLF."""
    body = f"{status} {REASONS.get(status, b'Error').decode()}: {reason}\n".encode()
    head = [
        status_line(status),
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Length: " + str(len(body)).encode() + b"\r\n",
        b"Cache-Control: no-store\r\n",
        extra,
    ]
    if close:
        head.append(b"Connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + (b"" if head_only else body)


def forwardable(
    raw_headers: list[tuple[bytes, bytes]], drop: frozenset[bytes] | set[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """Header pairs an intermediary may forward: without hop-by-hop fields, fields the
    Connection header names (RFC 9110 §7.6.1), and the lowercase names in ``drop``."""
    named: set[bytes] = set()
    for name, value in raw_headers:
        if name.lower() == b"connection":
            named.update(v.strip().lower() for v in value.split(b","))
    return [
        (name, value)
        for name, value in raw_headers
        if (low := name.lower()) not in HOP_BY_HOP and low not in named and low not in drop
    ]


NO_PRIOR: tuple[bytes, bytes] = (b"", b"")


def render_fields(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, tuple[bytes, bytes]]:
    """Header pairs as one block of ``Name: value\\r\\n`` lines, with the upstream tiers'
    ``Cache-Status`` and ``Via`` taken out (returned as ``prior``): the node sends each of
    those as one line with its own member appended, since many clients read only the first
    (or last) line of a repeated field. An upstream's ``Access-Control-*`` fields are dropped:
    the node adds its own CORS fields when it writes (``cors.py``), so a stored answer never
    carries one page's permission to another."""
    parts = []
    statuses = []
    vias = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"cache-status":
            statuses.append(value)
        elif lower == b"via":
            vias.append(value)
        elif lower[:15] != b"access-control-":  # CORS is the node's own (cors.py)
            parts.append(name + b": " + value + b"\r\n")
    return b"".join(parts), (b", ".join(statuses), b", ".join(vias))


def validators(
    headers: list[tuple[bytes, bytes]],
) -> tuple[str | None, str | None, bytes | None]:
    """(ETag, Last-Modified, Content-Type) of a response's header pairs: what conditional
    requests and multipart ranges need of a stored or in-flight representation."""
    lookup = {name.lower(): value for name, value in headers}
    etag = lookup.get(b"etag")
    modified = lookup.get(b"last-modified")
    return (
        etag.decode("latin-1") if etag is not None else None,
        modified.decode("latin-1") if modified is not None else None,
        lookup.get(b"content-type"),
    )
