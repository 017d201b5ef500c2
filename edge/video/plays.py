"""View counts from the edges: plays and completions, posted to the origin in batches.

What is counted (docs/plays.md), on an edge (``role = "edge"``) with ``plays_url`` set, from
the features hook (edge/video/features.py):

- a **play**: the first media segment of a video delivered to a session. A media segment is a
  GET of ``/v/{video}/{rendition}/{file}`` with a segment suffix (``.m4s``, ``.mp4``, ``.m4a``,
  ``.m4v``, ``.ts``, ``.aac``; not ``init.*``, not subtitles), answered 200, 206 or 304 (a 304
  is a player replaying a segment from its own cache: still a view). HEAD, errors, and the
  node's own fills (prefetch, meta.json) are not counted; a request marked
  ``Sec-Purpose: prefetch`` (a browser's speculation) neither.
- a **session** is the CMCD ``sid`` (edge/video/cmcd.py) when the request carries one (at most
  64 characters, as CTA-5004 bounds it), else the client's address and a hash of its
  User-Agent. A (session, video) pair is counted once while it stays active: the pairs live
  in an LRU of ``SESSION_ENTRIES`` whose entries expire ``SESSION_TTL`` seconds after the
  pair's last segment (sliding, so a long film is one play).
- a **completion**: the rendition's last segment delivered to a session, once per (session,
  video), when the edge holds the video's ``meta.json`` (read where the playlist renderer
  keeps it, never fetched for this) and the video is ``ready``.

Cost on the request path: a segment of a (session, video) already counted costs a ``find``,
two slices, a dict lookup, a ``move_to_end`` and a set lookup. Only a request that could count
(the pair's first segment, or the rendition's last) takes the request: the node answers it as
usual through a thin wrapper of the connection that reads the status line of what is written,
and the count is made once that status is known.

Sending (``PlaysReporter``, a background task per node process): every
``plays_flush_interval`` the pending counts are cut into batches (``{"batch": "<node>:<32
hex>", "node": ..., "plays": [...]}``, split to stay far under the origin's 1 MiB and 10,000
item limits), queued (at most ``plays_max_pending`` bytes: the oldest are dropped and counted
beyond) and posted in order. A 5xx, 408, 429, timeout or connection error is retried with the
same batch id and body after an exponential back-off with jitter (or the Retry-After, if
longer); the origin is idempotent by batch id, so a retried batch is counted once. Another 4xx
drops the batch (counted, logged once per status). A graceful stop cuts and posts what is left,
for at most ``STOP_FLUSH_SECONDS``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from reelcdn.extensions.message import Request

if TYPE_CHECKING:
    from reelcdn.edge.http.connection import HttpConnection
    from reelcdn.edge.video.host import FeatureHost
    from reelcdn.edge.video.playlists import PlaylistRenderer

log = logging.getLogger("reelcdn.plays")

__all__ = [
    "NOT_TAKEN",
    "PLAY_SUFFIXES",
    "Batch",
    "Outbox",
    "PlayCounter",
    "Plays",
    "PlaysReporter",
    "build_batches",
]

#: Returned by :meth:`Plays.receive` when it leaves the request to the node.
NOT_TAKEN = object()

#: Suffixes of media segments (subtitles, ``.vtt``, are not a view).
PLAY_SUFFIXES: tuple[str, ...] = (".m4s", ".mp4", ".m4a", ".m4v", ".ts", ".aac")
COUNTED_STATUSES = frozenset({200, 206, 304})
SESSION_TTL = 1800.0          # a (session, video) pair idle this long plays again
SESSION_ENTRIES = 65536       # (session, video) pairs remembered per node process
MAX_SID_LENGTH = 64           # CTA-5004's bound of sid; longer: the fallback session key
MAX_SESSIONS_PER_VIDEO = 100  # sids listed per video in one batch
MAX_PENDING_VIDEOS = 5000     # videos in the pending counts: more are cut into a batch early
META_RETRY = 10.0             # seconds between looks for a meta.json that was not at hand
# Batches stay far below the origin's limits (1 MiB, 10,000 items): plays entries, entries
# plus listed sessions, and body bytes.
BATCH_ENTRIES = 1000
BATCH_WEIGHT = 5000
BATCH_BYTES = 256 * 1024
POST_TIMEOUT = 10.0           # one POST, connect to answer
RETRY_BASE = 1.0              # first back-off of a failed batch, doubled per failure ...
RETRY_MAX = 60.0              # ... up to this, jittered to 50-100 %
RETRY_AFTER_MAX = 300.0       # the most of a Retry-After honoured
STOP_FLUSH_SECONDS = 3.0      # a graceful stop posts what is left for at most this long (within
#                               the 5 s a workers' master allows past shutdown_grace)
_VIDEO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


# ------------------------------------------------------------------------------------------
# Counting: pure, given the clock.


class _Seen:
    """A (session, video) pair already counted as a play."""

    __slots__ = ("expires", "completed", "lasts", "meta_retry")

    def __init__(self, expires: float) -> None:
        self.expires = expires
        self.completed = False
        # "{rendition}/{last segment URI}" of the video's renditions, from the stored
        # meta.json; None: not known yet
        self.lasts: frozenset[str] | None = None
        self.meta_retry = 0.0


class _Tally:
    __slots__ = ("starts", "completions", "sessions")

    def __init__(self) -> None:
        self.starts = 0
        self.completions = 0
        self.sessions: list[str] = []


class PlayCounter:
    """Which (session, video) pairs were counted, and the counts not yet cut into a batch."""

    def __init__(self, ttl: float = SESSION_TTL, capacity: int = SESSION_ENTRIES) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self.seen: OrderedDict[tuple[Any, ...], _Seen] = OrderedDict()
        self.pending: dict[str, _Tally] = {}

    def lookup(self, pair: tuple[Any, ...], now: float) -> _Seen | None:
        """The pair's record, its expiry pushed on (it is active), or None (new or expired)."""
        seen = self.seen.get(pair)
        if seen is None:
            return None
        if seen.expires <= now:
            del self.seen[pair]
            return None
        seen.expires = now + self.ttl
        self.seen.move_to_end(pair)
        return seen

    def start(self, pair: tuple[Any, ...], video: str, sid: str | None, now: float) -> _Seen:
        """Count a play of ``video`` by the pair's session (the caller checked it is new)."""
        seen = self.seen[pair] = _Seen(now + self.ttl)
        self.seen.move_to_end(pair)
        self._trim(now)
        tally = self._tally(video)
        tally.starts += 1
        if sid is not None and len(tally.sessions) < MAX_SESSIONS_PER_VIDEO:
            tally.sessions.append(sid)
        return seen

    def complete(self, seen: _Seen, video: str) -> bool:
        """Count a completion of ``video`` by the pair, once."""
        if seen.completed:
            return False
        seen.completed = True
        self._tally(video).completions += 1
        return True

    def _tally(self, video: str) -> _Tally:
        tally = self.pending.get(video)
        if tally is None:
            tally = self.pending[video] = _Tally()
        return tally

    def _trim(self, now: float) -> None:
        seen = self.seen
        while len(seen) > self.capacity:
            seen.popitem(last=False)
        for _ in range(8):  # a few expired entries at the old end, per insertion
            if not seen:
                break
            pair, oldest = next(iter(seen.items()))
            if oldest.expires > now:
                break
            del seen[pair]

    @property
    def pending_videos(self) -> int:
        return len(self.pending)

    def take(self) -> list[dict[str, Any]]:
        """The pending counts as the contract's ``plays`` items; pending starts over."""
        pending, self.pending = self.pending, {}
        items: list[dict[str, Any]] = []
        for video, tally in pending.items():
            item: dict[str, Any] = {"video_id": video, "starts": tally.starts,
                                    "completions": tally.completions}
            if tally.sessions:
                item["sessions"] = tally.sessions
            items.append(item)
        return items


# ------------------------------------------------------------------------------------------
# Batches and the queue of unsent ones: pure.


@dataclass(slots=True)
class Batch:
    """One POST body, sent as is on every attempt (the origin dedups by ``id``)."""

    id: str
    body: bytes
    plays: int            # starts + completions in it (counted lost if it is dropped)
    attempts: int = 0
    not_before: float = 0.0


def batch_id(node: str, worker: int | None) -> str:
    """``<node>:<32 hex>``: the worker (00 for a single process, index + 1 for a worker) and 120
    random bits, so batches of a node's workers and of restarts never share an id."""
    tag = 0 if worker is None else (worker + 1) & 0xFF
    return f"{node}:{tag:02x}{secrets.token_hex(15)}"


def _encode(node: str, bid: str, items: list[dict[str, Any]]) -> bytes:
    return json.dumps({"batch": bid, "node": node, "plays": items},
                      separators=(",", ":")).encode()


def build_batches(node: str, worker: int | None, items: list[dict[str, Any]]) -> list[Batch]:
    """Cut ``items`` into batches within ``BATCH_ENTRIES``, ``BATCH_WEIGHT`` (entries plus
    sessions) and ``BATCH_BYTES``."""
    batches: list[Batch] = []
    chunk: list[dict[str, Any]] = []
    weight = size = plays = 0
    overhead = len(_encode(node, batch_id(node, worker), []))

    def cut() -> None:
        nonlocal chunk, weight, size, plays
        if chunk:
            bid = batch_id(node, worker)
            batches.append(Batch(bid, _encode(node, bid, chunk), plays))
        chunk, weight, size, plays = [], 0, 0, 0

    for item in items:
        item_weight = 1 + len(item.get("sessions", ()))
        item_size = len(json.dumps(item, separators=(",", ":"))) + 1
        if chunk and (len(chunk) >= BATCH_ENTRIES or weight + item_weight > BATCH_WEIGHT
                      or overhead + size + item_size > BATCH_BYTES):
            cut()
        chunk.append(item)
        weight += item_weight
        size += item_size
        plays += item["starts"] + item["completions"]
    cut()
    return batches


class Outbox:
    """Unsent batches, oldest first, within ``limit`` bytes of bodies."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.batches: deque[Batch] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.batches)

    def add(self, batch: Batch, keep: Batch | None = None) -> list[Batch]:
        """Queue ``batch``; return the batches dropped to stay within the limit, oldest first
        (the new one itself if it alone is larger), never ``keep`` (the one being posted)."""
        batches = self.batches
        batches.append(batch)
        self.bytes += len(batch.body)
        dropped: list[Batch] = []
        while self.bytes > self.limit:
            if batches[0] is not keep:
                victim = batches.popleft()
            elif len(batches) > 1:
                victim = batches[1]
                del batches[1]
            else:
                break
            self.bytes -= len(victim.body)
            dropped.append(victim)
        return dropped

    def popleft(self) -> Batch:
        batch = self.batches.popleft()
        self.bytes -= len(batch.body)
        return batch

    def head(self) -> Batch | None:
        return self.batches[0] if self.batches else None


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a Retry-After asks for (delta-seconds or an HTTP date), None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


def backoff(attempts: int, rng: random.Random) -> float:
    """Exponential back-off with jitter: ``RETRY_BASE * 2^(attempts-1)``, capped, times
    0.5-1."""
    delay = min(RETRY_MAX, RETRY_BASE * (2 ** min(attempts - 1, 16)))
    return delay * (0.5 + rng.random() / 2)


# ------------------------------------------------------------------------------------------
# The request side: which requests count, and their delivered status.


class _StatusTap:
    """The client's connection as the node writes to it, noting the status of the first
    head written. Everything else is the connection's own."""

    __slots__ = ("_conn", "status")

    def __init__(self, conn: HttpConnection) -> None:
        self._conn = conn
        self.status = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def write(self, data: bytes | memoryview) -> None:
        if not self.status:
            self.status = _status_of(data)
        self._conn.write(data)

    def write_file(self, head: bytes, body: Any, start: int, end: int) -> None:
        if not self.status:
            self.status = _status_of(head)
        self._conn.write_file(head, body, start, end)


def _status_of(head: bytes | memoryview) -> int:
    code = bytes(head[9:12])  # "HTTP/1.1 200 ..."
    return int(code) if code.isdigit() else -1


class Plays:
    """Counting on the request path of one edge, and its reporter."""

    def __init__(self, node: FeatureHost, playlists: PlaylistRenderer,
                 worker: int | None = None) -> None:
        self.node = node
        self.playlists = playlists
        self.counter = PlayCounter()
        self.reporter = PlaysReporter(node, self.counter, worker)
        self._lasts: OrderedDict[str, frozenset[str]] = OrderedDict()  # meta version -> lasts

    def receive(self, req: Request, conn: HttpConnection, sid: str | None) -> Any:
        """``NOT_TAKEN``, or the node's answer to a request that may count (taken here to see
        its status). The caller checked: counting is on, GET, a segment suffix.

        Every segment request comes here, so the common case (a pair already counted, not
        at its last segment) is written out: one find, two slices, a dict get, a
        ``move_to_end``, a set lookup."""
        path = req.path
        if path[:3] != "/v/":
            return NOT_TAKEN
        cut = path.find("/", 3)
        if cut < 0:
            return NOT_TAKEN
        video = path[3:cut]
        if sid is None or len(sid) > MAX_SID_LENGTH:
            sid = None
            pair: tuple[Any, ...] = (req.client_ip, hash(req.headers.get(b"user-agent")), video)
        else:
            pair = (sid, video)
        tail = path[cut + 1:]  # "{rendition}/{file}"
        now = time.monotonic()
        counter = self.counter
        seen = counter.seen.get(pair)
        if seen is not None and seen.expires > now:
            seen.expires = now + counter.ttl  # active: the pair's TTL slides
            counter.seen.move_to_end(pair)
            if seen.completed:
                return NOT_TAKEN
            lasts = seen.lasts
            if lasts is None:
                if now < seen.meta_retry:
                    return NOT_TAKEN
                seen.meta_retry = now + META_RETRY
                lasts = seen.lasts = self._lasts_of(video, req)
                if lasts is None:
                    return NOT_TAKEN
            if tail not in lasts:
                return NOT_TAKEN
        else:
            _, slash, name = tail.partition("/")
            if (not slash or "/" in name or name.startswith("init.")
                    or _VIDEO_ID.fullmatch(video) is None):
                return NOT_TAKEN
        if b"sec-purpose" in req.headers and b"prefetch" in req.headers[b"sec-purpose"]:
            return NOT_TAKEN
        tap = _StatusTap(conn)
        answer = self.node.receive(req, tap, hooks=False)  # type: ignore[arg-type]
        if answer is None:
            self._count(tap.status, pair, video, tail, sid, req)
            return None
        return self._count_after(answer, tap, pair, video, tail, sid, req)

    async def _count_after(self, answer: Awaitable[None], tap: _StatusTap,
                           pair: tuple[Any, ...], video: str, tail: str, sid: str | None,
                           req: Request) -> None:
        await answer
        self._count(tap.status, pair, video, tail, sid, req)

    def _count(self, status: int, pair: tuple[Any, ...], video: str, tail: str,
               sid: str | None, req: Request) -> None:
        """The answer went out with ``status``: count the play and/or the completion (again
        checked here: two first segments of one session may be answered at once)."""
        if status not in COUNTED_STATUSES:
            return
        counter = self.counter
        stats = self.node.stats
        now = time.monotonic()
        seen = counter.lookup(pair, now)
        if seen is None:
            seen = counter.start(pair, video, sid, now)
            stats.plays_started += 1
            seen.lasts = self._lasts_of(video, req)
            seen.meta_retry = now + META_RETRY
            if counter.pending_videos >= MAX_PENDING_VIDEOS:
                self.reporter.cut()
            self.reporter.ensure_running()
        lasts = seen.lasts
        if lasts is not None and tail in lasts and counter.complete(seen, video):
            stats.plays_completed += 1
            self.reporter.ensure_running()

    def _lasts_of(self, video: str, req: Request) -> frozenset[str] | None:
        """``{rendition}/{last segment URI}`` of each rendition of ``video``, from the
        meta.json this edge holds (fresh or stale; never fetched for this); None when not at
        hand or still processing. Renditions in one file (byte ranges) are left out: their
        segments share one URI."""
        meta = self.playlists.stored_meta(video, req)
        if meta is None or not meta.ready:
            return None
        lasts = self._lasts.get(meta.version)
        if lasts is None:
            lasts = frozenset(
                f"{media.name}/{media.segments[-1].uri}"
                for media in (*meta.renditions, *meta.audio)
                if media.segments and media.segments[-1].byterange is None
            )
            self._lasts[meta.version] = lasts
            if len(self._lasts) > 256:
                self._lasts.popitem(last=False)
        else:
            self._lasts.move_to_end(meta.version)
        return lasts

    async def aclose(self) -> None:
        await self.reporter.aclose()


# ------------------------------------------------------------------------------------------
# Sending.


class PlaysReporter:
    """Cuts the pending counts into batches every ``plays_flush_interval`` and posts them to
    ``plays_url``, in order, retrying as the contract says; one task per node process, started
    with the first count."""

    def __init__(self, node: FeatureHost, counter: PlayCounter, worker: int | None) -> None:
        self.node = node
        self.counter = counter
        self.worker = worker
        self.outbox = Outbox(node.config.plays_max_pending)
        self.rng = random.Random()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._logged: set[int] = set()  # statuses of permanent refusals already logged
        self._closed = False
        self._inflight: Batch | None = None  # being posted: never dropped meanwhile

    def ensure_running(self) -> None:
        if self._task is None and not self._closed:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())

    def cut(self) -> None:
        """Move the pending counts into the outbox as batches (dropping the oldest over the
        limit)."""
        items = self.counter.take()
        if not items:
            return
        self.outbox.limit = self.node.config.plays_max_pending
        for batch in build_batches(self.node.name, self.worker, items):
            for old in self.outbox.add(batch, keep=self._inflight):
                self._drop(old, "queue over plays_max_pending")
        self._levels()
        if self._wake is not None:
            self._wake.set()

    def _drop(self, batch: Batch, why: str) -> None:
        stats = self.node.stats
        stats.plays_batches_dropped += 1
        stats.plays_lost += batch.plays
        log.warning("play batch %s dropped unsent (%s): %d plays lost", batch.id, why,
                    batch.plays)

    def _levels(self) -> None:
        stats = self.node.stats
        stats.plays_pending_batches = len(self.outbox)
        stats.plays_pending_bytes = self.outbox.bytes

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_cut = loop.time() + self.node.config.plays_flush_interval
        wake = self._wake
        assert wake is not None
        try:
            while True:  # one pass per cut or retry time; ends with the node (cancelled)
                now = loop.time()
                head = self.outbox.head()
                until = next_cut
                if head is not None and self.node.config.plays_url is not None:
                    until = min(until, max(now, head.not_before))
                if until > now:
                    wake.clear()
                    try:
                        await asyncio.wait_for(wake.wait(), until - now)
                    except TimeoutError:
                        pass
                now = loop.time()
                if now >= next_cut:
                    self.cut()
                    next_cut = now + self.node.config.plays_flush_interval
                await self._send_due(loop)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not end counting silently
            log.exception("the plays reporter failed")

    async def _send_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """Post batches in order while the head is due; stop at the first that must wait."""
        while True:
            head = self.outbox.head()
            if head is None or head.not_before > loop.time():
                return
            if self.node.config.plays_url is None:
                return  # turned off by a reload: kept (bounded) until on again or the stop
            self._inflight = head
            try:
                outcome, delay = await self._post(head)
            finally:
                self._inflight = None
            if outcome == "retry":
                head.not_before = loop.time() + delay
                self.node.stats.plays_batches_retried += 1
                return
            if self.outbox.head() is head:
                self.outbox.popleft()
            self._levels()

    async def _post(self, batch: Batch) -> tuple[str, float]:
        """One attempt: ``("sent" | "rejected", 0)`` or ``("retry", seconds to wait)``."""
        config = self.node.config
        stats = self.node.stats
        batch.attempts += 1
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT),
                connector=aiohttp.TCPConnector(limit=2),
            )
        headers = {"Authorization": f"Bearer {config.plays_token}",
                   "Content-Type": "application/json"}
        try:
            async with self._session.post(str(config.plays_url), data=batch.body,
                                          headers=headers, allow_redirects=False) as response:
                status = response.status
                text = await response.read()
                wait = retry_after(response.headers.get("Retry-After"), time.time())
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if batch.attempts == 1:
                log.warning("play batch %s not posted (%s): retrying", batch.id,
                            exc.__class__.__name__)
            return "retry", backoff(batch.attempts, self.rng)
        if 200 <= status < 300:
            stats.plays_batches_sent += 1
            try:
                answer = json.loads(text)
            except ValueError:
                answer = None
            if isinstance(answer, dict) and answer.get("duplicate") is True:
                stats.plays_batches_duplicate += 1
            return "sent", 0.0
        if status >= 500 or status in (408, 429):
            if batch.attempts == 1:
                log.warning("play batch %s answered %d: retrying", batch.id, status)
            delay = backoff(batch.attempts, self.rng)
            if wait is not None:
                delay = max(delay, min(wait, RETRY_AFTER_MAX))
            return "retry", delay
        stats.plays_batches_rejected += 1
        stats.plays_lost += batch.plays
        if status not in self._logged:
            self._logged.add(status)
            log.error("plays_url answered %d to play batch %s: dropped, not retried (%s); "
                      "later batches refused so are counted in reelcdn_plays_batches_rejected",
                      status, batch.id, text[:200].decode("utf-8", "replace").strip())
        return "rejected", 0.0

    async def aclose(self, budget: float = STOP_FLUSH_SECONDS) -> None:
        """The node stops: cut what is pending and post the queue in order, one attempt each,
        for at most ``budget`` seconds; what is left is dropped and counted."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.cut()
        try:
            if self.node.config.plays_url is not None and len(self.outbox):
                async with asyncio.timeout(budget):
                    while (head := self.outbox.head()) is not None:
                        outcome, _ = await self._post(head)
                        if outcome == "retry":
                            break
                        self.outbox.popleft()
                        self._levels()
        except TimeoutError:
            pass
        finally:
            while len(self.outbox):
                self._drop(self.outbox.popleft(), "the node stopped")
            self._levels()
            if self._session is not None:
                await self._session.close()
                self._session = None
