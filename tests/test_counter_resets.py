"""The load test's server view stays right when a node restarts during the run: a counter
that went down was reset, and its new value is the increase since the restart (as
Prometheus' ``rate()`` takes it). Crafted ``/metrics`` pages, no node."""

from __future__ import annotations

from types import SimpleNamespace

from reelcdn.loadtest import report
from reelcdn.loadtest.scrape import Scrape, difference, increase, parse_metrics
from reelcdn.loadtest.summary import server_view


def page(hit: int, miss: int, upstream: int, sent: int, node: str = "edge-a") -> str:
    return f"""# TYPE reelcdn_requests_total counter
reelcdn_requests_total{{node="{node}",cache_status="hit"}} {hit}
reelcdn_requests_total{{node="{node}",cache_status="miss"}} {miss}
# TYPE reelcdn_upstream_requests_total counter
reelcdn_upstream_requests_total{{node="{node}",upstream="origin"}} {upstream}
# TYPE reelcdn_bytes_sent_total counter
reelcdn_bytes_sent_total{{node="{node}"}} {sent}
"""


def scrape(at: float, *pages: str) -> Scrape:
    nodes = {}
    for text in pages:
        counters = parse_metrics(text, role="edge")
        nodes[counters.node] = counters
    return Scrape(at, nodes)


def test_increase_takes_a_drop_as_a_reset() -> None:
    assert increase(150, 100) == 50
    assert increase(30, 100) == 30
    assert increase(0, 0) == 0


def test_a_restart_between_before_and_after_counts_what_came_since() -> None:
    before = scrape(-1, page(hit=900, miss=100, upstream=100, sent=10_000))
    after = scrape(60, page(hit=40, miss=10, upstream=10, sent=500))  # restarted meanwhile
    node = difference(before, after)["edge-a"]
    assert node.requests == 50 and node.hits == 40
    assert node.by_cache_status == {"hit": 40, "miss": 10}
    assert node.upstream == {"origin": 10} and node.bytes_sent == 500
    view = server_view({"edge-a": node})
    assert view["nodes"]["edge-a"]["requests"] == 50


def test_one_series_reset_hidden_in_a_sum_is_still_seen() -> None:
    # the hit series restarted lower, the miss series grew more: the total went up
    before = scrape(-1, page(hit=100, miss=0, upstream=0, sent=0))
    after = scrape(60, page(hit=20, miss=200, upstream=0, sent=0))
    node = difference(before, after)["edge-a"]
    assert node.by_cache_status == {"hit": 20, "miss": 200}
    assert node.requests == 220


def test_the_run_scrapes_are_summed_step_by_step() -> None:
    before = scrape(-1, page(100, 0, 0, 0), page(5, 5, 5, 5, node="edge-b"))
    during = scrape(10, page(300, 0, 0, 0), page(6, 6, 6, 6, node="edge-b"))
    gone = scrape(20, page(7, 7, 7, 7, node="edge-b"))                  # edge-a restarting
    after = scrape(30, page(50, 0, 0, 0), page(8, 8, 8, 8, node="edge-b"))
    scrapes = [before, during, gone, after]
    delta = difference(before, after, scrapes)
    assert delta["edge-a"].requests == 200 + 50   # 100 → 300, then restarted, now 50
    assert delta["edge-b"].requests == 6 and delta["edge-b"].bytes_sent == 3
    assert difference(before, after)["edge-a"].requests == 50  # two scrapes: a lower bound


def test_the_hit_ratio_plot_never_sees_a_negative_interval() -> None:
    before = scrape(0, page(hit=900, miss=100, upstream=0, sent=0))
    after = scrape(2, page(hit=3, miss=1, upstream=0, sent=0))

    class Axis:
        def __init__(self) -> None:
            self.lines: list[tuple[list[float], list[float]]] = []

        def plot(self, xs, ys, **kwargs) -> None:
            self.lines.append((xs, ys))

    axis = Axis()
    report._server_hit_lines(axis, SimpleNamespace(scrapes=[before, after]))
    assert axis.lines == [([2], [0.75])]
