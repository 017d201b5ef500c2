"""Benchmark: the S3 origin (boto3 in threads) against aiobotocore, for a shield's workload.

Workload: ``concurrency`` (200) GETs in flight at once, each reading the whole object, for
objects of 300 KB (a short-video segment) and 2 KB (a playlist, ``meta.json``), against an S3
API server (moto's by default, started here on a free port). Reported per run: requests per
second, p50/p99 latency (request start to last body byte) and the client process's CPU time
per request — on a small machine the server shares the cores, so the client's CPU cost is
what decides how much is left for the server (and, in production, for the shield's cache
hits).

    python -m reelcdn.loadtest.bench.s3_clients          # boto3 threads only
    /tmp/venv/bin/python -m reelcdn.loadtest.bench.s3_clients --aio  # both (aiobotocore venv)

aiobotocore pins botocore to a narrow range, so it is measured in a separate venv
(``python -m venv --system-site-packages /tmp/venv && /tmp/venv/bin/pip install aiobotocore``)
that leaves the main environment's boto3/botocore alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import boto3

from reelcdn.edge.config import UpstreamTimeouts
from reelcdn.shield.s3 import S3Origin

BUCKET = "bench"
SIZES = {"300KB": 300_000, "2KB": 2_000}


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server on a free loopback port; returns the process and its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(url + "/moto-api/", timeout=1):
                break
        except urllib.error.HTTPError:
            break
        except OSError:
            time.sleep(0.1)
    return process, url


def upload(endpoint: str, objects: int) -> None:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    for label, size in SIZES.items():
        for i in range(objects):
            client.put_object(Bucket=BUCKET, Key=f"{label}/seg_{i:05d}.m4s", Body=os.urandom(size))


async def run(
    fetch: Callable[[str], Awaitable[int]],
    label: str,
    objects: int,
    total: int,
    concurrency: int,
) -> dict[str, float]:
    """``total`` fetches, ``concurrency`` at a time, cycling over the objects of ``label``."""
    latencies: list[float] = []
    queue = iter(range(total))

    async def worker() -> None:
        for i in queue:
            key = f"{label}/seg_{i % objects:05d}.m4s"
            start = time.perf_counter()
            size = await fetch(key)
            latencies.append(time.perf_counter() - start)
            assert size == SIZES[label], (key, size)

    cpu = time.process_time()
    wall = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    latencies.sort()
    return {
        "rps": total / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "cpu_ms_per_req": 1000 * cpu / total,
    }


async def bench_threads(endpoint: str, pool: int, **kw: Any) -> dict[str, dict[str, float]]:
    origin = S3Origin(
        BUCKET,
        endpoint_url=endpoint,
        region="us-east-1",
        timeouts=UpstreamTimeouts(connect=5, first_byte=60, idle=60),
        max_connections=pool,
    )
    await origin.start()

    async def fetch(key: str) -> int:
        response = await origin.request("GET", "/" + key, [])
        size = 0
        async for chunk in response.chunks(60):
            size += len(chunk)
        response.release()
        return size

    try:
        return {label: await run(fetch, label, **kw) for label in SIZES}
    finally:
        await origin.close()


async def bench_aio(endpoint: str, pool: int, **kw: Any) -> dict[str, dict[str, float]]:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(
        max_pool_connections=pool,
        connect_timeout=5,
        read_timeout=60,
        retries={"mode": "standard", "total_max_attempts": 2},
        s3={"addressing_style": "path"},
    )
    async with get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=config
    ) as client:

        async def fetch(key: str) -> int:
            answer = await client.get_object(Bucket=BUCKET, Key=key)
            size = 0
            async with answer["Body"] as stream:
                while chunk := await stream.read(256 * 1024):
                    size += len(chunk)
            return size

        return {label: await run(fetch, label, **kw) for label in SIZES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--endpoint", help="an S3 endpoint (default: start moto's server)")
    parser.add_argument("--aio", action="store_true", help="also measure aiobotocore")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--objects", type=int, default=50)
    parser.add_argument("--pool", type=int, default=64, help="connections (and threads)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)
    process = None
    endpoint = args.endpoint
    if endpoint is None:
        process, endpoint = start_moto()
    try:
        upload(endpoint, args.objects)
        kw = {"objects": args.objects, "total": args.requests, "concurrency": args.concurrency}
        kinds: dict[str, Callable[..., Any]] = {"boto3-threads": bench_threads}
        if args.aio:
            kinds["aiobotocore"] = bench_aio
        if args.uvloop:
            import uvloop

            uvloop.install()
        import botocore

        print(f"botocore {botocore.__version__}, pool {args.pool}, {kw}")
        for round_ in range(args.rounds):  # alternate, so drift hits both alike
            for kind, bench in kinds.items():
                results = asyncio.run(bench(endpoint, args.pool, **kw))
                for label, r in results.items():
                    print(
                        f"round {round_} {kind:14} {label:6} {r['rps']:8.1f} req/s  "
                        f"p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms  "
                        f"cpu {r['cpu_ms_per_req']:.2f} ms/req",
                        flush=True,
                    )
    finally:
        if process is not None:
            process.terminate()
            process.wait()


if __name__ == "__main__":
    main()
