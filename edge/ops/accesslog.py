"""Access logs: one line per response, written by a thread, never waited for.

What the request path does (``HttpConnection``, through its ``AccessLogSink``): keep the
request, its first write (the head) and a count of bytes handed to the transport; when the
response is complete or cut, call :meth:`AccessLog.emit`, which draws the sample and appends
one tuple to a list: no formatting, no system call, no lock. A full buffer drops the line and
counts it.

Formatting happens on the loop, in one batch every ``FLUSH_SECONDS``: this tier's
``Cache-Status`` member and the upstream read from the head (cached per head object: a HIT's
head is the entry's own bytes), token parameters stripped from the target, the CMCD session id,
one f-string per line (JSON) or nginx's ``combined``. Not in the thread: uvloop releases the
GIL while it polls, so a thread busy formatting would make the loop wait for the GIL at every
callback (measured: a 2 KiB HIT at 0.3× with the thread formatting).

What the writer thread does: ``os.write`` each batch to a file opened ``O_APPEND`` (or to
stdout), with the GIL released for the system call. A failed write (ENOSPC, EIO) drops the
batch's lines and counts them: a slow or full disk never stalls a request, it fills the buffer
(``access_log_buffer`` lines, queued and unwritten) and further lines drop. :meth:`reopen`
(SIGUSR1, as nginx) makes it open the path again before its next batch, so ``logrotate`` can
rename the file.

Counted on ``NodeStats.access_log_dropped`` by reason: ``queue`` (the queue was full) and
``write`` (the write failed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import threading
import time
from collections import deque
from typing import TYPE_CHECKING
from urllib.parse import unquote

from reelcdn.edge.config.model import TOKEN_QUERY_PARAMS

if TYPE_CHECKING:
    from reelcdn.edge.config.model import NodeConfig
    from reelcdn.edge.metrics import NodeStats
    from reelcdn.extensions.message import Request

log = logging.getLogger("reelcdn.accesslog")

# Responses are formatted in one batch this long after the first of them, on the loop; the
# writer thread looks for batches this often (woken early only to reopen or stop). Each
# wake-up of the thread costs the loop a hand-over of the GIL: a wake-up per batch cost a
# 2 KiB HIT several times more than one every 100 ms.
FLUSH_SECONDS = 0.02
WRITE_SECONDS = 0.1
# At most this long to write what is queued when the node stops.
CLOSE_SECONDS = 2.0

# Every token format's query parameters (lowercase): a node that does not check tokens may
# still forward them to a parent that does, and a log must not keep a credential either way.
_TOKEN_NAMES = frozenset(n.lower() for names in TOKEN_QUERY_PARAMS.values() for n in names)

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# One queued response: (method, target, version, start, the status of a request refused before
# its head was whole or 0, query, CMCD-Session field, (Referer, User-Agent) for combined,
# client address, head bytes or None, bytes handed to the transport, time to first byte or
# -1, end on the loop's clock, aborted).
Record = tuple


def stripped_names(config: NodeConfig) -> frozenset[str]:
    """The query parameters left out of a logged target: every token format's, the node's own
    ``query_param`` and the ``carried_query_params`` (tokens copied into playlists)."""
    names = set(_TOKEN_NAMES)
    if config.tokens is not None and config.tokens.query_param:
        names.add(config.tokens.query_param.lower())
    names.update(n.lower() for n in config.carried_query_params)
    return frozenset(names)


def strip_target(target: str, names: frozenset[str]) -> str:
    """``target`` without the query parameters named in ``names`` (compared lowercased)."""
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


class AccessLog:
    """One node's access log: records the loop collects and formats in batches, and the
    thread that writes them."""

    def __init__(self, config: NodeConfig, stats: NodeStats, member: bytes) -> None:
        self.stats = stats
        self.member = member
        self.capacity = config.access_log_buffer
        self.sample = config.access_log_sample
        self.path = config.access_log
        self.combined = config.access_log_format == "combined"
        self.node = config.name
        self.strip = stripped_names(config)
        # The node's upstream (NodeServer sets it, and again on a reload): named for a
        # forwarded response whose head names no parent tier.
        self.upstream_name = ""
        # On the loop: records of this batch, the timer that formats them.
        self.pending: list[Record] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Formatted batches for the writer: (bytes, lines). The backlog in lines is
        # ``queued - written``, each counter written by one thread only.
        self.chunks: deque[tuple[bytes, int]] = deque()
        self.queued = 0
        self.written = 0
        # Per head (the same bytes object for every HIT of an entry): its facts, as JSON.
        self._facts: dict[bytes | None, tuple[int, int, str, str, str]] = {}
        self._targets: dict[bytes, str] = {}
        self._second = -1
        self._stamp = ""
        self._fd = -1
        self._reopen = True
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._lost_logged = 0.0

    # -- on the loop ------------------------------------------------------------------------
    def emit(self, request: Request, client: str, head: bytes | None, sent: int, ttfb: float,
             end: float, aborted: bool) -> None:
        """Keep one response for the next batch (or not: the sample, a full buffer)."""
        if self.sample < 1.0 and random.random() >= self.sample:
            return
        pending = self.pending
        if len(pending) + self.queued - self.written >= self.capacity:
            self._drop("queue", 1)
            return
        # Plain values only, not the request: a record that held the request (a dict, a
        # list) would outlive the young generation and make the collector's full passes,
        # over the whole cache, run many times more often (seen as 80 ms pauses).
        headers = request.headers
        refused = request.error[0] if request.error is not None and not request.start else 0
        extra = ((headers.get(b"referer"), headers.get(b"user-agent")) if self.combined
                 else _NO_EXTRA)
        pending.append((request.method, request.target, request.version, request.start,
                        refused, request.query, headers.get(b"cmcd-session"), extra,
                        client, head, sent, ttfb, end, aborted))
        if self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Format the batch into one chunk of lines for the writer (on the loop: a thread
        formatting while the loop serves would take the GIL from it at every callback)."""
        self._timer = None
        batch = self.pending
        if not batch:
            return
        self.pending = []
        try:
            offset = time.time() - time.monotonic()  # the loop's clock is monotonic
            if self.combined:
                data = "".join([self._combined(r, offset) for r in batch])
            else:
                data = self._json_lines(batch, offset)
        except Exception:  # a bug here must not break the responses that called emit
            log.exception("access log lines could not be formatted")
            self._drop("write", len(batch))
            return
        self.chunks.append((data.encode("utf-8", "replace"), len(batch)))
        self.queued += len(batch)  # (no wake-up: the writer looks every WRITE_SECONDS)

    def configure(self, config: NodeConfig) -> None:
        """A reload: format, sample, buffer and stripped names now; a new path at the next
        batch."""
        self.flush()
        self.capacity = config.access_log_buffer
        self.sample = config.access_log_sample
        self.combined = config.access_log_format == "combined"
        self.strip = stripped_names(config)
        self._facts.clear()
        self._targets.clear()
        if config.access_log != self.path:
            self.path = config.access_log
            self._reopen = True
            self._wake.set()

    def reopen(self) -> None:
        """SIGUSR1: open the path again before the next batch (the file was rotated)."""
        self._reopen = True
        self._wake.set()

    def start(self) -> None:
        """On the running loop: start the writer thread."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is collected (bounded by CLOSE_SECONDS), then stop the writer. Called
        on the loop, the wait for the thread off it (see ``NodeServer``)."""
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
        self._stop = True
        self._wake.set()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(CLOSE_SECONDS + 1.0)
            self._thread = None
        self._close_fd()

    # -- formatting (on the loop, in batches) -----------------------------------------------
    def _head_facts(self, data: bytes | None) -> tuple[int, int, str, str, str]:
        """(status, head length, cache, upstream as JSON, cache as JSON) of a response's
        first write; cached per head (a small HIT's first write is its head joined with the
        body, a new object each time, but the head is the same for a second of Age)."""
        head = data
        if data is not None:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                head = data[:end + 4]  # (data itself when it is the head alone)
        facts = self._facts.get(head)
        if facts is None:
            status, head_len, cache, upstream = head_facts(head, self.member, self.upstream_name)
            facts = (status, head_len, cache, _json_str(upstream), _json_str(cache))
            if len(self._facts) >= 4096:
                self._facts.clear()
            self._facts[head] = facts
        return facts

    def _target(self, target: bytes) -> str:
        """The target as a JSON string, token parameters stripped; cached per target."""
        cached = self._targets.get(target)
        if cached is None:
            text = target.decode("latin-1")
            if b"?" in target:
                text = strip_target(text, self.strip)
            cached = _json_str(text)
            if len(self._targets) >= 4096:
                self._targets.clear()
            self._targets[target] = cached
        return cached

    def _json_lines(self, batch: list[Record], offset: float) -> str:
        """The batch as JSON lines: one f-string a line, what repeats (a head's facts, a
        target, the second's timestamp) computed once. Times in seconds, to the millisecond
        of the loop's clock."""
        tail = f',"node":{_json_str(self.node)},"aborted":'
        target_of = self._targets.get
        versions = _VERSIONS
        second = self._second
        stamp = self._stamp
        lines = []
        append = lines.append
        for (method, raw_target, version, start, refused, query, cmcd, _, client, head, sent,
             ttfb, end, aborted) in batch:
            status, head_len, _, upstream, cache = self._head_facts(head)
            if refused:  # refused before its head was whole
                status, head_len, method, target = refused, 0, "-", '"-"'
            else:
                target = target_of(raw_target) or self._target(raw_target)
            if not status:
                status = 499 if aborted else 0  # nothing was written (nginx: client closed)
            sid = '""'
            if query or cmcd is not None:
                sid = _json_str(cmcd_session(query, cmcd))
            ms = int((end + offset) * 1000.0)
            if ms // 1000 != second:
                second = ms // 1000
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            append(
                f'{{"time":"{stamp}.{ms % 1000:03d}Z","client":"{client}","method":"{method}",'
                f'"target":{target},"protocol":"{versions.get(version, "HTTP/?")}",'
                f'"status":{status},"bytes":{sent},"body_bytes":{max(sent - head_len, 0)},'
                f'"ttfb":{"null" if ttfb < 0 else f"{ttfb:.3f}"},'
                f'"duration":{end - start if start else 0.0:.3f},"cache":{cache},'
                f'"upstream":{upstream},"sid":{sid}{tail}{"true" if aborted else "false"}}}\n'
            )
        self._second = second
        self._stamp = stamp
        return "".join(lines)

    def _combined(self, record: Record, offset: float) -> str:
        """nginx's ``combined``: ``$remote_addr - $remote_user [$time_local] "$request"
        $status $body_bytes_sent "$http_referer" "$http_user_agent"``."""
        (method, raw_target, version, _, refused, _, _, (referer, agent), client, head, sent, _,
         end, aborted) = record
        status, head_len, _, _, _ = self._head_facts(head)
        if refused:
            status, head_len, line = refused, 0, "-"
        else:
            target = raw_target.decode("latin-1")
            if "?" in target:
                target = strip_target(target, self.strip)
            line = _escape(f"{method} {target} HTTP/{version.decode('latin-1')}")
        if not status:
            status = 499 if aborted else 0
        t = time.gmtime(end + offset)
        stamp = (f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year:04d}:"
                 f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000")
        return (f'{client or "-"} - - [{stamp}] "{line}" {status} '
                f'{max(sent - head_len, 0)} "{_quoted(referer)}" "{_quoted(agent)}"\n')

    # -- in the writer thread ---------------------------------------------------------------
    def _drop(self, reason: str, lines: int) -> None:
        dropped = self.stats.access_log_dropped
        dropped[reason] = dropped.get(reason, 0) + lines

    def _close_fd(self) -> None:
        if self._fd > 2:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = -1

    def _open(self) -> None:
        self._reopen = False
        self._close_fd()
        path = self.path
        if path is None:
            return
        if path == "stdout":
            self._fd = 1
            return
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            log.error("access log %s cannot be opened: %s", path, exc)

    def _run(self) -> None:
        chunks = self.chunks
        deadline = 0.0
        while True:
            self._wake.wait(WRITE_SECONDS)
            self._wake.clear()
            if self._reopen:
                self._open()
            if self._stop and not deadline:
                deadline = time.monotonic() + CLOSE_SECONDS
            while chunks:
                data, lines = chunks.popleft()
                if deadline and time.monotonic() > deadline:
                    self._drop("write", lines)
                else:
                    self._write(data, lines)
                self.written += lines
            if deadline:
                return

    def _write(self, data: bytes, lines: int) -> None:
        if self._fd < 0:
            self._drop("write", lines)
            return
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            # Lines are whole in `data`; count the ones that did not make it whole.
            lost = view.tobytes().count(b"\n")
            self._drop("write", lost)
            now = time.monotonic()
            if now - self._lost_logged > 60.0:
                self._lost_logged = now
                log.warning("access log %s: write failed (%s); %d lines dropped", self.path,
                            exc.strerror or exc, lost)


_NO_EXTRA = (None, None)
_VERSIONS = {b"1.1": "HTTP/1.1", b"1.0": "HTTP/1.0"}
_PLAIN = re.compile(r'[\x20-\x21\x23-\x5b\x5d-\x7e]*')


def _json_str(text: str) -> str:
    """``text`` as a JSON string (printable ASCII without quotes or backslashes as is)."""
    if _PLAIN.fullmatch(text):
        return '"' + text + '"'
    return json.dumps(text)


def _escape(text: str) -> str:
    """nginx's escaping of a logged string: ``"``, ``\\`` and bytes outside printable ASCII
    as ``\\xHH``."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "\\x%02X" % (ord(c) & 0xFF)
                   for c in text)


def _quoted(value: bytes | None) -> str:
    return "-" if not value else _escape(value.decode("latin-1"))
