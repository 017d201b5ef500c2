"""Malformed CMCD never fails a request, and a request whose answer raises fails alone.

CMCD is telemetry: a malformed item is skipped, the rest of the payload kept, and nothing a
client sends yields a 5xx or a traceback. Independently, when answering one request raises
(a bug), the connection logs one short line with the request line, answers 500 if nothing of
the response was written, and goes on with the requests pipelined behind it; if part of the
response is out it is cut. Raw sockets on a real node (tests/rawhttp.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rawhttp import read_response

from reelcdn.edge.video import cmcd

if TYPE_CHECKING:
    from conftest import TestOrigin

    from reelcdn.edge.ops.server import NodeServer

HOSTILE = [
    ("/x", {"CMCD-Request": "bl=--1"}),
    ("/x", {"CMCD-Request": "bl=²".encode().decode("latin-1")}),
    ("/x?CMCD=bl%3D%C2%B2", {}),
    ("/x?CMCD=mtp%3D--5", {}),
    ("/x?CMCD=bl%3D1e9999%2Cmtp%3D%EF%BC%91", {}),  # fullwidth digit one
    ("/x", {"CMCD-Status": "bs,bl=0x10,mtp=-,sid=\"s\""}),
    ("/x", {"CMCD-Request": "bl=" + "9" * 4000}),
]


def request_bytes(path: str, headers: dict[str, str]) -> bytes:
    fields = {"Host": "127.0.0.1", **headers}
    head = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode("latin-1") + b"\r\n"


async def pipelined(port: int, *requests: bytes) -> list:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(requests))
        async with asyncio.timeout(10):
            return [await read_response(reader) for _ in requests]
    finally:
        writer.close()


@pytest.mark.parametrize(("path", "headers"), HOSTILE)
async def test_malformed_cmcd_is_ignored_and_the_pipelined_request_answered(
    origin: TestOrigin, node: NodeServer, caplog: pytest.LogCaptureFixture,
    path: str, headers: dict[str, str],
) -> None:
    origin.set("/x", b"x-body", headers={"Cache-Control": "max-age=60"})
    origin.set("/y", b"y-body", headers={"Cache-Control": "max-age=60"})
    with caplog.at_level(logging.DEBUG, logger="reelcdn"):
        # twice: a MISS (answered in a task) and a HIT (answered in the parser callback)
        for _ in range(2):
            first, second = await pipelined(
                node.port, request_bytes(path, headers), request_bytes("/y", {})
            )
            assert (first.status, first.body) == (200, b"x-body")
            assert (second.status, second.body) == (200, b"y-body")
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_malformed_items_are_skipped_and_the_rest_kept() -> None:
    assert cmcd.parse_payload("bl=--1,sid=\"s\",mtp=2000") == {"sid": "s", "mtp": 2000}
    assert cmcd.parse_payload("bl=²,su") == {"su": True}
    assert cmcd.parse_payload("pr=1.25,bl=-") == {"pr": "1.25"}  # a Decimal stays text
    data = cmcd.from_request("CMCD=" + "mtp%3D--5%2Cbl%3D300", {b"cmcd-status": b"bs"})
    assert data is not None and (data.mtp, data.bl, data.bs) == (None, 300, True)
    negative = cmcd.from_request("", {b"cmcd-request": b"bl=-300,mtp=-1"})
    assert negative is not None and (negative.bl, negative.mtp) == (None, None)


PAYLOAD = st.text(alphabet='ab=,"\\ 1-.²٣x', max_size=40)


@given(PAYLOAD)
def test_parsing_never_raises_on_either_splitting_path(payload: str) -> None:
    # with and without a backslash: the fast path and the character loop
    for text in (payload, payload.replace("\\", ""), payload + ',k="\\\\"'):
        assert cmcd._split_items(text) == cmcd._split_escaped(text)
        for value in cmcd.parse_payload(text).values():
            assert isinstance(value, (str, int, bool))
            assert not isinstance(value, int) or isinstance(value, bool) or abs(value) < 10**15
        cmcd.from_request("CMCD=" + text, {b"cmcd-request": text.encode("utf-8")})


# -- one request's answer raises ---------------------------------------------------------------


@pytest.fixture
def raising_hook(node: NodeServer, monkeypatch: pytest.MonkeyPatch):
    """``/boom`` raises in the synchronous hook, ``/boom-later`` in the awaited answer before
    writing anything, ``/boom-midway`` after the head is out."""
    features = node.node.features
    assert features is not None
    receive = features.receive

    async def later() -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("deliberate failure after an await")

    async def midway(conn) -> None:
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await asyncio.sleep(0.01)
        raise RuntimeError("deliberate failure mid-body")

    def hook(req, conn, primary):
        if req.path == "/boom":
            raise RuntimeError("deliberate failure")
        if req.path == "/boom-later":
            return later()
        if req.path == "/boom-midway":
            return midway(conn)
        return receive(req, conn, primary)

    monkeypatch.setattr(features, "receive", hook)


@pytest.mark.parametrize("boom", ["/boom", "/boom-later"])
async def test_a_raising_answer_is_a_500_and_the_pipeline_goes_on(
    origin: TestOrigin, node: NodeServer, raising_hook: None,
    caplog: pytest.LogCaptureFixture, boom: str,
) -> None:
    origin.set("/y", b"y-body", headers={"Cache-Control": "max-age=60"})
    with caplog.at_level(logging.INFO, logger="reelcdn"):
        for _ in range(3):
            answers = await pipelined(
                node.port, request_bytes("/y", {}), request_bytes(boom, {}),
                request_bytes("/y", {}),
            )
            assert [a.status for a in answers] == [200, 500, 200]
            assert answers[1].header("connection") is None  # the connection stays usable
            assert answers[2].body == b"y-body"
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 3  # one line per failed request
    assert all(f"GET {boom} failed: RuntimeError" in r.getMessage() for r in failures)
    assert sum(r.exc_info is not None for r in failures) <= 1  # the traceback once at most


async def test_a_response_that_breaks_midway_cuts_the_connection(
    origin: TestOrigin, node: NodeServer, raising_hook: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    origin.set("/y", b"y-body", headers={"Cache-Control": "max-age=60"})
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    try:
        writer.write(request_bytes("/boom-midway", {}) + request_bytes("/y", {}))
        async with asyncio.timeout(10):
            received = await reader.read()  # until the node closes
    finally:
        writer.close()
    assert received.startswith(b"HTTP/1.1 200 OK") and b"y-body" not in received
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "answering GET /boom-midway failed: RuntimeError: deliberate failure mid-body"
    ]
