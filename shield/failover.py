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

Passive health, as for parents (``reelcdn.edge.fetch.parents``): an origin that failed ``failures``
times in a row is skipped for ``retry_after`` seconds, so requests stop paying its timeout.
Skipped origins are still tried after the healthy ones have failed, in configured order —
which covers "all down: try them all anyway", since a guess beats a certain failure. After
``retry_after`` one request tries the origin again: an answer closes the circuit, one more
failure opens it for another ``retry_after``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from reelcdn.edge.fetch.contract import FetchFailed, Upstream, UpstreamResponse

from .paths import OriginRefused

__all__ = ["OriginChain", "OriginState"]

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class OriginState:
    """Counters and passive health of one origin of a chain."""

    __slots__ = ("origin", "requests", "failures", "consecutive", "down_until")

    def __init__(self, origin: Upstream) -> None:
        self.origin = origin
        self.requests = 0
        self.failures = 0
        self.consecutive = 0
        self.down_until = 0.0

    @property
    def name(self) -> str:
        return self.origin.name

    def up(self, now: float) -> bool:
        return self.down_until <= now


class OriginChain(Upstream):
    """Origins tried in order, with per-origin counters and skip-when-down."""

    def __init__(
        self,
        origins: Sequence[Upstream],
        *,
        retry_after: float = 10.0,
        failures: int = 3,
    ) -> None:
        super().__init__()
        if not origins:
            raise ValueError("an origin chain needs at least one origin")
        names = [origin.name for origin in origins]
        if len(set(names)) != len(names):
            raise ValueError(f"origin names must be unique (metrics use them): {names}")
        self.states = [OriginState(origin) for origin in origins]
        self.name = ",".join(names)
        self.retry_after = retry_after
        self.failures_to_down = failures

    @property
    def origins(self) -> list[Upstream]:
        return [state.origin for state in self.states]

    async def start(self) -> None:
        for state in self.states:
            state.origin.observe = self.observe
            await state.origin.start()

    async def close(self) -> None:
        for state in self.states:
            await state.origin.close()

    def order(self, now: float | None = None) -> list[OriginState]:
        """Origins to try: the healthy ones in configured order, then the skipped ones."""
        now = time.monotonic() if now is None else now
        healthy = [state for state in self.states if state.up(now)]
        return healthy + [state for state in self.states if not state.up(now)]

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
        order = self.order()
        last: FetchFailed | None = None
        for index, state in enumerate(order):
            state.requests += 1
            try:
                response = await state.origin.request(method, target, fields, body)
            except OriginRefused:
                # The request itself is bad; every origin would refuse it. Not the origin's
                # fault: hostile requests must not mark origins down.
                raise
            except FetchFailed as failure:
                self._failed(state)
                last = failure
                if idempotent or failure.retryable:
                    continue
                raise
            if response.status < 500:
                self._answered(state)
                return response
            self._failed(state)
            if not idempotent or index == len(order) - 1:
                return response
            response.close()  # not read: the next origin answers instead
            last = FetchFailed(502, f"{state.name} answered {response.status}")
        assert last is not None
        raise last

    def _failed(self, state: OriginState) -> None:
        state.failures += 1
        state.consecutive += 1
        if state.consecutive >= self.failures_to_down:
            state.down_until = time.monotonic() + self.retry_after

    @staticmethod
    def _answered(state: OriginState) -> None:
        state.consecutive = 0
        state.down_until = 0.0

    def counters(self) -> dict[str, dict[str, int | bool]]:
        """Per-origin counters for metrics and the admin API, keyed by origin name."""
        now = time.monotonic()
        return {
            state.name: {
                "requests": state.requests,
                "failures": state.failures,
                "consecutive_failures": state.consecutive,
                "up": state.up(now),
            }
            for state in self.states
        }

    health = counters  # the name ParentSet uses for the same view
