"""Parent selection by rendezvous (highest-random-weight) hashing, with passive failover.

Why HRW: each object should live on one parent so a tier's cache capacity adds up (two
regionals of 256 MiB hold 512 MiB of distinct objects), and when a parent leaves only its
own objects move. For a key, every parent gets a score ``hash(parent, key)``; parents are
tried in descending score order. A parent that fails — connection refused, timeout, or a
streak of 5xx answers — is marked down for ``retry_after`` seconds and skipped (the next
parent in hash order takes its objects), then tried again. If every parent is down they are
all tried anyway: a guess beats a certain failure.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from reelcdn.edge.fetch.contract import (
    FetchFailed,
    TargetRefused,
    Upstream,
    UpstreamResponse,
    UpstreamTimeouts,
)
from reelcdn.edge.fetch.upstream import HttpUpstream

if TYPE_CHECKING:
    from reelcdn.edge.config import ParentRef

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def hrw_score(parent: str, key: str) -> int:
    """The rendezvous weight of ``parent`` for ``key`` (64 bits of BLAKE2b)."""
    digest = hashlib.blake2b(f"{parent}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def hrw_order(parents: Iterable[str], key: str) -> list[str]:
    """Parents in the order a key tries them: highest weight first."""
    return sorted(parents, key=lambda name: hrw_score(name, key), reverse=True)


class ParentState:
    """Passive health of one parent."""

    __slots__ = ("name", "upstream", "failures", "down_until", "requests", "errors")

    def __init__(self, name: str, upstream: HttpUpstream) -> None:
        self.name = name
        self.upstream = upstream
        self.failures = 0
        self.down_until = 0.0
        self.requests = 0
        self.errors = 0


class ParentSet(Upstream):
    """Several parents behind one ``Upstream``: HRW choice, skip-when-down, retry next."""

    def __init__(
        self,
        parents: Iterable[ParentRef],
        *,
        timeouts: UpstreamTimeouts,
        max_connections: int = 256,
        failures_to_down: int = 3,
        retry_after: float = 10.0,
    ) -> None:
        super().__init__()
        self.parents = {
            ref.name: ParentState(
                ref.name,
                HttpUpstream(ref.url, timeouts=timeouts, max_connections=max_connections,
                             name=ref.name),
            )
            for ref in parents
        }
        if not self.parents:
            raise ValueError("a ParentSet needs at least one parent")
        self.name = ",".join(self.parents)
        self.failures_to_down = failures_to_down
        self.retry_after = retry_after

    async def start(self) -> None:
        for state in self.parents.values():
            state.upstream.observe = self.observe
            await state.upstream.start()

    async def close(self) -> None:
        for state in self.parents.values():
            await state.upstream.close()

    def order(self, key: str, now: float | None = None) -> list[ParentState]:
        """Parents to try for ``key``: healthy ones in hash order, then the down ones."""
        now = time.monotonic() if now is None else now
        ranked = [self.parents[name] for name in hrw_order(self.parents, key)]
        healthy = [p for p in ranked if p.down_until <= now]
        return healthy + [p for p in ranked if p.down_until > now]

    def _failed(self, state: ParentState) -> None:
        state.errors += 1
        state.failures += 1
        if state.failures >= self.failures_to_down:
            state.down_until = time.monotonic() + self.retry_after

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[bytes | str, bytes | str]],
        body: bytes | None = None,
    ) -> UpstreamResponse:
        fields = list(headers)
        last: FetchFailed | None = None
        for state in self.order(target):
            state.requests += 1
            try:
                response = await state.upstream.request(method, target, fields, body)
            except TargetRefused:
                raise
            except FetchFailed as failure:
                self._failed(state)
                last = failure
                # A request that may have reached the parent is only re-sent if repeating
                # it is harmless; a refused connection never reached it.
                if method in IDEMPOTENT or failure.retryable:
                    continue
                raise
            if response.status >= 500:
                self._failed(state)
            else:
                state.failures = 0
                state.down_until = 0.0
            return response
        assert last is not None
        raise last

    def health(self) -> dict[str, dict[str, float | int | bool]]:
        """Per-parent state for the admin API and metrics."""
        now = time.monotonic()
        return {
            name: {
                "up": state.down_until <= now,
                "requests": state.requests,
                "errors": state.errors,
                "consecutive_failures": state.failures,
            }
            for name, state in self.parents.items()
        }
