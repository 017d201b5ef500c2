"""A fault-injecting HTTP origin: serves a folder laid out as ``reelcdn up``'s filesystem
origin (``v/{id}/...``, with the per-file headers of ``.headers/`` sidecars), and misbehaves
on command. The chaos soak puts it between the shield and the files
(``[origin.main] type = "http"``).

Faults (``POST /__chaos/fault`` with a JSON object; several may be active at once, the
earliest started is tried first):

* ``fail``: answer ``status`` (503) with a short body;
* ``slow``: wait ``delay`` seconds before the head;
* ``truncate``: send the head with the full ``Content-Length``, then part of the body (a
  random cut), then reset the connection: what a crashing origin or a broken path does;
* ``reset``: reset the connection (RST) without answering.

Each applies to a ``fraction`` of requests for ``seconds`` seconds, then lapses by itself (a
soak that dies cannot leave its origin failing). ``{"mode": null}`` clears every fault.
``GET /__chaos/stats`` answers the counts: requests, faulted by mode, statuses, bytes.
Control paths are not counted.

Run: ``python -m reelcdn.loadtest.chaos.origin --root DIR --port N``. A small HTTP/1.1 server
of its own (keep-alive, GET and HEAD) rather than aiohttp's, because truncating a body after
its head and resetting a connection need the transport itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import os
import random
import signal
import socket
import struct
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from reelcdn.shield.sidecar import parse as parse_sidecar
from reelcdn.shield.sidecar import sidecar_path

MODES = ("fail", "slow", "truncate", "reset")
HEAD_LIMIT = 64 * 1024
IDLE_TIMEOUT = 60.0
MAX_FAULTS = 64
TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".m4s": "video/iso.segment",
         ".mp4": "video/mp4", ".json": "application/json", ".jpg": "image/jpeg"}
REASONS = {200: "OK", 206: "Partial Content", 304: "Not Modified", 400: "Bad Request",
           404: "Not Found", 405: "Method Not Allowed"}


def byte_range(value: str | None, size: int) -> tuple[int, int] | None:
    """The one satisfiable range of a ``Range: bytes=…`` field as (first, last), or None to
    answer the whole body (no field, several ranges, or one this origin does not serve) —
    as simple origins do; enough for a shield resuming a cut body."""
    if not value or not value.startswith("bytes=") or "," in value or size == 0:
        return None
    first_text, _, last_text = value[6:].strip().partition("-")
    try:
        if not first_text:  # a suffix: the last N bytes
            count = int(last_text)
            return (max(0, size - count), size - 1) if count > 0 else None
        first = int(first_text)
        last = min(int(last_text), size - 1) if last_text else size - 1
    except ValueError:
        return None
    return (first, last) if 0 <= first <= last else None

class FaultSet:
    """The active faults; ``pick`` draws the one (if any) a request meets."""

    def __init__(self, seed: int = 1) -> None:
        self.faults: list[dict[str, Any]] = []
        self.rng = random.Random(seed)

    def add(self, spec: dict[str, Any]) -> dict[str, Any]:
        mode = spec.get("mode")
        if mode is None:
            self.faults.clear()
            return {"cleared": True}
        if mode not in MODES:
            raise ValueError(f"mode: one of {', '.join(MODES)}")
        seconds = float(spec.get("seconds", 0))
        fraction = float(spec.get("fraction", 1.0))
        if not 0 < seconds <= 86400 or not 0 < fraction <= 1:
            raise ValueError("seconds in (0, 86400], fraction in (0, 1]")
        fault = {"mode": mode, "until": time.monotonic() + seconds, "fraction": fraction,
                 "delay": float(spec.get("delay", 2.0)), "status": int(spec.get("status", 503))}
        self.faults = [f for f in self.faults if f["until"] > time.monotonic()][-MAX_FAULTS:]
        self.faults.append(fault)
        return {k: v for k, v in fault.items() if k != "until"}

    def pick(self) -> dict[str, Any] | None:
        now = time.monotonic()
        for fault in self.faults:
            if fault["until"] > now and self.rng.random() < fault["fraction"]:
                return fault
        return None


class ChaosOrigin:
    def __init__(self, root: Path, seed: int = 1) -> None:
        self.root = root.resolve()
        self.faults = FaultSet(seed)
        self.requests = 0
        self.faulted: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.bytes = 0
        self.rng = random.Random(seed + 1)

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "faulted": dict(self.faulted),
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "bytes": self.bytes,
                "active": [f["mode"] for f in self.faults.faults
                           if f["until"] > time.monotonic()]}

    # ------------------------------------------------------------------ connection

    async def connection(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    async with asyncio.timeout(IDLE_TIMEOUT):
                        head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                        ConnectionError):
                    return
                keep = await self.request(head, reader, writer)
                if not keep:
                    return
        except asyncio.CancelledError:   # the server is closing: not an error
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def request(self, head: bytes, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must end."""
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            await self.simple(writer, 400, "bad request line\n", close=True)
            return False
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
        path = target.split("?", 1)[0]
        if path.startswith("/__chaos/"):
            return await self.control(method, path, headers, reader, writer) and not close
        if method not in ("GET", "HEAD"):
            await self.simple(writer, 405, "GET or HEAD\n", close=True)
            return False
        self.requests += 1
        fault = self.faults.pick()
        mode = fault["mode"] if fault else None
        if mode is not None:
            self.faulted[mode] += 1
        if mode == "reset":
            self.reset(writer)
            return False
        if mode == "slow":
            await asyncio.sleep(fault["delay"])  # type: ignore[index]
        if mode == "fail":
            await self.simple(writer, fault["status"], "origin failing (chaos)\n",  # type: ignore[index]
                              close=close, head_only=method == "HEAD")
            return not close
        file = self.resolve(path)
        if file is None:
            await self.simple(writer, 404, "not found\n", close=close, head_only=method == "HEAD")
            return not close
        try:
            body = file.read_bytes()
            st = file.stat()
        except OSError:
            await self.simple(writer, 404, "not found\n", close=close, head_only=method == "HEAD")
            return not close
        etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
        fields = [("Date", email.utils.formatdate(usegmt=True)), ("ETag", etag),
                  ("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))]
        given = self.sidecar(file)
        if "Cache-Control" in given:
            fields.append(("Cache-Control", given["Cache-Control"]))
        if headers.get("if-none-match") in (etag, "*"):
            self.statuses[304] += 1
            writer.write(self.head(304, fields, close))
            await writer.drain()
            return not close
        fields.append(("Content-Type", given.get("Content-Type")
                       or TYPES.get(file.suffix, "application/octet-stream")))
        fields.append(("Accept-Ranges", "bytes"))
        status = 200
        wanted = byte_range(headers.get("range"), len(body)) \
            if headers.get("if-range", etag) == etag else None
        if wanted is not None:  # what a resuming shield asks (Range + If-Range)
            start, end = wanted
            status, body = 206, body[start:end + 1]
            fields.append(("Content-Range", f"bytes {start}-{end}/{st.st_size}"))
        fields.append(("Content-Length", str(len(body))))
        self.statuses[status] += 1
        writer.write(self.head(status, fields, close))
        if method == "HEAD":
            await writer.drain()
            return not close
        if mode == "truncate" and body:
            cut = self.rng.randrange(0, len(body))
            writer.write(body[:cut])
            self.bytes += cut
            await writer.drain()
            self.reset(writer)
            return False
        writer.write(body)
        self.bytes += len(body)
        await writer.drain()
        return not close

    def resolve(self, path: str) -> Path | None:
        segments = path.lstrip("/").split("/")
        if not path.startswith("/") or any(s in ("", ".", "..") or s.startswith(".")
                                           for s in segments):
            return None
        file = (self.root / "/".join(segments)).resolve()
        return file if file.is_relative_to(self.root) and file.is_file() else None

    def sidecar(self, file: Path) -> dict[str, str]:
        try:
            data = Path(sidecar_path(str(file))).read_bytes()
            parsed = parse_sidecar(data)
        except (OSError, ValueError):
            return {}
        return {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes)
                else v for k, v in dict(parsed).items()}

    @staticmethod
    def head(status: int, fields: list[tuple[str, str]], close: bool) -> bytes:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}"]
        lines += [f"{k}: {v}" for k, v in fields]
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def simple(self, writer: asyncio.StreamWriter, status: int, text: str,
                     close: bool = False, head_only: bool = False) -> None:
        body = text.encode()
        self.statuses[status] += 1
        writer.write(self.head(status, [("Date", email.utils.formatdate(usegmt=True)),
                                        ("Content-Type", "text/plain"),
                                        ("Content-Length", str(len(body)))], close))
        if not head_only:
            writer.write(body)
        await writer.drain()

    @staticmethod
    def reset(writer: asyncio.StreamWriter) -> None:
        """Close with RST (SO_LINGER 0), as a crashed peer's kernel does."""
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def control(self, method: str, path: str, headers: dict[str, str],
                      reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if path == "/__chaos/stats" and method == "GET":
            await self.json(writer, 200, self.stats())
            return True
        if path == "/__chaos/fault" and method == "POST":
            try:
                length = int(headers.get("content-length", "0"))
                if not 0 <= length <= 65536:
                    raise ValueError("body too large")
                spec = json.loads(await reader.readexactly(length) or b"{}")
                if not isinstance(spec, dict):
                    raise ValueError("a JSON object")
                await self.json(writer, 200, self.faults.add(spec))
            except (ValueError, TypeError, asyncio.IncompleteReadError) as exc:
                await self.json(writer, 400, {"error": str(exc)})
                return False
            return True
        await self.simple(writer, 404, "no such control path\n")
        return True

    @staticmethod
    async def json(writer: asyncio.StreamWriter, status: int, data: Any) -> None:
        body = json.dumps(data).encode()
        writer.write(ChaosOrigin.head(status, [("Content-Type", "application/json"),
                                               ("Content-Length", str(len(body)))], False))
        writer.write(body)
        await writer.drain()


def die_with_parent() -> None:
    """Linux: SIGTERM this process when the process that started it dies (even by SIGKILL),
    so a soak killed hard leaves no origin behind."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    parent = os.environ.get("REELCDN_SUPERVISOR_PID", "")
    if parent.isdigit() and os.getppid() != int(parent):
        sys.exit(0)


async def serve(root: Path, host: str, port: int, seed: int) -> None:
    origin = ChaosOrigin(root, seed)
    server = await asyncio.start_server(origin.connection, host, port, limit=HEAD_LIMIT,
                                        reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"chaos origin: {root} on http://{host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    die_with_parent()
    asyncio.run(serve(Path(args.root), args.host, args.port, args.seed))


if __name__ == "__main__":
    main()
