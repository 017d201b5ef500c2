"""A read-through cache for the origin API's hot reads: memcached through pymemcache's
``HashClient`` when the topology has ``[cache] servers``, else none (every read goes to the
database, as it always did: SQLite is the embedded default and local).

What is cached (docs/feed.md#cache): feed pages (by snapshot, position and limit), video rows
(``ready`` ones only: a row still processing changes under the API's own readers), and the
counters a feed item shows (views, likes; a short TTL, eventually consistent).

- **Cluster**: ``HashClient`` spreads keys over the servers by rendezvous hashing (its
  default MurmurHash3, computed by ``mmh3`` in C: pymemcache's pure-Python one took 20 µs a
  key, most of a feed page's cache time; the same hash, so the same placement); a server
  that fails is taken out of the ring at once (``retry_attempts = 0`` by default) for
  ``dead_timeout``, so its keys go to the others meanwhile, and is put back afterwards.
- **Off the event loop**: pymemcache is synchronous. Every call here is made from a worker
  thread (the API's handlers call the feed service and the catalog with ``asyncio.to_thread``)
  and bounded by ``timeout`` / ``connect_timeout``. One client serves the process, its calls
  serialised by a lock: ``HashClient``'s dead-server bookkeeping is not thread-safe, and a
  loopback or LAN memcached answers in well under a millisecond.
- **Items** are JSON (``JsonSerde``; never pickle): ``{"v": value, "x": soft expiry}``. The
  item lives ``ttl + stale_ttl`` in memcached; past its soft expiry it is *stale*.
- **Near copies**: every fresh value this process read or wrote is also kept in the process
  for ``near_ttl`` (1 s; never past the item's own soft expiry; at most ``near_size`` keys).
  A feed page shows the counters of ten videos and every viewer's page names the same hot
  ones: without it each page was a memcached round trip — a thread blocked on a socket, the
  GIL handed over twice, pymemcache parsing ten values — for data a second old at most. A
  write through this process (a like's counters, a delete) replaces or drops its near copy;
  other processes see it within ``near_ttl``, on top of the TTL every copy already has.
- **Stampede protection** (``hot=True`` reads: feed pages): on a miss, or on a stale copy, the
  caller that wins a memcached ``add`` of a lock key (``lock_ttl``, shared by every process
  and host) recomputes and stores; the others return the stale copy when there is one, else
  poll for the value up to ``lock_wait``, then read the database themselves.
- **Degradation**: a memcached error (refused, timed out, every server dead) is counted and
  the value is computed from the database; ``reelcdn_origin_cache_up`` goes to 0 with a
  ``cache_down`` log record, and back to 1 (``cache_up``) with the first call that works.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from reelcdn.origin.logs import fields

__all__ = ["KINDS", "CacheSettings", "JsonSerde", "Memcache", "NoCache", "ReadThrough",
           "open_cache"]

log = logging.getLogger("reelcdn.origin.cache")

KINDS = ("page", "video", "counters")
JSON_FLAG = 1 << 4            # pymemcache's own serde uses 0..3; an item of any other flag is
MAX_KEY = 200                 # refused. Longer keys are hashed (memcached's limit is 250).
POLL = 0.01                   # a waiter's first poll for the value another caller computes


@dataclass(frozen=True)
class CacheSettings:
    """``[cache]`` of the topology (``origin/config.py``); ``servers`` empty: no memcached."""

    servers: tuple[tuple[str, int], ...] = ()
    prefix: str = "reelcdn:"
    connect_timeout: float = 0.05
    timeout: float = 0.05
    retry_attempts: int = 0
    dead_timeout: float = 10.0
    page_ttl: float = 30.0
    video_ttl: float = 300.0
    counters_ttl: float = 5.0
    stale_ttl: float = 60.0
    lock_ttl: float = 2.0
    lock_wait: float = 0.5
    near_ttl: float = 1.0
    near_size: int = 10_000

    def ttl(self, kind: str) -> float:
        return {"page": self.page_ttl, "video": self.video_ttl,
                "counters": self.counters_ttl}[kind]


class ReadThrough(Protocol):
    """What the API and the feed service ask of a cache. ``compute`` reads the database."""

    settings: CacheSettings

    def get(self, kind: str, key: str, compute: Callable[[], Any], *, hot: bool = False,
            store_if: Callable[[Any], bool] | None = None) -> Any: ...

    def get_many(self, kind: str, keys: Sequence[str],
                 compute: Callable[[list[str]], Mapping[str, Any]]) -> dict[str, Any]: ...

    def set(self, kind: str, key: str, value: Any) -> None: ...

    def delete(self, kind: str, keys: Iterable[str]) -> None: ...

    def close(self) -> None: ...


class NoCache:
    """No memcached configured: every read is the database's."""

    def __init__(self, settings: CacheSettings | None = None) -> None:
        self.settings = settings or CacheSettings()

    def get(self, kind: str, key: str, compute: Callable[[], Any], *, hot: bool = False,
            store_if: Callable[[Any], bool] | None = None) -> Any:
        return compute()

    def get_many(self, kind: str, keys: Sequence[str],
                 compute: Callable[[list[str]], Mapping[str, Any]]) -> dict[str, Any]:
        return dict(compute(list(dict.fromkeys(keys)))) if keys else {}

    def set(self, kind: str, key: str, value: Any) -> None:
        pass

    def delete(self, kind: str, keys: Iterable[str]) -> None:
        pass

    def close(self) -> None:
        pass


class JsonSerde:
    """pymemcache's serde protocol with JSON: what the cache stores is data, never code."""

    def serialize(self, key: Any, value: Any) -> tuple[bytes, int]:
        return json.dumps(value, separators=(",", ":")).encode(), JSON_FLAG

    def deserialize(self, key: Any, value: bytes, flags: int) -> Any:
        if flags != JSON_FLAG:
            return None  # not ours (another writer's format): a miss
        try:
            return json.loads(value)
        except ValueError:
            return None


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.hits = Counter("reelcdn_origin_cache_hits", "cache reads answered by memcached "
                            "(fresh), by kind", ["kind"], registry=registry)
        self.misses = Counter("reelcdn_origin_cache_misses", "cache reads memcached did not "
                              "answer (the database was read), by kind", ["kind"],
                              registry=registry)
        self.errors = Counter("reelcdn_origin_cache_errors", "memcached calls that failed "
                              "(the database answered instead), by kind", ["kind"],
                              registry=registry)
        self.stale = Counter("reelcdn_origin_cache_stale_served", "stale copies served while "
                             "another caller recomputed, by kind", ["kind"], registry=registry)
        self.lock_waits = Counter(
            "reelcdn_origin_cache_lock_waits", "callers that waited for another's recompute, "
            "by kind and result (value: it arrived; timeout: the database was read)",
            ["kind", "result"], registry=registry)
        self.recomputes = Counter("reelcdn_origin_cache_recomputes", "values computed from "
                                  "the database and stored, by kind", ["kind"],
                                  registry=registry)
        self.near_hits = Counter("reelcdn_origin_cache_near_hits", "reads answered by the "
                                 "process's near copy (not asking memcached), by kind",
                                 ["kind"], registry=registry)
        self.up = Gauge("reelcdn_origin_cache_up", "1 while memcached answers, 0 after a "
                        "failed call until one works (reads go to the database meanwhile)",
                        registry=registry)


def murmur3_32(key: str, seed: int = 0) -> int:
    """pymemcache's ``murmur3_32`` (unsigned MurmurHash3 x86 32-bit of an ASCII key), in C."""
    import mmh3

    return int(mmh3.hash(key, seed, signed=False))


class Memcache:
    """The read-through cache over a memcached cluster (module docstring)."""

    def __init__(self, settings: CacheSettings, registry: CollectorRegistry, *,
                 clock: Callable[[], float] = time.time) -> None:
        from pymemcache.client.hash import HashClient
        from pymemcache.client.rendezvous import RendezvousHash

        self.settings = settings
        self.clock = clock
        self.metrics = CacheMetrics(registry)
        self.metrics.up.set(1)
        self._up = True
        self._mutex = threading.Lock()
        # full key → (expires, value); insertion order is age (the oldest go first when full).
        self._near: dict[str, tuple[float, Any]] = {}
        self.client = HashClient(
            list(settings.servers), serde=JsonSerde(),
            connect_timeout=settings.connect_timeout, timeout=settings.timeout,
            retry_attempts=settings.retry_attempts, retry_timeout=settings.dead_timeout,
            dead_timeout=settings.dead_timeout, ignore_exc=False, default_noreply=False,
            no_delay=True, hasher=lambda: RendezvousHash(hash_function=murmur3_32))

    # -- keys and calls ------------------------------------------------------------------------

    def key(self, kind: str, key: str) -> str:
        full = f"{self.settings.prefix}{kind}:{key}"
        # memcached keys: ASCII without spaces or control characters (checked at C speed:
        # this runs for every key of every page).
        if len(full) > MAX_KEY or not (full.isascii() and full.isprintable()) or " " in full:
            full = f"{self.settings.prefix}{kind}#" + hashlib.sha256(key.encode()).hexdigest()
        return full

    def _call(self, kind: str, method: str, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """``(True, result)``, or ``(False, None)`` when memcached failed (counted, logged
        when it starts failing)."""
        try:
            with self._mutex:
                result = getattr(self.client, method)(*args, **kwargs)
        except Exception as exc:
            self.metrics.errors.labels(kind).inc()
            if self._up:
                self._up = False
                self.metrics.up.set(0)
                log.warning("memcached failed (%s: %s): reads go to the database until it "
                            "answers again", exc.__class__.__name__, exc,
                            extra=fields(event="cache_down", error=str(exc)))
            return False, None
        if not self._up:
            self._up = True
            self.metrics.up.set(1)
            log.info("memcached answers again", extra=fields(event="cache_up"))
        return True, result

    def _item(self, value: Any, kind: str) -> dict[str, Any]:
        return {"v": value, "x": self.clock() + self.settings.ttl(kind)}

    def _expire(self, kind: str) -> int:
        return max(1, math.ceil(self.settings.ttl(kind) + self.settings.stale_ttl))

    @staticmethod
    def _valid(raw: Any) -> bool:
        return isinstance(raw, dict) and "v" in raw and isinstance(raw.get("x"), int | float)

    # -- near copies (module doc) --------------------------------------------------------------

    def _near_get(self, full: str, now: float) -> tuple[bool, Any]:
        entry = self._near.get(full)
        if entry is None:
            return False, None
        if now >= entry[0]:
            self._near.pop(full, None)
            return False, None
        return True, entry[1]

    def _near_put(self, full: str, value: Any, fresh_until: float, now: float) -> None:
        ttl = self.settings.near_ttl
        if ttl <= 0 or self.settings.near_size <= 0:
            return
        near = self._near
        near.pop(full, None)  # re-inserted: it is the newest now
        while len(near) >= self.settings.near_size:
            try:
                near.pop(next(iter(near)))
            except (StopIteration, KeyError, RuntimeError):  # another thread changed it
                break
        near[full] = (min(now + ttl, fresh_until), value)

    # -- reads ---------------------------------------------------------------------------------

    def get(self, kind: str, key: str, compute: Callable[[], Any], *, hot: bool = False,
            store_if: Callable[[Any], bool] | None = None) -> Any:
        """The value under ``key``: memcached's while fresh, else ``compute()``'s (stored
        when ``store_if`` allows). ``hot``: one caller recomputes at a time (module doc)."""
        metrics = self.metrics
        full = self.key(kind, key)
        now = self.clock()
        found, value = self._near_get(full, now)
        if found:
            metrics.near_hits.labels(kind).inc()
            return value
        ok, raw = self._call(kind, "get", full)
        if not ok:
            return compute()
        raw = raw if self._valid(raw) else None
        if raw is not None and now < raw["x"]:
            metrics.hits.labels(kind).inc()
            self._near_put(full, raw["v"], raw["x"], now)
            return raw["v"]
        metrics.misses.labels(kind).inc()
        if not hot:
            return self._compute_and_store(kind, full, compute, store_if)
        lock = self.key("lock", f"{kind}:{key}")
        ok, won = self._call(kind, "add", lock, 1,
                             expire=max(1, math.ceil(self.settings.lock_ttl)))
        if not ok:
            return compute()
        if won:
            try:
                return self._compute_and_store(kind, full, compute, store_if)
            finally:
                self._call(kind, "delete", lock)
        if raw is not None:  # another caller is recomputing: the stale copy meanwhile
            metrics.stale.labels(kind).inc()
            return raw["v"]
        deadline = time.monotonic() + self.settings.lock_wait
        pause = POLL
        while time.monotonic() < deadline:
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.05)
            ok, raw = self._call(kind, "get", full)
            if not ok:
                return compute()
            if self._valid(raw) and self.clock() < raw["x"]:
                metrics.lock_waits.labels(kind, "value").inc()
                return raw["v"]
        metrics.lock_waits.labels(kind, "timeout").inc()
        return compute()

    def _compute_and_store(self, kind: str, full: str, compute: Callable[[], Any],
                           store_if: Callable[[Any], bool] | None) -> Any:
        value = compute()
        if store_if is None or store_if(value):
            self.metrics.recomputes.labels(kind).inc()
            item = self._item(value, kind)
            self._call(kind, "set", full, item, expire=self._expire(kind))
            self._near_put(full, value, item["x"], self.clock())
        return value

    def get_many(self, kind: str, keys: Sequence[str],
                 compute: Callable[[list[str]], Mapping[str, Any]]) -> dict[str, Any]:
        """Values for ``keys``: memcached's fresh ones, the rest from one ``compute(missing)``
        (which may leave keys out: they are not stored). No lock: a miss costs one batched
        database read."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        now, values = self.clock(), {}
        names: dict[str, str] = {}
        for key in wanted:
            full = self.key(kind, key)
            found, value = self._near_get(full, now)
            if found:
                values[key] = value
            else:
                names[full] = key
        if values:
            self.metrics.near_hits.labels(kind).inc(len(values))
        if not names:
            return values
        ok, answered = self._call(kind, "get_many", list(names))
        if not ok:
            return {**values, **compute(list(names.values()))}
        hits = 0
        for full, raw in (answered or {}).items():
            if self._valid(raw) and now < raw["x"] and full in names:
                values[names[full]] = raw["v"]
                self._near_put(full, raw["v"], raw["x"], now)
                hits += 1
        self.metrics.hits.labels(kind).inc(hits)
        missing = [key for key in names.values() if key not in values]
        if missing:
            self.metrics.misses.labels(kind).inc(len(missing))
            computed = dict(compute(missing))
            values.update(computed)
            if computed:
                self.metrics.recomputes.labels(kind).inc(len(computed))
                items = {self.key(kind, k): self._item(v, kind) for k, v in computed.items()}
                self._call(kind, "set_many", items, expire=self._expire(kind))
                for full, item in items.items():
                    self._near_put(full, item["v"], item["x"], now)
        return values

    # -- writes --------------------------------------------------------------------------------

    def set(self, kind: str, key: str, value: Any) -> None:
        """Store a value known fresh (a counter just written)."""
        full, item = self.key(kind, key), self._item(value, kind)
        self._call(kind, "set", full, item, expire=self._expire(kind))
        self._near_put(full, value, item["x"], self.clock())

    def delete(self, kind: str, keys: Iterable[str]) -> None:
        """Drop keys (a deleted video). If memcached is down meanwhile, a copy may outlive
        its source until its TTL (``ttl + stale_ttl``)."""
        names = [self.key(kind, key) for key in keys]
        for full in names:
            self._near.pop(full, None)
        if names:
            self._call(kind, "delete_many", names)

    def close(self) -> None:
        with self._mutex:
            self.client.close()


def open_cache(settings: CacheSettings | None, registry: CollectorRegistry,
               clock: Callable[[], float] = time.time) -> ReadThrough:
    """memcached when ``settings`` names servers, else :class:`NoCache`."""
    if settings is None or not settings.servers:
        return NoCache(settings)
    return Memcache(settings, registry, clock=clock)
