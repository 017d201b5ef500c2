"""Prefetch: fill the cache with what a player will ask for next, before it asks.

Two signals say what comes next: serving a media playlist (the player fetches the init segment
and the first segments right after it) and CMCD ``nor`` (the player names its next object,
edge/video/cmcd.py). Either way the node starts an ordinary cache fill (``CacheNode.start_fill``)
through its parents, so a prefetched object is fetched, stored and counted exactly like a client
miss, and a client asking for it while the prefetch is under way joins that fetch through the
coalescer instead of starting a second one.

Bounds, so that prefetch can only help and a client cannot turn it against the CDN (the rules
and why: edge/video/prefetch_bounds.py):

- only objects of the request's own video (``/v/{id}/...``), and only init sections and
  segments (by suffix), with no query left in the key: anything else is refused and counted
  by reason. The request itself was authorised: ``CacheNode.receive`` runs the token gate
  before the features, and a refused request never reaches them;
- byte budgets: per client (IPv4 address, IPv6 /64) and for the node, token buckets of bytes
  per second (``prefetch_client_bytes_per_second``, ``prefetch_bytes_per_second``); a
  prefetch's bytes are charged when its fill ends, and a bucket below zero refuses new
  prefetches (asked for, or queued and about to start) until it refills;
- a capped queue (``prefetch_queue``): beyond it requests are dropped and counted;
- deduplication: a key already queued, in flight (client or prefetch) or fresh in the store is
  not queued again;
- lower priority: nothing starts inside the client's request step (the queue is pumped on a
  later loop pass, after the client's answer is written), and at most ``prefetch_concurrency``
  prefetch fills run at once, so client misses keep the upstream connections.

Measured (``/metrics``): prefetches issued; used (a client asked for the object while it was
being prefetched, or later got it as a HIT); wasted (the object left the cache, evicted or
expired, before any client asked); dropped (queue full); refused, by reason (other_video,
not_media, query, client_budget, node_budget). Use is noted by the request hook
(``note_request``, one dict lookup), waste by a sweep over the objects still unused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from reelcdn.edge.cache.keys import host_of
from reelcdn.edge.cache.store import CacheEntry, MemoryStore
from reelcdn.edge.fetch.coalescer import Fetch
from reelcdn.edge.video.prefetch_bounds import (
    CLIENT_BURST_SECONDS,
    NODE_BURST_SECONDS,
    ByteBucket,
    ClientBudgets,
    client_key,
    is_media_object,
    keyed_query,
    same_video,
)
from reelcdn.extensions.message import Request
from reelcdn.extensions.target import BadPath

# Fetch-standard marker on a prefetch's fill, so a parent's logs can tell it from a player's.
PREFETCH_FIELDS = ((b"Sec-Purpose", b"prefetch"),)

if TYPE_CHECKING:
    from reelcdn.edge.video.host import FeatureHost

log = logging.getLogger("reelcdn.prefetch")

#: Unused prefetched objects remembered (to count them used or wasted): a bound on memory.
MAX_TRACKED = 4096
#: How often (seconds) the unused ones are checked for eviction or expiry.
SWEEP_INTERVAL = 1.0
_RESOLVE_BASE = "http://node.invalid"


def resolve(request_path: str, relative: str) -> str | None:
    """``relative`` (a CMCD ``nor``) resolved against the request path, as an origin-form
    target ``/path[?query]``; None for anything that leaves this host or is not a path."""
    try:
        joined = urlsplit(urljoin(_RESOLVE_BASE + request_path, relative))
    except ValueError:
        return None
    if f"{joined.scheme}://{joined.netloc}" != _RESOLVE_BASE or not joined.path.startswith("/"):
        return None
    return joined.path + ("?" + joined.query if joined.query else "")


class Prefetcher:
    """The prefetch queue of one node, and its accounting."""

    def __init__(self, node: FeatureHost) -> None:
        self.node = node
        self._queue: deque[tuple[str, str]] = deque()  # (key, client address)
        self._queued: set[str] = set()
        self._running: dict[str, Fetch] = {}
        # key -> the entry a prefetch stored, until a client uses it or it leaves the cache.
        self._unused: OrderedDict[str, CacheEntry] = OrderedDict()
        self._used_inflight: set[str] = set()   # running prefetches a client already joined
        self._pump_scheduled = False
        self._last_sweep = 0.0
        self.closed = False
        # Byte budgets (prefetch_bounds.py): per client, and the node's (made on first use).
        self._clients = ClientBudgets()
        self._node_bucket: ByteBucket | None = None

    # -- what the request hook calls --------------------------------------------------------
    def note_request(self, primary: str) -> None:
        """A client asked for ``primary``: a prefetch of it was useful (counted once)."""
        if primary in self._running:
            if primary not in self._used_inflight:
                self._used_inflight.add(primary)
                self.node.stats.prefetch_used += 1
        elif self._unused:
            entry = self._unused.pop(primary, None)
            if entry is not None:
                self.node.stats.prefetch_used += 1

    def want(
        self, target: str, client_ip: str, host: str | None = None, *, request_path: str
    ) -> bool:
        """Queue ``target`` (``/path[?query]``) for prefetch; False when not queued: refused
        by the bounds (counted by reason), already there, or the queue is full.
        ``request_path`` is the (canonical) path of the request that asked for it: only
        objects of its video are prefetched. ``host`` is that request's Host
        (``request_host``): with ``host_in_key`` it is part of the key, so the prefetched
        object is stored where that site's clients look it up."""
        if self.closed:
            return False
        node = self.node
        config = node.config
        try:
            key = node.keys.for_target(target, host)
        except BadPath:
            return False
        path = node.keys.rule_path(key)  # canonical, as the fill will ask for it
        if not same_video(request_path, path):
            return self._refuse("other_video")
        if not is_media_object(path):
            return self._refuse("not_media")
        if keyed_query(key):
            return self._refuse("query")
        if key in self._queued or key in self._running or node.coalescer.get(key):
            return False
        entry = node.store.lookup(key, {})
        if entry is not None and entry.is_fresh(time.time()):
            return False
        if not self._within_budgets(client_ip):
            return False
        if len(self._queue) >= config.prefetch_queue:
            self.node.stats.prefetch_dropped += 1
            return False
        self._queue.append((key, client_ip))
        self._queued.add(key)
        if not self._pump_scheduled:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)
        return True

    # -- the bounds ---------------------------------------------------------------------------
    def _refuse(self, reason: str) -> bool:
        refused = self.node.stats.prefetch_refused
        refused[reason] = refused.get(reason, 0) + 1
        return False

    def _within_budgets(self, client_ip: str) -> bool:
        """Whether neither the client's byte bucket nor the node's is below zero (a refusal
        is counted)."""
        config = self.node.config
        now = time.monotonic()
        rate = config.prefetch_client_bytes_per_second
        if not self._clients.allows(client_key(client_ip), now, rate,
                                    rate * CLIENT_BURST_SECONDS):
            return self._refuse("client_budget")
        bucket = self._node_bucket
        rate = config.prefetch_bytes_per_second
        if bucket is not None and not bucket.allows(now, rate, rate * NODE_BURST_SECONDS):
            return self._refuse("node_budget")
        return True

    def _charge(self, client_ip: str, size: int) -> None:
        """A prefetch fetched ``size`` bytes (stored or not, they travelled): charge them to
        the client that asked and to the node."""
        config = self.node.config
        now = time.monotonic()
        rate = config.prefetch_client_bytes_per_second
        self._clients.charge(client_key(client_ip), size, now, rate,
                             rate * CLIENT_BURST_SECONDS)
        rate = config.prefetch_bytes_per_second
        burst = rate * NODE_BURST_SECONDS
        if self._node_bucket is None:
            self._node_bucket = ByteBucket(burst, now)
        self._node_bucket.charge(size, now, rate, burst)

    # -- the queue ----------------------------------------------------------------------------
    def _pump(self) -> None:
        """Start queued prefetches up to the concurrency cap (runs on its own loop pass)."""
        self._pump_scheduled = False
        if self.closed:
            return
        node = self.node
        limit = node.config.prefetch_concurrency
        while self._queue and len(self._running) < limit:
            key, client_ip = self._queue.popleft()
            self._queued.discard(key)
            if node.coalescer.get(key) is not None:
                continue  # a client started it meanwhile
            entry = node.store.lookup(key, {})
            if entry is not None and entry.is_fresh(time.time()):
                continue
            if not self._within_budgets(client_ip):
                continue  # spent while it waited in the queue
            order = node.fill_order_for(key, client_ip, PREFETCH_FIELDS)
            fetch = node.start_fill(key, key, order, None)
            self._running[key] = fetch
            node.stats.prefetch_issued += 1
            assert fetch.task is not None
            fetch.task.add_done_callback(
                lambda _task, key=key, fetch=fetch, client_ip=client_ip:
                self._done(key, fetch, client_ip))
        self.sweep()

    def close(self) -> None:
        """The node is stopping: forget what is queued and start nothing more (running
        prefetches are fills, cancelled with the node's other background tasks)."""
        self.closed = True
        self._queue.clear()
        self._queued.clear()

    def _done(self, key: str, fetch: Fetch, client_ip: str) -> None:
        self._running.pop(key, None)
        self._charge(client_ip, fetch.size)
        used = key in self._used_inflight
        self._used_inflight.discard(key)
        if not used and fetch.error is None:
            entry = self.node.store.lookup(key, {})
            if entry is not None:
                self._unused[key] = entry
                while len(self._unused) > MAX_TRACKED:
                    self._unused.popitem(last=False)  # forgotten, neither used nor wasted
        if self._queue and not self._pump_scheduled and not self.closed:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def sweep(self, now: float | None = None) -> None:
        """Count unused prefetched objects that left the cache (evicted, replaced) or expired:
        wasted. At most once per ``SWEEP_INTERVAL`` unless ``now`` is given."""
        if now is None:
            now = time.time()
            if now - self._last_sweep < SWEEP_INTERVAL:
                return
        self._last_sweep = now
        store = self.node.store
        gone = [
            key for key, entry in self._unused.items()
            if not entry.is_fresh(now) or not _still_stored(store, key, entry)
        ]
        for key in gone:
            del self._unused[key]
        self.node.stats.prefetch_wasted += len(gone)

    @property
    def pending(self) -> int:
        """Prefetches queued or in flight (tests wait for zero)."""
        return len(self._queue) + len(self._running)


def request_host(req: Request) -> str:
    """The host part of a request's Host field, as the node's ``KeyPolicy`` puts it in the
    key."""
    return host_of(req.headers.get(b"host", b""))


def _still_stored(store: MemoryStore, key: str, entry: CacheEntry) -> bool:
    """Whether ``entry`` is still the one stored under ``key``, *without* touching the LRU
    order (a lookup would make an unused object look recently used and keep it longer)."""
    return store.peek(key) is entry
