"""CMCD (CTA-5004) request data, encoded the way hls.js sends it: one ``CMCD=`` query argument.

Why the harness sends it at all: a CDN that reads CMCD (reelcdn prefetches on ``nor`` and marks
starving players on ``su``) behaves differently with it, so a load test without CMCD would
measure a CDN that real players never meet.

Encoding (CTA-5004 §3): keys sorted alphabetically, ``key=value`` pairs joined by commas; strings
(``sid``, ``cid``, ``nor``) in double quotes with ``"`` and ``\\`` escaped; tokens (``ot``, ``sf``,
``st``) bare; a boolean true is the bare key and a false one is left out; integers as written.
``bl`` is rounded to the nearest 100 ms and ``mtp`` to the nearest 100 kbit/s, as the spec asks
(to blunt fingerprinting); ``br`` is the variant's declared bandwidth in kbit/s; ``d`` the
object's duration in ms. ``v`` is omitted for version 1. The whole string is then URL-encoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

#: Object types (``ot``) the harness requests.
MANIFEST = "m"
INIT = "i"
MUXED = "av"

STRING_KEYS = frozenset({"sid", "cid", "nor"})
TOKEN_KEYS = frozenset({"ot", "sf", "st"})


@dataclass(frozen=True, slots=True)
class CmcdRequest:
    """The CMCD keys of one request; ``None`` (or ``False``) means "not sent"."""

    sid: str
    cid: str
    ot: str
    d: float | None = None          # object duration, seconds
    br: int | None = None           # encoded bitrate, bit/s
    bl: float | None = None         # buffer length, seconds
    mtp: float | None = None        # measured throughput, bit/s
    su: bool = False                # startup or rebuffering: the object is needed urgently
    nor: str | None = None          # next object request, relative to this request's URL

    def pairs(self) -> dict[str, str | int | bool]:
        """Wire values by key (units converted and rounded as the spec wants)."""
        out: dict[str, str | int | bool] = {
            "sid": self.sid, "cid": self.cid, "ot": self.ot, "sf": "h", "st": "v",
        }
        if self.d is not None:
            out["d"] = round(self.d * 1000)
        if self.br is not None:
            out["br"] = round(self.br / 1000)
        if self.bl is not None:
            out["bl"] = int(round(max(self.bl, 0.0) * 10)) * 100
        if self.mtp is not None:
            out["mtp"] = int(round(self.mtp / 100_000)) * 100
        if self.su:
            out["su"] = True
        if self.nor:
            out["nor"] = self.nor
        return out


def _quote_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def encode(data: CmcdRequest) -> str:
    """The CMCD payload (before URL encoding): ``bl=1200,br=778,d=2000,ot=av,...``."""
    parts = []
    for key, value in sorted(data.pairs().items()):
        if value is True:
            parts.append(key)
        elif key in STRING_KEYS:
            parts.append(f"{key}={_quote_string(str(value))}")
        else:
            parts.append(f"{key}={value}")
    return ",".join(parts)


def with_cmcd(url: str, data: CmcdRequest | None) -> str:
    """``url`` with the ``CMCD=`` query argument appended (unchanged when ``data`` is None)."""
    if data is None:
        return url
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}CMCD={quote(encode(data), safe='')}"


def decode(payload: str) -> dict[str, str | bool]:
    """Parse a CMCD payload back into ``{key: raw value | True}`` (strings unquoted): what a
    CDN sees; the tests use it to check the encoding."""
    out: dict[str, str | bool] = {}
    for item in _split_top_level(payload):
        if "=" not in item:
            out[item] = True
            continue
        key, value = item.split("=", 1)
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out[key] = value
    return out


def _split_top_level(payload: str) -> list[str]:
    """Split on commas outside quoted strings (a ``nor`` URL may hold a comma)."""
    items, current, quoted, escaped = [], [], False, False
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
    if current:
        items.append("".join(current))
    return items
