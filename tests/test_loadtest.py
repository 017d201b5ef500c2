"""The load harness (``reelcdn loadtest``) against a small real topology: a counting origin,
shield → regional → two edges run by ``reelcdn up``, all on 127.0.0.1.

Loads are small and bounded (tens of players, a few seconds, time-compressed playback) so the
whole module stays well under a minute on a shared 2-core machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.parse
from pathlib import Path

import pytest
from loadtest_fixtures import RENDITIONS, SEGMENT_SECONDS, Topology, segment_size

from reelcdn.cli import main
from reelcdn.loadtest import cmcd
from reelcdn.loadtest.cachestatus import Tally
from reelcdn.loadtest.catalog import Zipf
from reelcdn.loadtest.network import parse_distribution
from reelcdn.loadtest.summary import AGREEMENT, parse_slos, reconcile

# The loadtest harness: node processes, load processes, nginx side by side.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    topo = Topology(tmp_path_factory.mktemp("loadtest"))
    topo.start()
    yield topo
    topo.stop()


@pytest.fixture(scope="module")
def featured(tmp_path_factory):
    """Edges as reelcdn up runs them: playlists rendered from meta.json, prefetch on."""
    topo = Topology(tmp_path_factory.mktemp("loadtest-features"), edge_features=True)
    topo.start()
    yield topo
    topo.stop()


def run_cli(topo: Topology, report: Path, *extra: str, targets: tuple[str, ...] = ("edge_a",
            "edge_b")) -> tuple[int, dict]:
    args = ["loadtest", "--topology", str(topo.config), "--catalog", str(topo.catalog),
            "--report", str(report), "--no-progress", "--scrape-interval", "1s"]
    for target in targets:
        args += ["--target", topo.edge(target)]
    status = main([*args, *extra])
    return status, json.loads((report / "summary.json").read_text())


def players_of(report: Path) -> list[dict]:
    return [json.loads(line) for line in (report / "players.jsonl").read_text().splitlines()]


def test_request_and_hit_counts_agree_with_the_nodes_counters(topology, tmp_path):
    def asked() -> int:  # objects only: the shield's health checks of the origin ask "/"
        return sum(n for path, n in topology.origin.counts.items() if path.startswith("/v/"))

    origin_before = asked()
    status, summary = run_cli(topology, tmp_path, "--players", "16", "--duration", "3s",
                              "--time-scale", "8", "--cache", "cold", "--zipf", "0.9")
    assert status == 0
    assert summary["outcomes"].get("played", 0) >= 16 and summary["vsf"] == 0
    client, server = summary["client"], summary["server"]
    assert client["failures"] == 0
    # Every player request reached an edge, and each tier agrees with the nodes' /metrics.
    assert client["requests"] == server["roles"]["edge"]["requests"] > 0
    for tier in ("edge", "regional", "shield"):
        assert client["tiers"][tier]["requests"] == server["roles"][tier]["requests"], tier
        assert client["tiers"][tier]["hits"] == server["roles"][tier]["hits"], tier
    assert client["origin_fetches"] == server["origin_requests"]
    # The same requests with the same outcomes: one hit ratio per tier, both ways.
    for tier in summary["hit_ratio"]["tiers"].values():
        assert tier["agree"] and tier["cache_status"] == tier["metrics"], tier
        assert tier["explanation"][0].startswith("the same "), tier
    # ... and with the origin's own count of what it was asked.
    assert server["origin_requests"] == asked() - origin_before
    assert 0 < summary["offload"] < 1
    # Sessions carry the buffer model's results.
    played = [p for p in players_of(tmp_path) if p["outcome"] == "played"]
    assert all(p["segments"] >= 1 and p["ttff"] > 0 for p in played)
    assert all(set(p["phases"]) >= {"master", "media_playlist", "init", "first_segment_ttfb",
                                    "first_segment"} for p in played)


def test_rendered_playlists_and_prefetches_one_hit_ratio_and_what_differs(featured, tmp_path):
    """Edges that render playlists from meta.json and prefetch: the edge's hit ratio from
    the players' Cache-Status and from the edges' /metrics agree (a rendered playlist is a
    hit in both when its meta.json was fresh); the tiers above count the edges' prefetches
    too, which no player's response shows, and the report says so, by how many."""
    status, summary = run_cli(featured, tmp_path, "--players", "16", "--duration", "3s",
                              "--time-scale", "8", "--cache", "cold", "--zipf", "0.9")
    assert status == 0 and summary["vsf"] == 0
    server, reconciled = summary["server"], summary["hit_ratio"]
    edges = server["roles"]["edge"]
    assert "rendered" not in edges["outcomes"] and edges["outcomes"]["hit"] > 0
    edge = reconciled["edge"]
    assert edge == reconciled["tiers"]["edge"]
    # Players' requests are the edges' requests: they agree, or the report says what differs.
    assert edge["agree"] or any(line.startswith(("/metrics counted", "players saw"))
                                for line in edge["explanation"]), edge
    assert abs(edge["cache_status"] - edge["metrics"]) <= AGREEMENT or edge["explanation"]
    assert edges["prefetch_issued"] > 0
    regional = reconciled["tiers"]["regional"]
    assert regional["requests_metrics"] > regional["requests_cache_status"]
    assert f"the edges issued {edges['prefetch_issued']}" in regional["explanation"][0]
    # The text summary and the HTML report show both figures and the why.
    page = (tmp_path / "report.html").read_text()
    assert "Hit ratio: Cache-Status and /metrics" in page and "the edges issued" in page


def test_reconcile_names_what_only_one_side_counted():
    client = {"tiers": {"edge": {"outcomes": {"hit": 90, "miss": 10}},
                        "regional": {"outcomes": {"hit": 5, "miss": 5}}},
              "without_cache_status": {"403": 4}, "failures": 1}
    server = {"roles": {"edge": {"outcomes": {"hit": 90, "miss": 10, "error": 4},
                                 "prefetch_issued": 30},
                        "regional": {"outcomes": {"hit": 25, "miss": 15}, "prefetch_issued": 0},
                        "shield": {"outcomes": {"miss": 15}}}}
    out = reconcile(client, server)
    edge = out["edge"]
    assert (edge["cache_status"], edge["metrics"]) == (0.9, 90 / 104)
    assert not edge["agree"] and edge["outcomes_difference"] == {"error": 4}
    why = " ".join(edge["explanation"])
    assert "4 requests" in why and "403 ×4" in why and "1 player requests got no answer" in why
    assert "differ by -3.46 points" in why
    regional = out["tiers"]["regional"]
    assert (regional["requests_cache_status"], regional["requests_metrics"]) == (10, 40)
    assert "+30 requests" in regional["explanation"][0]
    assert "the edges issued 30" in regional["explanation"][0]
    # A tier no player's Cache-Status named (the shield: every request was served below it).
    assert out["tiers"]["shield"]["cache_status"] is None
    assert out["tiers"]["shield"]["metrics"] == 0.0
    same = reconcile({"tiers": {"edge": {"outcomes": {"hit": 3, "stale": 1}}}},
                     {"roles": {"edge": {"outcomes": {"hit": 3, "stale": 1}}}})
    assert same["edge"]["agree"] and same["edge"]["explanation"] == [
        "the same 4 requests with the same outcomes both ways"]
    alone = reconcile({"tiers": {"edge": {"outcomes": {"hit": 1}}}}, None)
    assert alone["edge"]["metrics"] is None and "not scraped" in alone["edge"]["explanation"][0]


def test_a_player_capped_at_1_mbit_takes_size_over_rate_for_a_segment(topology, tmp_path):
    status, summary = run_cli(topology, tmp_path, "--players", "1", "--duration", "6s",
                              "--bandwidth", "1Mbit", "--watch", "2s", "--max-sessions", "1",
                              "--catalog", str(_one_video_catalog(tmp_path, "vid-2")))
    assert status == 0
    (player,) = players_of(tmp_path)
    assert player["outcome"] == "played" and player["rate_cap_bps"] == 1e6
    # At 500 kbit/s the start estimate picks the lowest rendition; its first segment:
    size = segment_size(1, 0, 0)
    assert player["start_variant_bps"] == RENDITIONS[0][1]
    assert player["phases"]["first_segment"] >= size * 8 / 1e6
    assert player["ttff"] >= size * 8 / 1e6
    assert summary["ttff_ms"]["p50"] >= size * 8 / 1e6 * 1000


def _one_video_catalog(folder: Path, video: str) -> Path:
    path = folder / "one.txt"
    path.write_text(video + "\n")
    return path


def test_a_failing_origin_is_a_video_start_failure_and_violates_the_slo(topology, tmp_path):
    catalog = tmp_path / "broken.txt"
    catalog.write_text("broken\n")
    status, summary = run_cli(topology, tmp_path, "--players", "4", "--duration", "2s",
                              "--catalog", str(catalog), "--retries", "0",
                              "--slo", "ttff_p95=2s,vsf=0.5%")
    assert status == 1                      # the SLO was violated
    assert summary["vsf"] == 1.0 and summary["outcomes"]["vsf"] == summary["attempts"] > 0
    failed = [p for p in players_of(tmp_path) if p["outcome"] == "vsf"]
    assert failed and all(p["failed_phase"] == "master" and p["error"].startswith("HTTP 5")
                          for p in failed)
    verdicts = {v["key"]: v["met"] for v in summary["slo"]}
    assert verdicts == {"ttff_p95": False, "vsf": False}
    assert topology.origin.counts["/v/broken/master.m3u8"] >= 1


def test_flash_crowd_makes_one_origin_fetch_per_object_and_writes_the_report(topology,
                                                                             tmp_path):
    before = dict(topology.origin.counts)
    status, summary = run_cli(topology, tmp_path, "--scenario", "flash-crowd",
                              "--flash-video", "vid-4", "--players", "60", "--duration", "6s",
                              "--time-scale", "8", "--cache", "cold",
                              "--slo", "vsf=0%,ttff_p99=5s")
    assert status == 0, summary["slo"]
    assert summary["outcomes"] == {"played": 60}
    fetched = {path: n - before.get(path, 0) for path, n in topology.origin.counts.items()
               if path.startswith("/v/vid-4/") and n - before.get(path, 0)}
    assert fetched and set(fetched.values()) == {1}, fetched    # one fetch per object
    assert summary["server"]["origin_requests"] == len(fetched)
    assert summary["server"]["coalesced_waiters"] > 0
    # The HTML report, with its six plots inline.
    page = (tmp_path / "report.html").read_text()
    images = re.findall(r"<img alt='(\w+)' src='data:image/png;base64,([A-Za-z0-9+/=]{200,})'",
                        page)
    assert {name for name, _ in images} == {"ttff_cdf", "ttff_over_time", "phases",
                                            "hit_ratio_over_time", "bitrate", "rebuffering"}
    assert "flash-crowd" in page and "vsf=0%" in page


def test_bad_options_are_named(topology, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["loadtest", "--catalog", str(topology.catalog), "--bandwidth", "fast"])
    assert exited.value.code == 2
    assert "--bandwidth" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["loadtest", "--catalog", str(topology.catalog), "--slo", "ttff_p95=soon"])
    assert "--slo" in capsys.readouterr().err
    assert main(["loadtest", "--catalog", str(tmp_path / "missing.txt"),
                 "--target", "http://127.0.0.1:1"]) == 2
    assert "--catalog" in capsys.readouterr().err
    assert main(["loadtest", "--catalog", str(topology.catalog)]) == 2
    assert "--target" in capsys.readouterr().err


# ------------------------------------------------------------------------ pure parts


def test_cmcd_is_encoded_like_cta_5004():
    data = cmcd.CmcdRequest(sid="6e2fb550-c457-11e9", cid="vid-1", ot="av", d=2.0, br=778_012,
                            bl=1.26, mtp=2_345_000, su=True, nor="seg_00002.m4s")
    payload = cmcd.encode(data)
    assert payload == ('bl=1300,br=778,cid="vid-1",d=2000,mtp=2300,nor="seg_00002.m4s",'
                       'ot=av,sf=h,sid="6e2fb550-c457-11e9",st=v,su')
    url = cmcd.with_cmcd("http://e/v/x/low/seg_00001.m4s", data)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert cmcd.decode(query["CMCD"][0])["nor"] == "seg_00002.m4s"
    assert cmcd.decode(query["CMCD"][0])["su"] is True
    assert "su" not in cmcd.encode(cmcd.CmcdRequest(sid="s", cid="c", ot="m"))


def test_cache_status_walk_stops_at_the_serving_or_collapsed_tier():
    tally = Tally()
    tally.record(200, "s; fwd=uri-miss; stored, r; fwd=uri-miss, e; hit", 10, 0)
    tally.record(200, "s; fwd=uri-miss, r; hit, e; fwd=uri-miss; stored", 10, 0)
    tally.record(200, "s; fwd=uri-miss, r; fwd=uri-miss, e; fwd=uri-miss; collapsed", 10, 0)
    tally.record(200, "s; fwd=uri-miss, r; fwd=uri-miss, e; fwd=uri-miss", 10, 0)
    # A stale copy served after the fetch failed: served here, the older members not reached.
    tally.record(200, "s; fwd=uri-miss, e; fwd=stale; fwd-status=502; detail=stale-if-error",
                 10, 0)
    tally.record(403, None, 10, 0)
    assert {d: (c.reached, c.hits, c.collapsed) for d, c in tally.by_depth.items()} == {
        1: (5, 2, 1), 2: (2, 1, 0), 3: (1, 0, 0)}
    assert tally.by_depth[1].outcomes == {"hit": 1, "miss": 3, "stale": 1}
    assert tally.origin_fetches == 1
    assert tally.without_cache_status == {403: 1}


def test_distributions_zipf_and_slos_parse():
    import random

    rng = random.Random(3)
    assert parse_distribution("5Mbit", "rate").sample(rng) == 5e6
    uniform = parse_distribution("uniform:1Mbit-2Mbit", "rate")
    assert all(1e6 <= uniform.sample(rng) <= 2e6 for _ in range(100))
    assert parse_distribution("choice:10ms|30ms", "time").sample(rng) in (0.01, 0.03)
    with pytest.raises(ValueError, match="uniform"):
        parse_distribution("uniform:5Mbit", "rate")
    zipf = Zipf(10, 1.0)
    draws = [zipf.draw(rng) for _ in range(5000)]
    assert draws.count(0) > 2.5 * draws.count(3) > 0
    slos = parse_slos("ttff_p95=200ms,vsf=0.5%,offload=90%")
    assert [(s.key, round(s.target, 4)) for s in slos] == [
        ("ttff_p95", 0.2), ("vsf", 0.005), ("offload", 0.9)]
    assert SEGMENT_SECONDS == 2.0
    # Durations as the standard run writes them (--duration 2m).
    from reelcdn.loadtest.network import parse_seconds

    assert [parse_seconds(t) for t in ("250ms", "2", "2s", "2m", "1.5min", "1h")] == [
        0.25, 2.0, 2.0, 120.0, 90.0, 3600.0]
    with pytest.raises(ValueError, match="not a duration"):
        parse_seconds("2 fortnights")


def nginx_or_skip() -> None:
    """Skip where nginx is absent, except in CI, where scripts/test.sh installs it: fail there."""
    if Path("/usr/sbin/nginx").exists() or shutil.which("nginx"):
        return
    reason = "nginx is not installed (scripts/test.sh installs Debian's nginx)"
    if os.environ.get("CI"):
        pytest.fail(reason + "; in CI the side-by-side test must run")
    pytest.skip(reason)


def test_side_by_side_with_nginx_reports_both_and_their_ratios(tmp_path):
    nginx_or_skip()
    from loadtest_fixtures import VIDEOS, make_videos

    origin = tmp_path / "origin"
    make_videos(origin, VIDEOS[:2])
    catalog = tmp_path / "catalog.txt"
    catalog.write_text("\n".join(VIDEOS[:2]) + "\n")
    report = tmp_path / "compare"
    status = main(["loadtest", "--compare-nginx", str(origin), "--catalog", str(catalog),
                   "--players", "8", "--duration", "2s", "--time-scale", "8",
                   "--report", str(report), "--no-progress"])
    assert status == 0
    result = json.loads((report / "compare.json").read_text())
    for cdn in ("reelcdn", "nginx"):
        summary = result[cdn]
        assert summary["vsf"] == 0 and summary["attempts"] > 0
        # Both CDNs tier their answers (Cache-Status per tier) and protect the origin.
        assert set(summary["client"]["tiers"]) == {"edge", "regional", "shield"}
        assert 0 < summary["origin_requests_counted"] < summary["client"]["requests"]
        assert (report / cdn / "report.html").is_file()
    assert result["ratios"]["ttff_p50_nginx_over_reelcdn"] > 0
    table = (report / "compare.md").read_text()
    assert "nginx / reelcdn" in table
    for row in ("TTFF p95", "origin offload", "edge hit ratio", "regional hit ratio",
                "shield hit ratio", "rebuffer ratio", "harness"):
        assert f"| {row}" in table, row


def test_side_by_side_counts_the_shields_origin_checks_apart_from_its_fetches(tmp_path):
    """A warm run fetches nothing from the origin, on either side. reelcdn's shield checks its
    http origin every 2 s meanwhile (nginx's tiers make no checks): those GETs are reported on
    their own row, not as origin requests, or a 4 s run would show reelcdn fetching a couple
    of objects that nginx did not."""
    nginx_or_skip()
    from loadtest_fixtures import VIDEOS, make_videos

    origin = tmp_path / "origin"
    make_videos(origin, VIDEOS[:1])
    catalog = tmp_path / "catalog.txt"
    catalog.write_text(VIDEOS[0] + "\n")
    report = tmp_path / "compare"
    status = main(["loadtest", "--compare-nginx", str(origin), "--catalog", str(catalog),
                   "--players", "4", "--duration", "4s", "--time-scale", "8", "--cache", "warm",
                   "--report", str(report), "--no-progress"])
    assert status == 0
    result = json.loads((report / "compare.json").read_text())
    ours, theirs = result["reelcdn"], result["nginx"]
    assert ours["client"]["requests"] > 0 and theirs["client"]["requests"] > 0
    assert ours["origin_requests_counted"] == 0 == theirs["origin_requests_counted"]
    assert ours["origin_checks_counted"] >= 1 and theirs["origin_checks_counted"] == 0
    assert ours["origin_paths_fetched_again"] == {} == theirs["origin_paths_fetched_again"]
    table = (report / "compare.md").read_text()
    assert "| origin health checks (not in the requests above) |" in table


def test_two_load_processes_merge_into_one_report(topology, tmp_path):
    status, summary = run_cli(topology, tmp_path, "--players", "6", "--duration", "2s",
                              "--time-scale", "8", "--processes", "2", "--rate", "20",
                              "--cache", "warm")
    assert status == 0
    assert [p["share"] for p in summary["harness"]["processes"]] == [0, 1]
    assert summary["attempts"] > 0 and summary["vsf"] == 0
    assert summary["client"]["requests"] == summary["server"]["roles"]["edge"]["requests"]
    ids = [p["player_id"] for p in players_of(tmp_path)]
    assert len(ids) == len(set(ids)) == summary["sessions"]


def test_a_start_slower_than_the_patience_is_an_exit_before_video_start(topology, tmp_path):
    status, summary = run_cli(topology, tmp_path, "--players", "2", "--duration", "3s",
                              "--bandwidth", "200kbit", "--patience", "500ms",
                              "--max-sessions", "2", "--slo", "ebvs=0%")
    assert status == 1
    assert summary["outcomes"] == {"ebvs": 2} and summary["ebvs"] == 1.0
    assert all(p["failed_phase"] == "first_segment" for p in players_of(tmp_path))


def test_harness_view_tells_a_busy_client_from_a_starved_one():
    from reelcdn.loadtest.runner import RunOptions, harness_view
    from reelcdn.loadtest.workload import ShareResult, Workload

    options = RunOptions(workload=Workload(targets=(), catalog=(), players=1, duration=1.0),
                         processes=1)

    def share(cpu: float, lag: float) -> ShareResult:
        return ShareResult(0, cpu_seconds=cpu * 10, wall_seconds=10.0, loop_lag_p99=lag)

    busy = harness_view([share(0.95, 0.2)], options, machine_busy=1.0)
    assert "client may be the bottleneck" in busy["warnings"][0]
    assert "--processes" in busy["warnings"][0] or (os.cpu_count() or 1) == 1
    starved = harness_view([share(0.4, 0.8)], options, machine_busy=0.99)
    assert "machine was saturated" in starved["warnings"][0]
    assert "starved" in starved["warnings"][0] and "--processes" not in starved["warnings"][0]
    assert starved["machine_busy"] == 0.99 and starved["cpu_total"] == 0.4
    quiet = harness_view([share(0.2, 0.002)], options, machine_busy=0.3)
    assert quiet["warnings"] == []
    # A second process cannot help when every core already has one.
    cores = os.cpu_count() or 1
    full = harness_view([ShareResult(i, cpu_seconds=9.5, wall_seconds=10.0, loop_lag_p99=0.1)
                         for i in range(cores)], options, machine_busy=0.99)
    assert "--processes" not in full["warnings"][0]


def test_every_loadtest_data_file_sits_in_a_package_setup_py_ships():
    # setup.py maps folders with an __init__.py to packages and ships their *.tmpl/*.lua/...
    # as package data: a template in a plain folder was left out of non-editable installs,
    # and --compare-nginx failed there (loadtest/nginx3tier/ before it had an __init__.py).
    import re as _re

    setup_text = (Path(__file__).parents[1] / "setup.py").read_text()
    globs = _re.search(r'package_data=\{"": \[([^\]]*)\]', setup_text)
    assert globs is not None
    suffixes = {g.strip().strip('"').removeprefix("*") for g in globs.group(1).split(",")}
    root = Path(__file__).parents[1] / "loadtest"
    data = [f for f in root.rglob("*") if f.is_file() and f.suffix in (".tmpl", ".lua",
                                                                         ".html", ".js")]
    assert any(f.name == "tier.conf.tmpl" for f in data)
    for file in data:
        assert file.suffix in suffixes, file
        assert (file.parent / "__init__.py").is_file(), f"{file} is not inside a package"
