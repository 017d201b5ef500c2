"""The token benchmark (``loadtest/bench/tokens.py``) runs, tiny and fast, so it cannot rot: the
process a person would start, its table holding a number for every series."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

NUMBER = r"[0-9][0-9,]*(?:\.[0-9]+)?"
SERIES = ("token", "open", "token-lua", "cycle", "verify", "forged")


def test_token_benchmark_table() -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (hand-installed on dev machines: apt-get install wrk)")
    done = subprocess.run(
        [sys.executable, "-m", "reelcdn.loadtest.bench.tokens", "--repeat", "1",
         "--duration", "1s", "--warmup", "0", "--tokens", "2000", "--verify-tokens", "20000"],
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "Command: `python -m reelcdn.loadtest.bench.tokens --repeat 1 --duration 1s" in out
    for key in SERIES:
        # series | what | answers | req/s | p99 | node CPU µs/req
        row = rf"^\| {re.escape(key)} \| [^|]+ \| [^|]+ \| {NUMBER} \| {NUMBER} (?:µs|ms|s) " \
              rf"\| {NUMBER} \|"
        assert re.search(row, out, re.M), (key, out)
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert not [r for r in rows if "⚠" in r], out  # all HITs, no origin traffic, 403s all 403
    assert re.search(rf"Headline: .* \*\*{NUMBER}\*\* on req/s", out), out
