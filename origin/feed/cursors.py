"""Page cursors of the feeds: opaque, signed, expiring, bound to a user and a feed type.

A cursor is ``c1.KID.PAYLOAD.SIG``: ``PAYLOAD`` is base64url (unpadded) of a compact JSON
object ``{"u": user, "t": feed type, "s": snapshot id, "p": position, "e": expiry}`` (a
personal feed's first page, whose order is not kept yet, adds ``"h"``: the ids it showed,
comma-separated, and ``"n"``: the newest ``created`` it ranked; its ``"s"`` is empty) and
``SIG`` base64url of HMAC-SHA256(secret of ``KID``, ``"reelcdn-feed-cursor-v1\\n" +
KID.PAYLOAD``), with the service's user-token keys (``origin/users.py``: the same file, the
same rotation; the domain string keeps a cursor from ever being taken for a token and the
other way round). The client learns nothing it could use from a cursor and can change nothing
in it: the signature is compared in constant time and checked before anything else, so a
forged cursor is ``bad_cursor`` whatever it claims.

:func:`open_cursor` raises :class:`CursorError` with a code for the API's 400:
``bad_cursor`` (malformed, unknown key, bad signature), ``cursor_expired``, ``cursor_mismatch``
(another user's, or another feed type's). No I/O; the clock is an argument.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass

from reelcdn.origin.users import Keys

__all__ = ["MAX_CURSOR", "Cursor", "CursorError", "make_cursor", "open_cursor"]

_DOMAIN = b"reelcdn-feed-cursor-v1\n"
_VERSION = "c1"
_KID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_B64 = re.compile(r"[A-Za-z0-9_-]+")
#: A first page's cursor lists the ids it showed (at most 50 of 26 characters).
MAX_CURSOR = 2560


class CursorError(Exception):
    """A cursor refused: ``code`` for the API's error, ``reason`` for its detail."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page starts: position ``position`` of snapshot ``snapshot``. A session whose
    order is not kept yet (``snapshot`` empty: after a personal feed's first page) carries
    what that page showed (``shown``) and the newest ``created`` it ranked (``newest``)."""

    user: str
    feed_type: str
    snapshot: str
    position: int
    expires: int
    shown: tuple[str, ...] = ()
    newest: float | None = None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, signed: str) -> str:
    return _b64(hmac.new(secret, _DOMAIN + signed.encode("ascii"), hashlib.sha256).digest())


def make_cursor(cursor: Cursor, keys: Keys) -> str:
    """The cursor's text, signed with the keys' current key."""
    body: dict[str, object] = {"u": cursor.user, "t": cursor.feed_type, "s": cursor.snapshot,
                               "p": cursor.position, "e": cursor.expires}
    if not cursor.snapshot:
        body["h"] = ",".join(cursor.shown)
        body["n"] = cursor.newest
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    signed = f"{keys.current}.{payload}"
    return f"{_VERSION}.{signed}.{_sign(keys.keys[keys.current], signed)}"


def open_cursor(text: str, keys: Keys, user: str, feed_type: str, now: float) -> Cursor:
    """The cursor ``text`` stands for, if it is genuine, unexpired, ``user``'s and of
    ``feed_type``; else :class:`CursorError`."""
    if not text or len(text) > MAX_CURSOR:
        raise CursorError("bad_cursor", "malformed cursor")
    parts = text.split(".")
    if len(parts) != 4 or parts[0] != _VERSION:
        raise CursorError("bad_cursor", "malformed cursor")
    _, kid, payload, sig = parts
    if not (_KID.fullmatch(kid) and _B64.fullmatch(payload) and _B64.fullmatch(sig)):
        raise CursorError("bad_cursor", "malformed cursor")
    secret = keys.keys.get(kid)
    if secret is None:
        raise CursorError("bad_cursor", "the cursor's key is unknown (rotated out?)")
    expected = _sign(secret, f"{kid}.{payload}")
    if not hmac.compare_digest(expected.encode("ascii"), sig.encode("ascii")):
        raise CursorError("bad_cursor", "the cursor's signature does not match")
    try:
        body = json.loads(_unb64(payload))
        cursor = Cursor(str(body["u"]), str(body["t"]), str(body["s"]), int(body["p"]),
                        int(body["e"]))
        if not cursor.snapshot:
            shown, newest = str(body["h"]), body["n"]
            cursor = Cursor(cursor.user, cursor.feed_type, "", cursor.position,
                            cursor.expires, tuple(shown.split(",")) if shown else (),
                            None if newest is None else float(newest))
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise CursorError("bad_cursor", "malformed cursor") from None
    if cursor.expires <= now:
        raise CursorError("cursor_expired", "the cursor has expired: start again without one")
    if cursor.user != user:
        raise CursorError("cursor_mismatch", "this cursor was issued to another user")
    if cursor.feed_type != feed_type:
        raise CursorError("cursor_mismatch",
                          f"this cursor is for feed_type={cursor.feed_type}, not {feed_type}")
    if cursor.position < 0:
        raise CursorError("bad_cursor", "malformed cursor")
    return cursor
