"""The request vocabulary the protocol readers share: the ``Request`` record the request
reader fills and the status line the head builder writes.

It lives here, beside the parsers, because both twins of each (``_reader.pyx`` /
``_reader_py.py``, ``_head.pyx`` / ``_head_py.py``) produce or use these types, and a compiled
module and its twin must share one definition (as multidict's twins own their types). Pure: no
I/O, and nothing of the product above ``extensions/``; the node (``edge/http/``) imports it from
here. A request is one ``__slots__`` object filled by the parser callbacks; nothing else is
allocated per request on the HIT path.
"""

from __future__ import annotations

from http import HTTPStatus

__all__ = ["REASONS", "Request", "status_line"]

REASONS: dict[int, bytes] = {s.value: s.phrase.encode("latin-1") for s in HTTPStatus}


def status_line(status: int, version: bytes = b"1.1") -> bytes:
    """``HTTP/1.1 200 OK\\r\\n`` for any status, with a generic phrase for unknown codes."""
    reason = REASONS.get(status, b"Unknown")
    return b"HTTP/" + version + b" " + str(status).encode() + b" " + reason + b"\r\n"


class Request:
    """One parsed request. Header names are lowercased bytes; repeated fields comma-joined
    in ``headers`` (for lookups), kept separate in ``raw_headers`` (for forwarding)."""

    __slots__ = (
        "method",
        "target",
        "path",
        "query",
        "headers",
        "raw_headers",
        "body",
        "version",
        "keep_alive",
        "client_ip",
        "error",
        "start",
    )

    def __init__(self) -> None:
        self.method: str = "GET"
        self.target: bytes = b""
        self.path: str = "/"
        self.query: str = ""
        self.headers: dict[bytes, bytes] = {}
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.body: bytes | None = None
        self.version: bytes = b"1.1"
        self.keep_alive: bool = True
        self.client_ip: str = ""
        # (status, reason) when the protocol rejected the request: answered in pipeline order.
        self.error: tuple[int, str] | None = None
        self.start: float = 0.0

    def header(self, name: bytes) -> str | None:
        """The (comma-joined) value of a request field as text, or None."""
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target!r}>"
