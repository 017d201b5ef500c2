"""Reading an origin's body in a thread pool, shared by the filesystem and S3 connectors.

Both read blocking sources (``os.pread``, botocore's ``StreamingBody.read``) in their own
threads. The read in flight is kept in ``_pending`` so that closing the response can wait for
it (closing a descriptor under a running ``pread`` could let its number be reused), and every
failure becomes the ``FetchFailed`` a client should see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from reelcdn.edge.fetch.contract import FetchFailed, UpstreamResponse


class ThreadedBodyResponse(UpstreamResponse):
    """A response whose body chunks are read by ``_read_in_thread``."""

    #: Names the source in failure reasons ("filesystem", "S3").
    SOURCE = "origin"
    #: Exceptions meaning the read stalled (→ 504) or broke (→ 502).
    STALLED: tuple[type[BaseException], ...] = (TimeoutError,)
    BROKEN: tuple[type[BaseException], ...] = (OSError,)

    _executor: ThreadPoolExecutor | None
    _pending: asyncio.Future[bytes] | None

    async def _read_in_thread(self, idle_timeout: float, read: Callable[..., bytes],
                              *args: Any) -> bytes:
        """One blocking read in the executor, bounded by ``idle_timeout``."""
        pending = asyncio.get_running_loop().run_in_executor(self._executor, read, *args)
        self._pending = pending
        try:
            async with asyncio.timeout(idle_timeout):
                return await asyncio.shield(pending)
        except self.STALLED as exc:
            raise FetchFailed(504, f"{self.SOURCE} body stalled") from exc
        except self.BROKEN as exc:
            detail = getattr(exc, "strerror", None) or exc.__class__.__name__
            raise FetchFailed(502, f"{self.SOURCE} body broke: {detail}") from exc
        except RuntimeError as exc:  # the executor was shut down: origin replaced by a reload
            raise FetchFailed(502, f"{self.SOURCE} origin closed during the body") from exc
        finally:
            if pending.done():
                self._pending = None
