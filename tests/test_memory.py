"""The cache's byte budget is honest: what the store charges per entry covers what it costs.

Why: ``cache_memory`` bounds the *sum of charges* (``CacheEntry.charge``), not memory. If an entry
costs more than it is charged, a cache full of small objects (playlists, inits) holds several times
its budget, and the node's RSS target (docs/overview.md, "Targets": cache × 1.1 + 80 MB) cannot
hold. The measurement is the benchmark's (``loadtest/bench/memory.py overhead``): entries made with
the node's own fill code from realistic upstream headers, stored in the node's store and served
once (a HIT keeps its rendered head in the entry), the Python heap growth counted with tracemalloc
(exact and repeatable), plus the whole pages a memory-file body occupies.

The comparison uses whatever the store charges at run time (``charge − len(body)``), so it
follows any change of ``ENTRY_OVERHEAD`` or of the charge formula in ``edge/cache/entry.py``; the
controls below show it fails for an ``ENTRY_OVERHEAD`` of 0 and passes for a generous one.
"""

from __future__ import annotations

import pytest

from reelcdn.edge.cache import entry
from reelcdn.edge.cache.bodyfile import MEMFD_AVAILABLE
from reelcdn.loadtest.bench.memory import KIB, HeapResult, Profile, measure_heap

pytestmark = pytest.mark.slow  # the memory benchmark's heap measurements

PLAYLIST = Profile("playlist 2 KiB", "playlist", 2 * KIB, 1500, 0)
SMALL_SEGMENT = Profile("segment 40 KiB (bytes)", "segment", 40 * KIB, 600, 0)
FILE_SEGMENT = Profile("segment 256 KiB (memory file)", "segment", 256 * KIB, 120, 0)

PROFILES = [
    PLAYLIST,
    SMALL_SEGMENT,
    pytest.param(FILE_SEGMENT, marks=pytest.mark.skipif(
        not MEMFD_AVAILABLE, reason="memory-file bodies need memfd_create (Linux)")),
]


def explain(result: HeapResult) -> str:
    shortfall = result.measured - result.charged
    return (
        f"{result.profile}: an entry costs {result.measured:,.0f} B beyond its body "
        f"({result.heap_overhead:,.0f} B of Python heap once stored and served, "
        f"{result.page_rounding / result.entries:,.0f} B of page rounding), but the store "
        f"charges {result.charged:,.0f} B (ENTRY_OVERHEAD = {entry.ENTRY_OVERHEAD}): "
        f"{shortfall:,.0f} B short per entry"
    )


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_store_charges_at_least_what_an_entry_costs(profile: Profile) -> None:
    result = measure_heap(profile)
    assert result.measured <= result.charged, explain(result)


def test_measurement_sees_an_entry_beyond_its_body() -> None:
    """The measure is not vacuous: headers, the entry object and the head each cost bytes."""
    result = measure_heap(PLAYLIST)
    assert result.heap_overhead > 1000
    assert result.body_files == 0 and result.heap_payload == result.payload


def test_the_check_fails_without_entry_overhead(monkeypatch: pytest.MonkeyPatch) -> None:
    """Control: with nothing charged beyond the header block and key, the check fails; with a
    charge far above any entry's cost it passes. So the comparison discriminates."""
    monkeypatch.setattr(entry, "ENTRY_OVERHEAD", 0)
    stingy = measure_heap(PLAYLIST)
    assert stingy.measured > stingy.charged
    monkeypatch.setattr(entry, "ENTRY_OVERHEAD", 64 * KIB)
    generous = measure_heap(PLAYLIST)
    assert generous.measured <= generous.charged
