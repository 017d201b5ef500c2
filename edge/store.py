"""The cache store: a byte-budgeted LRU of complete responses, with Vary variants.

One ``CacheEntry`` per stored response holds everything needed to answer from memory: status,
headers (pre-rendered as one block of bytes), the body (stored once, sliced with memoryviews
when served), the times needed for Age (RFC 9111 §4.2.3), freshness and validators.

Keys: the *primary* key is the normalised URI (see ``cachekey``). When a response carries
``Vary``, the store remembers the varying field names for that primary key and files each
variant under ``primary + "\\0" + the request's values of those fields``; a lookup without
Vary is a single dict access.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from .freshness import Freshness
from .http import render_fields, validators

# Rough bytes per entry beyond body and header block (the object, dict slot, key string).
ENTRY_OVERHEAD = 600


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
        "content_type",
        "freshness",
        "response_time",
        "initial_age",
        "vary",
        "head_cache",
        "prior",
        "hits",
        "charge",
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
        self.vary = vary
        self.hits = 0
        self.head_cache: tuple[int, bytes] | None = None
        self._set_headers(headers)

    def _set_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = headers
        self.header_block, self.prior = render_fields(headers)
        self.etag, self.last_modified, self.content_type = validators(headers)
        self.head_cache = None
        self.charge = len(self.body) + len(self.header_block) + len(self.key) + ENTRY_OVERHEAD

    def age(self, now: float) -> float:
        """Current age (RFC 9111 §4.2.3): corrected initial age plus resident time."""
        return self.initial_age + (now - self.response_time)

    def ttl(self, now: float) -> float:
        """Seconds of freshness left (negative once stale)."""
        return self.freshness.lifetime - self.age(now)

    def is_fresh(self, now: float) -> bool:
        return not self.freshness.no_cache and self.freshness.lifetime > self.age(now)

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
        self._set_headers(headers)


class MemoryStore:
    """LRU over ``CacheEntry`` objects, bounded by the sum of their charges in bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.bytes = 0
        self.evictions = 0
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._vary: dict[str, tuple[bytes, ...]] = {}
        self._variant_keys: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[CacheEntry]:
        return iter(list(self._entries.values()))

    @staticmethod
    def variant_key(primary: str, vary: tuple[bytes, ...], headers: dict[bytes, bytes]) -> str:
        """The storage key of the variant a request selects (RFC 9111 §4.1)."""
        if not vary:
            return primary
        values = [b" ".join(headers.get(name, b"").split()) for name in vary]
        return primary + "\0" + "\0".join(v.decode("latin-1") for v in values)

    def vary_of(self, primary: str) -> tuple[bytes, ...]:
        return self._vary.get(primary, ())

    def lookup(self, primary: str, headers: dict[bytes, bytes]) -> CacheEntry | None:
        """The stored variant for this request, marked most recently used; or None."""
        vary = self._vary.get(primary)
        key = primary if not vary else self.variant_key(primary, vary, headers)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def insert(self, entry: CacheEntry) -> int:
        """Store (or replace) an entry; evict least recently used ones. Returns evictions."""
        if entry.charge > self.capacity:
            return 0
        old = self._entries.pop(entry.key, None)
        if old is not None:
            self._forget(old)
        if entry.vary:
            if self._vary.get(entry.primary) != entry.vary:
                # The origin changed its Vary: variants filed under the old fields are unreachable.
                self.remove_primary(entry.primary)
            self._vary[entry.primary] = entry.vary
            self._variant_keys.setdefault(entry.primary, set()).add(entry.key)
        elif entry.primary in self._vary:
            self.remove_primary(entry.primary)
        self._entries[entry.key] = entry
        self.bytes += entry.charge
        evicted = 0
        while self.bytes > self.capacity and self._entries:
            _, victim = self._entries.popitem(last=False)
            self._forget(victim)
            evicted += 1
        self.evictions += evicted
        return evicted

    def _forget(self, victim: CacheEntry) -> None:
        """Account for an entry that left ``_entries``; drop Vary state with its last variant."""
        self.bytes -= victim.charge
        if victim.vary or victim.key != victim.primary:
            keys = self._variant_keys.get(victim.primary)
            if keys is not None:
                keys.discard(victim.key)
                if not keys:
                    del self._variant_keys[victim.primary]
                    self._vary.pop(victim.primary, None)

    def remove(self, key: str) -> bool:
        """Remove one stored variant by its storage key."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._forget(entry)
        return True

    def remove_primary(self, primary: str) -> int:
        """Remove every variant of one URI. Returns how many entries went."""
        keys = set(self._variant_keys.get(primary, ()))
        keys.add(primary)
        removed = 0
        for key in keys:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._forget(entry)
                removed += 1
        self._vary.pop(primary, None)
        self._variant_keys.pop(primary, None)
        return removed

    def remove_prefix(self, prefix: str) -> int:
        """Remove every entry whose primary key starts with ``prefix`` (purge by prefix)."""
        keys = [k for k, e in self._entries.items() if e.primary.startswith(prefix)]
        for key in keys:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._forget(entry)
        return len(keys)

    def resize(self, capacity: int) -> int:
        """Change the byte budget (reload); evicts down to it. Returns evictions."""
        self.capacity = capacity
        evicted = 0
        while self.bytes > self.capacity and self._entries:
            _, victim = self._entries.popitem(last=False)
            self._forget(victim)
            evicted += 1
        self.evictions += evicted
        return evicted
