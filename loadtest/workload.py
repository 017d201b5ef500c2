"""One process's share of a run: arrivals, scenarios, and the players they start.

Why shares: a 2-core machine driving thousands of players needs one event loop per core, so the
runner splits the workload into ``processes`` shares (concurrency and flash crowds split evenly,
Poisson rates split into independent Poisson streams, whose sum is the requested stream) and
each share runs this code on its own loop. With one process the same code runs in-process.

Every loop here is bounded twice: in time (the run's duration, after which players still
running are cancelled and recorded as cut or unfinished) and in count (``max_sessions``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .cachestatus import Tally
from .catalog import Video, Zipf, master_url
from .network import Distribution, Link
from .player import Player, PlayerOptions, PlayerResult
from .verify import Expected

SCENARIOS = ("steady", "flash-crowd")


@dataclass(frozen=True)
class Workload:
    targets: tuple[str, ...]            # base URLs ('' entries: the catalog's own URLs)
    catalog: tuple[Video, ...]
    players: int                        # concurrency (fixed) or the cap on concurrency (rate)
    duration: float
    rate: float | None = None           # Poisson arrivals per second
    zipf: float = 0.9
    scenario: str = "steady"
    flash_window: float = 1.0
    flash_video: int = 0                # catalog index of the flash-crowd video
    ramp: float = 0.0                   # fixed concurrency: spread the first starts
    player: PlayerOptions = PlayerOptions()
    bandwidth: Distribution = Distribution("fixed", (math.inf,), "inf")
    rtt: Distribution = Distribution("fixed", (0.0,), "0")
    seed: int = 1
    max_sessions: int = 1_000_000
    # path → size and sha256 from meta.json: every body with an entry is verified (verify.py)
    digests: Mapping[str, Expected] | None = None


@dataclass
class ShareResult:
    share: int
    players: list[PlayerResult] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    loop_lag_p99: float = 0.0
    loop_lag_max: float = 0.0
    dropped_arrivals: int = 0           # Poisson arrivals refused at the concurrency cap


@dataclass
class LiveCounts:
    """What the progress display needs, cheap to copy across processes."""

    share: int
    started: int = 0
    active: int = 0
    played: int = 0
    vsf: int = 0
    ebvs: int = 0
    rebuffers: int = 0
    responses: int = 0
    bytes: int = 0
    new_ttffs: list[float] = field(default_factory=list)


def split(total: int, shares: int, index: int) -> int:
    return total // shares + (1 if index < total % shares else 0)


class ShareRunner:
    def __init__(self, workload: Workload, share: int, shares: int, run_started: float,
                 abort: Callable[[str], bool] | None = None) -> None:
        self.workload = workload
        self.abort = abort
        self.share = share
        self.shares = shares
        self.run_started = run_started
        self.rng = random.Random(workload.seed * 1000 + share)
        # With a feed (--feed) the video comes from each session's feed page: no catalog.
        self.zipf = Zipf(len(workload.catalog), workload.zipf) if workload.catalog else None
        self.result = ShareResult(share)
        self.active: dict[asyncio.Task[PlayerResult], Player] = {}
        self.players: list[Player] = []
        self.sessions = 0
        self.lags: list[float] = []
        self._finished: list[PlayerResult] = []
        self._finished_counted = 0
        self._live = LiveCounts(share)
        self._ttff_scan = 0

    # ---------------------------------------------------------------- players

    def _new_player(self, video_index: int | None = None) -> Player:
        workload = self.workload
        number = self.sessions * self.shares + self.share
        target = workload.targets[number % len(workload.targets)] if workload.targets else None
        link = Link(workload.bandwidth.sample(self.rng), workload.rtt.sample(self.rng))
        self.sessions += 1
        if workload.player.feed_url is not None:
            # The feed's first item is played through this target (Player._feed).
            player = Player(number, "", "", workload.player, link, self.result.tally,
                            self.run_started, digests=workload.digests, abort=self.abort,
                            playback_base=target or "")
        else:
            assert self.zipf is not None
            index = self.zipf.draw(self.rng) if video_index is None else video_index
            video = workload.catalog[index]
            player = Player(number, master_url(video, target or None), video.video,
                            workload.player, link, self.result.tally, self.run_started,
                            digests=workload.digests, abort=self.abort)
        self.players.append(player)
        return player

    def _launch(self, player: Player) -> asyncio.Task[PlayerResult]:
        task = asyncio.ensure_future(player.run())
        self.active[task] = player
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[PlayerResult]) -> None:
        player = self.active.pop(task, None)
        if player is None:
            return
        if task.cancelled():
            # Cut by the end of the run: a start in progress did not finish; a viewer who
            # was watching simply stopped.
            if player.result.outcome == "starting":
                player.result.outcome = "unfinished"
            else:
                player.result.cut_by_deadline = True
        elif task.exception() is not None:
            player.result.outcome = "vsf" if player.result.ttff is None else "vpf"
            player.result.error = f"harness error: {task.exception()!r}"[:200]
        self._finished.append(player.result)

    # ---------------------------------------------------------------- arrivals

    async def _fixed_slot(self, slot: int, slots: int, end: float) -> None:
        if self.workload.ramp > 0 and slots > 1:
            await asyncio.sleep(self.workload.ramp * slot / slots)
        while time.monotonic() < end and self.sessions < self.workload.max_sessions:
            started = time.monotonic()
            player = self._new_player()
            # wait() does not raise: a player's own error must not end the slot.
            await asyncio.wait({self._launch(player)})
            if player.result.outcome in ("vsf", "ebvs", "vpf"):
                # A viewer whose video failed looks at the error before trying another one:
                # the slot stays taken until the patience time has passed, so a failing CDN
                # is not hammered by a tight retry loop of the whole concurrency.
                rest = started + self.workload.player.patience - time.monotonic()
                if rest > 0:
                    await asyncio.sleep(min(rest, max(0.0, end - time.monotonic())))

    async def _poisson(self, end: float) -> None:
        workload = self.workload
        rate = (workload.rate or 0.0) / self.shares
        cap = max(1, split(workload.players, self.shares, self.share))
        if rate <= 0:
            return
        while self.sessions < workload.max_sessions:
            await asyncio.sleep(self.rng.expovariate(rate))
            if time.monotonic() >= end:
                return
            if len(self.active) >= cap:
                self.result.dropped_arrivals += 1
                continue
            self._launch(self._new_player())

    async def _flash_crowd(self) -> None:
        workload = self.workload
        count = min(split(workload.players, self.shares, self.share), workload.max_sessions)
        starts = sorted(self.rng.uniform(0, workload.flash_window) for _ in range(count))
        began = time.monotonic()
        for start in starts:
            delay = began + start - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._launch(self._new_player(workload.flash_video))

    async def _measure_lag(self, stop: asyncio.Event) -> None:
        """Event-loop lag: how late a 50 ms sleep wakes. A busy client loop delays every
        player's reads, inflating the TTFF it reports: the sign the client is the bottleneck."""
        while not stop.is_set():
            before = time.monotonic()
            await asyncio.sleep(0.05)
            self.lags.append(max(0.0, time.monotonic() - before - 0.05))

    # ---------------------------------------------------------------- the share

    async def run(self) -> ShareResult:
        workload = self.workload
        cpu0, wall0 = time.process_time(), time.monotonic()
        end = wall0 + workload.duration
        stop = asyncio.Event()
        lag = asyncio.ensure_future(self._measure_lag(stop))
        if workload.scenario == "flash-crowd":
            drivers = [self._flash_crowd()]
        elif workload.rate:
            drivers = [self._poisson(end)]
        else:
            slots = split(workload.players, self.shares, self.share)
            drivers = [self._fixed_slot(i, slots, end) for i in range(slots)]
        driver = asyncio.ensure_future(asyncio.gather(*drivers))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(driver), max(0.0, end - time.monotonic()))
            # Flash crowd, Poisson: the arrivals are over; wait for the players, until the end.
            while self.active and time.monotonic() < end:
                await asyncio.wait(set(self.active), timeout=end - time.monotonic())
        finally:
            driver.cancel()
            running = list(self.active)
            for task in running:
                task.cancel()
            await asyncio.gather(driver, *running, return_exceptions=True)
            stop.set()
            await asyncio.gather(lag, return_exceptions=True)
        self.result.players = [player.result for player in self.players]
        self.result.cpu_seconds = time.process_time() - cpu0
        self.result.wall_seconds = time.monotonic() - wall0
        if self.lags:
            ordered = sorted(self.lags)
            self.result.loop_lag_p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            self.result.loop_lag_max = ordered[-1]
        return self.result

    def live(self) -> LiveCounts:
        """Counts so far, updated incrementally (a run may have 100k sessions); each TTFF is
        reported once, so the receiver can accumulate them."""
        counts = self._live
        for result in self._finished[self._finished_counted:]:
            counts.played += result.outcome == "played"
            counts.vsf += result.outcome == "vsf"
            counts.ebvs += result.outcome == "ebvs"
            counts.rebuffers += len(result.rebuffers)
        self._finished_counted = len(self._finished)
        new_ttffs = []
        for player in self.players[self._ttff_scan:]:
            if player.result.ttff is None and player.result.outcome == "starting":
                break
            if player.result.ttff is not None:
                new_ttffs.append(player.result.ttff)
            self._ttff_scan += 1
        return LiveCounts(
            self.share, started=self.sessions, active=len(self.active), played=counts.played,
            vsf=counts.vsf, ebvs=counts.ebvs, rebuffers=counts.rebuffers,
            responses=self.result.tally.responses, bytes=self.result.tally.bytes,
            new_ttffs=new_ttffs,
        )


async def run_share(workload: Workload, share: int, shares: int, run_started: float,
                    on_live: Callable[[LiveCounts], None] | None = None,
                    interval: float = 0.5,
                    abort: Callable[[str], bool] | None = None) -> ShareResult:
    """Run one share; call ``on_live`` every ``interval`` seconds with progress counts.
    ``abort(path)``, when given, is asked before each download: True makes the player
    abandon it mid-body and reissue it (the chaos soak's ``abort_clients``)."""
    runner = ShareRunner(workload, share, shares, run_started, abort)
    task = asyncio.ensure_future(runner.run())
    while not task.done():
        await asyncio.wait({task}, timeout=interval)
        if on_live is not None:
            on_live(runner.live())
    return task.result()
