"""Client conditional requests answered from a cached (or in-flight) representation.

Pure policy: the node passes the request's precondition fields and the stored response's
validators, and learns whether to answer 304, 412 or go on with the normal response. The order of
evaluation is RFC 9110 §13.2.2; the comparison functions are RFC 9110 §8.8.3.2.

Entity-tags are handled as their wire form, ``"xyzzy"`` or ``W/"xyzzy"``::

    entity-tag = [ weak ] opaque-tag      weak = %s"W/"      opaque-tag = DQUOTE *etagc DQUOTE

``W/`` is case-sensitive. An opaque-tag may contain commas, so lists are scanned, not split.
"""

from __future__ import annotations

from typing import Literal

from reelcdn.edge.http.dates import parse_http_date

__all__ = ["evaluate", "if_range_allows", "parse_etags", "strong_match", "weak_match"]

_OWS = " \t"


def parse_etags(value: str) -> list[str] | Literal["*"]:
    """Parse an If-Match / If-None-Match value: ``"*"`` or a list of entity-tags.

    ``*`` counts only as the whole field value (``"*" / #entity-tag``). Empty list elements are
    allowed (RFC 9110 §5.6.1). A malformed member (unquoted tag, junk after the closing quote)
    is skipped up to the next comma, so it matches nothing; an unterminated quote ends the list.
    """
    if value.strip(_OWS) == "*":
        return "*"
    tags: list[str] = []
    n = len(value)
    i = 0
    while i < n:
        c = value[i]
        if c in " \t,":
            i += 1
            continue
        if c == '"':
            quote = i
        elif value.startswith('W/"', i):
            quote = i + 2
        else:
            quote = -1
        if quote >= 0:
            close = value.find('"', quote + 1)
            if close < 0:
                break  # unterminated opaque-tag: nothing after it can be trusted
            j = close + 1
            while j < n and value[j] in _OWS:
                j += 1
            if j == n or value[j] == ",":
                tags.append(value[i : close + 1])
                i = j
                continue
            i = j
        comma = value.find(",", i)  # skip the malformed member
        if comma < 0:
            break
        i = comma + 1
    return tags


def _split(tag: str | None) -> tuple[bool, str] | None:
    """(is_weak, opaque-tag) of one entity-tag, or None if it is not one."""
    if not tag:
        return None
    tag = tag.strip(_OWS)
    weak = tag.startswith("W/")
    opaque = tag[2:] if weak else tag
    if len(opaque) < 2 or opaque[0] != '"' or opaque[-1] != '"' or '"' in opaque[1:-1]:
        return None
    return weak, opaque


def strong_match(a: str | None, b: str | None) -> bool:
    """Strong comparison (RFC 9110 §8.8.3.2): neither tag weak, and the opaque-tags identical.

    Malformed or absent tags never match, so a bad validator can only cost a full response.
    """
    sa, sb = _split(a), _split(b)
    return sa is not None and sb is not None and not sa[0] and not sb[0] and sa[1] == sb[1]


def weak_match(a: str | None, b: str | None) -> bool:
    """Weak comparison (RFC 9110 §8.8.3.2): the opaque-tags identical, either may be weak."""
    sa, sb = _split(a), _split(b)
    return sa is not None and sb is not None and sa[1] == sb[1]


def evaluate(
    method: str,
    status: int,
    *,
    if_match: str | None = None,
    if_none_match: str | None = None,
    if_modified_since: str | None = None,
    if_unmodified_since: str | None = None,
    etag: str | None = None,
    last_modified: str | None = None,
    date: str | None = None,
) -> int | None:
    """Evaluate the preconditions against the stored response: 412, 304, or None to proceed.

    Steps of RFC 9110 §13.2.2 (the If-Range step is :func:`if_range_allows`):

    1. If-Match present: false ⇒ 412 (strong comparison; ``*`` is true, there is a
       representation).
    2. Else If-Unmodified-Since present: Last-Modified later than it ⇒ 412.
    3. If-None-Match present: false (``*``, or a weak match) ⇒ 304 for GET/HEAD, else 412.
    4. Else, for GET/HEAD, If-Modified-Since present: not modified since ⇒ 304.

    Preconditions are evaluated only for a stored 200; for any other status the response is sent
    as is (RFC 9110 §13.2.1 limits them to 2xx/412, and this node answers conditionally only
    from full 200 representations). Invalid dates (including lists of dates) are ignored, as is a
    date precondition when the representation has no usable Last-Modified. ``date``, the stored
    response's Date, stands in for a missing Last-Modified in If-Modified-Since only, as RFC 9111
    §4.3.2 asks of caches (the caller passes the time of receipt when Date is missing).

    RFC 9111 §4.3.2 calls If-Match and If-Unmodified-Since "not applicable to a cache"; they are
    evaluated here anyway, against the representation this node would send, so a client never
    gets a body that fails its precondition. A caller that prefers to forward such requests
    upstream passes None for both.
    """
    if status != 200:
        return None
    if if_match is not None:
        tags = parse_etags(if_match)
        if tags != "*" and not any(strong_match(t, etag) for t in tags):
            return 412
    elif if_unmodified_since is not None:
        since = parse_http_date(if_unmodified_since)
        modified = parse_http_date(last_modified)
        if since is not None and modified is not None and modified > since:
            return 412
    safe = method in ("GET", "HEAD")
    if if_none_match is not None:
        tags = parse_etags(if_none_match)
        if tags == "*" or any(weak_match(t, etag) for t in tags):
            return 304 if safe else 412
    elif safe and if_modified_since is not None:
        since = parse_http_date(if_modified_since)
        modified = parse_http_date(last_modified if last_modified is not None else date)
        if since is not None and modified is not None and modified <= since:
            return 304
    return None


PRECONDITION_FIELDS = (b"if-none-match", b"if-modified-since", b"if-match",
                       b"if-unmodified-since")


def request_verdict(
    method: str,
    headers: dict[bytes, bytes],
    status: int,
    etag: str | None,
    last_modified: str | None,
    date: str | None = None,
) -> int | None:
    """The client's preconditions (request ``headers``, lower-cased names) against a response
    this node holds or renders: 304, 412, or None to answer in full. The one entry point for
    stored entries, responses still arriving and rendered playlists; a request with no
    precondition costs four dict look-ups. ``date``: the stored response's Date, compared with
    If-Modified-Since when there is no Last-Modified (RFC 9111 §4.3.2)."""
    if not (
        b"if-none-match" in headers or b"if-modified-since" in headers
        or b"if-match" in headers or b"if-unmodified-since" in headers
    ):
        return None

    def text(name: bytes) -> str | None:
        value = headers.get(name)
        return None if value is None else value.decode("latin-1")

    return evaluate(
        method, status,
        if_match=text(b"if-match"),
        if_none_match=text(b"if-none-match"),
        if_modified_since=text(b"if-modified-since"),
        if_unmodified_since=text(b"if-unmodified-since"),
        etag=etag,
        last_modified=last_modified,
        date=date,
    )


def if_range_allows(if_range: str | None, etag: str | None, last_modified: str | None) -> bool:
    """Whether a Range request may be honoured given its If-Range (RFC 9110 §13.1.5).

    No If-Range ⇒ True. An entity-tag is compared strongly, so a weak tag never matches. An
    HTTP-date must exactly match Last-Modified; it is compared as a time, so the same instant in
    another of the three date formats also matches. Anything else (a list, junk, an invalid date)
    is false: the client then gets the whole 200 representation, which is always safe. The date
    form is meant only for strong Last-Modified validators (RFC 9110 §8.8.2.2); checking that
    Last-Modified is at least a second older than Date is left to the caller, which has Date.
    """
    if if_range is None:
        return True
    value = if_range.strip(_OWS)
    if value.startswith(('"', 'W/"')):
        return strong_match(value, etag)
    wanted = parse_http_date(value)
    return wanted is not None and wanted == parse_http_date(last_modified)
