"""The LRU index with byte accounting: which keys the cache holds, in what order, at what cost.

``MemoryStore`` keeps its entries in a plain dict and leaves *ordering and accounting* to an
:class:`LruIndex` of ``key → charge``. Why the split:

* The index is the part of the store that every request touches (a HIT marks its key most
  recently used) and every fill changes (insert, evict down to the byte budget). Keeping it free of
  entry objects makes it a small, closed data structure that has a compiled twin
  (``extensions/_lru.pyx``: a C array of slots in a doubly linked list, no object per key) chosen
  at import by ``reelcdn.extensions``, while the entries dict stays a dict the node can read.
* The charge is recorded *when the key is inserted* and the index alone adds it up, so ``bytes``
  is always exactly the sum of the recorded charges, whatever happens to the objects afterwards.

This module is the reference twin: written plainly over ``OrderedDict`` (a C-implemented ordered
dict, which is the efficient way to do an LRU in Python), and it defines the contract the compiled
twin matches exactly, errors included (``tests/test_lru.py`` checks both, step by step).

The contract:

* Keys are exact ``str`` (cache keys); charges and capacities are integers in
  ``0 .. MAX_SIZE`` (anything with ``__index__``), checked with the same exception types and
  messages in both twins.
* ``insert`` of a charge above the capacity stores nothing and leaves the index unchanged, even
  an older version of the same key: an object that cannot fit is refused, not half-applied.
  Otherwise the key becomes the most recently used and the least recently used keys are evicted
  until ``bytes <= capacity``; the key just inserted is never among them (it fits by itself).
* Iteration yields the keys oldest → newest from a snapshot taken when it starts, so a caller may
  remove keys while iterating.
* The methods take their arguments by position only: the compiled twin's calls are cheapest that
  way (a HIT calls ``touch`` once), and both twins must accept exactly the same calls.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from operator import index

__all__ = ["MAX_SIZE", "LruIndex"]

MAX_SIZE = 2**63 - 1
"""Largest charge or capacity: the compiled twin keeps them in 64-bit integers."""


def _size(name: str, value: object) -> int:
    """``value`` as a charge or capacity (an ``int`` in ``0 .. MAX_SIZE``), or the error."""
    size = index(value)  # type: ignore[arg-type]  # TypeError for floats, strings, None
    if size < 0:
        raise ValueError(f"{name} must be >= 0, got {size}")
    if size > MAX_SIZE:
        raise ValueError(f"{name} must be <= {MAX_SIZE}, got {size}")
    return size


def _not_a_key(key: object) -> TypeError:
    return TypeError(f"key must be str, not {type(key).__name__}")


class LruIndex:
    """Keys in least → most recently used order, each with a charge; ``bytes`` ≤ ``capacity``."""

    __slots__ = ("_order", "_bytes", "_capacity")

    def __init__(self, capacity: int) -> None:
        self._capacity = _size("capacity", capacity)
        self._order: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0

    @property
    def bytes(self) -> int:
        """Sum of the charges of the keys held."""
        return self._bytes

    @property
    def capacity(self) -> int:
        """The byte budget (change it with :meth:`resize`)."""
        return self._capacity

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._order

    def __iter__(self) -> Iterator[str]:
        """The keys, oldest first, as they were when iteration started."""
        return iter(list(self._order))

    def __repr__(self) -> str:
        return f"LruIndex(capacity={self._capacity}, bytes={self._bytes}, len={len(self._order)})"

    def __reduce__(self) -> str | tuple[object, ...]:
        # A copy would share (shallow) or duplicate the order behind the store's back; the
        # compiled twin cannot be pickled either.
        raise TypeError("LruIndex cannot be pickled or copied")

    def charge_of(self, key: str, /) -> int:
        """The charge ``key`` was inserted with; ``KeyError`` if it is not held."""
        return self._order[key]

    def touch(self, key: str, /) -> bool:
        """Mark ``key`` most recently used; False if it is not held (nothing changes then)."""
        try:
            self._order.move_to_end(key)
            return True
        except KeyError:
            pass
        # An empty OrderedDict raises KeyError without hashing the key: hash it here (misses
        # only) so that an unhashable key is a TypeError whatever the index holds, as elsewhere.
        hash(key)
        return False

    def insert(self, key: str, charge: int, /) -> list[str]:
        """Hold ``key`` as the most recently used with ``charge`` (replacing its previous charge).

        Returns the keys evicted to get back within the capacity, oldest first. A charge above the
        capacity is refused: nothing changes and nothing is evicted.
        """
        if type(key) is not str:
            raise _not_a_key(key)
        if type(charge) is not int or not 0 <= charge <= MAX_SIZE:
            charge = _size("charge", charge)
        if charge > self._capacity:
            return []
        order = self._order
        old = order.get(key)
        order[key] = charge  # an existing key keeps its key object and its place, moved below
        if old is None:
            self._bytes += charge
        else:
            order.move_to_end(key)
            self._bytes += charge - old
        if self._bytes <= self._capacity:
            return []
        return self._evict()

    def remove(self, key: str, /) -> bool:
        """Forget ``key``; False if it was not held."""
        charge = self._order.pop(key, None)
        if charge is None:
            return False
        self._bytes -= charge
        return True

    def resize(self, capacity: int, /) -> list[str]:
        """Change the capacity; returns the keys evicted to fit in it, oldest first."""
        self._capacity = _size("capacity", capacity)
        if self._bytes <= self._capacity:
            return []
        return self._evict()

    def _evict(self) -> list[str]:
        """Drop the oldest keys until ``bytes <= capacity``."""
        order = self._order
        evicted = []
        total = self._bytes
        while total > self._capacity:
            key, charge = order.popitem(last=False)
            total -= charge
            evicted.append(key)
        self._bytes = total
        return evicted
