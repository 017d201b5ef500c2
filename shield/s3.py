"""The S3 origin: objects are keys under a prefix of a bucket, on AWS or any S3 API (MinIO, moto).

boto3 is synchronous, so every call (``get_object``/``head_object``, and each 256 KiB read of
the streaming body) runs in the origin's own thread pool, as many threads as boto3 keeps
pooled connections (``max_connections``, 32). A body of at most one chunk (playlists, ``meta.json``,
most short-video segments) is read in the same thread hop as the request, and its connection
goes back to the pool before the event loop even sees the head. Credentials, region and
profile are found the way boto3 finds them (environment, profile, instance role): the shield
adds no credential handling of its own.

What the node gets is what the filesystem origin gives it, so a shield behaves the same on
either store: Content-Type from our extension map (S3 answers ``binary/octet-stream`` for
objects uploaded without a type, which players refuse for playlists), Content-Length, S3's
ETag and Last-Modified, ``Accept-Ranges: bytes``, plus the object's own Cache-Control,
Expires, Content-Encoding, Content-Disposition and Content-Language when it has them (set at
upload, they are the operator's intent). Conditional fills pass If-None-Match (or else
If-Modified-Since) to S3, whose 304 comes back as a 304 response.

Errors: S3's answers about the object are answers — 304, 404 (``NoSuchKey``), 403
(``AccessDenied``) — while everything that says the origin is unusable is a ``FetchFailed``
the origin chain fails over on: 502 for a refused connection (``retryable``), S3 5xx and any
other error (``NoSuchBucket``, bad credentials, ...), 504 for connect and read timeouts. A key
S3 would refuse as too long (over 1024 bytes) is a 404 answered here: S3's 400 for it would
otherwise count as the origin failing, and long URLs could open its circuit.
botocore tries twice (``attempts``, ``standard`` retry mode, up to 1 s of jittered backoff):
S3 asks clients to retry its 500/503s, and more attempts would only delay failover to the next
origin.

boto3 in threads or aiobotocore? Measured, not assumed — boto3 in threads kept: same
throughput and CPU against moto's server, a far better p99 under a burst, no botocore pin.
The numbers and the reasoning are in ``MEASUREMENT`` below.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from reelcdn.edge.fetch.contract import FetchFailed, Upstream, UpstreamResponse, UpstreamTimeouts
from reelcdn.edge.http.dates import format_http_date, parse_http_date

from .content_types import DEFAULT_CONTENT_TYPE, content_type_bytes
from .fs import CHUNK_SIZE, simple_response
from .paths import OriginRefused, join_key, resolve_key
from .threaded import ThreadedBodyResponse

__all__ = ["MEASUREMENT", "S3Origin", "S3Response"]

MEASUREMENT = """\
boto3 in threads vs aiobotocore, measured
(``python -m reelcdn.loadtest.bench.s3_clients --aio``; 200
GETs in flight, each reading its whole object, 2000 per run, 50 distinct objects; 2-core box,
moto 5.2.1 server, botocore 1.43.117 for both, aiobotocore 3.10.0; median of 2-3 rounds):

moto and the client pinned to one core each (``taskset``), connection pool (= threads) 32:
  300 KB  boto3-threads 278 req/s, p99 1.19 s | aiobotocore 297 req/s, p99 3.2 s
    2 KB  boto3-threads 340 req/s, p99 0.76 s | aiobotocore 310 req/s, p99 6.0 s
same, pool 200 (one connection per request in flight, no pool queue at all):
  300 KB  boto3-threads 344 req/s, p99 1.25 s | aiobotocore 280 req/s, p99 1.8 s
    2 KB  boto3-threads 313 req/s, p99 1.5 s  | aiobotocore 303 req/s, p99 1.5 s
unpinned (moto and client share both cores), pool 64:
  300 KB  boto3-threads 164-210 req/s, p99 1.3-2.0 s | aiobotocore 232-236, p99 3.2-4.1 s
    2 KB  boto3-threads 173-196 req/s, p99 1.4-1.8 s | aiobotocore 218-256, p99 7.5-8.9 s

moto's server (one Python process) is the ceiling at ~300 req/s, so throughput is a tie within
run-to-run noise; client CPU is a tie too (2.2-3.3 ms per GET for both: botocore's request
machinery — signing, event hooks, XML/header parsing — costs the same whichever transport
carries the bytes). The difference is the tail: when requests outnumber pooled connections,
aiobotocore's p50 is low but its p99 is 3-9 s, because aiohttp's connector lets a new request
take a freed connection ahead of those already waiting, so a few starve; the thread pool's
queue is FIFO. A shield's fills are exactly that case (a burst of distinct cold segments), and
TTFF is a tail metric. aiobotocore also pins botocore to a 3-patch window (3.10.0 needs
botocore >=1.43.115,<1.43.118): installing it would move this environment's botocore and
break awscli 1.45.11 (which pins botocore==1.43.11), and would tie every boto3 upgrade to an
aiobotocore release. So: boto3 in a thread pool, no new dependency. The pool is 32 by default:
against one server, fewer threads gave the same throughput with a lower p99 than 64, and at
~3 ms of CPU per GET one core cannot feed more than ~300 fetches/s anyway, which 32
connections sustain up to ~100 ms of S3 first-byte latency.
"""

# Object fields S3 stores from the upload and we pass on: (botocore response key, header).
_PASSED_FIELDS = (
    ("CacheControl", b"Cache-Control"),
    ("ContentEncoding", b"Content-Encoding"),
    ("ContentDisposition", b"Content-Disposition"),
    ("ContentLanguage", b"Content-Language"),
)
MAX_KEY_BYTES = 1024  # S3's limit on a key, UTF-8 encoded
_ANSWERS = {"NoSuchKey": 404, "404": 404, "AccessDenied": 403, "403": 403}


class S3Response(ThreadedBodyResponse):
    """A head from S3 and its body: already read, or a botocore ``StreamingBody`` read in
    chunks in the origin's threads."""

    SOURCE = "S3"
    STALLED = (TimeoutError, ReadTimeoutError)
    BROKEN = (BotoCoreError, OSError)

    __slots__ = ("status", "headers", "_data", "_body", "_executor", "_pending", "_done")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]],
        data: bytes = b"",
        *,
        body: Any = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.status = status
        self.headers = headers
        self._data = data
        self._body = body
        self._executor = executor
        self._pending: asyncio.Future[bytes] | None = None
        self._done = False

    async def chunks(self, idle_timeout: float) -> AsyncIterator[bytes]:
        """The body: the bytes read with the head, or 256 KiB reads of the stream."""
        if self._data:
            data, self._data = self._data, b""
            yield data
        if self._body is None:
            return
        while self._body is not None:
            chunk = await self._read_in_thread(idle_timeout, self._body.read, CHUNK_SIZE)
            if not chunk:
                # Read to the end: urllib3 has returned the connection to the pool already.
                self._body = None
                return
            yield chunk

    def release(self) -> None:
        self._drop()

    def close(self) -> None:
        self._drop()

    def _drop(self) -> None:
        """Close a body not read to the end (its connection cannot be reused), after the read
        in flight if any: the socket must not be closed under a reading thread."""
        self._data = b""
        body, self._body = self._body, None
        if body is None:
            return
        pending, self._pending = self._pending, None
        if pending is not None and not pending.done():
            pending.add_done_callback(lambda _: body.close())
            return
        body.close()


class S3Origin(Upstream):
    """Serve GET and HEAD from ``s3://bucket/prefix/...`` through boto3 in threads."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        timeouts: UpstreamTimeouts | None = None,
        max_connections: int = 32,
        addressing_style: str | None = None,
        attempts: int = 2,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if not bucket:
            raise ValueError("an S3 origin needs a bucket")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.profile = profile
        self.timeouts = timeouts or UpstreamTimeouts()
        self.max_connections = max_connections
        self.attempts = attempts
        # S3-compatible servers (MinIO, moto, Ceph) rarely have wildcard DNS for buckets.
        self.addressing_style = addressing_style or ("path" if endpoint_url else "auto")
        self.name = name or f"s3://{bucket}/{self.prefix}"
        self._client: Any = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(self.max_connections, thread_name_prefix="shield-s3")
        # Creating a client reads config files and endpoint data: not on the loop.
        loop = asyncio.get_running_loop()
        self._client = await loop.run_in_executor(self._executor, self._make_client)

    def _make_client(self) -> Any:
        session = boto3.session.Session(profile_name=self.profile)
        timeouts = self.timeouts
        return session.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            config=Config(
                connect_timeout=timeouts.connect,
                read_timeout=max(timeouts.first_byte, timeouts.idle),
                # total_max_attempts counts the first try; retries' "max_attempts" does not (a
                # value of 2 there means three tries and two backoff sleeps).
                retries={"mode": "standard", "total_max_attempts": self.attempts},
                max_pool_connections=self.max_connections,
                s3={"addressing_style": self.addressing_style},
                tcp_keepalive=True,
            ),
        )

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        client, self._client = self._client, None
        if executor is not None:
            executor.shutdown(wait=False)
        if client is not None:
            client.close()

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[bytes | str, bytes | str]],
        body: bytes | None = None,
    ) -> UpstreamResponse:
        """GET → ``get_object``, HEAD → ``head_object``; other methods get a 405."""
        if self._client is None:
            raise RuntimeError("Upstream.start() was not called")
        if method not in ("GET", "HEAD"):
            response: UpstreamResponse = simple_response(
                405, "method not allowed", [(b"Allow", b"GET, HEAD")]
            )
        else:
            try:
                key = resolve_key(target)
            except OriginRefused as refused:
                response = simple_response(refused.status, refused.reason)
            else:
                try:
                    response = await self._fetch(method, key, headers)
                except FetchFailed as failure:
                    self.observe(self.name, failure.status)
                    raise
        self.observe(self.name, response.status)
        return response

    async def _fetch(
        self, method: str, key: str, headers: Iterable[tuple[bytes | str, bytes | str]]
    ) -> UpstreamResponse:
        full_key = join_key(self.prefix, key)
        if len(full_key.encode()) > MAX_KEY_BYTES:
            # S3 would answer KeyTooLongError, a 400 we would count as the origin failing:
            # anyone could then open the circuit with long URLs. No such object can exist.
            return simple_response(404, "not found")
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": full_key}
        fields = _conditional_fields(headers)
        if "if-none-match" in fields:
            params["IfNoneMatch"] = fields["if-none-match"]
        elif "if-modified-since" in fields:
            since = parse_http_date(fields["if-modified-since"])
            if since is not None:
                params["IfModifiedSince"] = datetime.datetime.fromtimestamp(since, datetime.UTC)
        call = self._get if method == "GET" else self._head
        loop = asyncio.get_running_loop()
        pending = loop.run_in_executor(self._executor, call, params)
        try:
            async with asyncio.timeout(self.timeouts.connect + self.timeouts.first_byte):
                return await asyncio.shield(pending)
        except TimeoutError as exc:
            pending.add_done_callback(_close_late_response)
            raise FetchFailed(504, f"{self.name} timed out before the response head") from exc
        except asyncio.CancelledError:
            pending.add_done_callback(_close_late_response)
            raise

    def _get(self, params: dict[str, Any]) -> UpstreamResponse:
        """In a thread: ``get_object``, and the whole body when it is at most one chunk."""
        try:
            answer = self._client.get_object(**params)
        except (ClientError, BotoCoreError) as exc:
            return self._error(exc)
        body = answer["Body"]
        headers = self._head_fields(params["Key"], answer)
        if answer.get("ContentLength", CHUNK_SIZE + 1) <= CHUNK_SIZE:
            try:
                data = body.read()
            except (ReadTimeoutError, ConnectTimeoutError) as exc:
                body.close()
                raise FetchFailed(504, f"{self.name}: body read timed out") from exc
            except (BotoCoreError, OSError) as exc:
                body.close()
                raise FetchFailed(502, f"{self.name}: body broke: {exc}") from exc
            return S3Response(200, headers, data)
        return S3Response(200, headers, body=body, executor=self._executor)

    def _head(self, params: dict[str, Any]) -> UpstreamResponse:
        """In a thread: ``head_object``."""
        try:
            answer = self._client.head_object(**params)
        except (ClientError, BotoCoreError) as exc:
            return self._error(exc)
        return S3Response(200, self._head_fields(params["Key"], answer))

    def _head_fields(self, key: str, answer: dict[str, Any]) -> list[tuple[bytes, bytes]]:
        headers = [(b"Content-Type", _content_type(key, answer.get("ContentType")))]
        if "ContentLength" in answer:
            headers.append((b"Content-Length", str(answer["ContentLength"]).encode()))
        headers.extend(_validators(answer.get("ETag"), answer.get("LastModified")))
        headers.append((b"Accept-Ranges", b"bytes"))
        for field, header in _PASSED_FIELDS:
            value = answer.get(field)
            if value:
                headers.append((header, _latin1(value)))
        raw_expires = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("expires")
        if raw_expires:
            headers.append((b"Expires", _latin1(raw_expires)))
        return headers

    def _error(self, exc: ClientError | BotoCoreError) -> UpstreamResponse:
        """An S3 answer about the object as a response; anything else raised as a failure."""
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            meta = exc.response.get("ResponseMetadata", {})
            code = str(error.get("Code", ""))
            status = int(meta.get("HTTPStatusCode", 0) or 0)
            if code in ("304", "NotModified") or status == 304:
                raw = meta.get("HTTPHeaders", {})
                return S3Response(304, _validators(raw.get("etag"), raw.get("last-modified")))
            if code in _ANSWERS:
                answer = _ANSWERS[code]
                return simple_response(answer, "not found" if answer == 404 else "forbidden")
            raise FetchFailed(502, f"{self.name}: S3 answered {status} {code}") from exc
        if isinstance(exc, ConnectTimeoutError | ReadTimeoutError):
            raise FetchFailed(504, f"{self.name}: {exc}") from exc
        if isinstance(exc, EndpointConnectionError):
            raise FetchFailed(502, f"{self.name}: {exc}", retryable=True) from exc
        raise FetchFailed(502, f"{self.name}: {exc.__class__.__name__}: {exc}") from exc


def _close_late_response(pending: asyncio.Future[UpstreamResponse]) -> None:
    """The head came after we gave up on it: drop its body so the connection is not held."""
    if not pending.cancelled() and pending.exception() is None:
        pending.result().close()


def _content_type(key: str, stored: str | None) -> bytes:
    """Our type by extension; S3's own only for an extension we do not know, and never its
    ``binary/octet-stream`` placeholder."""
    ours = content_type_bytes(key)
    if (
        ours == DEFAULT_CONTENT_TYPE.encode()
        and stored
        and stored not in ("binary/octet-stream", DEFAULT_CONTENT_TYPE)
    ):
        return _latin1(stored)
    return ours


def _validators(etag: str | None, modified: Any) -> list[tuple[bytes, bytes]]:
    fields = []
    if etag:
        fields.append((b"ETag", _latin1(etag)))
    if isinstance(modified, datetime.datetime):
        fields.append((b"Last-Modified", format_http_date(modified.timestamp()).encode()))
    elif modified:
        fields.append((b"Last-Modified", _latin1(str(modified))))
    return fields


def _latin1(value: str) -> bytes:
    """A header value from S3 metadata: encodable, and without line breaks."""
    return value.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace")


def _conditional_fields(headers: Iterable[tuple[bytes | str, bytes | str]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in headers:
        key = (name.decode("latin-1") if isinstance(name, bytes) else name).lower()
        if key in ("if-none-match", "if-modified-since"):
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            found[key] = f"{found[key]}, {text}" if key in found else text
    return found

