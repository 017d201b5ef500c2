"""CORS on the data plane (``cors_origins``, docs/cors.md): what a browser page on another
origin needs to play through the node with XHR/fetch (hls.js, dash.js, Shaka).

The node's policy owns the ``Access-Control-*`` fields: an upstream's are never stored nor
forwarded (``message.render_fields`` drops them), and the node adds its own when it writes a
response, so one origin's ``Access-Control-Allow-Origin`` never reaches another through a
stored entry, whatever the tier above said. Every byte is built here once per config:

- ``["*"]`` (the default): ``head_line`` — ``Access-Control-Allow-Origin: *`` and
  ``Access-Control-Expose-Headers`` — is the same for every request, so it goes into every head
  ``Delivery.head`` builds, the pre-built head of a HIT included: no work per request.
- a list of origins: the allowed origin is echoed per request (``allow_line``, written by the
  connection into the response's head), and every response says ``Vary: Origin`` so that a
  browser's cache does not give one origin the answer meant for another.
- ``[]``: no CORS field is added.

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered by
the node itself (``preflight_head``): nothing is looked up or sent upstream. Pure: no I/O.
"""

from __future__ import annotations

__all__ = ["ALLOW_HEADERS", "EXPOSE_HEADERS", "MAX_AGE", "CorsPolicy", "is_cors_field"]

# What a player's script may read of a response beyond the CORS-safelisted fields: the length
# and range of a segment (ABR throughput, byte-range playlists), the node's Age, Cache-Status
# and CMSD (CTA-5006: players read CMSD-Static/Dynamic), the validator.
EXPOSE_HEADERS = (b"Age, Cache-Status, CMSD-Dynamic, CMSD-Static, Content-Length, "
                  b"Content-Range, Accept-Ranges, ETag")
# What a player's request may carry beyond the safelisted fields: Range (byte-range segments)
# and CMCD in headers (CTA-5004 §2.2: the four CMCD-* fields).
ALLOW_HEADERS = b"Range, CMCD-Request, CMCD-Object, CMCD-Status, CMCD-Session"
ALLOW_METHODS = b"GET, HEAD, OPTIONS"
# How long a browser may reuse a preflight's answer: a day (Firefox's cap; Chromium caps it at
# two hours), so a player sends one preflight per origin and field set, not one per segment.
MAX_AGE = 86400

_PREFIX = b"access-control-"


def is_cors_field(lower_name: bytes) -> bool:
    """An ``Access-Control-*`` field (name lower-cased): the node's own, never an upstream's."""
    return lower_name[:15] == _PREFIX


class CorsPolicy:
    """The CORS fields of one node config."""

    __slots__ = ("enabled", "any_origin", "origins", "head_line", "per_request", "_preflight")

    def __init__(self, origins: tuple[str, ...]) -> None:
        self.enabled = bool(origins)
        self.any_origin = "*" in origins
        self.origins = frozenset(o.encode("ascii") for o in origins if o != "*")
        # Echo the origin per request: only with a list of origins.
        self.per_request = self.enabled and not self.any_origin
        expose = b"Access-Control-Expose-Headers: " + EXPOSE_HEADERS + b"\r\n"
        if not self.enabled:
            self.head_line = b""
        elif self.any_origin:
            self.head_line = b"Access-Control-Allow-Origin: *\r\n" + expose
        else:
            self.head_line = expose + b"Vary: Origin\r\n"
        self._preflight = b"".join((
            b"HTTP/1.1 204 No Content\r\n",
            b"Access-Control-Allow-Origin: *\r\n" if self.any_origin else b"Vary: Origin\r\n",
            b"Access-Control-Allow-Methods: ", ALLOW_METHODS, b"\r\n",
            b"Access-Control-Allow-Headers: ", ALLOW_HEADERS, b"\r\n",
            b"Access-Control-Max-Age: %d\r\n" % MAX_AGE,
            b"Cache-Control: max-age=%d\r\n" % MAX_AGE,
        ))

    def allow_line(self, origin: bytes | None) -> bytes:
        """``Access-Control-Allow-Origin: <origin>`` for an allowed origin (a list of
        origins), else nothing: a browser then refuses the response to that page."""
        if origin is not None and origin in self.origins:
            return b"Access-Control-Allow-Origin: " + origin + b"\r\n"
        return b""

    def preflight_head(self, origin: bytes | None, connection: bytes) -> bytes:
        """The whole answer to a preflight (204, no body)."""
        allow = self.allow_line(origin) if self.per_request else b""
        return self._preflight + allow + connection + b"\r\n"
