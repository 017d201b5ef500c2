"""Origin failover: several origins holding the same objects, tried in the configured order.

A shield usually has one primary store (S3, or the local disk of the origin services) and a
replica. A request goes to the first origin; the next one is tried when it *fails* — a
``FetchFailed`` (refused or broken connection, timeout, I/O error) or a 5xx answer — and the
answer of the last origin tried is what the node gets. A 404 (or 403, or any 4xx) is an
*answer*, not a failure, and is returned as is: the origins of a chain are replicas of one
store, not a union of namespaces. Falling through on 404 would double the origin load of every
miss (players probing for segments not transcoded yet, scanners), and would let a replica that
missed a delete bring an object back. A store split across origins is a job for routing, not
for failover.

Non-idempotent requests (POST, PATCH) are only sent again when the failure says the request
never reached the origin (``retryable``: connection refused), and a 5xx answer to them is
returned, not retried: the origin may have acted on it.

Health is the parents' (``reelcdn.edge.fetch.health``, one ``UpstreamHealth`` per origin): a
circuit breaker fed by the requests (open after ``failures`` errors or 5xx in a row, half-open
after ``retry_after``: one request tries the origin) and, for http origins with checks, active
checks (a GET of the origin's health path every ``interval``; ``fall`` failed checks take it
out, ``rise`` passed ones put it back; any answer below 500 passes). Origins marked down are
still tried after the others have failed, in configured order — a guess beats a certain
failure.

A GET answered 200 with a strong ETag and a Content-Length whose body breaks mid-way is resumed
(``reelcdn.edge.fetch.resume``) from the next origins of the chain and then the same one, with
``Range`` + ``If-Range``: the node's readers get the rest of the same bytes and it stores the
object whole, or the cut body they got before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
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

from .paths import OriginRefused

if TYPE_CHECKING:
    from reelcdn.edge.config.model import HealthConfig

__all__ = ["OriginChain", "OriginState"]

log = logging.getLogger("reelcdn.health")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

SAME_ORIGIN_RESUMES = 3
"""How often a body's own origin is asked for the rest of it, over all its breaks. A shield
usually has one origin, so it is the only one to ask; a flaky path (an origin cutting 30 %
of its responses in the chaos soak) cut a once-resumed body again one time in ten. Each ask
is bounded by ``resume_within`` from its break, so a body that keeps breaking ends."""
_DEFAULT_TIMEOUTS = UpstreamTimeouts()


class OriginState:
    """One origin of a chain: the connector, its health and, for a checked http origin, its
    check settings."""

    __slots__ = ("origin", "health", "checks")

    def __init__(self, origin: Upstream, health: UpstreamHealth,
                 checks: HealthConfig | None) -> None:
        self.origin = origin
        self.health = health
        self.checks = checks

    @property
    def name(self) -> str:
        return self.origin.name


def _health_of(state: OriginState) -> UpstreamHealth:
    return state.health


class OriginChain(Upstream):
    """Origins tried in order, with per-origin health, checks and resumed bodies."""

    def __init__(
        self,
        origins: Sequence[Upstream],
        *,
        retry_after: float = 10.0,
        failures: int = 3,
        checks: Mapping[str, HealthConfig] | None = None,
        node: str = "",
    ) -> None:
        """``checks``: origin name → its active checks (origins without an entry, or whose
        connector has no ``probe``, have passive health only)."""
        super().__init__()
        if not origins:
            raise ValueError("an origin chain needs at least one origin")
        names = [origin.name for origin in origins]
        if len(set(names)) != len(names):
            raise ValueError(f"origin names must be unique (metrics use them): {names}")
        checks = checks or {}
        self.node = node
        self.states = []
        for origin in origins:
            config = checks.get(origin.name)
            if config is not None and (not config.checks or not hasattr(origin, "probe")):
                config = None
            rise, fall = (config.rise, config.fall) if config is not None else (2, 3)
            watch = UpstreamHealth(origin.name, failures=failures, retry_after=retry_after,
                                   rise=rise, fall=fall, notify=self._changed)
            self.states.append(OriginState(origin, watch, config))
        self.name = ",".join(names)
        self.retry_after = retry_after
        self.failures_to_down = failures
        self._checkers: list[asyncio.Task[None]] = []
        # What a resume after a break may take (resume.py): the longest first_byte of the
        # origins, since any of them may be asked.
        self.resume_within = max(
            getattr(origin, "timeouts", _DEFAULT_TIMEOUTS).first_byte for origin in origins)

    @property
    def origins(self) -> list[Upstream]:
        return [state.origin for state in self.states]

    def _changed(self, upstream: str, old: str, new: str, reason: str) -> None:
        level = logging.INFO if new == "up" else logging.WARNING
        log.log(level, "node %s: origin %s %s -> %s (%s)", self.node, upstream, old, new, reason)
        self.state_change(upstream, new)

    async def start(self) -> None:
        for state in self.states:
            state.origin.observe = self.observe
            await state.origin.start()
        loop = asyncio.get_running_loop()
        self._checkers = [
            loop.create_task(check_loop(state.health, _prober(state), state.checks.interval))
            for state in self.states if state.checks is not None
        ]

    async def close(self) -> None:
        for task in self._checkers:
            task.cancel()
        for task in self._checkers:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._checkers = []
        for state in self.states:
            await state.origin.close()

    def order(self, now: float | None = None) -> list[OriginState]:
        """Origins to try: those in rotation in configured order, then the others. Does not
        claim a half-open origin's probe (``request`` does)."""
        now = time.monotonic() if now is None else now
        live = [state for state in self.states if state.health.status(now) != "down"]
        return live + [state for state in self.states if state.health.status(now) == "down"]

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[bytes | str, bytes | str]],
        body: bytes | None = None,
    ) -> UpstreamResponse:
        """The first answer that is not a failure, else the last origin's answer or failure."""
        fields = list(headers)  # tried more than once: an iterator would be used up
        idempotent = method in IDEMPOTENT
        order, probes = plan(self.states, _health_of, time.monotonic())
        sent: set[str] = set()
        last: FetchFailed | None = None
        try:
            for index, state in enumerate(order):
                health = state.health
                sent.add(state.name)
                health.requests += 1
                try:
                    response = await state.origin.request(method, target, fields, body)
                except (OriginRefused, TargetRefused):
                    # The request itself is bad; every origin would refuse it. Not the
                    # origin's fault: hostile requests must not mark origins down (nor spend
                    # a half-open origin's probe).
                    health.release()
                    raise
                except FetchFailed as failure:
                    health.failed(time.monotonic(), failure.reason)
                    last = failure
                    if idempotent or failure.retryable:
                        continue
                    raise
                if response.status < 500:
                    health.answered(time.monotonic())
                    return self._resumable(method, fields, target, response, state, order)
                health.failed(time.monotonic(), f"answered {response.status}")
                if not idempotent or index == len(order) - 1:
                    return response
                response.close()  # not read: the next origin answers instead
                last = FetchFailed(502, f"{state.name} answered {response.status}")
        finally:
            for state in probes:
                if state.name not in sent:
                    state.health.release()
        assert last is not None
        raise last

    def _resumable(
        self,
        method: str,
        fields: list[tuple[bytes | str, bytes | str]],
        target: str,
        response: UpstreamResponse,
        source: OriginState,
        order: list[OriginState],
    ) -> UpstreamResponse:
        """``response``, wrapped so that a body breaking mid-way is resumed (``resume.py``)
        from the origins after ``source`` in this request's order, then ``source`` itself
        (up to :data:`SAME_ORIGIN_RESUMES` times over the body's breaks): an origin that cut
        one connection (a restart behind a load balancer, an idle reset) often answers the
        next, and a resumed body can break again. Only a GET of the whole object answered
        200 with a strong ETag and a Content-Length."""
        if method != "GET":
            return response
        if any(name.lower() in ("range", b"range") for name, _ in fields):
            return response
        identity = resume_identity(response.status, response.headers)
        if identity is None:
            return response
        at = order.index(source)
        again = (source,) * SAME_ORIGIN_RESUMES
        attempts = [_resume_attempt(state, target) for state in (*order[at + 1:], *again)]
        return ResumingResponse(response, source.name, fields, identity, attempts,
                                self.resume_within, self._resume_outcome)

    def _resume_outcome(self, outcome: str) -> None:
        self.resume_outcome(outcome)

    def health(self) -> dict[str, dict[str, float | int | bool | str]]:
        """Per-origin state for metrics and the admin API, keyed by origin name: the view of
        ``UpstreamHealth`` (``failures`` is its ``errors``), with ``checked`` telling whether
        active checks run."""
        now = time.monotonic()
        views: dict[str, dict[str, float | int | bool | str]] = {}
        for state in self.states:
            view = state.health.view(now)
            view["failures"] = view["errors"]
            view["checked"] = state.checks is not None
            views[state.name] = view
        return views

    counters = health  # the older name of the same view


def _prober(state: OriginState) -> Callable[[], Awaitable[tuple[bool, str]]]:
    """One check of an http origin: any answer below 500 passes (it is no reelcdn node)."""
    checks = state.checks
    assert checks is not None
    probe = state.origin.probe  # type: ignore[attr-defined]
    return lambda: probe(checks.path, checks.timeout, any_answer=True)


def _resume_attempt(state: OriginState, target: str) -> Attempt:
    """One origin's Range request for a resume, counted in its health like any other."""

    async def send(fields: list[tuple[bytes, bytes]]) -> UpstreamResponse:
        health = state.health
        health.requests += 1
        try:
            response = await state.origin.request("GET", target, fields)
        except (OriginRefused, TargetRefused):
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
