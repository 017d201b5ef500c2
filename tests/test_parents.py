"""Rendezvous hashing over parents, and failover to the next parent in hash order."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace

import pytest

from reelcdn.edge.config import UpstreamTimeouts
from reelcdn.edge.fetch.contract import FetchFailed
from reelcdn.edge.fetch.parents import ParentSet, hrw_order


def test_hrw_spreads_keys_evenly_and_moves_only_a_removed_parents_keys():
    parents = ["r1", "r2", "r3", "r4"]
    keys = [f"/v/{i}/seg_00001.m4s" for i in range(4000)]
    owners = {key: hrw_order(parents, key)[0] for key in keys}
    counts = Counter(owners.values())
    assert all(800 < counts[p] < 1200 for p in parents), counts
    survivors = ["r1", "r2", "r4"]
    for key in keys:
        new_owner = hrw_order(survivors, key)[0]
        if owners[key] != "r3":
            assert new_owner == owners[key]  # only r3's objects move
        else:
            assert new_owner == hrw_order(parents, key)[1]  # to the next in hash order


def test_order_is_stable():
    assert hrw_order(["a", "b", "c"], "/x") == hrw_order(["c", "b", "a"], "/x")


async def test_down_parent_is_skipped_then_retried(origin):
    origin.set("/obj", b"ok", headers={"Cache-Control": "max-age=60"})
    refs = [SimpleNamespace(name="dead", url="http://127.0.0.1:9"),
            SimpleNamespace(name="live", url=origin.url)]
    parents = ParentSet(refs, timeouts=UpstreamTimeouts(connect=1, first_byte=2, idle=2),
                        failures_to_down=2, retry_after=0.3)
    seen: list[tuple[str, int]] = []
    parents.observe = lambda source, status: seen.append((source, status))
    await parents.start()
    try:
        # Find keys owned by the dead parent: they must still be served, by "live".
        keys = [f"/obj?k={i}" for i in range(40)]
        dead_keys = [k for k in keys if hrw_order(["dead", "live"], k)[0] == "dead"][:4]
        assert len(dead_keys) == 4
        for key in dead_keys:
            response = await parents.request("GET", key, [])
            assert response.status in (200, 404)
            response.release()
        state = parents.parents["dead"]
        assert state.health.errors == 2  # then marked down: the last two keys skipped it
        assert not parents.health()["dead"]["up"]
        assert ("dead", 502) in seen and ("live", 404) in seen or ("live", 200) in seen
        await asyncio.sleep(0.35)
        assert parents.order(dead_keys[0])[0].name == "dead"  # retried after retry_after
    finally:
        await parents.close()


async def test_all_parents_down_gives_502():
    refs = [SimpleNamespace(name="a", url="http://127.0.0.1:9"),
            SimpleNamespace(name="b", url="http://127.0.0.1:9")]
    parents = ParentSet(refs, timeouts=UpstreamTimeouts(connect=1, first_byte=2, idle=2))
    await parents.start()
    try:
        with pytest.raises(FetchFailed) as failure:
            await parents.request("GET", "/x", [])
        assert failure.value.status == 502
    finally:
        await parents.close()
