"""Per-request rendering options, parsed from the playlist request's query string.

Players (or the page embedding them) shape the multivariant playlist with query parameters:
``max_height``, ``max_bandwidth``, ``codecs`` and ``start`` (documented in docs/manifests.md).
Parameters configured as *carried* (tokens) are not options: they are copied, still encoded,
to every URI in the rendered playlist so a signed master keeps working for every segment.
Unknown parameters are ignored, because players add their own (CMCD, ``_HLS_*``, cache
busters) and refusing them would break playback for nothing.

:class:`RenderOptions` is immutable and normalised (codec list lower-cased, sorted, deduplicated)
so equal requests compare equal and share one :meth:`RenderOptions.cache_key`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Iterator
from typing import Literal
from urllib.parse import unquote_plus

from reelcdn.manifests.errors import OptionError
from reelcdn.manifests.text import check_carried_query

__all__ = [
    "OPTION_PARAMETERS",
    "Pathway",
    "RenderOptions",
    "Steering",
    "carried_part",
    "codec_allowed",
    "options_from_query",
]

OPTION_PARAMETERS = ("max_height", "max_bandwidth", "codecs", "start")
Start = Literal["lowest", "highest"]
STARTS: tuple[Start, ...] = ("lowest", "highest")

_CODEC_ENTRY = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}")
_PATHWAY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # rfc8216bis §4.4.6.2: PATHWAY-ID charset
_UNSAFE = re.compile(r'[\s"#\\\x00-\x1f\x7f-\x9f]')
_DIGITS = re.compile(r"[0-9]{1,18}")
MAX_INTEGER = 10**18 - 1
"""Largest ``max_height`` / ``max_bandwidth``: bounds the work of parsing hostile digits."""
_CACHE_KEY_FORMAT = "o1"  # bump if the key's layout changes, so old cache entries never match


def codec_allowed(codec: str, allowed: Iterable[str]) -> bool:
    """Whether one RFC 6381 codec string matches an entry of an allow-list.

    An entry matches a codec when it equals it or is a dot-separated prefix of it, ignoring
    case: ``avc1`` matches ``avc1.64001f`` (the family, what people mean), ``avc1.64`` does not
    match ``avc1.640028`` (prefixes stop at dots), ``avc1.64001f`` matches only itself.
    Case is ignored because no two real sample-entry codes differ only by case (``Opus``,
    ``fLaC``) and query strings are typed by people.
    """
    c = codec.strip().lower()
    return any(c == e or c.startswith(e + ".") for e in (x.lower() for x in allowed))


@dataclasses.dataclass(frozen=True, slots=True)
class Pathway:
    """One content-steering pathway (rfc8216bis §4.4.6.6): an id and where its copies live.

    ``base`` is prepended to ``/v/{video_id}/...`` to make that pathway's URIs absolute, e.g.
    ``https://cdn-b.example.com``; the empty string keeps URIs relative (served by whichever
    host served the master, i.e. this CDN).
    """

    id: str
    base: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _PATHWAY_ID.fullmatch(self.id):
            raise OptionError("pathways", "a PATHWAY-ID must be 1-64 of [A-Za-z0-9._-]", self.id)
        if not isinstance(self.base, str):
            raise OptionError("pathways", "a pathway base must be a string", self.base)
        base = self.base.rstrip("/")
        if base and (not base.startswith(("https://", "http://", "/")) or "?" in base
                     or _UNSAFE.search(base)):
            raise OptionError("pathways", "a pathway base must be '' or an http(s) URL or "
                              "absolute path without query, fragment, quotes or spaces",
                              self.base)
        object.__setattr__(self, "base", base)

    def uri(self, video_id: str, relative: str) -> str:
        """*relative* (to the video directory) as this pathway serves it."""
        return f"{self.base}/v/{video_id}/{relative}" if self.base else relative


@dataclasses.dataclass(frozen=True, slots=True)
class Steering:
    """Content steering for the master: pathways (the first is the default) and the server.

    Comes from the topology, not from the request. ``server_uri`` is where players fetch the
    steering manifest; ``{video_id}`` in it is replaced by the video's id. ``initial`` is the
    PATHWAY-ID players start on (default: the first pathway).
    """

    server_uri: str
    pathways: tuple[Pathway, ...]
    initial: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.pathways, list):
            object.__setattr__(self, "pathways", tuple(self.pathways))
        if (not isinstance(self.server_uri, str) or not self.server_uri
                or _UNSAFE.search(self.server_uri)):
            raise OptionError("steering", "server_uri must be a URI without spaces, quotes "
                              "or fragment", self.server_uri)
        if not self.pathways or not all(isinstance(p, Pathway) for p in self.pathways):
            raise OptionError("pathways", "at least one Pathway is needed", self.pathways)
        ids = [p.id for p in self.pathways]
        if len(set(ids)) != len(ids):
            raise OptionError("pathways", "PATHWAY-IDs must be unique", ids)
        if self.initial is not None and self.initial not in ids:
            raise OptionError("pathways", f"initial pathway is not one of {ids}", self.initial)

    @property
    def initial_pathway(self) -> str:
        return self.initial if self.initial is not None else self.pathways[0].id

    def server_uri_for(self, video_id: str) -> str:
        return self.server_uri.replace("{video_id}", video_id)


def _positive(parameter: str, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or not 0 < value <= MAX_INTEGER):
        raise OptionError(parameter, "must be a positive integer (at most 18 digits)", value)


@dataclasses.dataclass(frozen=True, slots=True)
class RenderOptions:
    """What one request asks of the multivariant playlist (media playlists only use
    ``carried_query``). All fields optional; the defaults render every variant in the order of
    ``meta.json`` with relative, query-free URIs.

    - ``max_height``: keep variants with a picture height <= this.
    - ``max_bandwidth``: keep variants whose BANDWIDTH (as rendered, audio group included) <=.
    - ``codecs``: keep variants whose every CODECS entry matches an entry here
      (:func:`codec_allowed`); audio renditions with other codecs are dropped from groups.
    - ``start``: ``"lowest"`` / ``"highest"`` orders the variants by picture size, then
      BANDWIDTH (players start on the first listed); None keeps the metadata's order.
    - ``carried_query``: an encoded query (``token=abc&exp=1``) appended to every URI.
    - ``steering``: content steering from the topology (None: no steering).
    """

    max_height: int | None = None
    max_bandwidth: int | None = None
    codecs: tuple[str, ...] | None = None
    start: Start | None = None
    carried_query: str = ""
    steering: Steering | None = None

    def __post_init__(self) -> None:
        _positive("max_height", self.max_height)
        _positive("max_bandwidth", self.max_bandwidth)
        if self.codecs is not None:
            if isinstance(self.codecs, str) or not isinstance(self.codecs, tuple | list):
                raise OptionError("codecs", "must be a tuple of codec strings", self.codecs)
            if not self.codecs:
                raise OptionError("codecs", "must list at least one codec", "")
            for entry in self.codecs:
                if not isinstance(entry, str) or not _CODEC_ENTRY.fullmatch(entry):
                    raise OptionError("codecs", "each entry must be an RFC 6381 codec or "
                                      "family such as avc1, hvc1, mp4a, ec-3", entry)
            object.__setattr__(self, "codecs",
                               tuple(sorted({e.lower() for e in self.codecs})))
        if self.start is not None and self.start not in STARTS:
            raise OptionError("start", "must be 'lowest' or 'highest'", self.start)
        check_carried_query(self.carried_query)
        if self.steering is not None and not isinstance(self.steering, Steering):
            raise OptionError("steering", "must be a Steering", self.steering)

    @property
    def filtered(self) -> bool:
        """Whether any filter (height, bandwidth, codecs) is set."""
        return (self.max_height, self.max_bandwidth, self.codecs) != (None, None, None)

    def allows(self, codecs: Iterable[str]) -> bool:
        """Whether every codec of a CODECS list passes the ``codecs`` filter."""
        return self.codecs is None or all(codec_allowed(c, self.codecs) for c in codecs)

    def cache_key(self) -> str:
        """A stable string identifying the rendering, **without** ``carried_query``.

        Tokens never enter a cache key (docs/overview.md): cache the *template*
        (:func:`reelcdn.manifests.master_template`) under ``(meta.version, kind, cache_key())``
        and fill it per request with ``template.fill(options.carried_query)``. JSON of the
        normalised fields, so distinct options cannot collide and equal ones always match.
        """
        steering = None
        if self.steering is not None:
            steering = [self.steering.server_uri, self.steering.initial_pathway,
                        [[p.id, p.base] for p in self.steering.pathways]]
        return json.dumps(
            [_CACHE_KEY_FORMAT, self.max_height, self.max_bandwidth,
             list(self.codecs) if self.codecs is not None else None, self.start, steering],
            separators=(",", ":"))

    def describe_filters(self) -> str:
        """The active filters as query text, for error messages (``max_height=360``)."""
        parts = []
        if self.max_height is not None:
            parts.append(f"max_height={self.max_height}")
        if self.max_bandwidth is not None:
            parts.append(f"max_bandwidth={self.max_bandwidth}")
        if self.codecs is not None:
            parts.append("codecs=" + ",".join(self.codecs))
        return "&".join(parts) or "(no filters)"


def _integer(name: str, value: str) -> int:
    if not _DIGITS.fullmatch(value) or int(value) <= 0:
        raise OptionError(name, "must be a positive integer (at most 18 digits)", value)
    return int(value)


def _parameters(query: str) -> Iterator[tuple[str, str, str]]:
    """Each non-empty ``name=value`` part of a query (a leading ``?`` skipped) as (the part as
    sent, its decoded name, its raw value): the one reading of a parameter's name, shared by
    the options and by :func:`carried_part`."""
    if query.startswith("?"):
        query = query[1:]
    for part in query.split("&"):
        if part:
            raw_name, _, raw_value = part.partition("=")
            yield part, unquote_plus(raw_name), raw_value


def carried_part(query: str, carried: frozenset[str]) -> str:
    """The carried parameters of a query exactly as :func:`options_from_query` keeps them in
    ``carried_query`` (as sent, in query order), without validating them.

    Cheaper than parsing the options, for a renderer that keeps finished answers: the
    request's cache key names its options, this names the text filled into its URIs, and a
    request whose options or carried query are invalid is never answered from such a store
    (only a successful parse puts an answer there)."""
    if not carried or not query:
        return ""
    return "&".join(part for part, name, _ in _parameters(query) if name in carried)


def options_from_query(query: str, carried: Iterable[str] = (), *,
                       steering: Steering | None = None) -> RenderOptions:
    """Parse a request's query string (with or without the leading ``?``) into options.

    ``carried`` names the parameters to copy to every URI (e.g. ``("token", "exp")``); they
    are kept exactly as sent (still percent-encoded), in their order in the query. *steering*
    comes from the node's configuration and is passed through. Raises :class:`OptionError`
    (a ValueError whose ``parameter`` names the bad parameter) for an invalid or repeated
    option, or a carried parameter that cannot be copied into a playlist.
    """
    carried = frozenset(carried)
    clash = carried.intersection(OPTION_PARAMETERS)
    if clash:
        raise ValueError(f"carried parameters must not be option names: {sorted(clash)}")
    values: dict[str, str] = {}
    kept: list[str] = []
    for part, name, raw_value in _parameters(query):
        if name in carried:
            check_carried_query(part, name)
            kept.append(part)
        elif name in OPTION_PARAMETERS:
            if name in values:
                raise OptionError(name, "given more than once")
            value = unquote_plus(raw_value).strip()
            if not value:
                raise OptionError(name, "must not be empty", value)
            values[name] = value
    fields: dict[str, object] = {}
    if "max_height" in values:
        fields["max_height"] = _integer("max_height", values["max_height"])
    if "max_bandwidth" in values:
        fields["max_bandwidth"] = _integer("max_bandwidth", values["max_bandwidth"])
    if "codecs" in values:
        fields["codecs"] = tuple(c.strip() for c in values["codecs"].split(","))
    if "start" in values:
        fields["start"] = values["start"]
    return RenderOptions(carried_query="&".join(kept), steering=steering,
                         **fields)  # type: ignore[arg-type]
