"""Micro-benchmark of the extension twins: pure Python vs Cython, per operation.

``python -m reelcdn.loadtest.bench.twins`` times each twin of ``reelcdn.extensions`` on the
calls the cache node makes per request (Range parsing of typical headers, ``Content-Range``,
``multipart/byteranges`` planning; the LRU index's touch, insert, remove, a mixed request
sequence and ``MemoryStore.lookup``) and prints a Markdown table of ns/op and speed-ups, for
``docs/benchmarks.md`` (targets, docs/overview.md: range parsing ≥ 5×, LRU operations ≥ 2× faster
compiled).

Why it is built this way:

* Both twins are imported directly (``reelcdn.extensions._ranges_py`` and
  ``reelcdn.extensions._ranges``), not through the selector, so ``REELCDN_NO_EXTENSIONS`` does
  not change what is compared; a missing compiled module is an error, not a silent
  pure-vs-pure run.
* Each case is a ``timeit`` statement calling the function the way the node does (module
  attribute, arguments in locals), so the call overhead both twins pay is included; the loop
  count is calibrated to about ``--min-time`` per repeat, and the median of ``--repeat``
  repeats is reported, which shrugs off the odd slow repeat on a shared 2-core machine.
* Before timing, each case's results from both twins are compared: a benchmark of two
  functions that disagree would be meaningless.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import importlib
import platform
import random
import statistics
import sys
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from types import ModuleType
from typing import Any

from reelcdn.edge.cache.entry import CacheEntry
from reelcdn.edge.cache.freshness import Freshness
from reelcdn.edge.cache.store import MemoryStore
from reelcdn.extensions import _head_py as pure_head
from reelcdn.extensions import _lru_py as pure_lru
from reelcdn.extensions import _ranges_py as pure_ranges
from reelcdn.extensions import _reader_py as pure_reader

from .common import BenchFailure, log, positive_int

SIZE = 50_000_000  # a large segment or progressive file, bytes
BOUNDARY = b"3d6b6a416f9b5e2c1d07"


@dataclass(frozen=True)
class Case:
    """One benchmarked call: ``stmt`` runs with ``f`` bound to the twin's ``func``."""

    label: str
    func: str
    stmt: str
    args: dict[str, object]


CASES: list[Case] = [
    Case("parse_range `bytes=0-1023`", "parse_range", "f(h, size)",
         {"h": b"bytes=0-1023", "size": SIZE}),
    Case("parse_range `bytes=1048576-`", "parse_range", "f(h, size)",
         {"h": b"bytes=1048576-", "size": SIZE}),
    Case("parse_range `bytes=-500`", "parse_range", "f(h, size)",
         {"h": b"bytes=-500", "size": SIZE}),
    Case("parse_range `bytes=0-499,1000-1499,2000-2499`", "parse_range", "f(h, size)",
         {"h": b"bytes=0-499,1000-1499,2000-2499", "size": SIZE}),
    Case("parse_range `bytes=0-499,400-999` (merged)", "parse_range", "f(h, size)",
         {"h": b"bytes=0-499,400-999", "size": SIZE}),
    Case("parse_range str `bytes=0-1023`", "parse_range", "f(h, size)",
         {"h": "bytes=0-1023", "size": SIZE}),
    Case("parse_range invalid `items=0-1`", "parse_range", "f(h, size)",
         {"h": b"items=0-1", "size": SIZE}),
    Case("content_range", "content_range", "f(start, end, size)",
         {"start": 1048576, "end": 2097152, "size": SIZE}),
    Case("unsatisfied_range", "unsatisfied_range", "f(size)", {"size": SIZE}),
    Case("multipart_plan, 3 ranges", "multipart_plan", "f(r, size, ct, b)",
         {"r": [(0, 500), (1000, 1500), (2000, 2500)], "size": SIZE, "ct": b"video/mp4",
          "b": BOUNDARY}),
]  # fmt: skip


@dataclass(frozen=True)
class Timing:
    label: str
    pure_ns: float
    compiled_ns: float

    @property
    def speedup(self) -> float:
        return self.pure_ns / self.compiled_ns


def ns_per_op(func: object, case: Case, repeat: int, min_time: float) -> float:
    """Median ns per call over ``repeat`` repeats of about ``min_time`` seconds each."""
    timer = timeit.Timer(case.stmt, globals={"f": func, **case.args})
    number, elapsed = timer.autorange()
    number = max(1, int(number * min_time / max(elapsed, 1e-9)))
    runs = timer.repeat(repeat=repeat, number=number)
    return statistics.median(runs) / number * 1e9


def same_result(case: Case, pure: ModuleType, compiled: ModuleType) -> None:
    """Both twins must agree on the benchmarked call before it is timed."""
    namespace_pure = {"f": getattr(pure, case.func), **case.args}
    namespace_compiled = {"f": getattr(compiled, case.func), **case.args}
    want = eval(case.stmt, namespace_pure)  # noqa: S307 - our own constant statements
    got = eval(case.stmt, namespace_compiled)  # noqa: S307
    if got != want:
        raise BenchFailure(f"{case.label}: compiled {got!r} != pure {want!r}")


# --- the LRU index: reelcdn.extensions._lru_py vs reelcdn.extensions._lru ---------------------
#
# The index is stateful, so its cases are not timeit statements: each repeat builds fresh state
# (untimed), then times one replay of a fixed operation sequence, with GC off as timeit does. The
# same loop without the calls is timed too and subtracted, so ns/op is the call itself (with its
# call overhead, as for the statements above) and not the benchmark's own iteration; the summary
# line also gives the mixed sequence's speed-up including that loop.

LRU_RESIDENT = 5_000  # keys held in the single-operation cases, all of charge LRU_CHARGE
LRU_CHARGE = 1_000_000
LRU_SINGLE = 100_000  # operations per replay of a single-operation case (touch: 20 passes)
LRU_OBJECTS = 50_000  # distinct objects of the mixed sequence
LRU_ZIPF = 1.2  # their popularity: with room for ~5,000 of them, ~88% of requests are hits
LRU_MIXED_CAPACITY = 5_000 * 1_025_000  # sizes are uniform in 50 kB .. 2 MB, 1.025 MB mean
LRU_WARM, LRU_MIXED = 100_000, 200_000  # requests replayed untimed, then timed
TOUCH, INSERT, REMOVE = 0, 1, 2


def lru_key(n: int) -> str:
    """A cache key shaped like the node's (``/v/{video}/{rendition}/seg_*.m4s``)."""
    return f"/v/{n // 300:06d}/720p/seg_{n % 300:05d}.m4s"


def lru_mixed_ops(seed: int = 7) -> list[tuple[int, str, int]]:
    """``(op, key, charge)`` of a cache under Zipf requests: a hit touches, a miss inserts (and
    evicts), one request in a hundred purges its key. Decided on the pure twin, replayed on both."""
    rng = random.Random(seed)
    cumulative = list(accumulate(1 / (rank + 1) ** LRU_ZIPF for rank in range(LRU_OBJECTS)))
    charges = [rng.randrange(50_000, 2_000_000) for _ in range(LRU_OBJECTS)]
    keys = [lru_key(n) for n in range(LRU_OBJECTS)]
    index = pure_lru.LruIndex(LRU_MIXED_CAPACITY)
    ops = []
    for _ in range(LRU_WARM + LRU_MIXED):
        n = bisect.bisect(cumulative, rng.random() * cumulative[-1])
        key = keys[min(n, LRU_OBJECTS - 1)]
        if rng.random() < 0.01:
            index.remove(key)
            ops.append((REMOVE, key, 0))
        elif index.touch(key):
            ops.append((TOUCH, key, 0))
        else:
            index.insert(key, charges[n])
            ops.append((INSERT, key, charges[n]))
    return ops


def replay_mixed(index: Any, ops: list[tuple[int, str, int]]) -> int:
    touch, insert, remove = index.touch, index.insert, index.remove
    start = time.perf_counter_ns()
    for op, key, charge in ops:
        if op == TOUCH:
            touch(key)
        elif op == INSERT:
            insert(key, charge)
        else:
            remove(key)
    return time.perf_counter_ns() - start


def replay_mixed_empty(_: Any, ops: list[tuple[int, str, int]]) -> int:
    start = time.perf_counter_ns()
    for op, _key, _charge in ops:
        if op == TOUCH:  # noqa: SIM114 - replay_mixed's branches: the same comparisons are paid
            pass
        elif op == INSERT:
            pass
        else:
            pass
    return time.perf_counter_ns() - start


def loop_empty(_: Any, keys: list[str]) -> int:
    start = time.perf_counter_ns()
    for _key in keys:
        pass
    return time.perf_counter_ns() - start


def loop_touch(index: Any, keys: list[str]) -> int:
    touch = index.touch
    start = time.perf_counter_ns()
    for key in keys:
        touch(key)
    return time.perf_counter_ns() - start


def loop_insert(index: Any, keys: list[str]) -> int:
    insert, charge = index.insert, LRU_CHARGE
    start = time.perf_counter_ns()
    for key in keys:
        insert(key, charge)
    return time.perf_counter_ns() - start


def loop_remove(indexes: list[Any], keys: list[str]) -> int:
    start = time.perf_counter_ns()
    for index in indexes:
        remove = index.remove
        for key in keys:
            remove(key)
    return time.perf_counter_ns() - start


def loop_remove_empty(indexes: list[Any], keys: list[str]) -> int:
    start = time.perf_counter_ns()
    for _index in indexes:
        for _key in keys:
            pass
    return time.perf_counter_ns() - start


def loop_lookup(store: Any, keys: list[str]) -> int:
    lookup, headers = store.lookup, {}
    start = time.perf_counter_ns()
    for key in keys:
        lookup(key, headers)
    return time.perf_counter_ns() - start


@dataclass(frozen=True)
class LruCase:
    """``timed(state, ops)`` on fresh ``setup(index class)`` state; ``empty`` is its bare loop."""

    label: str
    setup: Callable[[Callable[[int], Any]], Any]
    timed: Callable[[Any, Any], int]
    empty: Callable[[Any, Any], int]
    ops: Any
    check: Callable[[Any, Any], object]  # the results both twins must agree on
    rounds: int = 1  # times ``timed`` goes through ``ops`` (the remove case: once per index)


def full_index(index_type: Callable[[int], Any], keys: Sequence[str] | None = None) -> Any:
    keys = _RESIDENT if keys is None else keys
    index = index_type(len(keys) * LRU_CHARGE)
    for key in keys:
        index.insert(key, LRU_CHARGE)
    return index


def full_indexes(index_type: Callable[[int], Any]) -> list[Any]:
    """Enough full indexes for LRU_SINGLE removes (one index of that size is memory-bound)."""
    return [full_index(index_type) for _ in range(LRU_SINGLE // LRU_RESIDENT)]


def mixed_index(index_type: Callable[[int], Any]) -> Any:
    index = index_type(LRU_MIXED_CAPACITY)
    replay_mixed(index, LRU_OPS[:LRU_WARM])
    return index


def full_store(index_type: Callable[[int], Any]) -> Any:
    fresh = Freshness(storable=True, reason="max-age", lifetime=60, stale_while_revalidate=0,
                      stale_if_error=0, must_revalidate=False, no_cache=False,
                      has_validator=False)  # fmt: skip
    store = MemoryStore(10**12, index_type=index_type)
    for key in _RESIDENT:
        store.insert(CacheEntry(key=key, primary=key, status=200, body=b"x" * 100,
                                headers=[(b"Content-Type", b"video/mp4")], freshness=fresh,
                                response_time=0.0, initial_age=0.0))  # fmt: skip
    return store


def check_mixed(index: Any, ops: list[tuple[int, str, int]]) -> object:
    calls = (index.touch, index.insert, index.remove)
    results = [calls[op](key) if op != INSERT else calls[op](key, c) for op, key, c in ops]
    return results, list(index), index.bytes


LRU_OPS: list[tuple[int, str, int]] = []  # filled on first use: 300,000 requests take a second
_RESIDENT = [lru_key(n) for n in range(LRU_RESIDENT)]
# Touches pass the key objects the index holds, as MemoryStore.lookup does (entry.key); lookups
# and removes pass fresh equal strings, as a request or a purge does.
_PASSES = [  # each pass over the resident keys in a new random order
    _RESIDENT[n]
    for seed in range(LRU_SINGLE // LRU_RESIDENT)
    for n in random.Random(seed).sample(range(LRU_RESIDENT), LRU_RESIDENT)
]
_FRESH_PASSES = ["".join(key.partition("/720p/")) for key in _PASSES]  # equal, not the same
_NEWCOMERS = [lru_key(n) for n in range(LRU_SINGLE, 2 * LRU_SINGLE)]
_FRESH_SHUFFLED = _FRESH_PASSES[:LRU_RESIDENT]
LRU_CASES = [
    LruCase(f"LruIndex.touch, hit ({LRU_RESIDENT:,} keys)", full_index, loop_touch, loop_empty,
            _PASSES, lambda index, keys: ([index.touch(k) for k in keys], list(index))),
    LruCase(f"LruIndex.insert, miss evicting one (full, {LRU_RESIDENT:,} keys)", full_index,
            loop_insert, loop_empty, _NEWCOMERS,
            lambda index, keys: ([index.insert(k, LRU_CHARGE) for k in keys], list(index))),
    LruCase(f"LruIndex.remove, equal key (all {LRU_RESIDENT:,} keys)", full_indexes,
            loop_remove, loop_remove_empty, _FRESH_SHUFFLED,
            lambda indexes, keys: [[index.remove(k) for k in keys] for index in indexes],
            rounds=LRU_SINGLE // LRU_RESIDENT),
    LruCase("LRU mixed", mixed_index, replay_mixed, replay_mixed_empty, None, check_mixed),
    LruCase(f"MemoryStore.lookup, hit ({LRU_RESIDENT:,} entries)", full_store, loop_lookup,
            loop_empty, _FRESH_PASSES,
            lambda store, keys: ([store.lookup(k, {}).key for k in keys], [e.key for e in store])),
]  # fmt: skip


def mixed_label(ops: list[tuple[int, str, int]], results: list[Any]) -> str:
    """What the mixed sequence is made of, measured on it (``results``: the pure twin's)."""
    counts = [sum(1 for op, _, _ in ops if op == code) for code in (TOUCH, INSERT, REMOVE)]
    evictions = sum(len(r) for (op, _, _), r in zip(ops, results, strict=True) if op == INSERT)
    share = [f"{100 * n / len(ops):.0f}%" for n in counts]
    return (
        f"LRU mixed: {share[0]} touch (hits), {share[1]} insert "
        f"({evictions / counts[1]:.2f} evictions each), {share[2]} remove"
    )


def lru_ns_per_op(
    case: LruCase, index_types: Sequence[Callable[[int], Any]], repeat: int
) -> list[tuple[float, float]]:
    """Per twin, median ns per operation (net of the bare loop, gross) over ``repeat`` fresh
    replays. The twins take turns within each repeat, so a burst of load from elsewhere on the
    machine slows both rather than whichever happened to run then."""
    ops = case.ops if case.ops is not None else LRU_OPS[LRU_WARM:]
    gross: list[list[int]] = [[] for _ in index_types]
    bare: list[list[int]] = [[] for _ in index_types]
    for _ in range(repeat):
        for twin, index_type in enumerate(index_types):
            state = case.setup(index_type)
            gc.collect()
            gc.disable()
            try:
                bare[twin].append(case.empty(state, ops))
                gross[twin].append(case.timed(state, ops))
            finally:
                gc.enable()
    count = len(ops) * case.rounds
    return [
        (
            (statistics.median(gross[twin]) - statistics.median(bare[twin])) / count,
            statistics.median(gross[twin]) / count,
        )
        for twin in range(len(index_types))
    ]


LRU_GROSS: dict[str, tuple[float, float]] = {}  # label → gross ns/op (pure, compiled)


def run_lru(repeat: int) -> list[Timing]:
    """Time the LRU cases on both twins, after checking that they agree on each."""
    try:
        compiled = importlib.import_module("reelcdn.extensions._lru")
    except ImportError as exc:
        raise BenchFailure(
            f"the compiled LRU twin is not built ({exc}); build it with `pip install -e .`"
        ) from exc
    if not LRU_OPS:
        LRU_OPS.extend(lru_mixed_ops())
    timings = []
    for case in LRU_CASES:
        ops = case.ops if case.ops is not None else LRU_OPS[LRU_WARM:]
        want = case.check(case.setup(pure_lru.LruIndex), ops)
        if case.check(case.setup(compiled.LruIndex), ops) != want:
            raise BenchFailure(f"{case.label}: the compiled twin disagrees with the pure one")
        log(f"timing {case.label}")
        (pure_net, pure_gross), (compiled_net, compiled_gross) = lru_ns_per_op(
            case, [pure_lru.LruIndex, compiled.LruIndex], repeat
        )
        label = case.label if case.ops is not None else mixed_label(ops, want[0])  # type: ignore[index]
        LRU_GROSS[label] = (pure_gross, compiled_gross)
        timings.append(Timing(label, pure_net, compiled_net))
    return timings


def run(repeat: int, min_time: float) -> list[Timing]:
    try:
        compiled = importlib.import_module("reelcdn.extensions._ranges")
    except ImportError as exc:
        raise BenchFailure(
            f"the compiled twin is not built ({exc}); build it with `pip install -e .`"
        ) from exc
    timings = []
    for case in CASES:
        same_result(case, pure_ranges, compiled)
        log(f"timing {case.label}")
        pure_ns = ns_per_op(getattr(pure_ranges, case.func), case, repeat, min_time)
        compiled_ns = ns_per_op(getattr(compiled, case.func), case, repeat, min_time)
        timings.append(Timing(case.label, pure_ns, compiled_ns))
    timings += run_lru(repeat)
    timings += run_head(repeat, min_time)
    timings += run_reader(repeat, min_time)
    return timings


_HEAD_BLOCK = (b"Content-Type: video/mp4\r\nCache-Control: max-age=86400\r\nETag: \"5f1c\"\r\n"
               b"Last-Modified: Sun, 22 Nov 2026 07:00:00 GMT\r\nAccept-Ranges: bytes\r\n")
HEAD_CASES: list[Case] = [
    Case("build_head, edge HIT of a segment", "build_head",
         "f(200, b, 12, b'', m, b'hit', 86388, b'', v, 1048576, False, b'')",
         {"b": _HEAD_BLOCK, "m": b"reelcdn-edge-a", "v": b"1.1 edge-a"}),
    Case("build_head, 206 behind two tiers", "build_head",
         "f(206, b, 3, ps, m, b'hit', 86397, pv, v, 65536, False, b'')",
         {"b": _HEAD_BLOCK + b"Content-Range: bytes 0-65535/1048576\r\n",
          "ps": b"reelcdn-shield-1; fwd=uri-miss; stored, reelcdn-regional-1; fwd=uri-miss",
          "pv": b"1.1 shield-1, 1.1 regional-1", "m": b"reelcdn-edge-a", "v": b"1.1 edge-a"}),
]  # fmt: skip


def run_head(repeat: int, min_time: float) -> list[Timing]:
    """Response head building (``extensions/_head_py.py`` vs ``extensions/_head.pyx``)."""
    try:
        compiled = importlib.import_module("reelcdn.extensions._head")
    except ImportError as exc:
        raise BenchFailure(f"the compiled head twin is not built ({exc})") from exc
    timings = []
    for case in HEAD_CASES:
        same_result(case, pure_head, compiled)
        log(f"timing {case.label}")
        pure_ns = ns_per_op(pure_head.build_head, case, repeat, min_time)
        compiled_ns = ns_per_op(compiled.build_head, case, repeat, min_time)
        timings.append(Timing(case.label, pure_ns, compiled_ns))
    return timings


# --- the request reader: reelcdn.extensions._reader_py vs reelcdn.extensions._reader ----------

READER_CASES: list[tuple[str, bytes]] = [
    ("RequestReader.feed, wrk's GET (Host only)",
     b"GET /obj/2k HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"),
    ("RequestReader.feed, a player's segment GET (7 fields)",
     b"GET /v/demo-1/720p/seg-00004.m4s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
     b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0\r\nAccept: */*\r\n"
     b"Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n"
     b"Origin: http://127.0.0.1:8000\r\nConnection: keep-alive\r\n\r\n"),
]  # fmt: skip


class _Sink:
    """The reader's connection, doing nothing: what is timed is reading, not answering."""

    def request_complete(self, request: object) -> None:
        pass

    def reject(self, status: int, reason: str) -> None:
        raise BenchFailure(f"the benchmark request was refused: {status} {reason}")

    def expect_continue(self) -> None:
        pass


def run_reader(repeat: int, min_time: float) -> list[Timing]:
    """Reading one whole request (llhttp callbacks into a ``Request``), per twin."""
    try:
        compiled = importlib.import_module("reelcdn.extensions._reader")
    except ImportError as exc:
        raise BenchFailure(f"the compiled reader twin is not built ({exc})") from exc
    from reelcdn.edge.config import Limits

    limits = Limits()
    timings = []
    for label, data in READER_CASES:
        results = []
        for module in (pure_reader, compiled):
            got: list[object] = []
            sink = _Sink()
            sink.request_complete = got.append  # type: ignore[method-assign]
            module.RequestReader(sink, limits, frozenset(), time.monotonic).feed(data)
            results.append([(r.method, r.path, r.headers) for r in got])  # type: ignore[attr-defined]
        if results[0] != results[1] or len(results[0]) != 1:
            raise BenchFailure(f"{label}: the twins read {results[1]!r} and {results[0]!r}")
        log(f"timing {label}")
        nanos = []
        for module in (pure_reader, compiled):
            reader = module.RequestReader(_Sink(), limits, frozenset(), time.monotonic)
            case = Case(label, "feed", "f(d)", {"d": data})
            nanos.append(ns_per_op(reader.feed, case, repeat, min_time))
        timings.append(Timing(label, nanos[0], nanos[1]))
    return timings


def markdown(timings: Sequence[Timing], repeat: int, min_time: float) -> str:
    lines = [
        f"Twins micro-benchmark (`python -m reelcdn.loadtest.bench.twins --repeat {repeat} "
        f"--min-time {min_time}`), Python {platform.python_version()} on {platform.machine()}, "
        f"median of {repeat} repeats, object size {SIZE} bytes:",
        "",
        "| operation | pure ns/op | compiled ns/op | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for t in timings:
        lines.append(f"| {t.label} | {t.pure_ns:,.0f} | {t.compiled_ns:,.0f} | {t.speedup:.1f}× |")
    parse = [t.speedup for t in timings if t.label.startswith("parse_range")]
    lines += ["", f"parse_range speed-up: min {min(parse):.1f}×, "
              f"geometric mean {statistics.geometric_mean(parse):.1f}×"]  # fmt: skip
    lru = [t for t in timings if t.label in LRU_GROSS]
    if lru:
        mixed = next(t for t in lru if t.label.startswith("LRU mixed"))
        pure_gross, compiled_gross = LRU_GROSS[mixed.label]
        lines += [
            "",
            f"LRU rows: fresh state per repeat, ns/op net of the bare replay loop; mixed: Zipf "
            f"{LRU_ZIPF} requests over {LRU_OBJECTS:,} objects (50 kB .. 2 MB) into "
            f"{LRU_MIXED_CAPACITY / 1e9:.2f} GB, {LRU_MIXED:,} timed after {LRU_WARM:,} untimed.",
            f"LRU speed-up: mixed {mixed.speedup:.1f}× ({pure_gross / compiled_gross:.1f}× "
            f"with the replay loop included), min {min(t.speedup for t in lru):.1f}×",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=positive_int, default=7, help="repeats per case")
    parser.add_argument(
        "--min-time", type=float, default=0.2, help="seconds per repeat (loop count calibrated)"
    )
    args = parser.parse_args(argv)
    try:
        timings = run(args.repeat, args.min_time)
    except BenchFailure as exc:
        log(f"FAILED: {exc}")
        return 1
    print(markdown(timings, args.repeat, args.min_time))
    return 0


if __name__ == "__main__":
    sys.exit(main())
