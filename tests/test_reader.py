"""The request reader: the pure twin (extensions/_reader_py.py) and the compiled one
(extensions/_reader.pyx) read the same requests from the same bytes, refuse the same input
with the same status and reason, and call their connection the same way.

The connection here is a recorder (the reader's whole interface to it is three calls); the
real connection over real sockets is exercised by test_protocol.py and test_hostile.py, which
CI runs once with the compiled modules and once with REELCDN_NO_EXTENSIONS=1.
"""

from __future__ import annotations

import itertools
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelcdn import extensions
from reelcdn.extensions import _reader_py as pure_reader

LIMITS = SimpleNamespace(
    max_target_bytes=256, max_head_bytes=1024, max_headers=12, max_body_bytes=64,
    header_timeout=10.0, idle_timeout=60.0, body_timeout=30.0, body_min_rate_bytes=4,
    body_rate_grace=5.0,
)
SERVED = frozenset({"127.0.0.1", "localhost", "cdn.example"})


TWIN_MODULE = "reader"  # the ``twin`` and ``compiled`` fixtures (conftest.py) load its twins


class Recorder:
    """A connection that records what its reader tells it, and closes like the real one."""

    def __init__(self, module: ModuleType) -> None:
        ticks = itertools.count(1)
        self.events: list[tuple[Any, ...]] = []
        self.reader = module.RequestReader(self, LIMITS, SERVED, lambda: float(next(ticks)))
        self.reader.client_ip = "192.0.2.7"

    def request_complete(self, request: Any) -> None:
        self.events.append(("request", snapshot(request), self.reader.state))

    def reject(self, status: int, reason: str) -> None:
        if self.reader.state == pure_reader.CLOSING:
            return
        request = self.reader.take_request()
        self.reader.state = pure_reader.CLOSING  # as HttpConnection.reject does
        self.events.append(("reject", status, reason, request.method, request.target))

    def expect_continue(self) -> None:
        self.events.append(("100-continue",))

    def feed(self, *chunks: bytes) -> list[tuple[Any, ...]]:
        for chunk in chunks:
            self.reader.feed(chunk)
        return self.events


def snapshot(request: Any) -> tuple[Any, ...]:
    return (
        request.method, request.target, request.path, request.query, dict(request.headers),
        list(request.raw_headers), request.body, request.version, request.keep_alive,
        request.client_ip, request.error, request.start,
    )


def read(module: ModuleType, *chunks: bytes) -> list[tuple[Any, ...]]:
    return Recorder(module).feed(*chunks)


GET = b"GET /v/a/seg-1.m4s?x=1 HTTP/1.1\r\nHost: cdn.example\r\nRange: bytes=0-9\r\n\r\n"


# ---------------------------------------------------------------------------------------------
# What a request becomes
# ---------------------------------------------------------------------------------------------


def test_a_get_becomes_one_request(twin: ModuleType) -> None:
    ((kind, request, state),) = read(twin, GET)
    assert kind == "request" and state == pure_reader.IDLE
    method, target, path, query, headers, raw, body, version, keep_alive, ip, error, start = request
    assert (method, target, path, query) == ("GET", b"/v/a/seg-1.m4s?x=1", "/v/a/seg-1.m4s", "x=1")
    assert headers == {b"host": b"cdn.example", b"range": b"bytes=0-9"}
    assert raw == [(b"Host", b"cdn.example"), (b"Range", b"bytes=0-9")]
    assert (body, version, keep_alive, ip, error, start) == (None, b"1.1", True, "192.0.2.7",
                                                              None, 1.0)


def test_pipelined_and_split_requests_come_out_in_order(twin: ModuleType) -> None:
    two = GET + b"HEAD /b HTTP/1.0\r\n\r\n"
    whole = read(twin, two)
    assert [event[1][0] for event in whole] == ["GET", "HEAD"]
    assert whole[1][1][7:9] == (b"1.0", False)  # HTTP/1.0 without keep-alive closes
    byte_by_byte = read(twin, *(two[i:i + 1] for i in range(len(two))))
    assert [e[1][:11] for e in byte_by_byte] == [e[1][:11] for e in whole]


def test_repeated_fields_are_joined_and_kept_apart(twin: ModuleType) -> None:
    ((_, request, _),) = read(twin, b"GET / HTTP/1.1\r\nHost: a\r\nAccept: x\r\naccept: y\r\n\r\n")
    assert request[4][b"accept"] == b"x, y"
    assert request[5][1:] == [(b"Accept", b"x"), (b"accept", b"y")]


def test_bodies_and_chunked_trailers(twin: ModuleType) -> None:
    ((_, request, _),) = read(
        twin, b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    assert request[6] == b"hello"
    chunked = (b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n0\r\nX-Trailer: sneaky\r\n\r\n")
    ((_, request, _),) = read(twin, chunked)
    assert request[6] == b"abc" and b"x-trailer" not in request[4]


def test_absolute_form_for_a_served_host_only(twin: ModuleType) -> None:
    ((_, request, _),) = read(
        twin, b"GET http://cdn.example/p?q=1 HTTP/1.1\r\nHost: cdn.example\r\n\r\n")
    assert request[1:4] == (b"/p?q=1", "/p", "q=1")
    ((kind, status, reason, *_),) = read(
        twin, b"GET http://evil.example/p HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    assert (kind, status) == ("reject", 400) and "foreign host 'evil.example'" in reason
    ((_, request, _),) = read(twin, b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert request[1:3] == (b"*", "*")


def test_expect_continue_is_asked_of_the_connection(twin: ModuleType) -> None:
    events = read(twin, b"PUT /u HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                        b"Content-Length: 2\r\n\r\n", b"ok")
    assert events[0] == ("100-continue",) and events[1][1][6] == b"ok"


@pytest.mark.parametrize(("data", "status", "reason"), [
    (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, "request-target too long"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 1100 + b"\r\n\r\n", 431,
     "request header fields too large"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: v\r\n" * 12 + b"\r\n", 431, "too many header fields"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65\r\n\r\n", 413, "request body too large"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n" + b"x" * 65,
     413, "request body too large"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "more than one Host field"),
    (b"GET / HTTP/1.1\r\n\r\n", 400, "HTTP/1.1 request without Host"),
    (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 400,
     "CONNECT is not supported: this is not a forward proxy"),
    (b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400, "request target with a fragment"),
    (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid request target"),  # llhttp
    (b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "request target must be a path"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501,
     "unsupported transfer coding: only chunked"),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
     "Transfer-Encoding in an HTTP/1.0 request"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: later\r\n\r\n", 417, "unsupported expectation"),
    (b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: x\r\nConnection: upgrade\r\n"
     b"Content-Length: 3\r\n\r\n", 400, "Upgrade is not supported on a request with a body"),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "only HTTP/1.0 and HTTP/1.1 are supported"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "HTTP/2 is not supported here: use HTTP/1.1"),
    (b"G\x01T / HTTP/1.1\r\n\r\n", 400, "invalid request method"),
])
def test_refusals(twin: ModuleType, data: bytes, status: int, reason: str) -> None:
    events = read(twin, data)
    assert events[-1][:3] == ("reject", status, reason)


def test_a_head_that_never_ends_is_refused_across_reads(twin: ModuleType) -> None:
    recorder = Recorder(twin)
    recorder.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: ")
    assert recorder.reader.state == pure_reader.HEAD
    for _ in range(20):
        recorder.feed(b"v" * 100)
    assert recorder.events == [("reject", 431, "request header fields too large", "GET", b"")]


def test_nothing_is_read_after_closing(twin: ModuleType) -> None:
    recorder = Recorder(twin)
    recorder.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    recorder.reader.state = pure_reader.CLOSING  # e.g. that response said Connection: close
    recorder.feed(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    assert len(recorder.events) == 1


def test_an_upgrade_is_ignored_and_the_next_request_read(twin: ModuleType) -> None:
    events = read(twin, b"GET /a HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [e[1][2] for e in events] == ["/a", "/b"]


def test_deadlines_follow_the_state(twin: ModuleType) -> None:
    recorder = Recorder(twin)
    assert recorder.reader.deadline == -10.0 and recorder.reader.state == pure_reader.IDLE
    recorder.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
    # The body has its own deadline, from the end of the head; bytes do not restart it.
    assert recorder.reader.state == pure_reader.BODY and recorder.reader.deadline == -30.0
    recorder.feed(b"c")
    assert recorder.reader.deadline == -30.0
    recorder.feed(b"d")
    assert recorder.reader.state == pure_reader.IDLE and recorder.reader.deadline == -60.0


def test_a_body_below_the_minimum_rate_is_too_slow_after_the_grace(twin: ModuleType) -> None:
    recorder = Recorder(twin)
    reader = recorder.reader
    recorder.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 60\r\n\r\n" + b"x" * 21)
    assert not reader.body_too_slow(1000.0)  # not timed yet: the sweep starts the deadline
    reader.deadline = 100.0 + 30.0  # as the sweep does at 100.0
    assert not reader.body_too_slow(104.9)  # within the grace
    assert not reader.body_too_slow(105.2)  # 21 bytes in 5.2 s: above 4 bytes/s
    assert reader.body_too_slow(105.5)  # 21 bytes in 5.5 s: below
    recorder.feed(b"x" * 10)
    assert not reader.body_too_slow(107.0)
    recorder.feed(b"x" * 29)
    assert reader.state == pure_reader.IDLE and not reader.body_too_slow(1000.0)


def test_the_compiled_reader_is_the_one_in_use_unless_disabled() -> None:
    expected = "pure" if extensions.NO_EXTENSIONS else "compiled"
    assert extensions.implementations()["reader"] == expected


# ---------------------------------------------------------------------------------------------
# Differential: the same random bytes, the same events
# ---------------------------------------------------------------------------------------------

methods = st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"OPTIONS", b"CONNECT", b"DELETE",
                           b"PATCH", b"BREW", b"G T"])
targets = st.one_of(
    st.sampled_from([b"/", b"*", b"/a?b=c&d", b"/%7Ea", b"http://cdn.example/x", b"http://x.y/",
                     b"/a#f", b"/\xff", b"a", b"https://localhost:8080/p?q"]),
    st.binary(min_size=1, max_size=40).map(lambda b: b"/" + b.replace(b" ", b"_")),
    st.integers(200, 300).map(lambda n: b"/" + b"t" * n),
)
versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.x"])
names = st.sampled_from([b"Host", b"host", b"Content-Length", b"Transfer-Encoding", b"Expect",
                         b"Upgrade", b"Connection", b"Range", b"X-A", b"Accept"])
values = st.one_of(
    st.sampled_from([b"a", b"cdn.example", b"0", b"3", b"100", b"chunked", b"gzip",
                     b"100-continue", b"close", b"keep-alive", b"upgrade", b"websocket"]),
    st.binary(max_size=30).filter(lambda b: b"\r" not in b and b"\n" not in b),
)
heads = st.builds(
    lambda m, t, v, fields, body: (m + b" " + t + b" " + v + b"\r\n"
                                   + b"".join(n + b": " + val + b"\r\n" for n, val in fields)
                                   + b"\r\n" + body),
    methods, targets, versions, st.lists(st.tuples(names, values), max_size=14),
    st.one_of(st.just(b""), st.binary(max_size=20), st.just(b"3\r\nabc\r\n0\r\n\r\n")),
)
streams = st.lists(st.one_of(heads, st.binary(max_size=30)), min_size=1, max_size=4).map(b"".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=streams, cuts=st.lists(st.integers(0, 400), max_size=6))
def test_both_twins_read_random_input_identically(
    compiled: ModuleType, data: bytes, cuts: list[int]
) -> None:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    pure_events = read(pure_reader, *chunks)
    compiled_events = read(compiled, *chunks)
    assert compiled_events == pure_events
    assert timing(compiled, chunks) == timing(pure_reader, chunks)


def timing(module: ModuleType, chunks: list[bytes]) -> list[tuple[Any, ...]]:
    """After each read: the state, the deadline, and whether a body is too slow at a few
    instants once a sweep has started the deadline (at 100.0)."""
    recorder = Recorder(module)
    reader = recorder.reader
    seen = []
    for chunk in chunks:
        reader.feed(chunk)
        deadline = reader.deadline
        if deadline < 0:
            reader.deadline = 100.0 - deadline
        slow = [reader.body_too_slow(100.0 + t) for t in (1.0, 5.0, 5.5, 8.0, 40.0)]
        seen.append((reader.state, deadline, slow))
    return seen
