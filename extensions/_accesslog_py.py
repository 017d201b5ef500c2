"""Access log records and lines: a collector and a formatter, two implementations of each.

The node's access log (``edge/ops/accesslog.py``) collects one tuple of plain values per
response on the request path (:class:`Collector`) and formats them in batches, on the loop
(:class:`LineFormatter`). On a node that logs every response these two are the log's cost: a
2 KiB HIT with the lines formatted in Python (about 3.6 µs a line) ran at 0.7 of the rate
without the log, so both have a Cython twin (``extensions/_accesslog.pyx``): a collector
without a Python frame per response, and a formatter that writes each batch straight into one
buffer. This module is the reference (and what runs without a C compiler), chosen in
``reelcdn.extensions``; for every record both formatters give the same bytes.

A record (:data:`Record`) holds what the connection saw, unformatted: the request's method,
target, version and start, the status of a request refused before its head was whole (else 0),
its query and ``CMCD-Session`` field, its ``(Referer, User-Agent)`` (for ``combined``), the
client's address, the response's head (its first write, up to the blank line), the bytes
handed to the transport, the time to first byte (or -1) and the end on the loop's clock,
and whether it was cut. From these come the line's fields: this tier's ``Cache-Status`` member
and the upstream read from the head, the target without token parameters, the CMCD session id.

Both formats are ASCII whatever the input: JSON strings escape as ``json.dumps`` does
(``ensure_ascii``), and ``combined`` escapes as nginx does (``\\xHH``). Times are cut to the
millisecond of the loop's clock: ``time`` truncated, ``ttfb`` and ``duration`` rounded.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote

if TYPE_CHECKING:
    from reelcdn.extensions.message import Request

__all__ = ["Collector", "LineFormatter", "Record", "cmcd_session", "head_facts", "strip_target"]

# (method, target, version, start, refused status or 0, query, CMCD-Session field,
#  (Referer, User-Agent), client address, head (first write up to its blank line) or None,
#  bytes sent, ttfb or -1, end, aborted)
Record = tuple

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_VERSIONS = {b"1.1": "HTTP/1.1", b"1.0": "HTTP/1.0"}
_NO_EXTRA = (None, None)
_PLAIN = re.compile(r'[\x20-\x21\x23-\x5b\x5d-\x7e]*')
# Longer than this (seconds) is written as this: a time that large is a broken clock, and a
# bound keeps the compiled twin's arithmetic in 64 bits.
MAX_SECONDS = 1e9


def strip_target(target: str, names: frozenset[str]) -> str:
    """``target`` without the query parameters named in ``names`` (compared lowercased, after
    percent-decoding); empty parameters go too."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    kept = [p for p in query.split("&")
            if p and unquote(p.partition("=")[0]).lower() not in names]
    return path + "?" + "&".join(kept) if kept else path


def cmcd_session(query: str, field: bytes | None) -> str:
    """The CMCD ``sid`` of a request (its ``CMCD`` query parameter or ``CMCD-Session``
    field), or empty."""
    text = ""
    if query and "cmcd=" in query.lower():
        for part in query.split("&"):
            name, _, value = part.partition("=")
            if name.lower() == "cmcd":
                text = unquote(value)
                break
    if not text:
        if field is None:
            return ""
        text = field.decode("latin-1")
    at = text.find('sid="')
    if at < 0:
        return ""
    end = text.find('"', at + 5)
    return text[at + 5:end] if end > 0 else ""


def head_facts(head: bytes | None, member: bytes,
               upstream_name: str = "") -> tuple[int, int, str, str]:
    """(status, head length, this tier's Cache-Status member parameters, upstream) from a
    response head. When this node forwarded (``fwd=``), the upstream is the member before this
    node's (the parent tier that answered), else ``upstream_name`` (the node's upstream: an
    origin, or the names of its origin chain); empty on a HIT."""
    if not head or not head.startswith(b"HTTP/"):
        return 0, 0, "", ""
    try:
        status = int(head[9:12])
    except ValueError:
        status = 0
    end = head.find(b"\r\n\r\n")
    head_len = end + 4 if end >= 0 else len(head)
    block = head[:head_len]
    at = block.lower().find(b"\r\ncache-status:")
    if at < 0:
        return status, head_len, "", ""
    line_end = block.find(b"\r\n", at + 2)
    members = [m.strip() for m in block[at + 15:line_end].split(b",")]
    for i in range(len(members) - 1, -1, -1):
        name, _, params = members[i].partition(b";")
        if name.strip() == member:
            cache = params.strip().decode("latin-1")
            upstream = ""
            if cache.startswith("fwd="):
                upstream = upstream_name
                if i > 0:
                    upstream = members[i - 1].partition(b";")[0].strip().strip(b'"').decode(
                        "latin-1")
            return status, head_len, cache, upstream
    return status, head_len, "", ""


def json_str(text: str) -> str:
    """``text`` as a JSON string, ASCII (printable ASCII without quotes or backslashes as
    is)."""
    if _PLAIN.fullmatch(text):
        return '"' + text + '"'
    return json.dumps(text)


def nginx_escape(text: str) -> str:
    """nginx's escaping of a logged string: ``"``, ``\\`` and characters outside printable
    ASCII as ``\\xHH`` (of the character's low byte)."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "\\x%02X" % (ord(c) & 0xFF)
                   for c in text)


def seconds(value: float) -> str:
    """Seconds to the millisecond, rounded (``0.000`` for anything not above zero)."""
    ms = int(min(value, MAX_SECONDS) * 1000.0 + 0.5) if value > 0 else 0
    return f"{ms // 1000}.{ms % 1000:03d}"


def iso_second(second: int) -> str:
    """``2026-12-02T15:02:01``: the JSON line's time to the second, UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def clf_second(second: int) -> str:
    """``02/Dec/2026:15:02:01 +0000``: nginx's ``$time_local``, in UTC."""
    t = time.gmtime(second)
    return (f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year:04d}:"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000")


class Collector:
    """The records of responses not yet formatted, kept on the request path.

    ``emit`` is called once per response, so it does only this: draw the sample, check the
    room left, cut the first write to the head, read the request's fields into one tuple of
    plain values and append it. No
    formatting, no system call, no lock. The first record of a batch calls ``on_first`` (the
    owner schedules the batch's formatting); a record refused for want of room calls
    ``on_drop``. The backlog is ``len(pending) + queued - written``: ``queued`` counts records
    the owner took and formatted, ``written`` those its writer is done with (each counter is
    written by one thread only).
    """

    def __init__(self, capacity: int, sample: float, combined: bool,
                 on_first: Callable[[], object], on_drop: Callable[[], object]) -> None:
        self.pending: list[Record] = []
        self.capacity = capacity
        self.sample = sample
        self.combined = combined
        self.queued = 0
        self.written = 0
        self.on_first = on_first
        self.on_drop = on_drop

    def emit(self, request: Request, client: str, head: bytes | None, sent: int, ttfb: float,
             end: float, aborted: bool) -> None:
        """Keep one response for the next batch (or not: the sample, a full buffer)."""
        if self.sample < 1.0 and random.random() >= self.sample:
            return
        pending = self.pending
        if len(pending) + self.queued - self.written >= self.capacity:
            self.on_drop()
            return
        if type(head) is bytes:
            cut = head.find(b"\r\n\r\n") + 4
            if 4 <= cut < len(head):
                head = head[:cut]
        # Plain values only, not the request: a record that held the request (a dict, a
        # list) would outlive the young generation and make the collector's full passes,
        # over the whole cache, run many times more often (seen as 80 ms pauses). And the
        # head alone, not the first write: a small HIT's is the whole response, kept for a
        # batch (20 ms, megabytes at a high rate) where it would be freed at once and its
        # memory, still in cache, reused by the next.
        headers = request.headers
        error = request.error
        refused = error[0] if error is not None and not request.start else 0
        extra = ((headers.get(b"referer"), headers.get(b"user-agent")) if self.combined
                 else _NO_EXTRA)
        pending.append((request.method, request.target, request.version, request.start,
                        refused, request.query, headers.get(b"cmcd-session"), extra,
                        client, head, sent, ttfb, end, aborted))
        if len(pending) == 1:
            self.on_first()

    def take(self) -> list[Record]:
        """The records collected since the last take, oldest first."""
        batch = self.pending
        self.pending = []
        return batch


class LineFormatter:
    """The lines of one node's records. What repeats between lines (a head's facts, a
    target, the second's timestamp) is computed once and kept."""

    def __init__(self, node: str, member: bytes, upstream_name: str,
                 strip: frozenset[str]) -> None:
        self.node = node
        self.member = member
        self.upstream_name = upstream_name
        self.strip = strip
        self._tail = f',"node":{json_str(node)},"aborted":'
        # Per head (the same bytes object for every HIT of an entry, for a second of Age).
        self._facts: dict[bytes | None, tuple[int, int, str, str]] = {}
        self._targets: dict[bytes, str] = {}
        self._json_second = -1
        self._json_stamp = ""
        self._clf_second = -1
        self._clf_stamp = ""

    def json_lines(self, batch: list[Record], offset: float) -> bytes:
        """The records as JSON lines; ``offset`` turns the loop's clock into wall time."""
        return "".join([self.json_line(r, offset) for r in batch]).encode("ascii")

    def combined_lines(self, batch: list[Record], offset: float) -> bytes:
        """The records as nginx ``combined`` lines."""
        return "".join([self.combined_line(r, offset) for r in batch]).encode("ascii")

    def json_line(self, record: Record, offset: float) -> str:
        (method, raw_target, version, start, refused, query, cmcd, _, client, head, sent,
         ttfb, end, aborted) = record
        status, head_len, cache, upstream = self._head_facts(head)
        if refused:  # refused before its head was whole
            status, head_len, method_text, target = refused, 0, '"-"', '"-"'
        else:
            method_text = json_str(method)
            target = self._targets.get(raw_target) or self._json_target(raw_target)
        if not status:
            status = 499 if aborted else 0  # nothing was written (nginx: client closed)
        sid = '""'
        if query or cmcd is not None:
            sid = json_str(cmcd_session(query, cmcd))
        ms = int((end + offset) * 1000.0)
        if ms // 1000 != self._json_second:
            self._json_second = ms // 1000
            self._json_stamp = iso_second(ms // 1000)
        return (
            f'{{"time":"{self._json_stamp}.{ms % 1000:03d}Z","client":{json_str(client)},'
            f'"method":{method_text},"target":{target},'
            f'"protocol":"{_VERSIONS.get(version, "HTTP/?")}","status":{status},'
            f'"bytes":{sent},"body_bytes":{max(sent - head_len, 0)},'
            f'"ttfb":{"null" if ttfb < 0 else seconds(ttfb)},'
            f'"duration":{seconds(end - start) if start else "0.000"},'
            f'"cache":{cache},"upstream":{upstream},"sid":{sid}'
            f'{self._tail}{"true" if aborted else "false"}}}\n'
        )

    def combined_line(self, record: Record, offset: float) -> str:
        """nginx's ``combined``: ``$remote_addr - $remote_user [$time_local] "$request"
        $status $body_bytes_sent "$http_referer" "$http_user_agent"``."""
        (method, raw_target, version, _, refused, _, _, (referer, agent), client, head, sent, _,
         end, aborted) = record
        status, head_len, _, _ = self._head_facts(head)
        if refused:
            status, head_len, line = refused, 0, "-"
        else:
            target = raw_target.decode("latin-1")
            if "?" in target:
                target = strip_target(target, self.strip)
            line = nginx_escape(f"{method} {target} HTTP/{version.decode('latin-1')}")
        if not status:
            status = 499 if aborted else 0
        second = int(end + offset)
        if second != self._clf_second:
            self._clf_second = second
            self._clf_stamp = clf_second(second)
        return (f'{nginx_escape(client) if client else "-"} - - [{self._clf_stamp}] "{line}" '
                f'{status} {max(sent - head_len, 0)} "{_quoted(referer)}" "{_quoted(agent)}"\n')

    def _head_facts(self, data: bytes | None) -> tuple[int, int, str, str]:
        """(status, head length, cache as JSON, upstream as JSON) of a response's first write;
        cached per head (a small HIT's first write is its head joined with the body, a new
        object each time, but the head is the same for a second of Age)."""
        head = data
        if data is not None:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                head = data[:end + 4]  # (data itself when it is the head alone)
        facts = self._facts.get(head)
        if facts is None:
            status, head_len, cache, upstream = head_facts(head, self.member, self.upstream_name)
            facts = (status, head_len, json_str(cache), json_str(upstream))
            if len(self._facts) >= 4096:
                self._facts.clear()
            self._facts[head] = facts
        return facts

    def _json_target(self, target: bytes) -> str:
        """The target as a JSON string, token parameters stripped; cached per target."""
        text = target.decode("latin-1")
        if "?" in text:
            text = strip_target(text, self.strip)
        cached = json_str(text)
        if len(self._targets) >= 4096:
            self._targets.clear()
        self._targets[target] = cached
        return cached


def _quoted(value: bytes | None) -> str:
    return "-" if not value else nginx_escape(value.decode("latin-1"))
