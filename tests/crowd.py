"""Run a crowd of concurrent GETs from a separate process and report what each got.

Used by tests that measure latency under a crowd: a client sharing the node's event loop
would measure its own parsing, not the node. Prints one JSON object on stdout:
{"latencies": [...seconds], "statuses": {...}, "digests": {...}, "cache_status": {...}}.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from collections import Counter

from rawhttp import read_response


async def crowd(port: int, path: str, count: int, start_at: float) -> dict[str, object]:
    connections = []
    for _ in range(count):
        connections.append(await asyncio.open_connection("127.0.0.1", port))
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    delay = start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        started = time.perf_counter()
        writer.write(request)
        response = await read_response(reader)
        elapsed = time.perf_counter() - started
        writer.close()
        return elapsed, response

    results = await asyncio.gather(*(one(r, w) for r, w in connections))
    return {
        "latencies": [elapsed for elapsed, _ in results],
        "statuses": Counter(str(r.status) for _, r in results),
        "digests": Counter(hashlib.sha256(r.body).hexdigest() for _, r in results),
        "cache_status": Counter(r.header("cache-status") or "" for _, r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--start-at", type=float, default=0.0, help="epoch seconds")
    args = parser.parse_args()
    result = asyncio.run(asyncio.wait_for(
        crowd(args.port, args.path, args.count, args.start_at), 60))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
