"""The LRU index with byte accounting: its contract on both twins, and the twins against each other.

Why these tests look the way they do:

* Every case runs on each twin (the ``twin`` fixture): ``reelcdn.extensions._lru_py`` (the
  reference) and the compiled ``reelcdn.extensions._lru``. The compiled one is skipped only when
  ``REELCDN_NO_EXTENSIONS`` disables extensions; missing or older than its ``.pyx`` it fails, so a
  broken build cannot pass silently on the pure twin.
* The differential property test replays random operation sequences (insert, touch, remove,
  resize, charge_of, membership, with junk arguments and capacity edge cases mixed in) on the pure
  twin, the compiled twin and a deliberately naive model written from the contract (a list of
  pairs), and compares after *every* step: return values, exception types and messages, and the
  whole state (order, bytes, length, capacity, each charge). The model keeps the pure twin honest;
  the pure twin keeps the compiled one exact.
* The compiled twin holds references to keys in C: a reference-count test checks that inserting,
  replacing, evicting, removing, re-initialising and freeing the index leaks and frees nothing.
"""

from __future__ import annotations

import copy
import gc
import operator
import pickle
import random
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import compiled_twin
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from reelcdn import extensions
from reelcdn.extensions import _lru_py as pure_lru
from reelcdn.extensions._lru_py import MAX_SIZE

TWIN_MODULE = "lru"  # the ``twin`` and ``compiled`` fixtures (conftest.py) load its twins


class Index:
    """An ``__index__`` integer: accepted as a charge or capacity by both twins."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"Index({self.value})"


class SubStr(str):
    """A str subclass: equal to its text for lookups, refused as a key to insert."""


def state(index: Any) -> tuple[list[tuple[str, int]], int, int, int]:
    """Everything observable: (key, charge) oldest first, bytes, len, capacity."""
    return [(k, index.charge_of(k)) for k in index], index.bytes, len(index), index.capacity


# ---------------------------------------------------------------------------------------------
# The contract, on each twin
# ---------------------------------------------------------------------------------------------


def test_selector_exposes_lru() -> None:
    chosen = extensions.lru
    if extensions.NO_EXTENSIONS:
        assert chosen is pure_lru and extensions.LRU_COMPILED is False
        assert extensions.implementations()["lru"] == "pure"
        assert extensions.FALLBACK_REASONS["lru"] == "REELCDN_NO_EXTENSIONS"
    else:
        assert chosen is compiled_twin.load_compiled("lru") and extensions.LRU_COMPILED is True
        assert extensions.implementations()["lru"] == "compiled"


def test_twins_share_api(twin: ModuleType) -> None:
    assert twin.MAX_SIZE == MAX_SIZE == 2**63 - 1
    for name in ("touch", "insert", "remove", "resize", "charge_of", "bytes", "capacity"):
        assert hasattr(twin.LruIndex, name), name
    assert twin.LruIndex.__name__ == "LruIndex"


def test_empty(twin: ModuleType) -> None:
    index = twin.LruIndex(100)
    assert state(index) == ([], 0, 0, 100)
    assert list(index) == [] and "a" not in index
    assert repr(index) == "LruIndex(capacity=100, bytes=0, len=0)"
    assert index.touch("a") is False and index.remove("a") is False
    assert index.resize(0) == [] and index.capacity == 0


def test_insert_order_touch_and_eviction(twin: ModuleType) -> None:
    index = twin.LruIndex(10)
    assert index.insert("a", 3) == []
    assert index.insert("b", 3) == []
    assert index.insert("c", 3) == []
    assert list(index) == ["a", "b", "c"] and index.bytes == 9
    assert index.touch("a") is True
    assert list(index) == ["b", "c", "a"]
    assert index.insert("d", 3) == ["b"]  # the least recently used goes first
    assert list(index) == ["c", "a", "d"] and index.bytes == 9
    assert index.insert("e", 7) == ["c", "a"]  # oldest first, until bytes <= capacity
    assert state(index) == ([("d", 3), ("e", 7)], 10, 2, 10)
    assert index.insert("f", 8) == ["d", "e"]  # never the new key
    assert state(index) == ([("f", 8)], 8, 1, 10)
    assert repr(index) == "LruIndex(capacity=10, bytes=8, len=1)"


def test_touch_of_the_newest_and_of_a_missing_key_changes_nothing(twin: ModuleType) -> None:
    index = twin.LruIndex(10)
    index.insert("a", 1)
    index.insert("b", 2)
    assert index.touch("b") is True and list(index) == ["a", "b"]
    assert index.touch("zz") is False and state(index) == ([("a", 1), ("b", 2)], 3, 2, 10)


def test_replace_updates_the_charge_and_makes_the_key_newest(twin: ModuleType) -> None:
    index = twin.LruIndex(10)
    for key in "abc":
        index.insert(key, 2)
    assert index.insert("a", 5) == []
    assert state(index) == ([("b", 2), ("c", 2), ("a", 5)], 9, 3, 10)
    assert index.insert("b", 1) == []
    assert state(index) == ([("c", 2), ("a", 5), ("b", 1)], 8, 3, 10)
    assert index.insert("c", 9) == ["a"]  # grows: evicts others, oldest first, not itself
    assert state(index) == ([("b", 1), ("c", 9)], 10, 2, 10)
    assert index.insert("c", 10) == ["b"]
    assert state(index) == ([("c", 10)], 10, 1, 10)


def test_charge_above_capacity_is_refused_and_changes_nothing(twin: ModuleType) -> None:
    index = twin.LruIndex(10)
    index.insert("a", 4)
    index.insert("b", 4)
    assert index.insert("big", 11) == []
    assert index.insert("a", 11) == []  # the older version of the key stays, in its place
    assert state(index) == ([("a", 4), ("b", 4)], 8, 2, 10)


def test_eviction_stops_as_soon_as_it_fits(twin: ModuleType) -> None:
    index = twin.LruIndex(10)
    index.insert("a", 1)
    index.insert("b", 0)
    index.insert("c", 2)
    assert index.insert("d", 8) == ["a"]  # exactly full: b (free) stays
    assert state(index) == ([("b", 0), ("c", 2), ("d", 8)], 10, 3, 10)
    assert index.insert("e", 1) == ["b", "c"]  # b frees nothing, but it is the oldest
    assert state(index) == ([("d", 8), ("e", 1)], 9, 2, 10)
    assert index.insert("f", 10) == ["d", "e"]  # a full-capacity charge: alone
    assert state(index) == ([("f", 10)], 10, 1, 10)


def test_zero_charges_and_zero_capacity(twin: ModuleType) -> None:
    index = twin.LruIndex(0)
    assert index.insert("a", 1) == []
    assert index.insert("a", 0) == [] and index.insert("b", 0) == []
    assert state(index) == ([("a", 0), ("b", 0)], 0, 2, 0)
    index.resize(5)
    assert index.insert("c", 5) == [] and list(index) == ["a", "b", "c"]
    index.touch("a")
    index.touch("b")
    assert index.resize(0) == ["c"] and list(index) == ["a", "b"]  # free keys newer than c stay
    index.insert("d", 0)
    assert index.resize(0) == [] and state(index) == ([("a", 0), ("b", 0), ("d", 0)], 0, 3, 0)


def test_remove(twin: ModuleType) -> None:
    index = twin.LruIndex(10)
    for key in "abc":
        index.insert(key, 3)
    assert index.remove("b") is True and index.remove("b") is False
    assert state(index) == ([("a", 3), ("c", 3)], 6, 2, 10)
    assert "b" not in index and "a" in index
    assert index.remove("a") is True and index.remove("c") is True
    assert state(index) == ([], 0, 0, 10)
    assert index.insert("b", 3) == [] and list(index) == ["b"]


def test_resize(twin: ModuleType) -> None:
    index = twin.LruIndex(100)
    for key, charge in zip("abcd", (10, 20, 30, 40), strict=True):
        index.insert(key, charge)
    index.touch("a")
    assert index.resize(200) == [] and index.capacity == 200
    assert index.resize(75) == ["b", "c"]
    assert state(index) == ([("d", 40), ("a", 10)], 50, 2, 75)
    assert index.resize(50) == [] and index.resize(49) == ["d"]
    assert index.resize(0) == ["a"] and state(index) == ([], 0, 0, 0)


def test_charge_of(twin: ModuleType) -> None:
    index = twin.LruIndex(10)
    index.insert("a", 7)
    assert index.charge_of("a") == 7 and type(index.charge_of("a")) is int
    with pytest.raises(KeyError) as raised:
        index.charge_of("b")
    assert raised.value.args == ("b",)


def test_iteration_is_a_snapshot(twin: ModuleType) -> None:
    index = twin.LruIndex(100)
    for key in "abcde":
        index.insert(key, 1)
    seen = []
    for key in index:
        seen.append(key)
        index.remove(key)
        index.insert(key + key, 1)
    assert seen == list("abcde")
    assert list(index) == ["aa", "bb", "cc", "dd", "ee"]


def test_lookups_by_a_str_subclass_find_the_key(twin: ModuleType) -> None:
    index = twin.LruIndex(10)
    index.insert("a", 1)
    index.insert("b", 1)
    assert SubStr("a") in index and index.charge_of(SubStr("a")) == 1
    assert index.touch(SubStr("a")) is True and list(index) == ["b", "a"]
    assert index.remove(SubStr("b")) is True and list(index) == ["a"]


class Meddling(str):
    """A key equal to its text whose first comparison changes the index it is looked up in."""

    __hash__ = str.__hash__
    index: Any = None

    def __eq__(self, other: object) -> bool:
        index, self.index = self.index, None
        if index is not None:
            index.remove("b")
            index.insert("z", 1)
        return str.__eq__(self, other)


def test_a_lookup_survives_an_eq_that_changes_the_index(twin: ModuleType) -> None:
    """dict restarts a lookup whose comparison changed it; the compiled table does the same."""
    index = twin.LruIndex(100)
    for key in "abcdefgh":
        index.insert(key, 1)
    meddling = Meddling("a")
    meddling.index = index
    assert index.touch(meddling) is True
    assert list(index) == ["c", "d", "e", "f", "g", "h", "z", "a"] and index.bytes == 8
    for call in (index.__contains__, index.charge_of, index.remove):
        meddling = Meddling("c")
        meddling.index = index
        assert call(meddling) in (True, 1)
    assert list(index) == ["d", "e", "f", "g", "h", "a", "z"] and index.bytes == 7


class Growing(str):
    """A key whose first comparison adds enough keys to the index to rehash its table."""

    __hash__ = str.__hash__
    index: Any = None

    def __eq__(self, other: object) -> bool:
        index, self.index = self.index, None
        if index is not None:
            for n in range(200):
                index.insert(f"grown{n}", 0)
        return str.__eq__(self, other)


class Replacing(str):
    """A key whose first comparison removes the key it is compared with and inserts another
    (which the compiled twin files in the slot just freed)."""

    __hash__ = str.__hash__
    index: Any = None

    def __eq__(self, other: object) -> bool:
        index, self.index = self.index, None
        if index is not None:
            index.remove(str(self))
            index.insert("new", 5)
        return str.__eq__(self, other)


def test_a_lookup_whose_eq_removes_the_key_finds_nothing(twin: ModuleType) -> None:
    index = twin.LruIndex(100)
    for k in "abcd":
        index.insert(k, 1)
    replacing = Replacing("b")
    replacing.index = index
    assert index.touch(replacing) is False  # "b" went while it was compared
    assert state(index) == ([("a", 1), ("c", 1), ("d", 1), ("new", 5)], 8, 4, 100)


@pytest.mark.parametrize("key", list("abcdefgh"))
def test_a_lookup_survives_an_eq_that_rehashes_the_index(twin: ModuleType, key: str) -> None:
    index = twin.LruIndex(100)
    for k in "abcdefgh":
        index.insert(k, 1)
    growing = Growing(key)
    growing.index = index
    assert index.touch(growing) is True
    assert list(index)[-1] == key and len(index) == 208


@pytest.mark.parametrize(
    "call",
    [
        lambda index: index.touch(key="a"),
        lambda index: index.insert("a", charge=1),
        lambda index: index.insert(key="a", charge=1),
        lambda index: index.remove(key="a"),
        lambda index: index.resize(capacity=1),
        lambda index: index.charge_of(key="a"),
        lambda index: index.touch(),
        lambda index: index.insert("a"),
        lambda index: index.remove("a", "b"),
    ],
)
def test_arguments_are_positional_only(twin: ModuleType, call: Callable[[Any], object]) -> None:
    """Both twins refuse the same calls (the messages are Python's and Cython's own)."""
    index = twin.LruIndex(10)
    index.insert("a", 1)
    with pytest.raises(TypeError):
        call(index)
    assert state(index) == ([("a", 1)], 1, 1, 10)
    assert twin.LruIndex(capacity=5).capacity == 5  # the constructor takes a keyword


def test_replaced_and_evicted_keys_are_the_stored_objects(twin: ModuleType) -> None:
    index = twin.LruIndex(2)
    first = "".join(["k", "ey"])  # not interned: identity is observable
    second = "".join(["k", "ey"])
    assert first == second and first is not second
    index.insert(first, 1)
    index.insert(second, 2)  # a replacement keeps the stored key object
    (evicted,) = index.resize(1)
    assert evicted is first


def test_large_charges_do_not_overflow(twin: ModuleType) -> None:
    index = twin.LruIndex(MAX_SIZE)
    assert index.insert("a", MAX_SIZE) == []
    assert index.insert("b", MAX_SIZE) == ["a"]  # bytes passes 2**63 on the way
    assert index.insert("c", MAX_SIZE - 1) == ["b"]
    assert index.insert("d", 1) == []
    assert state(index) == ([("c", MAX_SIZE - 1), ("d", 1)], MAX_SIZE, 2, MAX_SIZE)


NOT_AN_INT = "object cannot be interpreted as an integer"


def full(module: ModuleType) -> Any:
    index = module.LruIndex(10)
    index.insert("a", 1)
    return index


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: m.LruIndex(-1), ValueError, "capacity must be >= 0, got -1"),
        (lambda m: m.LruIndex(2**63), ValueError, f"capacity must be <= {MAX_SIZE}, got {2**63}"),
        (lambda m: m.LruIndex(-(2**70)), ValueError, f"capacity must be >= 0, got {-(2**70)}"),
        (lambda m: m.LruIndex(1.0), TypeError, f"'float' {NOT_AN_INT}"),
        (lambda m: m.LruIndex("5"), TypeError, f"'str' {NOT_AN_INT}"),
        (lambda m: m.LruIndex(None), TypeError, f"'NoneType' {NOT_AN_INT}"),
        (lambda m: m.LruIndex(10).insert("a", -1), ValueError, "charge must be >= 0, got -1"),
        (lambda m: m.LruIndex(10).insert("a", 2**64), ValueError,
         f"charge must be <= {MAX_SIZE}, got {2**64}"),
        (lambda m: m.LruIndex(10).insert("a", 0.5), TypeError, f"'float' {NOT_AN_INT}"),
        (lambda m: m.LruIndex(10).insert(1, 1), TypeError, "key must be str, not int"),
        (lambda m: m.LruIndex(10).insert(b"a", 1), TypeError, "key must be str, not bytes"),
        (lambda m: m.LruIndex(10).insert(SubStr("a"), 1), TypeError, "key must be str, not SubStr"),
        (lambda m: m.LruIndex(10).insert(None, -1), TypeError, "key must be str, not NoneType"),
        (lambda m: m.LruIndex(10).resize(-5), ValueError, "capacity must be >= 0, got -5"),
        (lambda m: m.LruIndex(10).touch([]), TypeError, "unhashable type: 'list'"),  # empty
        (lambda m: full(m).touch([]), TypeError, "unhashable type: 'list'"),
        (lambda m: m.LruIndex(10).remove({}), TypeError, "unhashable type: 'dict'"),
        (lambda m: [] in m.LruIndex(10), TypeError, "unhashable type: 'list'"),
        (lambda m: m.LruIndex(10).charge_of([]), TypeError, "unhashable type: 'list'"),
        (lambda m: pickle.dumps(m.LruIndex(10)), TypeError, "LruIndex cannot be pickled or copied"),
        (lambda m: copy.copy(m.LruIndex(10)), TypeError, "LruIndex cannot be pickled or copied"),
    ],
)  # fmt: skip
def test_bad_arguments(
    twin: ModuleType, call: Callable[[ModuleType], object], error: type, message: str
) -> None:
    with pytest.raises(error) as raised:
        call(twin)
    assert type(raised.value) is error and str(raised.value) == message


def test_failed_calls_change_nothing(twin: ModuleType) -> None:
    index = twin.LruIndex(10)
    index.insert("a", 4)
    for call in (
        lambda: index.insert("b", -1),
        lambda: index.insert(1, 1),
        lambda: index.resize(-1),
        lambda: index.resize(1.5),
    ):
        with pytest.raises((TypeError, ValueError)):
            call()
        assert state(index) == ([("a", 4)], 4, 1, 10)


def test_index_like_and_bool_sizes_are_ints(twin: ModuleType) -> None:
    index = twin.LruIndex(Index(10))
    assert index.capacity == 10 and type(index.capacity) is int
    index.insert("a", Index(3))
    index.insert("b", True)
    assert state(index) == ([("a", 3), ("b", 1)], 4, 2, 10)
    assert type(index.charge_of("b")) is int
    assert index.resize(Index(1)) == ["a"]


def test_init_again_resets(twin: ModuleType) -> None:
    index = twin.LruIndex(10)
    index.insert("a", 4)
    index.__init__(20)  # type: ignore[misc]
    assert state(index) == ([], 0, 0, 20)
    assert index.insert("b", 4) == [] and list(index) == ["b"]


def test_many_keys_against_the_pure_twin(twin: ModuleType) -> None:
    """Thousands of keys: growth of the slot array, free-list reuse, long eviction runs."""
    rng = random.Random(4)
    index, reference = twin.LruIndex(50_000), pure_lru.LruIndex(50_000)
    for step in range(30_000):
        key = f"/v/{rng.randrange(3000)}"
        roll = rng.random()
        if roll < 0.5:
            args: tuple[object, ...] = ("insert", key, rng.randrange(1, 100))
        elif roll < 0.8:
            args = ("touch", key)
        elif roll < 0.98:
            args = ("remove", key)
        else:
            args = ("resize", rng.choice([10_000, 50_000, 100_000, 0]))
        name, *rest = args
        assert getattr(index, name)(*rest) == getattr(reference, name)(*rest), (step, args)
        if step % 1000 == 0:  # every key findable: the table survived its deletions
            assert state(index) == state(reference), step
            absent = [k for k in (f"/v/{n}" for n in range(3000)) if k not in reference]
            assert not any(k in index for k in absent), step
    assert state(index) == state(reference)


def test_compiled_keeps_no_reference_it_should_not(compiled: ModuleType) -> None:
    keys = ["".join(["/seg", str(i)]) for i in range(40)]  # fresh objects
    before = [sys.getrefcount(k) for k in keys]
    index = compiled.LruIndex(20)
    for i, key in enumerate(keys):
        index.insert(key, 1)
        index.insert(key, 1)  # replaced in place: no second reference
        if i % 3 == 0:
            index.remove(key)
    del key
    index.touch(keys[-1])
    evicted = index.resize(5)
    assert all(type(k) is str for k in evicted)
    del evicted
    index.__init__(20)  # releases every key
    assert [sys.getrefcount(k) for k in keys] == before
    for key in keys[:10]:
        index.insert(key, 1)
    del key, index
    gc.collect()
    assert [sys.getrefcount(k) for k in keys] == before


# ---------------------------------------------------------------------------------------------
# Differential: random operation sequences on the pure twin, the compiled twin and a naive model
# ---------------------------------------------------------------------------------------------


class Model:
    """The contract as plainly as possible: a list of [key, charge], oldest first."""

    def __init__(self, capacity: object) -> None:
        self.cap = self._size(capacity)
        self.items: list[list[Any]] = []

    @staticmethod
    def _size(value: object) -> int:
        size = operator.index(value)  # type: ignore[arg-type]
        if not 0 <= size <= MAX_SIZE:
            raise ValueError("out of range")
        return size

    def _find(self, key: object) -> int | None:
        hash(key)  # unhashable keys raise TypeError, as dict lookups do
        for i, (k, _) in enumerate(self.items):
            if k == key:
                return i
        return None

    def _evict(self) -> list[str]:
        evicted = []
        while sum(c for _, c in self.items) > self.cap:
            evicted.append(self.items.pop(0)[0])
        return evicted

    def insert(self, key: object, charge: object) -> list[str]:
        if type(key) is not str:
            raise TypeError("not a key")
        size = self._size(charge)
        if size > self.cap:
            return []
        i = self._find(key)
        if i is not None:
            key = self.items.pop(i)[0]
        self.items.append([key, size])
        return self._evict()

    def __contains__(self, key: object) -> bool:
        return self._find(key) is not None

    def touch(self, key: object) -> bool:
        i = self._find(key)
        if i is None:
            return False
        self.items.append(self.items.pop(i))
        return True

    def remove(self, key: object) -> bool:
        i = self._find(key)
        if i is None:
            return False
        del self.items[i]
        return True

    def resize(self, capacity: object) -> list[str]:
        self.cap = self._size(capacity)
        return self._evict()

    def charge_of(self, key: object) -> int:
        i = self._find(key)
        if i is None:
            raise KeyError(key)
        return int(self.items[i][1])

    def state(self) -> tuple[list[tuple[str, int]], int, int, int]:
        pairs = [(k, c) for k, c in self.items]
        return pairs, sum(c for _, c in pairs), len(pairs), self.cap


def outcome(func: Callable[..., object], *args: object) -> tuple[str, object]:
    """``("ok", result)`` or ``("raised", (exception type, message))``."""
    try:
        return "ok", func(*args)
    except Exception as exc:  # noqa: BLE001 - any exception is an outcome to compare
        return "raised", (type(exc), str(exc))


def apply(target: Any, op: tuple[Any, ...]) -> tuple[str, object]:
    name, *args = op
    if name == "contains":
        return outcome(operator.contains, target, *args)
    return outcome(getattr(target, name), *args)


KEYS = "abcdefgh"
plain_keys = st.sampled_from(KEYS)
odd_keys = st.sampled_from([SubStr("a"), SubStr("zz"), 1, None, b"a", (), []])
keys = st.one_of(plain_keys, plain_keys, plain_keys, odd_keys)
odd_sizes = st.sampled_from(
    [0, 1, MAX_SIZE, MAX_SIZE + 1, 2**64, -1, -(2**64), True, False, 1.5, "3", None, Index(5)]
)
# Mostly inserts and touches of a few keys with small sizes, so that the index is often full and
# sums hit the capacity exactly (the boundary of every eviction); junk arguments now and then.
charges = st.one_of(st.integers(0, 6), st.integers(0, 40), odd_sizes)
capacities = st.one_of(st.integers(0, 12), st.integers(0, 120), odd_sizes)
OP_NAMES = ["insert"] * 5 + ["touch"] * 3 + ["remove", "resize", "charge_of", "contains"]


@st.composite
def operation(draw: st.DrawFn) -> tuple[Any, ...]:
    name = draw(st.sampled_from(OP_NAMES))
    key = draw(st.one_of(plain_keys, odd_keys) if draw(st.integers(0, 9)) == 0 else plain_keys)
    if name == "insert":
        return name, key, draw(charges if draw(st.integers(0, 9)) == 0 else st.integers(0, 6))
    if name == "resize":
        return name, draw(capacities)
    return name, key


operations = st.lists(operation(), min_size=12, max_size=80)  # short lists rarely fill it
DIFF_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def run_differential(
    compiled_cls: Callable[[object], Any], capacity: object, ops: list[tuple[Any, ...]]
) -> None:
    """Replay ``ops`` on the compiled twin, the pure twin and the model; compare every step."""
    built = [outcome(cls, capacity) for cls in (compiled_cls, pure_lru.LruIndex, Model)]
    assert built[0][0] == built[1][0] == built[2][0], built
    if built[1][0] == "raised":
        assert built[0][1] == built[1][1] and built[2][1][0] is built[1][1][0]  # type: ignore[index]
        return
    got, want, model = (b[1] for b in built)
    for step, op in enumerate(ops):
        result, expected, modelled = apply(got, op), apply(want, op), apply(model, op)
        assert result == expected, (step, op)  # values, or exception type and message
        assert result[0] == modelled[0], (step, op, result, modelled)
        if result[0] == "ok":
            assert result[1] == modelled[1] and type(result[1]) is type(expected[1]), (step, op)
        else:
            assert result[1][0] is modelled[1][0], (step, op)  # type: ignore[index]
        assert state(got) == state(want) == model.state(), (step, op)
        assert repr(got) == repr(want)


@pytest.mark.slow
@DIFF_SETTINGS
@given(capacity=capacities, ops=operations)
@example(capacity=0, ops=[("insert", "a", 0), ("insert", "b", 1), ("resize", 1), ("touch", [])])
@example(capacity=MAX_SIZE, ops=[("insert", "a", MAX_SIZE), ("insert", "b", MAX_SIZE)])
@example(capacity=10, ops=[("insert", "a", 11), ("insert", "a", 5), ("insert", "a", 11)])
@example(capacity=10, ops=[("insert", "a", 5), ("insert", "b", 5), ("insert", "c", 5)])
@example(capacity=10, ops=[("insert", KEYS[i % 8], 3) for i in range(40)] + [("resize", 4)])
def test_twins_and_model_agree_step_by_step(
    compiled: ModuleType, capacity: object, ops: list[tuple[Any, ...]]
) -> None:
    run_differential(compiled.LruIndex, capacity, ops)


@settings(max_examples=200, deadline=None)
@given(capacity=capacities, ops=operations)
def test_pure_twin_matches_the_model(capacity: object, ops: list[tuple[Any, ...]]) -> None:
    """The reference against the model, also when only the pure twin is available."""
    run_differential(pure_lru.LruIndex, capacity, ops)
