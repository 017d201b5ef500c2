"""Command-line plumbing shared by the benchmark entry points (``hit``, ``crowd``).

Why a module: both benchmarks parse the same kinds of arguments, log progress the same way,
turn SIGTERM into KeyboardInterrupt so their ``finally`` blocks stop the servers, and raise
``BenchFailure`` on a misbehaving server; one place keeps their behaviour identical.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType


class BenchFailure(RuntimeError):
    """A server misbehaved in a way that makes the run meaningless (exit status 1)."""


def log(message: str) -> None:
    """Progress goes to stderr so stdout is only the report."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def positive_int(value: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        n = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from exc
    if n < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return n


def non_negative_int(value: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        n = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from exc
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return n


_SIZE = re.compile(r"^\s*([0-9]+)\s*([kKmM](?:i?[bB])?|[bB])?\s*$")


def byte_size(value: str) -> int:
    """argparse type: a size in bytes, ``262144``, ``256k``, ``256KiB``, ``1M``, ``1MiB``.

    Suffixes are binary (K = 1024): object sizes in these benchmarks are powers of two.
    """
    m = _SIZE.match(value)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {value!r} (use e.g. 262144, 256KiB, 1MiB)")
    unit = (m.group(2) or "b")[0].lower()
    size = int(m.group(1)) * {"b": 1, "k": 1024, "m": 1024 * 1024}[unit]
    if size < 1:
        raise argparse.ArgumentTypeError("size must be at least 1 byte")
    return size


def milliseconds(value: str) -> float:
    """argparse type: a duration in milliseconds (``200``, ``200ms``, ``0.2s``) -> seconds."""
    text = value.strip().lower()
    try:
        if text.endswith("ms"):
            seconds = float(text[:-2]) / 1000
        elif text.endswith("s"):
            seconds = float(text[:-1])
        else:
            seconds = float(text) / 1000
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad duration {value!r} (use e.g. 200ms, 0.2s)") from exc
    if not 0 <= seconds <= 60:
        raise argparse.ArgumentTypeError("duration must be between 0 and 60 s")
    return seconds


def raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM behaves like Ctrl-C, so the finally blocks tear the servers down."""
    raise KeyboardInterrupt(f"signal {signum}")


def run_main(run: Callable[[list[str]], int], prog: str, argv: Sequence[str] | None) -> int:
    """Run a benchmark's ``run(argv)`` with SIGTERM turned into KeyboardInterrupt, so an
    interrupted run still stops every server it started (their ``finally`` blocks run)."""
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        return run(sys.argv[1:] if argv is None else list(argv))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted, servers stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every side-by-side benchmark takes about the servers it starts."""
    parser.add_argument("--nginx", metavar="PATH", help="nginx binary (default /usr/sbin/nginx)")
    parser.add_argument(
        "--node-cmd",
        metavar="CMD",
        help="command that runs the reelcdn CLI (default: the `reelcdn` console script)",
    )
    parser.add_argument(
        "--node-args",
        metavar="ARGS",
        default="",
        help="extra arguments after `node --config F --name bench` (e.g. --node-args=--no-uvloop)",
    )
    parser.add_argument(
        "--markdown", type=Path, metavar="FILE", help="also append the result section to FILE"
    )
    parser.add_argument(
        "--keep-temp", action="store_true", help="keep the temp dir (configs, logs) for inspection"
    )
