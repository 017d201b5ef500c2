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
"""``meta.json`` while processing: the edge re-reads it soon and sees the next rungs and
segments. No ``stale-while-revalidate``: a stale copy would keep a growing EVENT playlist
short one revalidation longer (through every tier, where each serves its own stale copy), so
players reloading it wait for the revalidation rather than miss a segment."""
META_CACHE_READY = "max-age=86400, stale-while-revalidate=86400"
"""``meta.json`` once ready: long, but not immutable (a deleted video must disappear, and a
purge or the next revalidation removes it). Its content no longer changes, so once a day has
passed a tier still answers from its stale copy (RFC 5861) for another day while it
revalidates in the background: the revalidation only confirms what it holds, and no player
waits for it, at any tier (the edge renders playlists from this copy)."""
MEDIA_CACHE = "max-age=31536000, immutable"
"""Inits, segments: a URL's bytes never change (reruns write the same bytes)."""
PLAYLIST_CACHE = "max-age=86400"
POSTER_CACHE = "max-age=86400"
