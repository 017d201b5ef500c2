"""The memory store: byte accounting, LRU order, Vary variants, purge."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from reelcdn.edge.freshness import Freshness
from reelcdn.edge.store import CacheEntry, MemoryStore

FRESH = Freshness(storable=True, reason="max-age", lifetime=60, stale_while_revalidate=0,
                  stale_if_error=0, must_revalidate=False, no_cache=False, has_validator=False)


def entry(key: str, size: int = 100, vary: tuple[bytes, ...] = (), primary: str | None = None):
    return CacheEntry(key=key, primary=primary or key, status=200,
                      headers=[(b"Content-Type", b"video/mp4")], body=b"x" * size,
                      freshness=FRESH, response_time=1000.0, initial_age=0.0, vary=vary)


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


@settings(max_examples=200)
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
