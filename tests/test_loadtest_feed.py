"""``reelcdn loadtest --feed``: players fetch a feed page from a real origin service, then play
its first video through a small tier (a shield and an edge), all started by ``reelcdn up
--config`` on 127.0.0.1 from the feed bench's own setup (``loadtest/bench/feed.py``: the
demo video published under a few catalog ids, their rows seeded ready)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nodeproc import free_port

from reelcdn.cli import main
from reelcdn.loadtest.bench.feed import FeedSite, publish_demo, video_id

VIDEOS = [video_id(n + 1) for n in range(4)]


class FeedTier:
    def __init__(self, work: Path) -> None:
        self.work = work
        publish_demo(work / "origin", VIDEOS)
        self.edge_port = free_port()
        self.site = FeedSite(work / "site", free_port(), free_port(),
                             edge=(self.edge_port, free_port()), origin_root=work / "origin")
        self.site.seed(VIDEOS)
        self.token = self.site.token("viewer")
        self.log = work / "up.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "reelcdn.cli", "up", "--config", str(self.site.config),
                 "--data-dir", str(self.work / "data"), "--no-demo"],
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # bounded: up, and the feed answering
            if "reelcdn is up" in self.log.read_text(errors="replace"):
                try:
                    if self.site.feed_ready(self.token):
                        return
                except OSError:
                    pass
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        text = self.log.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"reelcdn up did not come up:\n{text}")

    @property
    def edge(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def tier(tmp_path_factory):
    made = FeedTier(tmp_path_factory.mktemp("loadtest-feed"))
    made.start()
    yield made
    made.stop()


def run(tier: FeedTier, report: Path, *extra: str) -> tuple[int, dict, list[dict]]:
    status = main(["loadtest", "--feed", tier.site.api, "--target", tier.edge,
                   "--players", "4", "--duration", "3s", "--time-scale", "8",
                   "--report", str(report), "--no-progress", *extra])
    summary = json.loads((report / "summary.json").read_text())
    players = [json.loads(line) for line in (report / "players.jsonl").read_text().splitlines()]
    return status, summary, players


@pytest.mark.slow
def test_players_fetch_the_feed_then_play_its_first_video(tier, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(tier.token + "\n")
    status, summary, players = run(tier, tmp_path / "report", "--feed-token-file",
                                   str(token_file))
    assert status == 0
    assert summary["outcomes"].get("played", 0) >= 4 and summary["vsf"] == 0
    feed = summary["phases_ms"]["feed"]
    assert feed["count"] >= 4 and feed["p50"] > 0
    # The feed's first item is what every player played, and the TTFF includes the feed.
    first = tier.site.feed_first(tier.token)
    played = [p for p in players if p["outcome"] == "played"]
    assert played and {p["video"] for p in played} == {first}
    for p in played:
        assert p["ttff"] >= p["phases"]["feed"] + p["phases"]["first_segment"]
    assert summary["client"]["requests"] >= 4 * 4   # master, playlist, init, segment each
    assert summary["start_failures"] == {}


@pytest.mark.slow
def test_a_bad_token_is_a_start_failure_with_the_reason(tier, tmp_path):
    status, summary, players = run(tier, tmp_path / "report", "--feed-token",
                                   "viewer.1.k1.forged", "--patience", "1s")
    assert status == 0     # no --slo: failures are reported, not an exit status
    assert summary["outcomes"].get("vsf", 0) >= 1 and summary["outcomes"].get("played", 0) == 0
    assert summary["client"]["requests"] == 0    # nothing reached the CDN
    reasons = summary["start_failures"]
    assert list(reasons) == ["feed: HTTP 401: unauthorized"], reasons
    assert all(p["failed_phase"] == "feed" for p in players if p["outcome"] == "vsf")


def test_feed_options_are_checked(tmp_path, capsys):
    base = ["loadtest", "--no-progress", "--duration", "1s"]
    assert main([*base, "--target", "http://127.0.0.1:1"]) == 2
    assert "--catalog" in capsys.readouterr().err
    assert main([*base, "--target", "http://127.0.0.1:1", "--feed", "http://127.0.0.1:2"]) == 2
    assert "user token" in capsys.readouterr().err
    assert main([*base, "--feed", "http://127.0.0.1:2", "--feed-token", "t"]) == 2
    assert "--target" in capsys.readouterr().err
    assert main([*base, "--feed", "127.0.0.1:2", "--feed-token", "t",
                 "--target", "http://127.0.0.1:1"]) == 2
    assert "base URL" in capsys.readouterr().err
    assert main([*base, "--feed", "http://127.0.0.1:2", "--feed-token-file",
                 str(tmp_path / "none"), "--target", "http://127.0.0.1:1"]) == 2
    assert "--feed-token-file" in capsys.readouterr().err
    assert main([*base, "--compare-nginx", str(tmp_path), "--feed", "http://127.0.0.1:2",
                 "--feed-token", "t"]) == 2
    assert "--compare-nginx" in capsys.readouterr().err
