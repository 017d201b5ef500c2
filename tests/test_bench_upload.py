"""The upload benchmark (``loadtest/bench/upload.py``) runs, tiny and fast, so it cannot rot:
both sub-commands as the processes a person would start, their tables holding numbers."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

NUMBER = r"[0-9]+(?:\.[0-9]+)?"


def bench(*args: str, timeout: float = 240) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "reelcdn.loadtest.bench.upload", *args],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_tus_throughput_table() -> None:
    out = bench("tus", "--size", "4MB", "--chunk", "1MiB", "--repeat", "1", "--timeout", "60")
    assert "Command: `python -m reelcdn.loadtest.bench.upload tus --size 4MB --chunk 1MiB " \
           "--repeat 1`" in out
    cpu = rf"{NUMBER} \({NUMBER} \+ {NUMBER}\)"  # origin CPU: total (user + sys)
    assert re.search(rf"^\| 1 \| {NUMBER} \| {NUMBER} \| {cpu} \| {NUMBER} \| {NUMBER} \|$",
                     out, re.M), out
    assert re.search(rf"^\| \*\*median\*\* \| \*\*{NUMBER}\*\* \|", out, re.M), out
    assert re.search(rf"tus median: \*\*{NUMBER} MB/s\*\* \(target ≥ 150 MB/s", out), out


def test_playable_table() -> None:
    out = bench("playable", "--seconds", "2", "--size", "640x360", "--repeat", "1",
                "--timeout", "120")
    s = rf"{NUMBER} s"
    assert re.search(rf"^\| 1 \| {s} \| {s} \(360p\) \| {s} \| -?{s} \| {NUMBER} / {s} \| "
                     rf"{NUMBER} \|$", out, re.M), out
    assert re.search(rf"Median \*\*{s}\*\* \(target ≤ 5 s", out), out
    assert "polls its queue once a second" in out
