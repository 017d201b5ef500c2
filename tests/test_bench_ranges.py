"""The Range benchmark (``loadtest/bench/ranges.py``): its request mix stays inside the rules
``ranges.lua`` states, its checker refuses wrong answers, and the command runs, tiny."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys

import pytest

from reelcdn.extensions import _ranges_py as ranges
from reelcdn.loadtest.bench.ranges import CASES, SIZE, check_answer, draw_ranges

CONTENT = bytes(range(256)) * (SIZE // 256)


@pytest.mark.parametrize("case", CASES)
def test_the_mix_stays_inside_its_rules(case: str) -> None:
    rng = random.Random(7)
    for _ in range(2000):
        spans = draw_ranges(case, rng)
        assert all(0 <= s < e <= SIZE for s, e in spans)
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:], strict=False))  # disjoint
        lengths = [e - s for s, e in spans]
        if case == "aligned64k":
            assert lengths == [65536] and spans[0][0] % 65536 == 0
        elif case == "offset64k":
            assert lengths == [65536]
        elif case == "randlen":
            assert len(spans) == 1 and 1024 <= lengths[0] <= SIZE
        else:
            assert 2 <= len(spans) <= 4 and all(1024 <= n <= 65536 for n in lengths)


def _multipart(spans: list[tuple[int, int]]) -> tuple[dict[str, str], bytes]:
    parts, closing, total = ranges.multipart_plan(spans, SIZE, b"video/mp4", b"b0undary")
    body = b"".join(head + CONTENT[s:e] for head, s, e in parts) + closing
    assert len(body) == total
    return {"content-length": str(total),
            "content-type": "multipart/byteranges; boundary=b0undary"}, body


def test_the_checker_takes_right_answers_and_refuses_wrong_ones() -> None:
    single = {"content-length": "10", "content-range": f"bytes 5-14/{SIZE}"}
    assert check_answer([(5, 15)], 206, single, CONTENT[5:15], CONTENT) is None
    assert "status 200" in check_answer([(5, 15)], 200, single, CONTENT[5:15], CONTENT)
    assert "differs" in check_answer([(5, 15)], 206, single, CONTENT[6:16], CONTENT)
    shifted = {**single, "content-range": f"bytes 6-15/{SIZE}"}
    assert "Content-Range" in check_answer([(5, 15)], 206, shifted, CONTENT[5:15], CONTENT)
    spans = [(10, 2000), (70000, 80000), (500000, 500001)]
    headers, body = _multipart(spans)
    assert check_answer(spans, 206, headers, body, CONTENT) is None
    assert "parts" in check_answer(spans + [(900000, 900010)], 206, headers, body, CONTENT)
    broken = body.replace(CONTENT[70000:70010], b"x" * 10, 1)
    assert "differs" in check_answer(spans, 206, headers, broken, CONTENT)


@pytest.mark.slow
def test_range_benchmark_table() -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")
    done = subprocess.run(
        [sys.executable, "-m", "reelcdn.loadtest.bench.ranges", "--repeat", "1",
         "--duration", "1s", "--warmup", "0", "--check", "20"],
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    for case in CASES:
        assert sum(row.startswith(f"| {case} |") for row in rows) == 2, done.stdout
