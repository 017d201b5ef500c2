"""The cold objects of the crowd benchmark: bytes that depend on the path alone.

Why deterministic and path-derived: the crowd client runs in another process and must verify
every body it receives (a cache that hands a waiter the wrong object, a truncated or shifted
body, must fail the run). If the content is a function of (path, size), the client computes the
expected digest itself, with no side channel to the origin. SHAKE-256 gives any length quickly
and is not periodic, so an offset error anywhere in the body changes the digest.

Kept free of aiohttp so the client does not import a web framework it does not use.
"""

from __future__ import annotations

import hashlib

#: URL prefix of cold objects on the benchmark origin: ``/cold/<id>``.
COLD_PREFIX = "/cold/"
DEFAULT_SIZE = 256 * 1024
DEFAULT_DELAY = 0.2  # seconds before the origin answers (docs/overview.md: "200 ms origin")


def cold_body(path: str, size: int) -> bytes:
    """The body the origin serves for ``path`` (the request path, without query)."""
    return hashlib.shake_256(b"reelcdn-bench-cold\0" + path.encode("utf-8")).digest(size)


def cold_digest(path: str, size: int) -> str:
    """sha256 hex digest of ``cold_body(path, size)``: what every client must receive."""
    return hashlib.sha256(cold_body(path, size)).hexdigest()
