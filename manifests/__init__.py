"""reelcdn.manifests: HLS playlists rendered from a video's ``meta.json``, as a pure library.

Metadata in, text out: no I/O, no clock, no network, so the edge can render per request (and
the origin can render its static copies) with the same code, and every output depends only on
``(meta.version, options)``. See docs/manifests.md for the rules and the query options.

Two layers:

- ``render_master`` / ``render_media`` / ``render_iframes`` return the finished playlist text
  for one request (carried query included);
- ``master_template`` / ``media_template`` / ``iframe_template`` return a :class:`Template`
  without the carried query, to cache under a token-free key and ``fill()`` per request.
"""

from __future__ import annotations

from reelcdn.manifests.errors import (
    ManifestError,
    NotReady,
    NoVariants,
    OptionError,
    UnknownRendition,
)
from reelcdn.manifests.master import (
    IFRAME_PLAYLIST,
    MEDIA_PLAYLIST,
    Variant,
    master_template,
    select_variants,
)
from reelcdn.manifests.media import find_media, iframe_template, media_template
from reelcdn.manifests.meta import VideoMeta
from reelcdn.manifests.options import (
    OPTION_PARAMETERS,
    Pathway,
    RenderOptions,
    Steering,
    carried_part,
    codec_allowed,
    options_from_query,
)
from reelcdn.manifests.text import Template
from reelcdn.manifests.versions import MIN_VERSION, required_version

__all__ = [
    "IFRAME_PLAYLIST",
    "MEDIA_PLAYLIST",
    "MIN_VERSION",
    "OPTION_PARAMETERS",
    "ManifestError",
    "NoVariants",
    "NotReady",
    "OptionError",
    "Pathway",
    "RenderOptions",
    "Steering",
    "Template",
    "UnknownRendition",
    "Variant",
    "carried_part",
    "codec_allowed",
    "find_media",
    "iframe_template",
    "master_template",
    "media_template",
    "options_from_query",
    "render_iframes",
    "render_master",
    "render_media",
    "required_version",
    "select_variants",
]


def render_master(meta: VideoMeta, options: RenderOptions | None = None) -> str:
    """The multivariant playlist (``/v/{id}/master.m3u8``) for one request.

    Raises NotReady (nothing playable yet) or NoVariants (the filters exclude every variant).
    """
    options = options or RenderOptions()
    return master_template(meta, options).fill(options.carried_query)


def render_media(meta: VideoMeta, rendition: str, options: RenderOptions | None = None) -> str:
    """The media playlist (``/v/{id}/{rendition}/index.m3u8``) of a video or audio rendition.

    Only ``options.carried_query`` applies (filters choose variants, not segments). Raises
    UnknownRendition or NotReady (no segment yet).
    """
    carried = options.carried_query if options else ""
    return media_template(meta, rendition).fill(carried)


def render_iframes(meta: VideoMeta, rendition: str, options: RenderOptions | None = None) -> str:
    """The I-frame playlist (``/v/{id}/{rendition}/iframes.m3u8``); UnknownRendition without
    I-frame data. Only ``options.carried_query`` applies."""
    carried = options.carried_query if options else ""
    return iframe_template(meta, rendition).fill(carried)
