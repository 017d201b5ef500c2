"""The Cache-Control of each object the origin publishes, for the transcoder and the demo videos.

The tiers keep each object as long as its publisher says (the fs origin sends these from the
objects' sidecars, the s3 origin from the objects), so ``meta.json`` is short-lived while a
video is processing and long-lived once it is ready: no TTL rule, which could not tell the two
apart, overrides it in the shipped topologies. Here, not in ``transcode.py``, so that
``demo.py`` (which ``transcode.py`` imports) can use them too.
"""

from __future__ import annotations

__all__ = [
    "MEDIA_CACHE",
    "META_CACHE_PROCESSING",
    "META_CACHE_READY",
    "PLAYLIST_CACHE",
    "POSTER_CACHE",
]

META_CACHE_PROCESSING = "max-age=2"
"""``meta.json`` while processing: the edge re-reads it soon and sees the next rungs."""
META_CACHE_READY = "max-age=86400"
"""``meta.json`` once ready: long, but not immutable (a deleted video must disappear)."""
MEDIA_CACHE = "max-age=31536000, immutable"
"""Inits, segments: a URL's bytes never change (reruns write the same bytes)."""
PLAYLIST_CACHE = "max-age=86400"
POSTER_CACHE = "max-age=86400"
