"""The upstream contract: what a parent, a set of parents or an origin connector implements.

``Upstream.request(method, target, headers, body)`` answers an ``UpstreamResponse`` once the
head is known, and turns every failure into ``FetchFailed`` with the status a client should
see: 502 for a refused or broken connection, 504 for a timeout (``TargetRefused``, 400, for a
target the node will not send). ``UpstreamTimeouts`` bound each step. The HTTP upstream
(``upstream.py``), the parents (``parents.py``) and the shield's connectors
(``reelcdn.shield``: filesystem, S3, HTTP, a failover chain) implement it; the node and the
coalescer use it. Nothing here imports the rest of the node.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    connect: float = 3.0
    first_byte: float = 10.0
    idle: float = 10.0       # between body chunks


class FetchFailed(Exception):
    """The upstream fetch failed; ``status`` is what a client should get (502 or 504).
    ``retryable``: the request surely never reached the upstream (connection refused), so
    even a non-idempotent request may be sent elsewhere."""

    def __init__(self, status: int, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retryable = retryable


class TargetRefused(FetchFailed):
    """A target this node will not send upstream (400): the client's fault, so it never
    counts against the upstream's health nor is retried on another parent."""


class UpstreamResponse:
    """Status, raw header pairs, and a body stream that must be released when done."""

    status: int
    headers: list[tuple[bytes, bytes]]

    def chunks(self, idle_timeout: float) -> AsyncIterator[bytes]:
        """The body as it arrives; ``FetchFailed(504)`` if it stalls, 502 if it breaks."""
        raise NotImplementedError

    def release(self) -> None:
        """Done with a fully read body: resources may be reused."""

    def close(self) -> None:
        """Abandon the body (it will not be read to the end)."""


class Upstream:
    """What a node fetches from: a parent tier, a set of parents, or origins.

    ``observe(source, status)`` is called for every answer or failure (status 502/504 for
    failures) with the name of the parent or origin involved: the node's metrics hook.
    ``state_change(source, to)`` is called when a parent or origin changes health state
    (``up``, ``half_open``, ``down``: ``edge/fetch/health.py``). ``resume_outcome(outcome)``
    is called when a body that broke mid-way was resumed or not (``resumed``, ``refused``,
    ``failed``: ``edge/fetch/resume.py``).
    """

    name: str = "upstream"

    def __init__(self) -> None:
        self.observe: Callable[[str, int], None] = _ignore
        self.state_change: Callable[[str, str], None] = _ignore_change
        self.resume_outcome: Callable[[str], None] = _ignore_outcome

    async def start(self) -> None:
        """Open pools and clients; called once the event loop runs."""

    async def close(self) -> None:
        """Release pools and clients."""

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[bytes | str, bytes | str]],
        body: bytes | None = None,
    ) -> UpstreamResponse:
        """Send a request; return once the response head has arrived."""
        raise NotImplementedError


def _ignore(source: str, status: int) -> None:
    return None


def _ignore_change(source: str, to: str) -> None:
    return None


def _ignore_outcome(outcome: str) -> None:
    return None
