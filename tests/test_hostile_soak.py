"""The hostile-client soak script (``loadtest/bench/hostile.py``) in its quick mode: a real
node in its own process, mutated requests, slowloris heads and slow bodies, and a normal client
that must stay fast. Slow (a real node and origin are started): deselect with ``-m 'not slow'``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_quick_soak_holds_every_target(tmp_path: Path) -> None:
    figures = tmp_path / "hostile.json"
    done = subprocess.run(
        [sys.executable, "-m", "reelcdn.loadtest.bench.hostile", "--quick", "--json",
         str(figures)],
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(figures.read_text())
    assert report["failures"] == []
    assert report["unexpected_5xx"] == 0 and report["tracebacks"] == 0
    assert report["requests_sent"] == 2000 and report["responses"] > 0
    for name in ("slowloris", "slow_bodies"):
        slow = report[name]
        assert slow["opened"] == slow["asked"] == 50
        assert slow["closed_by_node"] == 50 and slow["got_408"] == 50, slow
    assert report["after_get"] == 200 and report["after_health"] == 200
