"""Per-object failure back-off: "do not ask upstream again for this key before T".

When the revalidation of a stored object fails (a 5xx, a timeout, a refused connection, or a
parent answering with a copy already stale), the node serves its stale copy and records the
key here; until T every request gets the stale copy without an upstream request, and after T
one revalidation asks again (``CacheNode``). T grows per consecutive failure
(``verdicts.failure_backoff``). The table is a bounded LRU: a key pushed out only loses its
back-off, and its next request asks upstream as if for the first time.

No I/O: the clock and the random draw come from the caller.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable

from reelcdn.edge.cache.verdicts import failure_backoff

#: Failing keys remembered at most (about 100 bytes each).
BACKOFF_KEYS = 16384


class FailureBackoff:
    """The failing keys of one node: key → (consecutive failures, retry time)."""

    __slots__ = ("base", "cap", "limit", "_keys", "_rand")

    def __init__(
        self,
        base: float,
        cap: float,
        limit: int = BACKOFF_KEYS,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.base = base
        self.cap = cap
        self.limit = limit
        self._keys: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._rand = rand

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def blocked(self, key: str, now: float) -> bool:
        """Whether ``key`` failed lately and its back-off has not run out at ``now``."""
        state = self._keys.get(key)
        return state is not None and now < state[1]

    def failed(self, key: str, now: float, grow: bool = True) -> float:
        """Record one more failure of ``key``; return the time before which not to ask.
        ``grow=False`` keeps the first back-off (a parent answering with a stale copy is
        itself backing off, so asking it costs the origin nothing, and a child that kept
        doubling would notice the origin's return up to ``cap`` after its parent did)."""
        state = self._keys.pop(key, None)
        failures = 1 if state is None or not grow else state[0] + 1
        until = now + failure_backoff(failures, self.base, self.cap, self._rand())
        self._keys[key] = (failures, until)
        if len(self._keys) > self.limit:
            self._keys.popitem(last=False)
        return until

    def succeeded(self, key: str) -> None:
        """The upstream answered for ``key``: forget its failures."""
        self._keys.pop(key, None)

    def failures(self, key: str) -> int:
        state = self._keys.get(key)
        return 0 if state is None else state[0]
