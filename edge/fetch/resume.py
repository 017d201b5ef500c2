"""Resuming a body that broke mid-way from the next upstream (docs/failover.md).

A ``200`` to a ``GET`` whose body stops early (the connection reset or closed, or the body
stalled past the ``idle`` timeout) after N bytes is continued from another upstream with
``Range: bytes=N-`` and ``If-Range: <etag>``, when the response can be identified exactly:
a **strong** ``ETag`` (``Last-Modified`` is not used: a date is a weak validator unless it is
a second older than ``Date``, which a tier cannot check for bytes it did not produce) and a
``Content-Length``. Only a ``206`` whose ``Content-Range`` is ``bytes N-(L-1)/L`` for the same
total length L, with the same ``ETag``, is accepted: its bytes are the rest of the same
representation, and readers get them as if the first upstream had sent them. Anything else
ends the body as before (the readers see it cut, nothing is stored).

``ResumingResponse`` wraps the first ``UpstreamResponse`` and does this inside ``chunks``,
so the coalescer, the node and every reader see one body. It asks each upstream that
its owner lists — ``ParentSet`` the upstreams it would have tried next, a shield's
``OriginChain`` the next origins and then the same one — at most once each, and all the
attempts for one break within ``first_byte`` counted from the break; each break's outcome
(resumed, refused, failed) goes to the owner's ``resume_outcome`` hook, which the node counts.
Pure parsing helpers live here too; nothing imports the node or the shield.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from reelcdn.edge.fetch.contract import FetchFailed, TargetRefused, UpstreamResponse

log = logging.getLogger("reelcdn.health")

# Request fields a resume does not repeat: the conditionals are replaced by If-Range (a
# stale entry's If-None-Match could otherwise turn the 206 into a 304), and Range is ours.
_DROPPED = frozenset({b"range", b"if-range", b"if-match", b"if-none-match",
                      b"if-modified-since", b"if-unmodified-since"})
# As before the head (parents.py): the upstream could not answer now, another one may.
_UNAVAILABLE = frozenset({502, 503, 504})
_STRONG_ETAG = re.compile(rb'"[\x21\x23-\x7e\x80-\xff]*"')
_CONTENT_RANGE = re.compile(rb"bytes ([0-9]{1,18})-([0-9]{1,18})/([0-9]{1,18})")

# One resume attempt: (upstream name, request) → the response head, or FetchFailed.
Attempt = tuple[str, Callable[[list[tuple[bytes, bytes]]], Awaitable[UpstreamResponse]]]

# How a break ended (``reelcdn_upstream_resumes_total{outcome}``): the body went on from an
# upstream; an upstream answered, but not with the rest of the same bytes (the validator
# changed there, other bytes); or no upstream could answer (refused, reset, timeout, 5xx, none
# left to ask, no time left).
RESUMED = "resumed"
REFUSED = "refused"
FAILED = "failed"


def _ignore(outcome: str) -> None:
    return None


def _field(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The single value of ``name``; None when absent or repeated (ambiguous)."""
    values = [v for n, v in headers if n.lower() == name]
    return values[0].strip(b" \t") if len(values) == 1 else None


def resume_identity(
    status: int, headers: Sequence[tuple[bytes, bytes]]
) -> tuple[bytes, int] | None:
    """(strong ETag, Content-Length) of a response whose body may be resumed, else None."""
    if status != 200:
        return None
    etag = _field(headers, b"etag")
    length = _field(headers, b"content-length")
    if etag is None or not _STRONG_ETAG.fullmatch(etag):
        return None  # absent, weak (W/"...") or malformed: no byte-exact identity
    if length is None or not length.isdigit() or len(length) > 18:
        return None
    return etag, int(length)


def strong_etag(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """The response's ETag when it is one strong validator, else None (absent, repeated,
    weak ``W/"..."`` or malformed)."""
    etag = _field(headers, b"etag")
    return etag if etag is not None and _STRONG_ETAG.fullmatch(etag) else None


def content_range(headers: Sequence[tuple[bytes, bytes]]) -> tuple[int, int, int] | None:
    """(first, last, total) of a response's single ``Content-Range: bytes first-last/total``
    with first <= last < total, else None."""
    value = _field(headers, b"content-range")
    match = _CONTENT_RANGE.fullmatch(value) if value is not None else None
    if match is None:
        return None
    first, last, total = (int(group) for group in match.groups())
    return (first, last, total) if first <= last < total else None


def partial_continues(
    status: int, headers: Sequence[tuple[bytes, bytes]], etag: bytes, offset: int, total: int
) -> str | None:
    """Why a resume answer does not continue the body at ``offset``, or None if it does."""
    if status != 206:
        return f"answered {status}"
    if _field(headers, b"etag") != etag:
        return "answered 206 with another ETag"
    value = _field(headers, b"content-range")
    match = _CONTENT_RANGE.fullmatch(value) if value is not None else None
    if match is None:
        return "answered 206 without a single Content-Range"
    first, last, length = (int(group) for group in match.groups())
    if first != offset or last != total - 1 or length != total:
        return f"answered 206 for {value.decode('latin-1')}, not bytes {offset}-{total - 1}/{total}"
    length_field = _field(headers, b"content-length")
    if length_field is not None and length_field != str(total - offset).encode():
        return "answered 206 with a Content-Length that is not the rest"
    return None


def resume_fields(
    fields: Sequence[tuple[bytes | str, bytes | str]], etag: bytes, offset: int
) -> list[tuple[bytes, bytes]]:
    """The first request's fields, conditionals dropped, with Range and If-Range."""
    kept: list[tuple[bytes, bytes]] = []
    for name, value in fields:
        raw_name = name.encode("latin-1") if isinstance(name, str) else name
        raw_value = value.encode("latin-1") if isinstance(value, str) else value
        if raw_name.lower() not in _DROPPED:
            kept.append((raw_name, raw_value))
    kept.append((b"Range", b"bytes=%d-" % offset))
    kept.append((b"If-Range", etag))
    return kept


class ResumingResponse(UpstreamResponse):
    """A ``200`` whose body, if it breaks, is continued from the next upstreams."""

    __slots__ = ("status", "headers", "_current", "_fields", "_etag", "_total", "_source",
                 "_attempts", "_first_byte", "_outcome", "resumes")

    def __init__(
        self,
        response: UpstreamResponse,
        source: str,
        fields: Sequence[tuple[bytes | str, bytes | str]],
        identity: tuple[bytes, int],
        attempts: Sequence[Attempt],
        first_byte: float,
        outcome: Callable[[str], None] = _ignore,
    ) -> None:
        """``outcome`` is told how each break ended: ``RESUMED``, ``REFUSED`` or ``FAILED``."""
        self.status = response.status
        self.headers = response.headers
        self._current = response
        self._source = source
        self._fields = fields
        self._etag, self._total = identity
        self._attempts = list(attempts)  # each upstream once, in the order of the request
        self._first_byte = first_byte
        self._outcome = outcome
        self.resumes: list[str] = []  # the upstreams that continued the body

    async def chunks(self, idle_timeout: float) -> AsyncIterator[bytes]:
        received = 0
        while True:
            broke: FetchFailed | None = None
            overlong = False
            try:
                async for chunk in self._current.chunks(idle_timeout):
                    if received + len(chunk) > self._total:
                        overlong = True
                        break
                    received += len(chunk)
                    yield chunk
            except FetchFailed as failure:
                broke = failure
            if overlong:
                raise FetchFailed(502, "upstream body longer than its Content-Length")
            if received >= self._total:
                if broke is not None:
                    raise broke
                return
            if broke is None:
                broke = FetchFailed(502, "upstream body shorter than its Content-Length")
            self._current.close()
            if not await self._resume(received, broke):
                raise broke

    async def _resume(self, offset: int, broke: FetchFailed) -> bool:
        """Ask the next upstreams for the rest; True once one answers a matching 206."""
        outcome = await self._ask(offset, broke)
        self._outcome(outcome)
        return outcome == RESUMED

    async def _ask(self, offset: int, broke: FetchFailed) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._first_byte
        fields = resume_fields(self._fields, self._etag, offset)
        while self._attempts:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            name, send = self._attempts.pop(0)
            try:
                async with asyncio.timeout(remaining):
                    response = await send(fields)
            except TargetRefused:
                return FAILED
            except (FetchFailed, TimeoutError) as failure:
                log.info("body from %s broke at %d of %d bytes (%s); resume from %s failed: %s",
                         self._source, offset, self._total, broke.reason, name,
                         getattr(failure, "reason", "timed out"))
                continue  # could not reach it: the next one may answer
            if response.status in _UNAVAILABLE:
                response.close()  # it could not answer now: the next one may
                log.info("body from %s broke at %d of %d bytes (%s); resume from %s answered %d",
                         self._source, offset, self._total, broke.reason, name, response.status)
                continue
            why = partial_continues(response.status, response.headers, self._etag, offset,
                                    self._total)
            if why is not None:
                response.close()
                log.warning("body from %s broke at %d of %d bytes (%s); %s %s: not resumed",
                            self._source, offset, self._total, broke.reason, name, why)
                return REFUSED
            log.info("body from %s broke at %d of %d bytes (%s); resumed from %s",
                     self._source, offset, self._total, broke.reason, name)
            self._current = response
            self._source = name
            self.resumes.append(name)
            return RESUMED
        log.info("body from %s broke at %d of %d bytes (%s); no upstream left to resume from",
                 self._source, offset, self._total, broke.reason)
        return FAILED

    def release(self) -> None:
        self._current.release()

    def close(self) -> None:
        self._current.close()
