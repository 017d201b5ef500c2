"""The cache store: a byte-budgeted LRU of complete responses, with Vary variants.

One ``CacheEntry`` per stored response holds everything needed to answer from memory: status,
headers (pre-rendered as one block of bytes), the body (stored once, sliced with memoryviews
when served), the times needed for Age (RFC 9111 §4.2.3), freshness and validators.

Keys: the *primary* key is the normalised URI (see ``cachekey``). When a response carries
``Vary``, the store remembers the varying field names for that primary key and files each
variant under ``primary + "\\0" + the request's values of those fields``; a lookup without
Vary is a single dict access.

Disk tier (``cache_disk > 0``, see ``disktier.py``): the store owns a :class:`DiskTier` that
receives the LRU's victims and answers the lookups memory misses; a disk hit moves the entry
back into memory (exclusive tiers). Purge and removal reach both tiers. Without it, nothing on
the HIT path changes; with it, only a memory miss does more.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from reelcdn.edge.cache.bodyfile import DESCRIPTORS, FileBody
from reelcdn.edge.cache.disktier import DiskTier
from reelcdn.edge.cache.entry import CacheEntry, body_charge
from reelcdn.edge.http.message import normalise_accept_encoding
from reelcdn.extensions import lru  # the compiled LRU index when built, else extensions/_lru_py.py
from reelcdn.extensions._lru_py import LruIndex  # the contract of both twins, for type hints

log = logging.getLogger("reelcdn.store")

# Bodies smaller than this never go to the disk tier when the node keeps every body as bytes
# (``sendfile_min_size = 0``); otherwise the threshold is ``sendfile_min_size``: a body worth a
# memory file is worth a disk file, and below it a file descriptor costs more than it saves.
DISK_MIN_BYTES = 64 * 1024

def _body_to_bytes(entry: CacheEntry) -> None:
    """Keep an entry's memory-file body as ``bytes`` instead (one copy), charged as such; the
    file's descriptor goes when nothing else uses the file body (``bodyfile``)."""
    old = entry.body
    entry.body = bytes(old)
    entry.charge += body_charge(entry.body) - body_charge(old)


class MemoryStore:
    """LRU over ``CacheEntry`` objects, bounded by the sum of their charges in bytes.

    The entries live in a plain dict (key → entry) and their order and byte accounting in an
    :class:`~reelcdn.extensions._lru_py.LruIndex` of key → charge, chosen by ``reelcdn.extensions``
    (the Cython twin when built). Why two structures: a HIT must stay one dict get plus one touch,
    and the part that moves on every request (the recency list, evictions, the byte sum) is the part
    worth compiling, which a C data structure can only do over plain keys and integers, not over
    entry objects. The index records each entry's charge when it is inserted, so ``bytes`` is always
    the exact sum of what was charged, even if an entry is refreshed in place by a 304
    (:meth:`CacheEntry.refresh`) and its own ``charge`` changes: it is accounted again on its next
    insert. Every key of ``_entries`` is in the index and the reverse, after every public call.
    """

    def __init__(
        self, capacity: int, *, index_type: Callable[[int], LruIndex] | None = None
    ) -> None:
        """``index_type``: the LRU index class, when not the selected one (benchmarks, tests)."""
        self.evictions = 0
        self._entries: dict[str, CacheEntry] = {}
        self._index = (index_type or lru.LruIndex)(capacity)
        self._touch = self._index.touch  # bound once: lookup() is on the HIT path
        self._vary: dict[str, tuple[bytes, ...]] = {}
        self._variant_keys: dict[str, set[str]] = {}
        self._disk: DiskTier | None = None
        self._counts: Any = None
        self._disk_configured = False

    @property
    def disk(self) -> DiskTier | None:
        """The disk tier (``configure_disk``), or None."""
        return self._disk

    def configure_disk(self, config: Any, counts: Any = None) -> None:
        """Create, resize, move or drop the disk tier from a node config (``cache_disk``,
        ``cache_dir``, ``sendfile_min_bytes``); called at start and on every reload, and a
        no-op when nothing changed. ``counts``: the node's ``NodeStats`` (disk counters).

        A new directory gets a new, empty tier (the old one's files are removed); a smaller
        ``cache_disk`` evicts down to it. The first call raises ``OSError`` when the directory
        cannot be made (the node does not start); later ones (reloads) log it and keep the tier
        they had.
        """
        first, self._disk_configured = not self._disk_configured, True
        capacity = config.cache_disk
        directory = config.cache_dir
        min_bytes = config.sendfile_min_bytes or DISK_MIN_BYTES
        if counts is not None:
            self._counts = counts
        disk = self._disk
        if capacity <= 0 or not directory:
            if disk is not None:
                self._disk = None
                disk.close()
            return
        directory = os.path.abspath(directory)
        if disk is not None and disk.directory == directory:
            disk.min_bytes = min_bytes
            if disk.capacity != capacity:
                disk.resize(capacity)
            return
        try:
            fresh = DiskTier(capacity, directory, min_bytes=min_bytes, counts=self._counts)
        except OSError as exc:
            if first:
                raise OSError(exc.errno, f"cache_dir {directory}: {exc.strerror or exc}") from exc
            log.error("disk tier: cannot use cache_dir %s (%s); keeping the previous one",
                      directory, exc)
            return
        if disk is not None:
            disk.close()
        self._disk = fresh
        log.info("disk tier: %d bytes under %s", capacity, fresh.run_dir)

    def close(self) -> None:
        """Drop the disk tier's files (the memory entries stay)."""
        if self._disk is not None:
            disk, self._disk = self._disk, None
            disk.close()

    @property
    def bytes(self) -> int:
        """Sum of the charges of the stored entries."""
        return self._index.bytes

    @property
    def capacity(self) -> int:
        """The byte budget (change it with :meth:`resize`)."""
        return self._index.capacity

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[CacheEntry]:
        """The entries, least recently used first (a snapshot)."""
        entries = self._entries
        return iter([entries[key] for key in self._index])

    @staticmethod
    def variant_key(primary: str, vary: tuple[bytes, ...], headers: dict[bytes, bytes]) -> str:
        """The storage key of the variant a request selects (RFC 9111 §4.1): the values of
        the selecting fields, each normalised by :func:`selecting_value`."""
        if not vary:
            return primary
        values = [selecting_value(name, headers.get(name, b"")) for name in vary]
        return primary + "\0" + "\0".join(v.decode("latin-1") for v in values)

    def vary_of(self, primary: str) -> tuple[bytes, ...]:
        vary = self._vary.get(primary, ())
        if not vary and self._disk is not None:
            return self._disk.vary_of(primary)
        return vary

    def lookup(self, primary: str, headers: dict[bytes, bytes]) -> CacheEntry | None:
        """The stored variant for this request, marked most recently used; or None.

        A memory miss asks the disk tier, which hands the entry back into memory."""
        vary = self._vary.get(primary)
        key = primary if not vary else self.variant_key(primary, vary, headers)
        entry = self._entries.get(key)
        if entry is not None:
            # The entry's own key is the object the index holds (see insert): the index finds it
            # by identity, without comparing the request's freshly built, equal string.
            self._touch(entry.key)
            return entry
        if self._disk is None:
            return None
        return self._promote(primary, headers)

    def _promote(self, primary: str, headers: dict[bytes, bytes]) -> CacheEntry | None:
        """A disk hit: the entry leaves the disk tier and becomes memory's most recent."""
        disk = self._disk
        assert disk is not None
        if not len(disk):
            return None
        vary = self._vary.get(primary) or disk.vary_of(primary)
        key = primary if not vary else self.variant_key(primary, vary, headers)
        entry = disk.take(key)
        if entry is None:
            return None
        if entry.charge > self._index.capacity:
            disk.put(entry)  # memory shrank below it since: serve it, keep it on disk
            return entry
        evicted = self.insert(entry)
        if evicted and self._counts is not None:
            self._counts.evictions += evicted  # the node counts only its own inserts
        return entry

    def peek(self, key: str) -> CacheEntry | None:
        """The entry stored under this storage key, without marking it used (for bookkeeping
        such as prefetch accounting, which must not keep an unused object alive longer)."""
        return self._entries.get(key)

    def insert(self, entry: CacheEntry) -> int:
        """Store (or replace) an entry; evict least recently used ones. Returns evictions."""
        if type(entry.body) is FileBody and DESCRIPTORS.over():
            _body_to_bytes(entry)  # mapped from the disk tier with the descriptor budget used
        if entry.charge > self._index.capacity:
            return 0  # refused before anything changes: an older version stays servable
        key = entry.key
        old = self._entries.pop(key, None)
        disk = self._disk
        if disk is not None:
            disk.admit(key, entry.primary, entry.vary)
        if old is not None:
            self._forget(old)
            if old is not entry and old.disk_path is not None:
                self._discard_file(old)
            # Re-filed rather than replaced in place, which would keep the old key object: the
            # index must hold this entry's key object for lookup()'s identity match.
            self._index.remove(key)
        if entry.vary:
            if self._vary.get(entry.primary) != entry.vary:
                # The origin changed its Vary: variants filed under the old fields are unreachable.
                # (The disk tier's were checked against its own record of the Vary: admit.)
                self._remove_primary_memory(entry.primary)
            self._vary[entry.primary] = entry.vary
            self._variant_keys.setdefault(entry.primary, set()).add(key)
        elif entry.primary in self._vary:
            self._remove_primary_memory(entry.primary)
        self._entries[key] = entry
        evicted = self._index.insert(key, entry.charge)
        if evicted:
            self._drop(evicted)
        return len(evicted)

    def _drop(self, evicted: list[str]) -> None:
        """The index evicted these keys: drop their entries (to the disk tier, if any, which
        keeps those worth a file) and count the evictions."""
        entries = self._entries
        disk = self._disk
        for key in evicted:
            victim = entries.pop(key)
            self._forget(victim)
            if disk is not None:
                disk.put(victim)
        self.evictions += len(evicted)

    def _discard_file(self, entry: CacheEntry) -> None:
        """An entry promoted from disk leaves memory for good: its kept file goes too."""
        if self._disk is not None:
            self._disk.discard_file(entry.disk_path)
        entry.disk_path = None

    def _forget(self, victim: CacheEntry) -> None:
        """Vary bookkeeping for an entry that left ``_entries``: drop it with its last variant."""
        if victim.vary or victim.key != victim.primary:
            keys = self._variant_keys.get(victim.primary)
            if keys is not None:
                keys.discard(victim.key)
                if not keys:
                    del self._variant_keys[victim.primary]
                    self._vary.pop(victim.primary, None)

    def _remove_key(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._index.remove(key)
        self._forget(entry)
        if entry.disk_path is not None:
            self._discard_file(entry)
        return True

    def remove(self, key: str) -> bool:
        """Remove one stored variant by its storage key (from memory or the disk tier)."""
        if self._remove_key(key):
            return True
        return self._disk is not None and self._disk.remove(key)

    def remove_primary(self, primary: str) -> int:
        """Remove every variant of one URI. Returns how many entries went."""
        removed = self._remove_primary_memory(primary)
        if self._disk is not None:
            removed += self._disk.remove_primary(primary)
        return removed

    def _remove_primary_memory(self, primary: str) -> int:
        keys = set(self._variant_keys.get(primary, ()))
        keys.add(primary)
        removed = 0
        for key in keys:
            removed += self._remove_key(key)
        self._vary.pop(primary, None)
        self._variant_keys.pop(primary, None)
        return removed

    def remove_matching(self, match: Callable[[str], bool]) -> int:
        """Remove every entry whose primary key ``match`` accepts (purge: ``KeyPolicy.
        purge_matcher``), from memory and the disk tier. Returns how many went."""
        keys = [k for k, e in self._entries.items() if match(e.primary)]
        for key in keys:
            self._remove_key(key)
        if self._disk is not None:
            return len(keys) + self._disk.remove_matching(match)
        return len(keys)

    def remove_prefix(self, prefix: str) -> int:
        """Remove every entry whose primary key starts with ``prefix``."""
        return self.remove_matching(lambda primary: primary.startswith(prefix))

    def resize(self, capacity: int) -> int:
        """Change the byte budget (reload); evicts down to it. Returns evictions."""
        evicted = self._index.resize(capacity)
        if evicted:
            self._drop(evicted)
        return len(evicted)


# Fields whose values are case-insensitive tokens with parameters: language tags and charsets
# (RFC 9110 §12.5.2, §12.5.4) and their q-values.
_CASELESS_LISTS = frozenset({b"accept-language", b"accept-charset"})


def selecting_value(name: bytes, value: bytes) -> bytes:
    """A request's value of the selecting field ``name`` (lowercase), normalised so that
    requests meaning the same select the same variant (RFC 9111 §4.1 allows exactly this).

    For every field: members are split on commas outside quoted strings, whitespace around
    them is dropped and runs inside them become one space, empty members go (RFC 9110
    §5.6.1), and the members are joined with a bare comma. So ``a, b``, ``a,b`` and two field
    lines ``a`` and ``b`` (which the reader joins as ``a, b``) are one variant. Only a list
    field may be sent as several lines and carry OWS around its commas, so this changes
    nothing for other fields but the whitespace, which the key never kept either.

    Accept-Encoding takes the node's one spelling per set of accepted codings
    (``http.normalise_accept_encoding``, the value a fill forwards and files its variant
    under). For Accept-Language and Accept-Charset, whose tokens are
    case-insensitive, the value is also lowercased and whitespace around a parameter's ``;``
    dropped; for Accept, the media type and parameter names are lowercased
    (parameter values may be case-sensitive). Members are never reordered: order carries
    preference between equal q-values. Fields the node knows nothing about keep their case:
    treating ``Foo`` and ``foo`` alike for them could serve one variant for another, while
    missing an equivalence only costs a fill. Serious caches lean the same way: Varnish
    normalises Accept-Encoding and leaves other fields to VCL, Traffic Server normalises
    Accept-Encoding only, nginx compares the values as sent.
    """
    if not value:
        return b""
    if name == b"accept-encoding":
        # The fill files its variant under this spelling (node.fill_order): lookups must too.
        return normalise_accept_encoding(value)
    members = value.split(b",") if b'"' not in value else _split_outside_quotes(value)
    members = [b" ".join(member.split()) for member in members]
    if name in _CASELESS_LISTS:
        members = [_tight_parameters(member).lower() for member in members]
    elif name == b"accept":
        members = [_accept_member(member) for member in members]
    return b",".join(member for member in members if member)


def _split_outside_quotes(value: bytes) -> list[bytes]:
    """Split on commas that are not inside a quoted string (backslash escapes one byte)."""
    members: list[bytes] = []
    start = 0
    quoted = escaped = False
    for i, byte in enumerate(value):
        if escaped:
            escaped = False
        elif byte == 0x5C and quoted:  # backslash
            escaped = True
        elif byte == 0x22:  # double quote
            quoted = not quoted
        elif byte == 0x2C and not quoted:  # comma
            members.append(value[start:i])
            start = i + 1
    members.append(value[start:])
    return members


def _tight_parameters(member: bytes) -> bytes:
    """``gzip ; q=0.5`` → ``gzip;q=0.5`` (OWS is allowed around ``;``, RFC 9110 §5.6.6)."""
    if b";" not in member:
        return member
    return b";".join(part.strip() for part in member.split(b";"))


def _accept_member(member: bytes) -> bytes:
    """A media range with its type/subtype and parameter names lowercased."""
    parts = _tight_parameters(member).split(b";")
    out = [parts[0].lower()]
    for parameter in parts[1:]:
        key, eq, val = parameter.partition(b"=")
        out.append(key.lower() + eq + val)
    return b";".join(out)
