"""Micro-benchmark of the extension twins: pure Python vs Cython, per operation.

``python -m reelcdn.loadtest.bench.twins`` times each twin of ``reelcdn.extensions`` on the
calls the cache node makes per request (Range parsing of typical headers, ``Content-Range``,
``multipart/byteranges`` planning) and prints a Markdown table of ns/op and speed-ups, for
``docs/benchmarks.md`` (DESIGN.md §6 target: range parsing ≥ 5× faster compiled).

Why it is built this way:

* Both twins are imported directly (``reelcdn.edge.ranges`` and
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
import importlib
import platform
import statistics
import sys
import timeit
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from reelcdn.edge import ranges as pure_ranges

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
