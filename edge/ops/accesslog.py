"""Access logs: one line per response, written by a thread, never waited for.

What the request path does (``HttpConnection``, through its ``AccessLogSink``): keep the
request, its first write (the head) and a count of bytes handed to the transport; when the
response is complete or cut, call
:meth:`AccessLog.emit`, which draws the sample and appends one tuple to a bounded deque. No
formatting, no system call, no lock on the loop: a full queue drops the line and counts it.

What the writer thread does, in batches: format each line (JSON, or nginx's ``combined``),
take this tier's ``Cache-Status`` member and the upstream from the head, strip token
parameters from the target, read the CMCD session id, and ``os.write`` the batch to a file
opened ``O_APPEND`` (or to stdout). A failed write (ENOSPC, EIO) drops the batch's lines and
counts them: a slow or full disk never stalls a request. :meth:`reopen` (SIGUSR1, as nginx)
makes it open the path again before its next batch, so ``logrotate`` can rename the file.

Counted on ``NodeStats.access_log_dropped`` by reason: ``queue`` (the queue was full) and
``write`` (the write failed).
"""

from __future__ import annotations

import json
import logging
import os
import random
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

# Lines formatted and written per batch, and how long the writer sleeps when it has none.
BATCH_LINES = 2048
IDLE_SECONDS = 0.05
# At most this long to write what is queued when the node stops.
CLOSE_SECONDS = 2.0

# Every token format's query parameters (lowercase): a node that does not check tokens may
# still forward them to a parent that does, and a log must not keep a credential either way.
_TOKEN_NAMES = frozenset(n.lower() for names in TOKEN_QUERY_PARAMS.values() for n in names)

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# One queued response: (request, client address, head bytes or None, bytes handed to the
# transport, time to first byte or -1, end on the loop's clock, aborted).
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


def cmcd_session(request: Request) -> str:
    """The CMCD ``sid`` of a request (its ``CMCD`` query parameter or ``CMCD-Session``
    field), or empty."""
    text = ""
    query = request.query
    if query and "cmcd=" in query.lower():
        for part in query.split("&"):
            name, _, value = part.partition("=")
            if name.lower() == "cmcd":
                text = unquote(value)
                break
    if not text:
        raw = request.headers.get(b"cmcd-session")
        if raw is None:
            return ""
        text = raw.decode("latin-1")
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
    """One node's access log: the queue the loop fills and the thread that writes it."""

    def __init__(self, config: NodeConfig, stats: NodeStats, member: bytes) -> None:
        self.stats = stats
        self.member = member
        self.queue: deque[Record] = deque()
        self.capacity = config.access_log_buffer
        self.sample = config.access_log_sample
        self.path = config.access_log
        self.combined = config.access_log_format == "combined"
        self.node = config.name
        self.strip = stripped_names(config)
        # The node's upstream (NodeServer sets it, and again on a reload): named for a
        # forwarded response whose head names no parent tier.
        self.upstream_name = ""
        self._fd = -1
        self._reopen = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost_logged = 0.0

    # -- on the loop ------------------------------------------------------------------------
    def emit(self, request: Request, client: str, head: bytes | None, sent: int, ttfb: float,
             end: float, aborted: bool) -> None:
        """Queue one response's line (or not: the sample, a full queue)."""
        if self.sample < 1.0 and random.random() >= self.sample:
            return
        queue = self.queue
        if len(queue) >= self.capacity:
            self._drop("queue", 1)
            return
        queue.append((request, client, head, sent, ttfb, end, aborted))

    def configure(self, config: NodeConfig) -> None:
        """A reload: format, sample, buffer and stripped names now; a new path at the next
        batch."""
        self.capacity = config.access_log_buffer
        self.sample = config.access_log_sample
        self.combined = config.access_log_format == "combined"
        self.strip = stripped_names(config)
        if config.access_log != self.path:
            self.path = config.access_log
            self._reopen = True

    def reopen(self) -> None:
        """SIGUSR1: open the path again before the next batch (the file was rotated)."""
        self._reopen = True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the writer after it wrote what is queued (bounded by CLOSE_SECONDS)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(CLOSE_SECONDS + 1.0)
            self._thread = None
        self._close_fd()

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
        queue = self.queue
        deadline = 0.0
        while True:
            if self._reopen:
                self._open()
            if self._stop.is_set() and not deadline:
                deadline = time.monotonic() + CLOSE_SECONDS
            if not queue:
                if deadline:
                    return
                self._stop.wait(IDLE_SECONDS)
                continue
            if deadline and time.monotonic() > deadline:
                self._drop("queue", len(queue))
                queue.clear()
                return
            batch = []
            while queue and len(batch) < BATCH_LINES:
                batch.append(queue.popleft())
            self._write(batch)

    def _write(self, batch: list[Record]) -> None:
        if self._fd < 0:
            self._drop("write", len(batch))
            return
        try:
            offset = time.time() - time.monotonic()  # the loop's clock is monotonic
            format_line = self._combined if self.combined else self._json
            data = "".join([format_line(r, offset) for r in batch]).encode("utf-8", "replace")
        except Exception:  # a bug here must not kill the writer
            log.exception("access log lines could not be formatted")
            self._drop("write", len(batch))
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

    def _fields(self, record: Record, offset: float) -> dict[str, object]:
        request, client, head, sent, ttfb, end, aborted = record
        status, head_len, cache, upstream = head_facts(head, self.member, self.upstream_name)
        start = request.start
        method = request.method
        target = strip_target(request.target.decode("latin-1"), self.strip)
        error = request.error
        if error is not None and not start:  # refused before its head was whole
            status, head_len, method, target = error[0], 0, "-", "-"
        if not status:
            status = 499 if aborted else 0  # nothing was written (nginx's "client closed")
        return {
            "time": end + offset, "client": client, "method": method,
            "target": target, "protocol": "HTTP/" + request.version.decode("latin-1"),
            "status": status, "bytes": sent, "body_bytes": max(sent - head_len, 0),
            "ttfb": round(ttfb, 6) if ttfb >= 0 else None,
            "duration": round(max(end - start, 0.0), 6) if start else 0.0,
            "cache": cache, "upstream": upstream, "sid": cmcd_session(request),
            "node": self.node, "aborted": aborted,
        }

    def _json(self, record: Record, offset: float) -> str:
        fields = self._fields(record, offset)
        wall = fields["time"]
        assert isinstance(wall, float)
        fields["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + (
            f".{int((wall % 1) * 1000):03d}Z")
        return json.dumps(fields, separators=(",", ":")) + "\n"

    def _combined(self, record: Record, offset: float) -> str:
        """nginx's ``combined``: ``$remote_addr - $remote_user [$time_local] "$request"
        $status $body_bytes_sent "$http_referer" "$http_user_agent"``."""
        fields = self._fields(record, offset)
        request = record[0]
        wall = fields["time"]
        assert isinstance(wall, float)
        t = time.gmtime(wall)
        stamp = (f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year:04d}:"
                 f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000")
        referer = _quoted(request.headers.get(b"referer"))
        agent = _quoted(request.headers.get(b"user-agent"))
        line = _escape(f'{fields["method"]} {fields["target"]} {fields["protocol"]}')
        return (f'{fields["client"] or "-"} - - [{stamp}] "{line}" {fields["status"]} '
                f'{fields["body_bytes"]} "{referer}" "{agent}"\n')


def _escape(text: str) -> str:
    """nginx's escaping of a logged string: ``"``, ``\\`` and bytes outside printable ASCII
    as ``\\xHH``."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "\\x%02X" % (ord(c) & 0xFF)
                   for c in text)


def _quoted(value: bytes | None) -> str:
    return "-" if not value else _escape(value.decode("latin-1"))
