"""A stored response (``CacheEntry``) and what it costs in memory.

Apart from the store so that the store and the disk tier, which both make entries, share the
type without importing each other.
"""

from __future__ import annotations

from reelcdn.edge.cache.bodyfile import FileBody
from reelcdn.edge.cache.freshness import Freshness
from reelcdn.edge.http.message import render_fields, validators

# Bytes charged per entry beyond body, header block and key.
ENTRY_OVERHEAD = 3584
# Measured (``python -m reelcdn.loadtest.bench.memory overhead``, tracemalloc): an entry costs
# about 2.6 KB beyond its body when stored (the header list of tuples ~1.5 KB, the entry, the
# header block, dict and index slots) and 3.3 KB once the first HIT cached its head. Charging
# less let a cache of small objects (playlists, inits) grow to twice ``cache_memory``.

# A memory-file body (``bodyfile.FileBody``) occupies whole pages, plus the kernel's file and
# mapping objects and its descriptor: ~1 KiB.
PAGE = 4096
FILE_BODY_OVERHEAD = 1024


def body_charge(body: bytes | FileBody) -> int:
    """Bytes of memory a stored body occupies."""
    if type(body) is FileBody:
        return (len(body) + PAGE - 1) // PAGE * PAGE + FILE_BODY_OVERHEAD
    return len(body)


def _fresh_until(freshness: Freshness, response_time: float, initial_age: float) -> float:
    """The time until which an entry is fresh: its age (initial age + resident time) stays
    below its freshness lifetime before then (RFC 9111 §4.2); never for ``no-cache``."""
    if freshness.no_cache:
        return float("-inf")
    return response_time + freshness.lifetime - initial_age


class CacheEntry:
    """A stored response. Immutable once inserted, except ``refresh`` after a 304."""

    __slots__ = (
        "key",
        "primary",
        "status",
        "header_block",
        "headers",
        "body",
        "etag",
        "last_modified",
        "modified_basis",
        "content_type",
        "freshness",
        "response_time",
        "initial_age",
        "fresh_until",
        "vary",
        "head_cache",
        "prior",
        "hits",
        "charge",
        "disk_path",
    )

    def __init__(
        self,
        *,
        key: str,
        primary: str,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        freshness: Freshness,
        response_time: float,
        initial_age: float,
        vary: tuple[bytes, ...] = (),
    ) -> None:
        self.key = key
        self.primary = primary
        self.status = status
        self.body = body
        self.freshness = freshness
        self.response_time = response_time
        self.initial_age = initial_age
        self.fresh_until = _fresh_until(freshness, response_time, initial_age)
        self.vary = vary
        self.hits = 0
        # The disk tier's file holding this body, when it was promoted from there (disktier).
        self.disk_path: str | None = None
        self.head_cache: tuple[int, bytes] | None = None
        self._set_headers(headers)

    def _set_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.header_block, self.prior = render_fields(headers)
        self.etag, self.last_modified, self.content_type = validators(headers)
        # What If-Modified-Since is compared with: Last-Modified, else the response's Date
        # (RFC 9111 §4.3.2; every stored response has a Date, the node adds one on arrival).
        self.modified_basis = self.last_modified or next(
            (v.decode("latin-1") for n, v in headers if n.lower() == b"date"), None
        )
        self.head_cache = None
        self.charge = (
            body_charge(self.body) + len(self.header_block) + len(self.key) + ENTRY_OVERHEAD
        )

    def age(self, now: float) -> float:
        """Current age (RFC 9111 §4.2.3): corrected initial age plus resident time."""
        return self.initial_age + (now - self.response_time)

    def ttl(self, now: float) -> float:
        """Seconds of freshness left (negative once stale)."""
        return self.freshness.lifetime - self.age(now)

    def is_fresh(self, now: float) -> bool:
        """Whether the entry may be served without revalidation at ``now`` (the HIT path
        compares ``now < entry.fresh_until`` itself, the same test without a call)."""
        return now < self.fresh_until

    def refresh(
        self,
        headers: list[tuple[bytes, bytes]],
        freshness: Freshness,
        response_time: float,
        initial_age: float,
    ) -> None:
        """Apply a 304 (RFC 9111 §4.3.4): the new header fields replace the stored ones."""
        self.freshness = freshness
        self.response_time = response_time
        self.initial_age = initial_age
        self.fresh_until = _fresh_until(freshness, response_time, initial_age)
        self._set_headers(headers)
