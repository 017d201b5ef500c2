"""The trending pre-warm benchmark (``loadtest/bench/prewarm.py``) runs, tiny, as the process
a person would start, so it cannot rot: its JSON and its Markdown report hold the figures a
pre-warm must show (every top video's first requests HITs at the edge after it, a cold edge's
master a miss before it) beside numbers that parse."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NUMBER = r"[0-9]+(?:\.[0-9]+)?"
RATIO = rf"{NUMBER} % \([0-9]+/[0-9]+\)"


def test_a_tiny_run_reports_before_and_after(tmp_path: Path) -> None:
    out_json = tmp_path / "prewarm.json"
    done = subprocess.run(
        [sys.executable, "-m", "reelcdn.loadtest.bench.prewarm", "--repeat", "1",
         "--videos", "3", "--top", "2", "--edges", "1", "--timeout", "60",
         "--json", str(out_json)],
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "Command: `python -m reelcdn.loadtest.bench.prewarm --repeat 1 --videos 3 " \
           "--top 2 --edges 1`" in out, out

    # One table row per half, in the order they ran: the first run has pre-warm off first.
    rows = re.findall(rf"^\| 1 \| (off|on) \((first|second)\) \| {RATIO} \| {RATIO} \| "
                      rf"{RATIO} \| {RATIO} \| [^|]+ \| {NUMBER} \| [^|]+ \| [0-9]+ / "
                      rf"[0-9]+·[0-9]+ \| [^|]+ \| [0-9]+ / [0-9]+ \| {NUMBER} \|$", out, re.M)
    assert rows == [("off", "first"), ("on", "second")], out
    summary = re.search(rf"first segments: \*\*({NUMBER}) % before, ({NUMBER}) % after the "
                        rf"pre-warm\*\*; their median time to the response head ({NUMBER}) ms "
                        rf"before, ({NUMBER}) ms after", out)
    assert summary is not None, out
    assert float(summary.group(2)) == 100.0, out
    assert "load average at start (1/5/15 min): " in out

    report = json.loads(out_json.read_text())
    off, on = report["halves"]
    assert (off["mode"], on["mode"]) == ("off", "on")
    assert off["videos"] == on["videos"] == 2
    # Before: nothing pre-warmed, and a cold edge renders the master from a meta.json it
    # has to fetch.
    assert off["warmed"] == 0 and off["rounds"] == {"done": 0, "failed": 0, "skipped": 0}
    assert off["hit_ratio"]["master"] == 0.0
    # After: every top video warmed in a round that did not fail, and the player's first
    # requests were all HITs at the edge, as the edge's own counter says too.
    assert on["warmed"] >= 2 and on["rounds"]["done"] >= 1 and on["rounds"]["failed"] == 0
    assert on["hit_ratio"] == {"master": 1.0, "media": 1.0, "init": 1.0, "segment": 1.0}
    assert on["edge_prewarmed"]["hits"] >= 4 and on["edge_prewarmed"]["misses"] == 0
    for half in (off, on):
        heads = half["segment_head_ms"]
        assert len(heads) == 2 and all(0 < ms < 10_000 for ms in heads), half
        assert all(f["status"] == 200 and f["outcome"] != "none" for f in half["fetches"])
        assert sum(half["segment_outcomes"].values()) == 2
    medians = report["medians"]
    assert medians["on"]["segment"] == 1.0
    assert medians["off"]["segment_head_median_ms"] > 0
