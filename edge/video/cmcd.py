"""CMCD (CTA-5004, Common Media Client Data) as a cache node reads it.

Players tell the CDN what they are doing: which object they will ask for next (``nor``, with
``nrr`` its byte range), whether they are starving (``su`` start-up/urgent, ``bs`` buffer
starvation), their buffer length (``bl``, ms), measured throughput (``mtp``, kbit/s) and the
session they belong to (``sid``). The node uses ``nor`` to prefetch (edge/video/prefetch.py)
and keeps the rest for logs and metrics.

Transport (CTA-5004 §2): either one ``CMCD=`` query argument (URL-encoded payload) or up to four
request headers, ``CMCD-Request``, ``CMCD-Object``, ``CMCD-Status`` and ``CMCD-Session``, whose
payloads are merged. A payload is ``key[=value]`` items separated by commas: strings in double
quotes (``\\"`` and ``\\\\`` escaped), tokens and numbers bare, a bare key meaning boolean true
(``bs``, ``su``). Unknown keys are kept (custom keys must contain a hyphen), malformed items are
skipped: telemetry must never make a request fail.

CMCD never enters a cache key (``cmcd`` is in the default ignored query parameters) and the
node does not forward the CMCD headers on cache fills either (``CMCD_HEADERS`` joins the
fill's dropped fields): a fill is shared by every client waiting on it, so one client's
telemetry would mislead the parent, and the parent gains nothing from ``nor`` since this node
prefetches the object itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["CMCD_HEADERS", "Cmcd", "from_request", "parse_payload"]

#: The four CMCD request header names (lowercase, as the parser stores them).
CMCD_HEADERS: frozenset[bytes] = frozenset(
    {b"cmcd-request", b"cmcd-object", b"cmcd-status", b"cmcd-session"}
)
_MAX_PAYLOAD = 4096  # a payload longer than this is not telemetry: ignore it


@dataclass(frozen=True, slots=True)
class Cmcd:
    """The CMCD keys a node acts on or records; ``None``/``False`` when not sent."""

    sid: str | None = None      # session id
    nor: str | None = None      # next object request: a URL relative to this request's
    nrr: str | None = None      # next range request: "start-end" (bytes) of ``nor``
    su: bool = False            # start-up: the object is needed urgently
    bs: bool = False            # buffer starvation since the last request
    bl: int | None = None       # buffer length, ms
    mtp: int | None = None      # measured throughput, kbit/s
    ot: str | None = None       # object type: m, a, v, av, i, c, tt, k, o

    @property
    def starving(self) -> bool:
        """A player that is starting up or rebuffering: what ``su``/``bs`` are for."""
        return self.su or self.bs


def _split_items(payload: str) -> list[str]:
    """Split on commas outside quoted strings (a ``nor`` URL may hold a comma)."""
    if "\\" not in payload:
        # Without escapes a quote always toggles: split on every comma, then glue back the
        # pieces that a quoted string spans (an odd number of quotes so far). Same result as
        # _split_escaped's character loop, several times faster (every player request carries CMCD).
        if '"' not in payload:
            return [item.strip() for item in payload.split(",") if item.strip()]
        glued: list[str] = []
        open_quote = False
        for piece in payload.split(","):
            if open_quote:
                glued[-1] += "," + piece
            else:
                glued.append(piece)
            if piece.count('"') % 2:
                open_quote = not open_quote
        return [item.strip() for item in glued if item.strip()]
    return _split_escaped(payload)


def _split_escaped(payload: str) -> list[str]:
    """The general case of :func:`_split_items`, character by character: a backslash escapes
    the next character inside a quoted string."""
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in payload:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def parse_payload(payload: str) -> dict[str, str | int | bool]:
    """``{key: value}`` of one CMCD payload: strings unquoted, integers as ``int``, a bare key
    as ``True``, other tokens as text. Malformed items are skipped."""
    out: dict[str, str | int | bool] = {}
    if len(payload) > _MAX_PAYLOAD:
        return out
    for item in _split_items(payload):
        key, has_value, value = item.partition("=")
        key = key.strip()
        if not key:
            continue
        if not has_value:
            out[key] = True
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            out[key] = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        elif value:
            bare = _bare_value(value)
            if bare is not None:
                out[key] = bare
    return out


def _bare_value(value: str) -> int | str | None:
    """An unquoted value: an ``int`` for an Integer, the text of a Decimal or a token, None
    when it is malformed (the item is then skipped).

    Numbers follow RFC 8941 §3.3.1/§3.3.2, the syntax CTA-5004 uses: an optional ``-`` then
    ASCII digits (at most 15), or a Decimal of at most 12 + 3 digits. ``str.isdigit`` alone
    is not enough: it accepts ``²`` and other Unicode digits that ``int`` refuses, and
    ``lstrip("-")`` let ``--1`` through. Anything else starting like a number, and anything
    non-ASCII, is malformed. Other tokens are kept as text (leniently: unknown keys are kept).
    """
    if not value.isascii():
        return None
    first = value[0]
    if first != "-" and not "0" <= first <= "9":
        return value
    digits = value[1:] if first == "-" else value
    if digits.isdigit():
        return int(value) if len(digits) <= 15 else None
    whole, dot, fraction = digits.partition(".")
    if (dot and whole.isdigit() and fraction.isdigit()
            and len(whole) <= 12 and len(fraction) <= 3):
        return value
    return None


def _query_payload(query: str) -> str | None:
    """The decoded value of the ``CMCD`` query argument (name matched case-insensitively)."""
    for pair in query.split("&"):
        name, _, value = pair.partition("=")
        if name.lower() == "cmcd":
            return unquote(value)
    return None


def _int_or_none(value: object) -> int | None:
    """A non-negative Integer (buffer length, throughput), else None: a negative one is as
    malformed as a string and must not drag the node's buffer metrics down."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def from_request(query: str, headers: dict[bytes, bytes]) -> Cmcd | None:
    """The CMCD data of a request (query argument and headers merged), or None without any."""
    keys: dict[str, str | int | bool] = {}
    if query and "cmcd" in query.lower():
        payload = _query_payload(query)
        if payload:
            keys.update(parse_payload(payload))
    for name in CMCD_HEADERS:
        value = headers.get(name)
        if value:
            keys.update(parse_payload(value.decode("latin-1")))
    if not keys:
        return None
    return Cmcd(
        sid=_str_or_none(keys.get("sid")),
        nor=_str_or_none(keys.get("nor")),
        nrr=_str_or_none(keys.get("nrr")),
        su=keys.get("su") is True,
        bs=keys.get("bs") is True,
        bl=_int_or_none(keys.get("bl")),
        mtp=_int_or_none(keys.get("mtp")),
        ot=_str_or_none(keys.get("ot")) if not isinstance(keys.get("ot"), bool) else None,
    )
