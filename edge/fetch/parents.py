"""Parent selection by rendezvous (highest-random-weight) hashing, fallback nodes, health and
a retry before the first byte (docs/failover.md).

Why HRW: each object should live on one parent so a tier's cache capacity adds up (two
regionals of 256 MiB hold 512 MiB of distinct objects), and when a parent leaves only its
own objects move. For a key, every parent gets a score ``hash(parent, key)``; parents are
tried in descending score order, then the ``fallback`` nodes in their configured order.

Each upstream has an ``UpstreamHealth`` (``health.py``): active checks (a GET of the health
path every ``interval``; ``fall`` failures take it out, ``rise`` passes put it back) and a
circuit breaker fed by the requests (open after ``failures`` errors or 5xx in a row, half-open
after ``retry_after``: one request tries it). A request goes to the upstreams in rotation first
(parents in hash order, then fallbacks); if none of them answers, the others are tried anyway,
in the same order: a guess beats a certain failure.

A request that fails before the response head (connect refused, reset, timeout, a 502/503/504
answer) is sent to the next upstream of that order, each at most once, all within the
``first_byte`` timeout counted from the first attempt, so a retried fill never waits longer
than one attempt could. Only idempotent methods are sent again, and others only when the
connection was refused (the request never left). The node and the coalesced readers see one
answer: the retry happens before any head exists.

A GET answered 200 with a strong ETag and a Content-Length whose body then breaks after N
bytes is resumed from the upstreams after the one that answered, in the same order, with
``Range: bytes=N-`` and ``If-Range`` (``resume.py``): the readers get the rest of the same
bytes, or, when no upstream answers a matching 206, the cut body they got before.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from reelcdn.edge.fetch.contract import (
    FetchFailed,
    TargetRefused,
    Upstream,
    UpstreamResponse,
    UpstreamTimeouts,
)
from reelcdn.edge.fetch.health import UpstreamHealth, check_loop, plan
from reelcdn.edge.fetch.resume import Attempt, ResumingResponse, resume_identity
from reelcdn.edge.fetch.upstream import HttpUpstream

if TYPE_CHECKING:
    from reelcdn.edge.config import HealthConfig, ParentRef

log = logging.getLogger("reelcdn.health")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Answers that say the upstream could not produce one (its own upstream failed, it is
# overloaded or draining): another path may. A 500 is the origin's own answer, returned as is.
RETRY_STATUSES = frozenset({502, 503, 504})


def hrw_score(parent: str, key: str) -> int:
    """The rendezvous weight of ``parent`` for ``key`` (64 bits of BLAKE2b)."""
    digest = hashlib.blake2b(f"{parent}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def hrw_order(parents: Iterable[str], key: str) -> list[str]:
    """Parents in the order a key tries them: highest weight first."""
    return sorted(parents, key=lambda name: hrw_score(name, key), reverse=True)


class ParentState:
    """One parent or fallback node: its connection pool and its health."""

    __slots__ = ("name", "upstream", "health", "fallback")

    def __init__(self, name: str, upstream: HttpUpstream, health: UpstreamHealth,
                 fallback: bool = False) -> None:
        self.name = name
        self.upstream = upstream
        self.health = health
        self.fallback = fallback


def _health_of(state: ParentState) -> UpstreamHealth:
    return state.health


class ParentSet(Upstream):
    """Parents (HRW) and fallback nodes behind one ``Upstream``: health, retry, failover."""

    def __init__(
        self,
        parents: Iterable[ParentRef],
        *,
        timeouts: UpstreamTimeouts,
        max_connections: int = 256,
        failures_to_down: int = 3,
        retry_after: float = 10.0,
        fallback: Iterable[ParentRef] = (),
        health: HealthConfig | None = None,
        node: str = "",
    ) -> None:
        super().__init__()
        self.node = node
        self.timeouts = timeouts
        self.checks = health if health is not None and health.checks else None
        rise, fall = (health.rise, health.fall) if health is not None else (2, 3)

        def state(ref: ParentRef, is_fallback: bool) -> ParentState:
            upstream = HttpUpstream(ref.url, timeouts=timeouts, max_connections=max_connections,
                                    name=ref.name)
            watch = UpstreamHealth(ref.name, failures=failures_to_down, retry_after=retry_after,
                                   rise=rise, fall=fall, notify=self._changed)
            return ParentState(ref.name, upstream, watch, is_fallback)

        self.parents = {ref.name: state(ref, False) for ref in parents}
        if not self.parents:
            raise ValueError("a ParentSet needs at least one parent")
        self.fallbacks = {ref.name: state(ref, True) for ref in fallback
                          if ref.name not in self.parents}
        self.name = ",".join(self.parents)
        self.failures_to_down = failures_to_down
        self.retry_after = retry_after
        self._checkers: list[asyncio.Task[None]] = []

    def _all(self) -> list[ParentState]:
        return [*self.parents.values(), *self.fallbacks.values()]

    def _changed(self, upstream: str, old: str, new: str, reason: str) -> None:
        level = logging.INFO if new == "up" else logging.WARNING
        log.log(level, "node %s: upstream %s %s -> %s (%s)", self.node, upstream, old, new,
                reason)
        self.state_change(upstream, new)

    async def start(self) -> None:
        for state in self._all():
            state.upstream.observe = self.observe
            await state.upstream.start()
        if self.checks is not None:
            loop = asyncio.get_running_loop()
            interval = self.checks.interval
            self._checkers = [
                loop.create_task(check_loop(state.health, self._prober(state), interval))
                for state in self._all()
            ]

    def _prober(self, state: ParentState) -> Callable[[], Awaitable[tuple[bool, str]]]:
        checks = self.checks
        assert checks is not None
        return lambda: state.upstream.probe(checks.path, checks.timeout)

    async def close(self) -> None:
        for task in self._checkers:
            task.cancel()
        for task in self._checkers:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._checkers = []
        for state in self._all():
            await state.upstream.close()

    def order(self, key: str, now: float | None = None) -> list[ParentState]:
        """Upstreams to try for ``key``: parents in rotation in hash order, fallbacks in
        rotation in configured order, then the others (parents, then fallbacks). Does not
        claim a half-open upstream's probe (``request`` does)."""
        now = time.monotonic() if now is None else now
        ranked = [self.parents[name] for name in hrw_order(self.parents, key)]
        ranked += list(self.fallbacks.values())
        live = [p for p in ranked if p.health.status(now) != "down"]
        return live + [p for p in ranked if p.health.status(now) == "down"]

    def _plan(self, key: str) -> tuple[list[ParentState], list[ParentState]]:
        """The order of one request, and the half-open upstreams whose probe it holds."""
        ranked = [self.parents[name] for name in hrw_order(self.parents, key)]
        ranked += list(self.fallbacks.values())
        return plan(ranked, _health_of, time.monotonic())

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[bytes | str, bytes | str]],
        body: bytes | None = None,
    ) -> UpstreamResponse:
        fields = list(headers)
        idempotent = method in IDEMPOTENT
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.first_byte
        order, probes = self._plan(target)
        last: FetchFailed | None = None
        sent: set[str] = set()
        try:
            for index, state in enumerate(order):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                sent.add(state.name)
                health = state.health
                health.requests += 1
                try:
                    async with asyncio.timeout(remaining):
                        response = await state.upstream.request(method, target, fields, body)
                except TargetRefused:
                    health.release()  # refused before sending: a held probe is not spent
                    raise
                except TimeoutError:
                    failure = FetchFailed(504, f"{state.name} gave no head within the "
                                          f"{self.timeouts.first_byte:g} s of the request")
                    self.observe(state.name, 504)
                    health.failed(time.monotonic(), failure.reason)
                    last = failure
                    break
                except FetchFailed as failure:
                    health.failed(time.monotonic(), failure.reason)
                    last = failure
                    # A request that may have reached the parent is only re-sent if repeating
                    # it is harmless; a refused connection never reached it.
                    if idempotent or failure.retryable:
                        continue
                    raise
                if response.status < 500:
                    health.answered(time.monotonic())
                    return self._resumable(method, target, fields, response, state,
                                           order[index + 1:])
                health.failed(time.monotonic(), f"answered {response.status}")
                if (
                    idempotent
                    and response.status in RETRY_STATUSES
                    and index < len(order) - 1
                    and deadline - loop.time() > 0
                ):
                    response.close()  # not read: the next upstream answers instead
                    last = FetchFailed(response.status, f"{state.name} answered "
                                       f"{response.status}")
                    continue
                return response
        finally:
            for state in probes:
                if state.name not in sent:
                    state.health.release()
        if last is None:
            last = FetchFailed(504, "no upstream answered within the request's deadline")
        raise last

    def _resumable(
        self,
        method: str,
        target: str,
        fields: list[tuple[bytes | str, bytes | str]],
        response: UpstreamResponse,
        source: ParentState,
        rest: list[ParentState],
    ) -> UpstreamResponse:
        """``response``, wrapped so that a body breaking mid-way is resumed from ``rest``
        (``resume.py``) when it can be: a GET of the whole object (no Range of its own)
        answered 200 with a strong ETag and a Content-Length, and an upstream left to ask."""
        if method != "GET" or not rest:
            return response
        if any(name.lower() in ("range", b"range") for name, _ in fields):
            return response
        identity = resume_identity(response.status, response.headers)
        if identity is None:
            return response
        attempts = [self._resume_attempt(state, target) for state in rest]
        return ResumingResponse(response, source.name, fields, identity, attempts,
                                self.timeouts.first_byte, self._resume_outcome)

    def _resume_outcome(self, outcome: str) -> None:
        self.resume_outcome(outcome)  # read when it happens: the node sets the hook later

    def _resume_attempt(self, state: ParentState, target: str) -> Attempt:
        """One upstream's Range request for a resume, counted in its health like any other."""

        async def send(fields: list[tuple[bytes, bytes]]) -> UpstreamResponse:
            health = state.health
            health.requests += 1
            try:
                response = await state.upstream.request("GET", target, fields)
            except TargetRefused:
                raise
            except FetchFailed as failure:
                health.failed(time.monotonic(), failure.reason)
                raise
            if response.status < 500:
                health.answered(time.monotonic())
            else:
                health.failed(time.monotonic(), f"answered {response.status}")
            return response

        return state.name, send

    def health(self) -> dict[str, dict[str, float | int | bool | str]]:
        """Per-upstream state for the admin API and metrics (fallback nodes included)."""
        now = time.monotonic()
        views: dict[str, dict[str, float | int | bool | str]] = {}
        for state in self._all():
            view = state.health.view(now)
            if state.fallback:
                view["fallback"] = True
            views[state.name] = view
        return views
