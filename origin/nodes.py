"""The origin's client of the nodes' admin APIs (``edge/ops/admin.py``): one place that knows
their routes, bearer token and answers, for the two things the origin asks of them —
purging a deleted video (``POST /purge``) and pre-warming trending videos (``POST /prewarm``).

The nodes come from the topology file the origin service was started with
(``origin/config.py``: every node with an admin listener, parents first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import aiohttp

__all__ = ["TIER_ORDER", "AdminTarget", "admin_post", "by_tier", "purge_video"]

#: Prewarm order: the tiers nearest the origin first, so an edge's fills hit warm parents.
TIER_ORDER = ("shield", "regional", "edge")


class AdminTarget(NamedTuple):
    """A node's admin API: its name, role, base URL, bearer token (None: none configured),
    and whether it renders playlists from meta.json (edges, by default)."""

    name: str
    role: str
    url: str
    token: str | None
    renders: bool = False


async def admin_post(session: aiohttp.ClientSession, url: str, token: str | None, route: str,
                     body: dict[str, Any]) -> tuple[int, Any]:
    """POST ``body`` to a node's admin ``route``: ``(status, JSON answer or None)``. Raises
    aiohttp's errors and TimeoutError (the session's timeout bounds it)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.post(f"{url}{route}", json=body, headers=headers) as response:
        try:
            answer = await response.json(content_type=None)
        except ValueError:
            answer = None
        return response.status, answer


async def purge_video(targets: Sequence[tuple[str, str, str | None]], video_id: str,
                      timeout: float = 10.0) -> dict[str, Any]:
    """Purge a video from each ``(name, url, token)`` in order (parents first); each node's
    answer (objects purged) or its error."""
    results: dict[str, Any] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        for name, url, token in targets:
            try:
                status, body = await admin_post(session, url, token, "/purge",
                                                {"video": video_id})
                results[name] = (body.get("purged") if status == 200 and isinstance(body, dict)
                                 else {"error": f"status {status}"})
            except (aiohttp.ClientError, TimeoutError) as exc:
                results[name] = {"error": str(exc) or exc.__class__.__name__}
    return results


def by_tier(targets: Sequence[AdminTarget]) -> list[list[AdminTarget]]:
    """The targets grouped by tier, shields first, then regionals, edges, any other role."""
    order = {role: index for index, role in enumerate(TIER_ORDER)}
    tiers: dict[int, list[AdminTarget]] = {}
    for target in targets:
        tiers.setdefault(order.get(target.role, len(TIER_ORDER)), []).append(target)
    return [tiers[index] for index in sorted(tiers)]
