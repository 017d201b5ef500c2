"""The access log's line formatter: the pure twin (extensions/_accesslog_py.py) and the
compiled one (extensions/_accesslog.pyx) write the same bytes for every record, and the lines
say what the response was.

The node's own records take the compiled fast path; records it cannot read in place (a string
of more than one byte per character, a percent-encoded parameter name, a CMCD value decoding
to non-ASCII, a head it cannot parse the way the pure twin does) are handed to the pure twin.
The differential tests draw both kinds, so both paths are compared with the reference.
"""

from __future__ import annotations

import json
import math
import re
import time
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reelcdn.extensions import _accesslog_py as pure
from reelcdn.extensions.message import Request

TWIN_MODULE = "accesslog"  # the ``twin`` and ``compiled`` fixtures (conftest.py) load its twins

MEMBER = b"edge-a"
STRIP = frozenset({"token", "hdnts", "policy", "sig"})
OFFSET = 1_796_223_721.25 - 1000.0  # wall clock = loop clock + OFFSET (2026-12-02T15:02:01.25Z)
HIT_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nAge: 5\r\n"
            b"Cache-Status: shield-1; fwd=uri-miss; stored, edge-a; hit; ttl=55\r\n"
            b"Via: 1.1 shield-1, 1.1 edge-a\r\nContent-Length: 4\r\n\r\n")
MISS_HEAD = (b"HTTP/1.1 200 OK\r\ncache-status: \"shield-1\"; fwd=uri-miss, "
             b"edge-a; fwd=uri-miss; stored\r\nContent-Length: 4\r\n\r\n")
COMBINED = re.compile(
    r'^(?P<addr>\S+) - - \[(?P<time>\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} \+0000)\] '
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>[^"]*)" '
    r'"(?P<agent>[^"]*)"\n$'
)


def record(**fields: Any) -> tuple[Any, ...]:
    values: dict[str, Any] = {
        "method": "GET", "target": b"/v/seg.m4s", "version": b"1.1", "start": 1000.0,
        "refused": 0, "query": "", "cmcd": None, "extra": (None, None),
        "client": "127.0.0.1", "head": HIT_HEAD + b"body", "sent": len(HIT_HEAD) + 4,
        "ttfb": 0.0004, "end": 1000.0125, "aborted": False,
    }
    values.update(fields)
    return tuple(values.values())


def formatter(impl: ModuleType, upstream: str = "origin-a") -> Any:
    return impl.LineFormatter("edge-a", MEMBER, upstream, STRIP)


def json_line(impl: ModuleType, **fields: Any) -> dict[str, Any]:
    data = formatter(impl).json_lines([record(**fields)], OFFSET)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    return json.loads(data)


def test_a_hit_line_has_every_field(twin: ModuleType) -> None:
    line = json_line(twin)
    assert line == {
        "time": "2026-12-02T15:02:01.262Z", "client": "127.0.0.1", "method": "GET",
        "target": "/v/seg.m4s", "protocol": "HTTP/1.1", "status": 200,
        "bytes": len(HIT_HEAD) + 4, "body_bytes": 4, "ttfb": 0.0, "duration": 0.013,
        "cache": "hit; ttl=55", "upstream": "", "sid": "", "node": "edge-a", "aborted": False,
    }


def test_a_forwarded_line_names_the_tier_that_answered(twin: ModuleType) -> None:
    line = json_line(twin, head=MISS_HEAD, ttfb=0.0015)
    assert (line["cache"], line["upstream"], line["ttfb"]) == (
        "fwd=uri-miss; stored", "shield-1", 0.002)
    # the first tier of the chain: the node's own upstream by name
    alone = MISS_HEAD.replace(b'"shield-1"; fwd=uri-miss, ', b"")
    assert json_line(twin, head=alone)["upstream"] == "origin-a"


def test_tokens_are_stripped_and_the_cmcd_session_kept(twin: ModuleType) -> None:
    target = b"/v/a/seg.m4s?token=s3cr3t&q=1&HDNTS=x&&sig&CMCD=sid%3D%22abc%22"
    line = json_line(twin, target=target, query=target.decode().partition("?")[2])
    assert line["target"] == "/v/a/seg.m4s?q=1&CMCD=sid%3D%22abc%22"
    assert line["sid"] == "abc"
    assert json_line(twin, target=b"/a?token=1")["target"] == "/a"
    assert json_line(twin, cmcd=b'bl=200,sid="s-1"')["sid"] == "s-1"


def test_refused_aborted_and_escaped(twin: ModuleType) -> None:
    refused = json_line(twin, refused=431, head=None, sent=0, ttfb=-1.0, start=0.0)
    assert (refused["method"], refused["target"], refused["status"], refused["ttfb"],
            refused["duration"]) == ("-", "-", 431, None, 0.0)
    cut = json_line(twin, head=None, sent=0, ttfb=-1.0, aborted=True)
    assert (cut["status"], cut["aborted"]) == (499, True)
    odd = json_line(twin, target=b'/a"\\\x01\xe9', client="::1")
    assert odd["target"] == '/a"\\\x01\xe9' and odd["client"] == "::1"


def test_combined_lines_parse_as_nginx_writes_them(twin: ModuleType) -> None:
    impl = formatter(twin)
    data = impl.combined_lines(
        [record(target=b"/a?token=x&q=1", extra=(b"http://r/", b'Agent "1"\x7f'))], OFFSET)
    match = COMBINED.match(data.decode("ascii"))
    assert match is not None
    assert match["time"] == "02/Dec/2026:15:02:01 +0000"
    assert match["request"] == "GET /a?q=1 HTTP/1.1"
    assert (match["status"], match["bytes"]) == ("200", "4")
    assert match["agent"] == "Agent \\x221\\x22\\x7F"
    refused = impl.combined_lines([record(refused=400, head=None, client="", sent=0)], OFFSET)
    assert refused.decode().startswith('- - - [') and '"-" 400 0 "-" "-"' in refused.decode()


def test_a_batch_is_its_lines_in_order(twin: ModuleType) -> None:
    impl = formatter(twin)
    batch = [record(target=b"/%d" % i, end=1000.0 + i) for i in range(300)]
    data = impl.json_lines(batch, OFFSET)
    assert [json.loads(x)["target"] for x in data.splitlines()] == [
        f"/{i}" for i in range(300)]
    assert impl.json_lines([], OFFSET) == b""


def test_a_record_that_cannot_be_formatted_fails_the_batch_and_not_the_next(
        twin: ModuleType) -> None:
    impl = formatter(twin)
    with pytest.raises((ValueError, TypeError)):
        impl.json_lines([record(), ("short",)], OFFSET)
    assert impl.json_lines([record()], OFFSET).count(b"\n") == 1


# -- the collector: what the request path does ---------------------------------------------------


def request(target: bytes = b"/v/a.ts", **headers: bytes) -> Request:
    req = Request()
    req.method, req.target, req.version, req.start = "GET", target, b"1.1", 1000.0
    req.query = target.decode().partition("?")[2]
    req.headers = {name.replace("_", "-").encode(): value for name, value in headers.items()}
    return req


class Calls:
    def __init__(self) -> None:
        self.first = 0
        self.dropped = 0

    def on_first(self) -> None:
        self.first += 1

    def on_drop(self) -> None:
        self.dropped += 1


def test_the_collector_keeps_plain_values_and_calls_back_once_a_batch(twin: ModuleType) -> None:
    calls = Calls()
    collector = twin.Collector(4, 1.0, False, calls.on_first, calls.on_drop)
    req = request(b"/v/a.ts?CMCD=x", cmcd_session=b'sid="s"', referer=b"r")
    collector.emit(req, "::1", HIT_HEAD, 10, 0.001, 1000.5, False)
    collector.emit(req, "::1", None, 0, -1.0, 1000.6, True)
    assert calls.first == 1
    assert collector.pending == [
        ("GET", b"/v/a.ts?CMCD=x", b"1.1", 1000.0, 0, "CMCD=x", b'sid="s"', (None, None),
         "::1", HIT_HEAD, 10, 0.001, 1000.5, False),
        ("GET", b"/v/a.ts?CMCD=x", b"1.1", 1000.0, 0, "CMCD=x", b'sid="s"', (None, None),
         "::1", None, 0, -1.0, 1000.6, True),
    ]
    batch = collector.take()
    assert len(batch) == 2 and collector.pending == []
    # a small HIT's first write is head and body: the record keeps the head alone
    collector.emit(req, "::1", HIT_HEAD + b"body", 10, 0.001, 1000.5, False)
    collector.emit(req, "::1", b"HTTP/1.1 200 OK\r\nno blank line", 10, 0.001, 1000.5, False)
    assert [r[9] for r in collector.take()] == [HIT_HEAD, b"HTTP/1.1 200 OK\r\nno blank line"]
    assert calls.first == 2
    collector.emit(req, "::1", None, 0, -1.0, 1000.7, True)
    assert calls.first == 3  # a new batch
    # combined keeps Referer and User-Agent; a request refused before its head: its status
    collector.combined = True
    refused = request(user_agent=b"ua")
    refused.start, refused.error = 0.0, (431, "too large")
    collector.emit(refused, "::1", None, 0, -1.0, 1000.8, False)
    assert collector.pending[-1][4] == 431 and collector.pending[-1][7] == (None, b"ua")


def test_the_collector_drops_beyond_its_room_and_samples(twin: ModuleType) -> None:
    calls = Calls()
    collector = twin.Collector(3, 1.0, False, calls.on_first, calls.on_drop)
    collector.queued, collector.written = 5, 3  # two lines still with the writer
    for _ in range(3):
        collector.emit(request(), "::1", None, 0, -1.0, 1000.0, False)
    assert (len(collector.pending), calls.dropped) == (1, 2)
    collector.written = 5
    collector.emit(request(), "::1", None, 0, -1.0, 1000.0, False)
    assert len(collector.pending) == 2
    collector.sample = 0.0
    collector.emit(request(), "::1", None, 0, -1.0, 1000.0, False)
    assert (len(collector.pending), calls.dropped) == (2, 2)


# -- both twins, the same bytes ------------------------------------------------------------------

_TARGET_PIECES = st.sampled_from([
    b"/v/", b"seg", b".m4s", b"?", b"&", b"=", b"token", b"TOKEN", b"%74oken", b"q", b"1",
    b"Sig", b"cmcd", b"CMCD=", b"sid%3D%22", b"%22", b"%", b"%4", b"%zz", b"\xe9", b'"',
    b"\\", b"\x01", b"\x7f", b" ", b"hdnts", b"Policy",
])
_QUERY_PIECES = st.sampled_from([
    "CMCD=", "cmcd=", "Cmcd", "sid%3D%22", "sid=\"", "%22", "abc", "&", "=", "%", "%2", "%e9",
    "%C3%A9", "é", "€", "\x00", "\\", "bl%3D2", ",", "token=x",
])
_CACHE_PIECES = st.sampled_from([
    b"edge-a", b"shield-1", b'"shield-1"', b"; ", b";", b"fwd=uri-miss", b"hit", b"ttl=5",
    b", ", b",", b" ", b"\t", b"stored", b"fwd=", b"\xe9", b'"', b"\\",
])


@st.composite
def heads(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.sampled_from(["none", "hit", "miss", "built", "raw"]))
    if kind == "none":
        return None
    if kind == "hit":
        head = HIT_HEAD
    elif kind == "miss":
        head = MISS_HEAD
    elif kind == "raw":
        return draw(st.binary(max_size=60))
    else:
        status = draw(st.sampled_from([b"200", b"206", b"404", b"2x0", b" 20", b"1", b""]))
        field = draw(st.sampled_from([b"Cache-Status:", b"cache-status:", b"CACHE-STATUS:",
                                      b"X-Cache-Status:"]))
        members = b"".join(draw(st.lists(_CACHE_PIECES, max_size=8)))
        end = draw(st.sampled_from([b"\r\n\r\n", b"\r\n", b""]))
        head = (draw(st.sampled_from([b"HTTP/1.1 ", b"HTTP/1.0 ", b"HTTX/1.1 "])) + status
                + b" OK\r\nAge: 1\r\n" + field + members + end)
    return head + draw(st.sampled_from([b"", b"body", b"\r\n\r\nmore"]))


_FLOATS = st.floats(min_value=-10.0, max_value=2e9) | st.sampled_from(
    [0.0, -1.0, 0.0005, 0.0015, 0.9995, 1e9, 1.5e9, math.inf, math.nan])


@st.composite
def records(draw: st.DrawFn) -> tuple[Any, ...]:
    target = b"".join(draw(st.lists(_TARGET_PIECES, max_size=10))) or b"/"
    query = "".join(draw(st.lists(_QUERY_PIECES, max_size=8)))
    text = st.sampled_from(["GET", "HEAD", "127.0.0.1", "::1", "", "é", "€", 'a"b\\'])
    return (
        draw(text),
        target,
        draw(st.sampled_from([b"1.1", b"1.0", b"2", b"\xe9"])),
        draw(st.sampled_from([0.0, 1000.0, 999.9995]) | _FLOATS),
        draw(st.sampled_from([0, 0, 400, 431, 2**70])),
        query,
        draw(st.none() | st.sampled_from([b'sid="s-1"', b'sid="', b"sid=x", b'sid="\xe9\x01"'])),
        (draw(st.none() | st.binary(max_size=8)), draw(st.none() | st.binary(max_size=8))),
        draw(text),
        draw(heads()),
        draw(st.sampled_from([0, 4, 300, 2**70]) | st.integers(0, 10**7)),
        draw(st.sampled_from([-1.0, 0.0, 0.0004]) | _FLOATS),
        draw(st.floats(min_value=0.0, max_value=1e7) | st.sampled_from([1000.0125])),
        draw(st.booleans()),
    )


def outcome(call: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", call(*args)
    except Exception as exc:  # both twins must fail alike, too
        return "raised", type(exc)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(records(), min_size=1, max_size=6), upstream=st.sampled_from(
    ["origin-a", "", "o\u00e9\u20ac\"1"]))
def test_both_twins_write_the_same_bytes(compiled: ModuleType, batch: list[Any],
                                         upstream: str) -> None:
    for offset in (OFFSET, 0.0):
        ref, fast = formatter(pure, upstream), formatter(compiled, upstream)
        assert outcome(fast.json_lines, batch, offset) == outcome(ref.json_lines, batch, offset)
        assert outcome(fast.combined_lines, batch, offset) == outcome(
            ref.combined_lines, batch, offset)


@settings(max_examples=300, deadline=None)
@given(rec=records())
def test_lines_are_ascii_json_and_one_per_record(twin: ModuleType, rec: tuple[Any, ...]) -> None:
    assume(0.0 <= rec[12] + OFFSET < 1e11)
    data = formatter(twin).json_lines([rec, rec], OFFSET)
    lines = data.decode("ascii").splitlines(keepends=True)
    assert len(lines) == 2 and lines[0] == lines[1]
    assert set(json.loads(lines[0])) >= {"time", "client", "target", "status", "cache", "sid"}
    data = formatter(twin).combined_lines([rec], OFFSET)
    assert data.decode("ascii").count("\n") == 1


def test_the_time_is_the_records_end_on_the_wall_clock(twin: ModuleType) -> None:
    now = time.time()
    line = formatter(twin).json_lines([record(end=now - OFFSET)], OFFSET)
    expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int((now) * 1000) // 1000))
    assert json.loads(line)["time"].startswith(expected)


def test_the_compiled_twin_writes_the_nodes_records_itself(
        compiled: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a node hands over (a HIT, a miss, tokens, CMCD, a refusal, a cut) never goes to
    the pure twin: the speed of the log rests on it."""

    def refuse(*_: Any) -> str:
        raise AssertionError("handed to the pure twin")

    monkeypatch.setattr(pure.LineFormatter, "json_line", refuse)
    monkeypatch.setattr(pure.LineFormatter, "combined_line", refuse)
    batch = [
        record(),
        record(head=MISS_HEAD, extra=(b"http://r/", b"hls.js")),
        record(target=b"/v/a.m4s?token=x&CMCD=sid%3D%22s%22", query="token=x&CMCD=sid%3D%22s%22"),
        record(cmcd=b'sid="s-2"'),
        record(refused=431, head=None, start=0.0, ttfb=-1.0),
        record(head=None, sent=0, ttfb=-1.0, aborted=True),
        record(head=HIT_HEAD, version=b"1.0", method="HEAD"),
    ]
    impl = formatter(compiled)
    assert impl.json_lines(batch, OFFSET).count(b"\n") == len(batch)
    assert impl.combined_lines(batch, OFFSET).count(b"\n") == len(batch)


@settings(max_examples=300, deadline=None)
@given(writes=st.lists(st.none() | st.sampled_from(
    [HIT_HEAD, HIT_HEAD + b"body", HIT_HEAD + b"\r\n\r\n", MISS_HEAD + b"x", b"HTTP/1.1 200",
     HIT_HEAD[:-2], b"\r\n\r\n", b"\r\n\r\nx", b""]) | st.binary(max_size=40), max_size=12))
def test_both_collectors_keep_the_same_records(compiled: ModuleType,
                                               writes: list[bytes | None]) -> None:
    collectors = [impl.Collector(100, 1.0, False, Calls().on_first, Calls().on_drop)
                  for impl in (pure, compiled)]
    for first_write in writes:
        for collector in collectors:
            collector.emit(request(), "::1", first_write, 1, 0.0, 1000.0, False)
    assert collectors[0].take() == collectors[1].take()
