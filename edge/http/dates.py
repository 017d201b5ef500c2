"""HTTP-date parsing and formatting (RFC 9110 §5.6.7), for the caching and conditional logic.

Three formats must be accepted by a recipient (RFC 9110 §5.6.7)::

    Sun, 06 Nov 1994 08:49:37 GMT    ; IMF-fixdate (the only one senders may generate)
    Sunday, 06-Nov-94 08:49:37 GMT   ; obsolete RFC 850 format
    Sun Nov  6 08:49:37 1994         ; ANSI C's asctime() format

A cache recipient SHOULD match them case-insensitively and SHOULD consider a zone other than
"GMT" invalid (RFC 9111 §4.2), so both rules apply here. The redundant day name is checked for
form only, not against the date: a wrong weekday is a harmless sender slip, not a reason to lose
a validator. Origins send the same few dates over and over (Last-Modified, Expires of one
object, Date of the current second), so successful and failed parses sit in a small LRU cache.
"""

from __future__ import annotations

import calendar
import re
import time
from functools import lru_cache

__all__ = ["format_http_date", "http_date_now_bytes", "parse_http_date"]

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # index = struct_time.tm_wday
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = {name.lower(): number for number, name in enumerate(_MONTH_NAMES, 1)}

_DAY = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_DAY_L = "(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MON = "(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = "([0-9]{2}):([0-9]{2}):([0-9]{2})"
_FLAGS = re.IGNORECASE | re.ASCII

# Groups, in each pattern: day, month, year, hour, minute, second.
_IMF_FIXDATE = re.compile(rf"{_DAY}, ([0-9]{{2}}) {_MON} ([0-9]{{4}}) {_TIME} GMT", _FLAGS)
_RFC850_DATE = re.compile(rf"{_DAY_L}, ([0-9]{{2}})-{_MON}-([0-9]{{2}}) {_TIME} GMT", _FLAGS)
# asctime: "Nov  6" (SP DIGIT) or "Nov 06" (2DIGIT), year last, no zone (UTC implied).
_ASCTIME_DATE = re.compile(rf"{_DAY} {_MON} ( [0-9]|[0-9]{{2}}) {_TIME} ([0-9]{{4}})", _FLAGS)


def parse_http_date(value: str | bytes | None) -> float | None:
    """Return the POSIX timestamp of an HTTP-date, or None when absent or invalid.

    Invalid includes a list of dates (a repeated field joined with commas): RFC 9110 §13.1.3/4
    and RFC 9111 §4.2.1 want such values ignored or treated as stale, which callers decide.
    """
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("latin-1")
    return _parse_cached(value)


@lru_cache(maxsize=512)
def _parse_cached(value: str) -> float | None:
    value = value.strip(" \t")
    m = _IMF_FIXDATE.fullmatch(value)  # the common case first
    if m is not None:
        day, mon, year, hh, mm, ss = m.groups()
        return _timestamp(int(year), mon, int(day), int(hh), int(mm), int(ss))
    m = _RFC850_DATE.fullmatch(value)
    if m is not None:
        day, mon, yy, hh, mm, ss = m.groups()
        year = _rfc850_year(int(yy), mon, int(day), int(hh), int(mm), int(ss))
        return _timestamp(year, mon, int(day), int(hh), int(mm), int(ss))
    m = _ASCTIME_DATE.fullmatch(value)
    if m is not None:
        mon, day, hh, mm, ss, year = m.groups()
        return _timestamp(int(year), mon, int(day), int(hh), int(mm), int(ss))
    return None


def _timestamp(year: int, mon: str, day: int, hour: int, minute: int, second: int) -> float | None:
    """Validate the fields (calendar.timegm would silently normalise 31 Feb) and convert."""
    month = _MONTHS[mon.lower()]
    if year < 1 or hour > 23 or minute > 59 or second > 60:  # 60: leap second (RFC 9110)
        return None
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    return float(calendar.timegm((year, month, day, hour, minute, second)))


def _rfc850_year(yy: int, mon: str, day: int, hour: int, minute: int, second: int) -> int:
    """Expand a two-digit year as RFC 9110 §5.6.7 requires.

    A timestamp that "appears to be more than 50 years in the future" is the most recent year in
    the past with the same last two digits; so take the latest candidate year that is not more
    than 50 years ahead of now.
    """
    now = time.gmtime()
    limit = (now.tm_year + 50, now.tm_mon, now.tm_mday, now.tm_hour, now.tm_min, now.tm_sec)
    year = limit[0] - (limit[0] - yy) % 100  # latest year ≡ yy (mod 100) and <= now + 50
    if (year, _MONTHS[mon.lower()], day, hour, minute, second) > limit:
        year -= 100
    return year


def format_http_date(ts: float) -> str:
    """Format a POSIX timestamp as IMF-fixdate, the only format a sender may generate.

    Built by hand, not with ``strftime``, whose day and month names follow the C locale.
    """
    t = time.gmtime(ts)
    return (
        f"{_DAY_NAMES[t.tm_wday]}, {t.tm_mday:02d} {_MONTH_NAMES[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


_now_cache: tuple[int, bytes] = (-1, b"")


def http_date_now_bytes() -> bytes:
    """The current second as an IMF-fixdate, ready for the Date header of every response.

    Formatting is done at most once per second: responses in the same second share the bytes.
    The (second, bytes) pair is replaced as one object, so concurrent readers never see a torn
    update.
    """
    global _now_cache
    second = int(time.time())
    cached = _now_cache
    if cached[0] != second:
        cached = (second, format_http_date(second).encode("ascii"))
        _now_cache = cached
    return cached[1]
