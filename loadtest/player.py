"""One virtual HLS player: start-up like hls.js, then real-time (or time-compressed) playback
with a buffer model, adaptive bitrate, rebuffering and CMCD.

Why emulate a player instead of replaying URLs: what a video team cares about (time to first
frame, start failures, rebuffering) depends on the *sequence* a player makes: master, then one
variant's playlist, its init segment, its first segment; then segments paced by the buffer, the
variant following the measured throughput. A URL replayer gets neither the dependency chain nor
the pacing, so it cannot tell whether a start was fast or a viewer stalled.

Start-up (TTFF): from the first request (master) to the last byte of the first media segment,
plus a configurable decode allowance. Each phase is timed: master, media playlist, init,
first segment TTFB and last byte. A start that fails (HTTP error or unusable answer after the
retries) is a video start failure (VSF); a start still unfinished after ``patience`` seconds
is an exit before video start (EBVS): the viewer gave up and the player stops.

Variant choice follows hls.js: the start estimate (500 kbit/s by default, hls.js's
``abrEwmaDefaultEstimate``) until segments have been measured, then the lower of a fast and a
slow EWMA of segment throughput (half-lives 3 s and 9 s of download time); a variant is
eligible when its BANDWIDTH fits 0.95 of the estimate (0.7 to switch up). When the buffer is
low, the player steps down until the next segment's expected download fits in the buffer
(buffer-based down-switching, so a viewer on a slowing link switches down before stalling).

Playback: the playhead consumes ``time_scale`` media seconds per wall second (1 = real time);
the player downloads while the buffer holds less than ``max_buffer`` media seconds; when a
download ends after the buffer ran dry, a rebuffer event is recorded with its wall duration.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp

from . import cmcd
from .cachestatus import Tally
from .hls import MediaPlaylist, PlaylistError, Variant, parse_master, parse_media
from .network import Link
from .verify import BodyCheck, Digests

READ_CHUNK = 64 * 1024
PACED_CHUNK = 16 * 1024     # smaller reads on capped links, so pacing is smooth
MAX_ABORTS = 3              # aborted-and-reissued downloads of one request, at most
CORRUPTION_EXAMPLES = 5     # kept per session


@dataclass(frozen=True, slots=True)
class PlayerOptions:
    start_estimate_bps: float = 500_000.0
    bandwidth_factor: float = 0.95
    up_factor: float = 0.7
    max_buffer: float = 30.0        # media seconds ahead of the playhead
    low_buffer: float = 4.0         # below this, buffer-based down-switching applies
    patience: float = 10.0          # seconds before a viewer gives up on a start (EBVS)
    decode_allowance: float = 0.0   # seconds added to TTFF for decoding the first frame
    time_scale: float = 1.0         # media seconds played per wall second
    watch: float | None = None      # media seconds to watch (None: the whole video)
    request_timeout: float = 10.0
    retries: int = 1                # per request, on 5xx and connection errors
    segment_retries: int | None = None   # init and media segments (None: ``retries``)
    retry_delay: float = 0.25
    send_cmcd: bool = True
    # the feed phase (--feed): each session first GETs a page of this feed API base URL
    # with the user token, then plays the first item's ``playback`` path on its target
    feed_url: str | None = None
    feed_token: str = ""
    feed_type: str = "for_you"
    feed_limit: int = 10


class RequestFailed(Exception):
    """A request that failed after its retries; ``status`` 0 means no HTTP answer."""

    def __init__(self, url: str, status: int, reason: str) -> None:
        super().__init__(f"{reason} for {url}")
        self.url = url
        self.status = status
        self.reason = reason


class Aborted(Exception):
    """A download the player itself abandoned mid-body (``abort`` hook): reissued at once."""


@dataclass
class PlayerResult:
    """What one viewing session measured (plain data: it crosses process boundaries)."""

    player_id: int
    video: str
    started_at: float                   # seconds since the run started
    outcome: str = "starting"           # starting|played|vsf|ebvs|vpf|unfinished
    failed_phase: str | None = None
    error: str | None = None
    ttff: float | None = None           # seconds, decode allowance included
    phases: dict[str, float] = field(default_factory=dict)
    start_variant_bps: int | None = None
    rate_cap_bps: float | None = None
    rtt: float = 0.0
    segments: int = 0
    requests: int = 0
    bytes: int = 0
    switches: int = 0
    rebuffers: list[float] = field(default_factory=list)   # wall seconds of each stall
    media_seconds: float = 0.0          # media downloaded
    played_seconds: float = 0.0         # media played (wall time × time scale)
    bitrate_seconds: float = 0.0        # Σ variant bandwidth × segment duration
    cut_by_deadline: bool = False
    # body verification against meta.json (docs/meta-json.md), when the run has digests
    verified: int = 0                   # bodies checked
    verified_bytes: int = 0
    corrupted: int = 0                  # bodies that differ from meta.json (size or sha256)
    corrupted_bytes: int = 0            # their bytes, whole (a digest does not say which)
    corruptions: list[dict[str, Any]] = field(default_factory=list)
    aborted: int = 0                    # downloads abandoned mid-body by the abort hook
    # timeline (seconds since the run started)
    failures_at: list[float] = field(default_factory=list)   # each failed request attempt
    rebuffers_at: list[float] = field(default_factory=list)  # when each stall ended

    @property
    def average_bitrate(self) -> float | None:
        return self.bitrate_seconds / self.media_seconds if self.media_seconds else None

    def to_json(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["average_bitrate"] = self.average_bitrate
        if data["rate_cap_bps"] is not None and math.isinf(data["rate_cap_bps"]):
            data["rate_cap_bps"] = None
        return data


class Ewma:
    """hls.js's EWMA with a half-life in seconds of sample weight, corrected for its zero
    start (so the first samples are not pulled toward 0)."""

    __slots__ = ("alpha", "estimate", "total_weight")

    def __init__(self, half_life: float) -> None:
        self.alpha = math.exp(math.log(0.5) / half_life)
        self.estimate = 0.0
        self.total_weight = 0.0

    def sample(self, weight: float, value: float) -> None:
        adjusted = self.alpha ** weight
        self.estimate = value * (1 - adjusted) + adjusted * self.estimate
        self.total_weight += weight

    def value(self) -> float:
        zero_factor = 1 - self.alpha ** self.total_weight
        return self.estimate / zero_factor if zero_factor > 0 else 0.0


class ThroughputEstimator:
    def __init__(self, start_bps: float) -> None:
        self.start_bps = start_bps
        self.fast = Ewma(3.0)
        self.slow = Ewma(9.0)

    def sample(self, seconds: float, nbytes: int) -> None:
        seconds = max(seconds, 1e-4)
        bps = nbytes * 8 / seconds
        self.fast.sample(seconds, bps)
        self.slow.sample(seconds, bps)

    def estimate(self) -> float:
        if self.fast.total_weight == 0:
            return self.start_bps
        return min(self.fast.value(), self.slow.value())


def choose_variant(variants: list[Variant], estimate_bps: float, current: int | None,
                   options: PlayerOptions, buffer_wall: float | None = None,
                   next_duration: float = 0.0) -> int:
    """Index of the variant to fetch next (``variants`` lowest first)."""
    best = 0
    for index, variant in enumerate(variants):
        factor = options.up_factor if current is not None and index > current \
            else options.bandwidth_factor
        if variant.bandwidth <= estimate_bps * factor:
            best = index
    if buffer_wall is not None and buffer_wall * options.time_scale < options.low_buffer:
        while best > 0:
            expected = variants[best].bandwidth * next_duration / max(estimate_bps, 1.0)
            if expected <= buffer_wall * 0.8:
                break
            best -= 1
    return best


class Player:
    """One session: ``await player.run()``; ``player.result`` is valid even if cancelled."""

    def __init__(self, player_id: int, master_url: str, video: str, options: PlayerOptions,
                 link: Link, tally: Tally, run_started: float,
                 digests: Digests | None = None,
                 abort: Callable[[str], bool] | None = None,
                 playback_base: str = "") -> None:
        self.master_url = master_url
        self.playback_base = playback_base.rstrip("/")   # with a feed: where to play
        self.digests = digests
        self.abort = abort
        self.options = options
        self.link = link
        self.tally = tally
        self.run_started = run_started
        self.sid = str(uuid.uuid4())
        self.cid = video
        self.estimator = ThroughputEstimator(options.start_estimate_bps)
        self.result = PlayerResult(
            player_id=player_id, video=video,
            started_at=time.monotonic() - run_started,
            rate_cap_bps=link.rate_bps if link.capped else None, rtt=link.rtt,
        )
        # buffer model (media seconds, wall clock)
        self.level = 0.0
        self.level_at = 0.0
        self.playing = False
        self.stall_since: float | None = None

    # ---------------------------------------------------------------- requests

    async def fetch(self, session: aiohttp.ClientSession, url: str, data: cmcd.CmcdRequest | None,
                    keep_body: bool) -> tuple[bytes, float, float, int]:
        """GET ``url``; (body if kept, TTFB s, total s, size) with the retries applied."""
        attempt = aborts = 0
        # Playlists are kept (parsed); init and media segments are not: hls.js retries the
        # latter more (6 by default) than playlists (1-2).
        retries = self.options.retries if keep_body or self.options.segment_retries is None \
            else self.options.segment_retries
        while True:
            try:
                return await self._fetch_once(session, url, data, keep_body,
                                              may_abort=aborts < MAX_ABORTS)
            except Aborted:
                aborts += 1
                continue
            except RequestFailed as failure:
                retryable = failure.status == 0 or failure.status >= 500
                if not retryable or attempt >= retries:
                    raise
                attempt += 1
                await asyncio.sleep(self.options.retry_delay)

    async def _fetch_once(self, session: aiohttp.ClientSession, url: str,
                          data: cmcd.CmcdRequest | None, keep_body: bool,
                          may_abort: bool = False) -> tuple[bytes, float, float, int]:
        started = time.monotonic()
        self.result.requests += 1
        target = cmcd.with_cmcd(url, data if self.options.send_cmcd else None)
        chunks: list[bytes] = []
        size = 0
        path = urlsplit(url).path
        expected = self.digests.get(path) if self.digests is not None else None
        check = BodyCheck(expected) if expected is not None else None
        abort = self.abort is not None and may_abort and self.abort(path)
        try:
            await self.link.round_trip()
            timeout = aiohttp.ClientTimeout(total=self.options.request_timeout)
            async with session.get(target, timeout=timeout) as response:
                ttfb = time.monotonic() - started
                paced = self.link.capped
                step = PACED_CHUNK if paced else READ_CHUNK
                async for chunk in response.content.iter_chunked(step):
                    size += len(chunk)
                    if keep_body:
                        chunks.append(chunk)
                    if check is not None:
                        check.feed(chunk)
                    if abort and response.status == 200:
                        # The viewer abandons this download mid-body (a seek, an emergency
                        # down-switch): the connection is dropped, the request reissued.
                        response.close()
                        self.result.aborted += 1
                        raise Aborted(url)
                    if paced:
                        await self.link.deliver(len(chunk))
                total = time.monotonic() - started
                status = response.status
                cache_status = ", ".join(response.headers.getall("Cache-Status", [])) or None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.tally.failures += 1
            self.result.failures_at.append(time.monotonic() - self.run_started)
            reason = type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}"
            raise RequestFailed(url, 0, reason[:200]) from None
        self.tally.record(status, cache_status, size,
                          int(time.monotonic() - self.run_started), path)
        self.result.bytes += size
        if status >= 400:
            self.result.failures_at.append(time.monotonic() - self.run_started)
            raise RequestFailed(url, status, f"HTTP {status}")
        if check is not None and status == 200:
            self._verified(check, path, cache_status)
        return b"".join(chunks), ttfb, total, size

    def _verified(self, check: BodyCheck, path: str, cache_status: str | None) -> None:
        """Count a checked body; a corrupted one is a failed request (a player could not
        decode it), so it is retried like a 5xx."""
        result = self.result
        result.verified += 1
        result.verified_bytes += check.size
        problem = check.problem()
        if problem is None:
            return
        result.corrupted += 1
        result.corrupted_bytes += check.size
        now = time.monotonic() - self.run_started
        result.failures_at.append(now)
        if len(result.corruptions) < CORRUPTION_EXAMPLES:
            result.corruptions.append({"path": path, "at": round(now, 3), "problem": problem,
                                       "cache_status": cache_status})
        raise RequestFailed(path, 0, f"corrupted body: {problem}")

    def _cmcd(self, ot: str, **keys: Any) -> cmcd.CmcdRequest:
        return cmcd.CmcdRequest(sid=self.sid, cid=self.cid, ot=ot, **keys)

    # ---------------------------------------------------------------- buffer model

    def _advance(self, now: float) -> None:
        """Play the buffer from ``level_at`` to ``now``; note when it ran dry."""
        if self.playing:
            drained = (now - self.level_at) * self.options.time_scale
            if drained >= self.level:
                self.result.played_seconds += self.level
                self.stall_since = self.level_at + self.level / self.options.time_scale
                self.level = 0.0
                self.playing = False
            else:
                self.level -= drained
                self.result.played_seconds += drained
        self.level_at = now

    def _append(self, now: float, duration: float) -> None:
        self._advance(now)
        if self.stall_since is not None:
            self.result.rebuffers.append(now - self.stall_since)
            self.result.rebuffers_at.append(now - self.run_started)
            self.stall_since = None
        self.level += duration
        self.playing = True

    def _buffer_wall(self, now: float) -> float:
        self._advance(now)
        return self.level / self.options.time_scale

    # ---------------------------------------------------------------- session

    async def run(self) -> PlayerResult:
        connector = aiohttp.TCPConnector(limit=4, ttl_dns_cache=None)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                         cookie_jar=aiohttp.DummyCookieJar()) as session:
            started = await self._start(session)
            if started is not None:
                self.result.outcome = "played"
                await self._play(session, *started)
        return self.result

    async def _start(self, session: aiohttp.ClientSession
                     ) -> tuple[list[Variant], int, MediaPlaylist] | None:
        result = self.result
        t0 = time.monotonic()
        phase = "master"
        try:
            async with asyncio.timeout(self.options.patience):
                if self.options.feed_url is not None:
                    phase = "feed"
                    await self._feed(session)
                    phase = "master"
                body, _, total, _ = await self.fetch(
                    session, self.master_url, self._cmcd(cmcd.MANIFEST, su=True), True)
                result.phases["master"] = total
                variants = parse_master(body.decode("utf-8", "replace"), self.master_url)
                index = choose_variant(variants, self.estimator.estimate(), None, self.options)
                variant = variants[index]
                result.start_variant_bps = variant.bandwidth
                phase = "media_playlist"
                body, _, total, _ = await self.fetch(
                    session, variant.uri, self._cmcd(cmcd.MANIFEST, br=variant.bandwidth,
                                                     su=True), True)
                result.phases["media_playlist"] = total
                playlist = parse_media(body.decode("utf-8", "replace"), variant.uri)
                if playlist.init_uri:
                    phase = "init"
                    _, _, total, _ = await self.fetch(
                        session, playlist.init_uri,
                        self._cmcd(cmcd.INIT, br=variant.bandwidth, su=True), False)
                    result.phases["init"] = total
                phase = "first_segment"
                first = playlist.segments[0]
                nor = _relative(playlist.segments[1].uri) if len(playlist.segments) > 1 else None
                _, ttfb, total, size = await self.fetch(
                    session, first.uri,
                    self._cmcd(cmcd.MUXED, d=first.duration, br=variant.bandwidth, bl=0.0,
                               su=True, nor=nor), False)
                result.phases["first_segment_ttfb"] = ttfb
                result.phases["first_segment"] = total
        except TimeoutError:
            result.outcome = "ebvs"
            result.failed_phase = phase
            result.error = f"no first frame within {self.options.patience:g} s"
            return None
        except RequestFailed as failure:
            result.outcome = "vsf"
            result.failed_phase = phase
            result.error = failure.reason
            return None
        except PlaylistError as exc:
            result.outcome = "vsf"
            result.failed_phase = phase
            result.error = str(exc)
            return None
        now = time.monotonic()
        result.ttff = now - t0 + self.options.decode_allowance
        self.estimator.sample(total - ttfb if total - ttfb > 0.001 else total, size)
        self._account(variant, first.duration)
        # The first frame shows after the decode allowance; the buffer starts playing then.
        self.level_at = now + self.options.decode_allowance
        self.level = first.duration
        self.playing = True
        return variants, index, playlist

    async def _feed(self, session: aiohttp.ClientSession) -> None:
        """GET a feed page (phase ``feed``) and take its first item as the video to play;
        a non-200 answer or a page without a playable item is a RequestFailed with why.
        Retried like a playlist (5xx, no answer). Not counted in the CDN's tally: the feed
        API is not a cache tier."""
        options = self.options
        url = (f"{options.feed_url.rstrip('/')}/api/v1/feed?"  # type: ignore[union-attr]
               + urlencode({"feed_type": options.feed_type, "limit": options.feed_limit}))
        headers = {"Authorization": f"Bearer {options.feed_token}",
                   "Accept-Encoding": "identity"}   # the session does not decompress
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self.link.round_trip()
                timeout = aiohttp.ClientTimeout(total=options.request_timeout)
                async with session.get(url, headers=headers, timeout=timeout) as response:
                    body = await response.read()
                    status = response.status
                total = time.monotonic() - started
                failure = None if status == 200 else RequestFailed(
                    url, status, f"HTTP {status}{_api_error(body)}")
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}"
                failure = RequestFailed(url, 0, reason[:200])
            if failure is None:
                break
            self.result.failures_at.append(time.monotonic() - self.run_started)
            if not (failure.status == 0 or failure.status >= 500) or attempt >= options.retries:
                raise failure
            attempt += 1
            await asyncio.sleep(options.retry_delay)
        self.result.phases["feed"] = total
        try:
            items = json.loads(body)["items"]
            item = items[0] if items else None
            playback = item["playback"] if item else None
        except (ValueError, KeyError, TypeError, IndexError):
            raise RequestFailed(url, 200, "not a feed page") from None
        if not isinstance(playback, str) or not playback.startswith("/"):
            raise RequestFailed(url, 200, "no items" if item is None
                                else "first item without a playback path")
        self.master_url = self.playback_base + playback
        video = str(item.get("id") or playback)
        self.cid = video
        self.result.video = video

    def _account(self, variant: Variant, duration: float) -> None:
        self.result.segments += 1
        self.result.media_seconds += duration
        self.result.bitrate_seconds += variant.bandwidth * duration

    async def _play(self, session: aiohttp.ClientSession, variants: list[Variant],
                    index: int, playlist: MediaPlaylist) -> None:
        options = self.options
        result = self.result
        watch = options.watch if options.watch is not None else math.inf
        position = 1
        try:
            while position < len(playlist.segments) and result.media_seconds < watch:
                segment = playlist.segments[position]
                now = time.monotonic()
                if now < self.level_at:      # still within the decode allowance
                    await asyncio.sleep(self.level_at - now)
                    now = time.monotonic()
                buffer_wall = self._buffer_wall(now)
                room = options.max_buffer - segment.duration
                if self.level > room:
                    await asyncio.sleep((self.level - room) / options.time_scale)
                    buffer_wall = self._buffer_wall(time.monotonic())
                wanted = choose_variant(variants, self.estimator.estimate(), index, options,
                                        buffer_wall, segment.duration)
                if wanted != index:
                    index = wanted
                    result.switches += 1
                    playlist = await self._switch(session, variants[index], position)
                    if position >= len(playlist.segments):
                        break
                    segment = playlist.segments[position]
                variant = variants[index]
                following = playlist.segments[position + 1].uri \
                    if position + 1 < len(playlist.segments) else None
                data = self._cmcd(
                    cmcd.MUXED, d=segment.duration, br=variant.bandwidth,
                    bl=self.level, mtp=self.estimator.estimate(),
                    su=not self.playing, nor=_relative(following) if following else None)
                _, ttfb, total, size = await self.fetch(session, segment.uri, data, False)
                self.estimator.sample(total - ttfb if total - ttfb > 0.001 else total, size)
                self._append(time.monotonic(), segment.duration)
                self._account(variant, segment.duration)
                position += 1
            # Play out what is buffered: the viewer is still watching (and holds a slot).
            self._advance(time.monotonic())
            if self.level > 0:
                await asyncio.sleep(self.level / options.time_scale)
                self._advance(time.monotonic())
        except RequestFailed as failure:
            result.outcome = "vpf"
            result.failed_phase = "playback"
            result.error = failure.reason
        except PlaylistError as exc:
            result.outcome = "vpf"
            result.failed_phase = "playback"
            result.error = str(exc)
        finally:
            self._advance(time.monotonic())

    async def _switch(self, session: aiohttp.ClientSession, variant: Variant,
                      position: int) -> MediaPlaylist:
        """Load the new variant's playlist and init segment (what hls.js does on a switch)."""
        body, _, _, _ = await self.fetch(session, variant.uri,
                                         self._cmcd(cmcd.MANIFEST, br=variant.bandwidth), True)
        playlist = parse_media(body.decode("utf-8", "replace"), variant.uri)
        if playlist.init_uri:
            await self.fetch(session, playlist.init_uri,
                             self._cmcd(cmcd.INIT, br=variant.bandwidth), False)
        return playlist


def _api_error(body: bytes) -> str:
    """``: CODE`` from the API's JSON error body, when it has one."""
    try:
        code = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return ""
    return f": {code}"[:80] if isinstance(code, str) else ""


def _relative(url: str) -> str:
    """The last path segment: ``nor`` is relative to the request URL (same directory)."""
    return url.rsplit("/", 1)[-1]
