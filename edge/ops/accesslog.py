"""Access logs: one line per response, written by a thread, never waited for.

What the request path does (``HttpConnection``, through its ``AccessLogSink``): keep the
request, its first write (the head) and a count of bytes handed to the transport; when the
response is complete or cut, call ``emit``, which is the ``Collector.emit`` of
``reelcdn.extensions.accesslog`` (compiled when built, so no Python frame per response): it
draws the sample and appends one tuple of plain values to a list: no formatting, no system
call, no lock. A full buffer drops the line and counts it.

Formatting happens on the loop, in one batch every ``FLUSH_SECONDS``, by the line formatter of
``reelcdn.extensions.accesslog`` (compiled, with a pure-Python twin): this tier's
``Cache-Status`` member and the upstream read from the head, token parameters stripped from
the target, the CMCD session id, the whole batch written into one buffer (JSON lines or nginx's
``combined``). Not in the thread: uvloop releases the GIL while it polls, so a thread busy
formatting would make the loop wait for the GIL at every callback (measured: a 2 KiB HIT at
0.3× with the thread formatting). On a node with one process the loop pays for every line
either way, which is why the formatter is compiled rather than only moved.

What the writer thread does: ``os.writev`` the batches queued since it last looked, in one
call, to a file opened ``O_APPEND`` (or to stdout), with the GIL released for the system call.
A failed write (ENOSPC, EIO) drops the batch's lines and counts them: a slow or full disk never
stalls a request, it fills the buffer (``access_log_buffer`` lines, queued and unwritten) and
further lines drop. :meth:`reopen` (SIGUSR1, as nginx) makes it open the path again before its
next batch, so ``logrotate`` can rename the file.

Counted on ``NodeStats.access_log_dropped`` by reason: ``queue`` (the queue was full) and
``write`` (the write failed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from reelcdn.edge.config.model import TOKEN_QUERY_PARAMS
from reelcdn.extensions import accesslog as lines
from reelcdn.extensions._accesslog_py import (  # the formatter's pure helpers, for callers
    Record,
    cmcd_session,
    head_facts,
    strip_target,
)

__all__ = ["AccessLog", "Record", "cmcd_session", "head_facts", "strip_target",
           "stripped_names"]

if TYPE_CHECKING:
    from reelcdn.edge.config.model import NodeConfig
    from reelcdn.edge.metrics import NodeStats

log = logging.getLogger("reelcdn.accesslog")

# Responses are formatted in one batch this long after the first of them, on the loop; the
# writer thread looks for batches this often (woken early only to reopen or stop). Each
# wake-up of the thread costs the loop a hand-over of the GIL: a wake-up per batch cost a
# 2 KiB HIT several times more than one every 100 ms.
FLUSH_SECONDS = 0.02
WRITE_SECONDS = 0.1
# At most this long to write what is queued when the node stops.
CLOSE_SECONDS = 2.0
# Batches given to one writev at most (Linux's limit on its buffers).
IOV_MAX = 1024

# Every token format's query parameters (lowercase): a node that does not check tokens may
# still forward them to a parent that does, and a log must not keep a credential either way.
_TOKEN_NAMES = frozenset(n.lower() for names in TOKEN_QUERY_PARAMS.values() for n in names)


def stripped_names(config: NodeConfig) -> frozenset[str]:
    """The query parameters left out of a logged target: every token format's, the node's own
    ``query_param`` and the ``carried_query_params`` (tokens copied into playlists)."""
    names = set(_TOKEN_NAMES)
    if config.tokens is not None and config.tokens.query_param:
        names.add(config.tokens.query_param.lower())
    names.update(n.lower() for n in config.carried_query_params)
    return frozenset(names)


class AccessLog:
    """One node's access log: records the loop collects and formats in batches, and the
    thread that writes them."""

    def __init__(self, config: NodeConfig, stats: NodeStats, member: bytes) -> None:
        self.stats = stats
        self.member = member
        self.path = config.access_log
        self.combined = config.access_log_format == "combined"
        self.node = config.name
        self.strip = stripped_names(config)
        # The node's upstream (NodeServer sets it, and again on a reload): named for a
        # forwarded response whose head names no parent tier.
        self._upstream_name = ""
        self.formatter = self._formatter()
        # On the loop: the records of this batch, the timer that formats them. A connection
        # calls the collector's ``emit`` itself (compiled when built): no frame of ours per
        # response.
        self.collector = lines.Collector(config.access_log_buffer, config.access_log_sample,
                                         self.combined, self._first, self._dropped)
        self.emit = self.collector.emit
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Formatted batches for the writer: (bytes, lines). The backlog in lines is the
        # collector's ``queued - written``, each counter written by one thread only.
        self.chunks: deque[tuple[bytes, int]] = deque()
        self._fd = -1
        self._reopen = True
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._lost_logged = 0.0

    @property
    def capacity(self) -> int:
        """Lines collected and not yet written, at most (``access_log_buffer``)."""
        return self.collector.capacity

    @capacity.setter
    def capacity(self, lines: int) -> None:
        self.collector.capacity = lines

    @property
    def upstream_name(self) -> str:
        return self._upstream_name

    @upstream_name.setter
    def upstream_name(self, name: str) -> None:
        self._upstream_name = name
        self.formatter = self._formatter()

    def _formatter(self) -> lines.LineFormatter:
        return lines.LineFormatter(self.node, self.member, self._upstream_name, self.strip)

    # -- on the loop ------------------------------------------------------------------------
    def _first(self) -> None:
        """The first record of a batch: format the batch FLUSH_SECONDS from now."""
        if self._timer is None and self._loop is not None:
            self._timer = self._loop.call_later(FLUSH_SECONDS, self.flush)

    def _dropped(self) -> None:
        self._drop("queue", 1)

    def flush(self) -> None:
        """Format the batch into one chunk of lines for the writer (on the loop: a thread
        formatting while the loop serves would take the GIL from it at every callback)."""
        self._timer = None
        batch = self.collector.take()
        if not batch:
            return
        try:
            offset = time.time() - time.monotonic()  # the loop's clock is monotonic
            if self.combined:
                data = self.formatter.combined_lines(batch, offset)
            else:
                data = self.formatter.json_lines(batch, offset)
        except Exception:  # a bug here must not break the responses that called emit
            log.exception("access log lines could not be formatted")
            self._drop("write", len(batch))
            return
        self.chunks.append((data, len(batch)))
        self.collector.queued += len(batch)  # (no wake-up: the writer looks every WRITE_SECONDS)

    def configure(self, config: NodeConfig) -> None:
        """A reload: format, sample, buffer and stripped names now; a new path at the next
        batch."""
        self.flush()
        collector = self.collector
        collector.capacity = config.access_log_buffer
        collector.sample = config.access_log_sample
        self.combined = collector.combined = config.access_log_format == "combined"
        self.strip = stripped_names(config)
        self.formatter = self._formatter()
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
                # Every batch queued, in one writev: the thread takes the GIL back once per
                # system call, and each time the loop must hand it over (a wait of a
                # scheduler slice when the machine is busy).
                batch: list[bytes] = []
                lines = 0
                while chunks and len(batch) < IOV_MAX:
                    data, count = chunks.popleft()
                    batch.append(data)
                    lines += count
                if deadline and time.monotonic() > deadline:
                    self._drop("write", lines)
                else:
                    self._write(batch, lines)
                self.collector.written += lines
            if deadline:
                return

    def _write(self, batch: list[bytes], lines: int) -> None:
        if self._fd < 0:
            self._drop("write", lines)
            return
        rest: memoryview | None = None
        try:
            done = os.writev(self._fd, batch)
            if done < sum(map(len, batch)):  # (a file takes all of it but on an error)
                rest = memoryview(b"".join(batch))[done:]
                while rest:
                    rest = rest[os.write(self._fd, rest):]
        except OSError as exc:
            # Lines are whole in the batch; count the ones that did not make it whole.
            lost = lines if rest is None else rest.tobytes().count(b"\n")
            self._drop("write", lost)
            now = time.monotonic()
            if now - self._lost_logged > 60.0:
                self._lost_logged = now
                log.warning("access log %s: write failed (%s); %d lines dropped", self.path,
                            exc.strerror or exc, lost)
