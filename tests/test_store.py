"""The memory store: byte accounting, LRU order, Vary variants, purge.

Every test runs on both twins of the LRU index behind the store (the ``index_twin`` fixture points
``reelcdn.edge.cache.store.lru`` at each in turn), and a differential test drives two stores,
one per twin, through the same random operations and requires identical answers and order.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelcdn.edge.cache import store as store_module
from reelcdn.edge.cache.entry import CacheEntry
from reelcdn.edge.cache.freshness import Freshness
from reelcdn.edge.cache.store import MemoryStore
from reelcdn.extensions import _lru_py as pure_lru

TWIN_MODULE = "lru"  # the twins of the LRU index (the ``twin`` fixture, conftest.py)

FRESH = Freshness(storable=True, reason="max-age", lifetime=60, stale_while_revalidate=0,
                  stale_if_error=0, must_revalidate=False, no_cache=False, has_validator=False)


def entry(key: str, size: int = 100, vary: tuple[bytes, ...] = (), primary: str | None = None):
    return CacheEntry(key=key, primary=primary or key, status=200,
                      headers=[(b"Content-Type", b"video/mp4")], body=b"x" * size,
                      freshness=FRESH, response_time=1000.0, initial_age=0.0, vary=vary)


@pytest.fixture(autouse=True)
def index_twin(twin: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """Stores made during the test use this twin of the LRU index."""
    monkeypatch.setattr(store_module, "lru", twin)
    yield twin


def keys_of(store: MemoryStore) -> list[str]:
    return [e.key for e in store]


def consistent(store: MemoryStore) -> None:
    """Entries and index hold the same keys; bytes is the sum of the charges; within budget."""
    assert set(store._entries) == set(store._index)
    assert len(store) == len(store._index)
    assert store.bytes == sum(e.charge for e in store) <= store.capacity


def test_store_uses_the_twin(index_twin: ModuleType) -> None:
    assert type(MemoryStore(10)._index) is index_twin.LruIndex


def test_lru_order_and_budget():
    one = entry("/1").charge
    store = MemoryStore(capacity=one * 3)
    for key in ("/1", "/2", "/3"):
        store.insert(entry(key))
    assert store.lookup("/1", {}) is not None  # /1 becomes most recent
    assert store.insert(entry("/4")) == 1
    assert store.lookup("/2", {}) is None
    assert {e.key for e in store} == {"/1", "/3", "/4"}
    assert store.bytes == 3 * one


def test_object_larger_than_cache_is_not_stored():
    store = MemoryStore(capacity=1000)
    assert store.insert(entry("/big", size=5000)) == 0
    assert len(store) == 0 and store.bytes == 0


def test_vary_variants_and_purge():
    store = MemoryStore(capacity=10**6)
    vary = (b"accept-encoding",)
    gz = MemoryStore.variant_key("/v", vary, {b"accept-encoding": b"gzip"})
    br = MemoryStore.variant_key("/v", vary, {b"accept-encoding": b"br"})
    store.insert(entry(gz, vary=vary, primary="/v"))
    store.insert(entry(br, vary=vary, primary="/v"))
    assert store.lookup("/v", {b"accept-encoding": b"gzip"}).key == gz
    assert store.lookup("/v", {b"accept-encoding": b"br"}).key == br
    assert store.lookup("/v", {}) is None
    assert store.remove_primary("/v") == 2
    assert len(store) == 0 and store.bytes == 0


def test_replacing_vary_with_plain_response_drops_variants():
    store = MemoryStore(capacity=10**6)
    vary = (b"accept-encoding",)
    store.insert(entry(MemoryStore.variant_key("/v", vary, {}), vary=vary, primary="/v"))
    store.insert(entry("/v"))
    assert len(store) == 1 and store.lookup("/v", {b"accept-encoding": b"x"}).key == "/v"


def test_remove_prefix_and_resize():
    store = MemoryStore(capacity=10**6)
    for key in ("/v/a/1", "/v/a/2", "/v/b/1"):
        store.insert(entry(key))
    assert store.remove_prefix("/v/a/") == 2
    assert store.resize(10) == 1
    assert len(store) == 0 and store.bytes == 0


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["ins", "get", "del"]), st.integers(0, 15),
                          st.integers(0, 3000)), max_size=80),
       st.integers(1000, 20_000))
def test_accounting_matches_a_model(ops, capacity):
    """Random operations: bytes always equal the sum of charges, never above capacity."""
    store = MemoryStore(capacity=capacity)
    for op, key_no, size in ops:
        key = f"/k{key_no}"
        if op == "ins":
            store.insert(entry(key, size))
        elif op == "get":
            store.lookup(key, {})
        else:
            store.remove_primary(key)
        assert store.bytes == sum(e.charge for e in store)
        assert store.bytes <= capacity


def test_lookup_touches_and_order_is_lru_first():
    one = entry("/a").charge
    store = MemoryStore(capacity=one * 3)
    for key in ("/a", "/b", "/c"):
        store.insert(entry(key))
    store.lookup("/a", {})
    store.lookup("/b", {})
    assert keys_of(store) == ["/c", "/a", "/b"]
    store.insert(entry("/c"))  # a replacement is the most recent
    assert keys_of(store) == ["/a", "/b", "/c"]
    assert store.resize(one) == 2 and keys_of(store) == ["/c"] and store.evictions == 2
    consistent(store)


def test_oversized_replacement_keeps_the_older_version():
    small = entry("/x", size=10)
    store = MemoryStore(capacity=small.charge + 1000)
    store.insert(small)
    assert store.insert(entry("/x", size=5000)) == 0
    assert store.lookup("/x", {}) is small and store.bytes == small.charge


def test_evicting_a_variant_keeps_the_others_reachable():
    vary = (b"accept-encoding",)
    gz = MemoryStore.variant_key("/v", vary, {b"accept-encoding": b"gzip"})
    br = MemoryStore.variant_key("/v", vary, {b"accept-encoding": b"br"})
    one = entry(gz, vary=vary, primary="/v").charge
    store = MemoryStore(capacity=one * 2 + 10)
    store.insert(entry(gz, vary=vary, primary="/v"))
    store.insert(entry(br, vary=vary, primary="/v"))
    assert store.insert(entry("/other", size=1)) == 1  # the gzip variant, the oldest
    assert store.lookup("/v", {b"accept-encoding": b"br"}).key == br
    assert store.vary_of("/v") == vary
    assert store.remove(br) is True and store.vary_of("/v") == ()  # last variant gone
    consistent(store)


def test_refresh_after_304_keeps_the_accounting_exact():
    """A 304 grows an entry's header block in place; bytes stays the sum of what was charged."""
    store = MemoryStore(capacity=10**6)
    stored = entry("/r")
    store.insert(stored)
    charged = stored.charge
    stored.refresh([(b"Content-Type", b"video/mp4"), (b"ETag", b'"a-much-longer-validator"')],
                   FRESH, 2000.0, 0.0)
    assert stored.charge > charged and store.bytes == charged
    assert store.remove("/r") and store.bytes == 0 and len(store) == 0
    store.insert(stored)  # inserted again: charged at its new size
    assert store.bytes == stored.charge


def test_capacity_must_be_a_size():
    with pytest.raises(ValueError, match="capacity must be >= 0, got -1"):
        MemoryStore(-1)
    store = MemoryStore(10)
    with pytest.raises(ValueError, match="capacity must be >= 0, got -1"):
        store.resize(-1)
    assert store.capacity == 10


VARY = (b"accept-encoding",)
store_ops = st.lists(
    st.tuples(
        st.sampled_from(["ins", "ins", "ins", "get", "get", "del", "primary", "prefix", "resize"]),
        st.sampled_from(["/a/1", "/a/2", "/b/1", "/b/2", "/v"]),
        st.sampled_from([None, b"gzip", b"br"]),  # a Vary variant of the key, or plain
        st.integers(0, 3000),
    ),
    max_size=60,
)


def apply_store_op(store: MemoryStore, op: tuple[str, str, bytes | None, int]) -> object:
    name, key, encoding, size = op
    headers = {} if encoding is None else {b"accept-encoding": encoding}
    if name == "ins":
        vary = () if encoding is None else VARY
        variant = MemoryStore.variant_key(key, vary, headers)
        return store.insert(entry(variant, size, vary=vary, primary=key))
    if name == "get":
        found = store.lookup(key, headers)
        return None if found is None else found.key
    if name == "del":
        return store.remove(MemoryStore.variant_key(key, store.vary_of(key), headers))
    if name == "primary":
        return store.remove_primary(key)
    if name == "prefix":
        return store.remove_prefix(key[:3])
    return store.resize(size * 3)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=store_ops, capacity=st.integers(0, 8000))
def test_stores_on_both_twins_agree(index_twin: ModuleType, ops, capacity):
    """The store over the twin under test against the store over the pure twin, step by step."""
    store = MemoryStore(capacity)
    reference = MemoryStore(capacity, index_type=pure_lru.LruIndex)
    for step, op in enumerate(ops):
        assert apply_store_op(store, op) == apply_store_op(reference, op), (step, op)
        assert keys_of(store) == keys_of(reference), (step, op)
        assert store.bytes == reference.bytes and store.evictions == reference.evictions
        assert store._vary == reference._vary and store._variant_keys == reference._variant_keys
        consistent(store)


def test_the_index_holds_the_current_entrys_key_object():
    """lookup() touches with entry.key, which the index must hold itself to match by identity."""
    store = MemoryStore(capacity=10**6)
    first, second = "".join(["/k", "ey"]), "".join(["/k", "ey"])
    assert first == second and first is not second
    store.insert(entry(first))
    store.insert(entry(second))  # a refill of the same key
    (held,) = list(store._index)
    assert held is second and store.lookup("/key", {}).key is second
    assert len(store) == 1 and store.bytes == entry("/key").charge
