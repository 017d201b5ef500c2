"""The node's upstream: where misses and passes go.

``Upstream`` is the interface every kind of upstream implements — an HTTP parent (this module,
``HttpUpstream``), a set of parents chosen by consistent hashing (``parents.py``), or the
origin connectors of a shield (``reelcdn.shield``: filesystem, S3, HTTP, tried in order).
Each answers ``request(method, target, headers, body)`` with an ``UpstreamResponse`` once the
head is known, and turns every failure into ``FetchFailed`` with the status a client should
see: 502 for a refused or broken connection, 504 for a timeout.

aiohttp is the HTTP client (pooled keep-alive connections, streaming) while the data plane
stays a bare protocol: see docs/overview.md, "Tiers".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from reelcdn.edge.fetch.contract import (
    FetchFailed,
    TargetRefused,
    Upstream,
    UpstreamResponse,
    UpstreamTimeouts,
)
from reelcdn.extensions.target import is_canonical_target


class HttpResponse(UpstreamResponse):
    """A response read by aiohttp."""

    __slots__ = ("status", "headers", "_response")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = list(response.raw_headers)

    async def chunks(self, idle_timeout: float) -> AsyncIterator[bytes]:
        """The body as it arrives; ``FetchFailed(504)`` if it stalls, 502 if it breaks."""
        content = self._response.content
        while True:
            try:
                async with asyncio.timeout(idle_timeout):
                    chunk = await content.readany()
            except TimeoutError as exc:
                raise FetchFailed(504, "upstream body stalled") from exc
            except aiohttp.ClientError as exc:
                raise FetchFailed(502, f"upstream body broke: {exc.__class__.__name__}") from exc
            if not chunk:
                return
            yield chunk

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        """Drop the connection (a body we stopped reading must not be reused)."""
        self._response.close()


class HttpUpstream(Upstream):
    """Requests toward one base URL (a parent tier or an HTTP origin)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeouts: UpstreamTimeouts,
        max_connections: int = 256,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")
        self.name = name or self.base_url
        self.timeouts = timeouts
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.max_connections,
            limit_per_host=self.max_connections,
            keepalive_timeout=30,
            enable_cleanup_closed=False,
            ttl_dns_cache=60,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.timeouts.connect,
                connect=self.timeouts.connect + self.timeouts.first_byte,
                sock_read=None,
            ),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe(
        self, path: str, timeout: float, *, any_answer: bool = False
    ) -> tuple[bool, str]:
        """One health check: GET ``path``; passed on 200 (or, with ``any_answer``, on any
        status below 500: an origin that is no reelcdn node answers 404 just as well).
        Returns (passed, what happened). Not counted in the request metrics."""
        if self._session is None:
            return False, "not started"
        url = URL(self.base_url + path, encoded=True)
        try:
            async with asyncio.timeout(timeout):
                async with self._session.get(url, allow_redirects=False,
                                             headers={"Cache-Control": "no-cache"}) as response:
                    await response.read()
                    status = response.status
        except TimeoutError:
            return False, f"no answer in {timeout:g} s"
        except aiohttp.ClientConnectorError as exc:
            return False, f"connect failed: {exc.os_error}"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return False, f"{exc.__class__.__name__}: {exc}".rstrip(": ")
        passed = status < 500 if any_answer else status == 200
        return passed, f"answered {status}"

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[bytes | str, bytes | str]],
        body: bytes | None = None,
    ) -> UpstreamResponse:
        """Send a request and return once the response head has arrived."""
        if self._session is None:
            raise RuntimeError("Upstream.start() was not called")
        if not is_canonical_target(target):
            raise TargetRefused(400, "request path is not canonical (dot segments, '//', %2F)")
        fields: CIMultiDict[str] = CIMultiDict()
        for name, value in headers:
            fields.add(
                name.decode("latin-1") if isinstance(name, bytes) else name,
                value.decode("latin-1") if isinstance(value, bytes) else value,
            )
        url = URL(self.base_url + target, encoded=True)
        try:
            # first_byte counts from the start of the request (connecting included): it is the
            # longest a client waits for a head; connect alone is bounded by sock_connect.
            async with asyncio.timeout(self.timeouts.first_byte):
                response = await self._session.request(
                    method,
                    url,
                    headers=fields,
                    data=body,
                    allow_redirects=False,
                    compress=None,
                    chunked=None,
                )
        except TimeoutError as exc:
            failure = FetchFailed(504, f"{self.name} timed out before the response head")
            self.observe(self.name, failure.status)
            raise failure from exc
        except aiohttp.ClientConnectorError as exc:
            failure = FetchFailed(502, f"{self.name} connect failed: {exc.os_error}",
                                  retryable=True)
            self.observe(self.name, failure.status)
            raise failure from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            failure = FetchFailed(502, f"{self.name} failed: {exc.__class__.__name__}: {exc}")
            self.observe(self.name, failure.status)
            raise failure from exc
        self.observe(self.name, response.status)
        return HttpResponse(response)
