"""Why a playlist cannot be rendered, as distinct exceptions the edge maps to HTTP statuses.

The renderer is pure, so it cannot answer a request itself; it says *which* kind of failure
happened and the edge picks the status: a bad query value is the client's mistake (400), filters
that exclude every variant are a request that cannot be satisfied (the edge's choice, e.g. 404
or 422), a video still transcoding has nothing to play *yet* (404/503 with Retry-After), and an
unknown rendition name is a plain 404.
"""

from __future__ import annotations

__all__ = ["ManifestError", "NoVariants", "NotReady", "OptionError", "UnknownRendition"]


class ManifestError(Exception):
    """Base class: the playlist asked for cannot be rendered from this metadata."""


class OptionError(ValueError):
    """A per-request option is invalid; ``parameter`` names it (for the 400 reason)."""

    def __init__(self, parameter: str, problem: str, value: object = None) -> None:
        self.parameter = parameter
        self.problem = problem
        shown = "" if value is None else f" (got {value!r})"
        super().__init__(f"{parameter}: {problem}{shown}")


class NotReady(ManifestError):
    """The video is still ``processing`` and has nothing playable yet (no segment, or no
    rendition whose audio group has segments). Retry later."""


class NoVariants(ManifestError):
    """The request's filters (``max_height``, ``max_bandwidth``, ``codecs``) exclude every
    variant that exists. The message says which filters were applied."""


class UnknownRendition(ManifestError, LookupError):
    """No rendition (or I-frame data) of that name in the metadata."""
