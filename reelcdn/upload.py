"""``reelcdn upload FILE``: send a video to the origin API over tus 1.0, then wait until it plays.

A small tus client on aiohttp (creation, then PATCHes of ``--chunk`` bytes, each with an
``Upload-Checksum: sha1``); after a failed PATCH it asks the server for the offset (HEAD) and
goes on from there, so a dropped connection costs one chunk, not the upload. Then it polls the
video until its first rendition is published and prints the playback URL at an edge.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sys
import time
from pathlib import Path

import aiohttp

TUS = {"Tus-Resumable": "1.0.0"}
RETRIES = 5


class UploadFailed(RuntimeError):
    """The upload or the processing failed; the text says why."""


def _metadata(pairs: dict[str, str]) -> str:
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode()}"
                    for key, value in pairs.items() if value)


async def _offset(session: aiohttp.ClientSession, url: str) -> int:
    async with session.head(url, headers=TUS) as response:
        if response.status != 200:
            raise UploadFailed(f"HEAD {url}: {response.status}")
        return int(response.headers["Upload-Offset"])


async def _error(response: aiohttp.ClientResponse) -> str:
    try:
        body = await response.json()
        return f"{response.status} {body.get('error')}: {body.get('detail')}"
    except (aiohttp.ContentTypeError, ValueError):
        return f"{response.status} {(await response.text())[:200]}"


async def upload(
    path: Path, api: str, token: str, *, title: str = "", caption: str = "",
    hashtags: str = "", chunk: int = 8 << 20, progress: bool = True,
) -> str:
    """Upload ``path``; returns the video id."""
    size = path.stat().st_size
    auth = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    async with aiohttp.ClientSession(headers=auth, timeout=timeout) as session:
        metadata = _metadata({"filename": path.name, "title": title or path.stem,
                              "caption": caption, "hashtags": hashtags})
        async with session.post(f"{api}/api/v1/uploads", headers={
            **TUS, "Upload-Length": str(size), "Upload-Metadata": metadata,
        }) as response:
            if response.status != 201:
                raise UploadFailed(f"creating the upload: {await _error(response)}")
            location = response.headers["Location"]
        url = location if location.startswith("http") else api + location
        offset, retries, started = 0, 0, time.monotonic()
        with path.open("rb") as source:
            while offset < size:
                source.seek(offset)
                data = source.read(chunk)
                digest = base64.b64encode(hashlib.sha1(data).digest()).decode()
                try:
                    async with session.patch(url, data=data, headers={
                        **TUS, "Upload-Offset": str(offset),
                        "Content-Type": "application/offset+octet-stream",
                        "Upload-Checksum": f"sha1 {digest}",
                    }) as response:
                        if response.status != 204:
                            raise UploadFailed(f"PATCH at {offset}: {await _error(response)}")
                        offset = int(response.headers["Upload-Offset"])
                except (aiohttp.ClientError, TimeoutError) as exc:
                    retries += 1
                    if retries > RETRIES:
                        raise UploadFailed(f"gave up after {RETRIES} retries: {exc}") from exc
                    await asyncio.sleep(min(2 ** retries, 10))
                    offset = await _offset(session, url)
                    continue
                if progress:
                    rate = offset / max(time.monotonic() - started, 1e-6) / 1e6
                    print(f"\r{offset * 100 // size:3d}% {offset / 1e6:.1f}/{size / 1e6:.1f} MB "
                          f"{rate:.1f} MB/s", end="", file=sys.stderr, flush=True)
        if progress:
            print(file=sys.stderr)
        return url.rsplit("/", 1)[1]


async def wait_playable(api: str, token: str, video_id: str, timeout: float = 600.0,
                        ) -> dict[str, object]:
    """Poll the video until it has a playback path (or failed); its state."""
    auth = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(headers=auth) as session:
        while True:
            async with session.get(f"{api}/api/v1/videos/{video_id}") as response:
                if response.status != 200:
                    raise UploadFailed(f"video {video_id}: {await _error(response)}")
                state = await response.json()
            if state.get("status") == "failed":
                raise UploadFailed(f"video {video_id} failed: {state.get('error')}")
            if state.get("playback"):
                return state
            if time.monotonic() > deadline:
                raise UploadFailed(f"video {video_id} not playable after {timeout:.0f} s")
            await asyncio.sleep(0.25)
