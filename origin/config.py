"""The origin services' configuration: the ``[api]``, ``[queue]``, ``[catalog]``,
``[transcode]`` and ``[cache]`` sections of the topology file, validated.

One file describes a deployment: its nodes, its origins (``[origin.NAME]``) and the services
that fill those origins. ``reelcdn origin --config FILE`` and ``reelcdn worker --config FILE``
(any number of them, on any host that shares the queue, the catalog and the storage) read the
same file, so the API, the workers and the shield agree on where videos are published: the
``[origin.NAME]`` that ``api.publish_to`` names is both where workers write and what the shield
reads.

The node loader (``reelcdn.edge.config``) keeps these sections as written; this module checks
them with the same value parsers, so a mistake is a :class:`ConfigError` naming the key, as for
node keys. Each key is one row of a table (:data:`SECTIONS`): name, parser, default, doc; the
reference in docs/origin.md is :func:`reference_markdown`'s output.

Building the running parts from the settings (:func:`open_queue`, :func:`open_catalog`,
:func:`open_store`, :meth:`OriginServices.service_config`) is here too, so the API service and
the worker make them the same way.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reelcdn.edge.config import ConfigError, load_topology
from reelcdn.edge.config.model import OriginConfig as StorageOrigin
from reelcdn.edge.config.model import Topology, http_base
from reelcdn.edge.config.values import (
    FAILED,
    ConfigErrors,
    Problems,
    check_keys,
    parse_address,
    parse_bool,
    parse_duration,
    parse_int,
    parse_size,
    parse_str_list,
    type_error,
    unknown_key,
)
from reelcdn.origin.cache import CacheSettings
from reelcdn.origin.nodes import AdminTarget
from reelcdn.origin.probe import MAX_DURATION, MAX_SIZE
from reelcdn.origin.transcode import Ladder
from reelcdn.origin.users import Keys, load_keys

__all__ = [
    "SECTIONS",
    "ApiSettings",
    "CacheSettings",
    "CatalogSettings",
    "ConfigError",
    "ConfigErrors",
    "OriginServices",
    "QueueSettings",
    "TranscodeSettings",
    "check_services",
    "load_services",
    "open_catalog",
    "open_queue",
    "open_store",
    "reference_markdown",
    "services_from_topology",
]

Parser = Callable[[Any, str, str], Any]  # (value, file, dotted key) -> parsed


# --------------------------------------------------------------------------------------------
# Value parsers (file and key for the messages).


def _string(value: Any, file: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise type_error(file, key, "a non-empty string", value)
    return value.strip()


def _choice(*choices: str) -> Parser:
    def parse(value: Any, file: str, key: str) -> str:
        text = _string(value, file, key)
        if text not in choices:
            raise ConfigError(file, key, f"must be one of {', '.join(choices)} (got {text!r})")
        return text

    return parse


def _address(value: Any, file: str, key: str) -> tuple[str, int]:
    if not isinstance(value, str):
        raise type_error(file, key, 'a "HOST:PORT" string', value)
    return parse_address(value, file=file, key=key)


def _duration(value: Any, file: str, key: str) -> float:
    seconds = parse_duration(value, file=file, key=key)
    if seconds <= 0:
        raise ConfigError(file, key, "must be longer than 0")
    return seconds


def _size(value: Any, file: str, key: str) -> int:
    size = parse_size(value, file=file, key=key)
    if size <= 0:
        raise ConfigError(file, key, "must be larger than 0")
    return size


def _positive(value: Any, file: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise type_error(file, key, "a number > 0", value)
    return float(value)


def _count(minimum: int, maximum: int | None = None) -> Parser:
    def parse(value: Any, file: str, key: str) -> int:
        return parse_int(value, file, key, minimum=minimum, maximum=maximum)

    return parse


def _flag(value: Any, file: str, key: str) -> bool:
    return parse_bool(value, file, key)


def _strings(value: Any, file: str, key: str) -> tuple[str, ...]:
    return tuple(parse_str_list(value, file, key, lambda item, where: item.strip()))


def _url(value: Any, file: str, key: str) -> str:
    text = _string(value, file, key)
    if not text.startswith(("http://", "https://")):
        raise ConfigError(file, key, f"expected an http:// or https:// URL, got {text!r}")
    return text.rstrip("/")


def _part_size(value: Any, file: str, key: str) -> int:
    size = parse_size(value, file=file, key=key)
    if size < 5 << 20:
        raise ConfigError(file, key, "S3 parts are at least 5 MiB (all but the last)")
    return size


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MIN_PLAYS_TOKEN = 16


def _plays_token(value: Any, file: str, key: str) -> str:
    if not isinstance(value, str) or len(value.strip()) < MIN_PLAYS_TOKEN:
        raise type_error(file, key, f"a string of at least {MIN_PLAYS_TOKEN} characters", value)
    return value.strip()


def _env_name(value: Any, file: str, key: str) -> str:
    text = _string(value, file, key)
    if not _ENV_NAME.fullmatch(text):
        raise ConfigError(file, key, f"expected an environment variable's name, got {text!r}")
    return text


def _servers(value: Any, file: str, key: str) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list):
        raise type_error(file, key, 'an array of "HOST:PORT" strings', value)
    out: dict[tuple[str, int], None] = {}
    for index, item in enumerate(value):
        out[_address(item, file, f"{key}[{index}]")] = None
    return tuple(out)


_KEY_PREFIX = re.compile(r"[!-~]{1,50}")  # memcached keys: printable ASCII, no space


def _key_prefix(value: Any, file: str, key: str) -> str:
    if not isinstance(value, str) or not _KEY_PREFIX.fullmatch(value):
        raise type_error(file, key, "1-50 printable ASCII characters, no space", value)
    return value


def _short(maximum: float) -> Parser:
    def parse(value: Any, file: str, key: str) -> float:
        seconds = _duration(value, file, key)
        if seconds > maximum:
            raise ConfigError(file, key, f"must be at most {maximum:g} s (got {seconds:g} s)")
        return seconds

    return parse


def _duration_or_off(maximum: float) -> Parser:
    """A duration from 0 (off) to ``maximum``."""
    def parse(value: Any, file: str, key: str) -> float:
        seconds = parse_duration(value, file=file, key=key)
        if not 0 <= seconds <= maximum:
            raise ConfigError(file, key, f"must be from 0 to {maximum:g} s (got {seconds:g} s)")
        return seconds

    return parse


def _rungs(value: Any, file: str, key: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value or not all(isinstance(r, dict) for r in value):
        raise type_error(file, key, "an array of tables ([[transcode.rungs]])", value)
    for index, rung in enumerate(value):
        check_keys(file, f"{key}[{index}]", rung,
                   ("name", "height", "width", "video_bitrate", "audio_bitrate", "profile"))
        for required in ("height", "video_bitrate"):
            if required not in rung:
                raise ConfigError(file, f"{key}[{index}]", f"{required} is required")
    return value


# --------------------------------------------------------------------------------------------
# The keys, one row each.


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    parse: Parser
    default: Any
    kind: str
    doc: str


SECTIONS: dict[str, dict[str, Row]] = {
    "api": {r.name: r for r in (
        Row("listen", _address, ("127.0.0.1", 8300), "HOST:PORT",
            "where the API (`/api/v1/`: tus uploads, videos) listens"),
        Row("admin", _address, None, "HOST:PORT",
            "the admin listener (`/metrics`, `/health`); none when unset"),
        Row("data_dir", _string, "origin-service", "path",
            "uploads in progress and the SQLite catalog and queue (relative: to the file's "
            "directory)"),
        Row("publish_to", _string, None, "origin name",
            "the `[origin.NAME]` (fs or s3) workers publish into and the shield reads; "
            "default: the file's only fs or s3 origin"),
        Row("key_file", _string, "origin-keys", "path",
            "the user-token keys, one `KID SECRET` a line (`reelcdn up` makes one)"),
        Row("max_size", _size, 4 << 30, "size", "the largest upload (`Tus-Max-Size`)"),
        Row("upload_ttl", _duration, 24 * 3600.0, "duration",
            "an incomplete upload expires this long after its last write"),
        Row("uploads_per_window", _count(1), 30, "integer ≥ 1",
            "upload creations allowed per user per `rate_window` (then 429)"),
        Row("rate_window", _duration, 3600.0, "duration", "the window of that limit"),
        Row("cors_origins", _strings, ("*",), "array of strings",
            "browser origins allowed to call the API"),
        Row("purge_nodes", _flag, True, "boolean",
            "purge a deleted video from every node of this file with an admin listener"),
        Row("direct_bucket", _string, None, "string",
            "direct-to-bucket uploads: clients PUT sources to this S3 bucket in presigned "
            "parts (off when unset)"),
        Row("direct_prefix", _string, "sources/", "string",
            "key prefix of those sources: `PREFIX{id}/source`"),
        Row("direct_endpoint_url", _url, None, "URL",
            "the S3 API endpoint of that bucket (default: AWS's); clients must reach it"),
        Row("direct_region", _string, None, "string", "that bucket's region"),
        Row("direct_part_size", _part_size, 8 << 20, "size ≥ 5MiB", "the parts' size"),
        Row("plays_token", _plays_token, None, "string ≥ 16 chars",
            "the edges' bearer token for `POST /api/v1/plays` (play counts); the route "
            "answers 404 `plays_disabled` when neither this nor `plays_token_env` is set"),
        Row("plays_token_env", _env_name, None, "env var name",
            "the environment variable holding that token (instead of `plays_token`)"),
        Row("trending_interval", _duration, 60.0, "duration",
            "the trending ranking and the feeds' pool of ready videos are recomputed this "
            "often, in the background"),
        Row("trending_window", _duration, 48 * 3600.0, "duration",
            "views older than this do not count for trending"),
        Row("trending_half_life", _duration, 6 * 3600.0, "duration",
            "a view counts half as much for trending this long after it"),
        Row("feed_pool", _count(1, 100_000), 5000, "integer 1..100000",
            "the newest ready videos the for_you feed ranks"),
        Row("feed_depth", _count(10, 5000), 500, "integer 10..5000",
            "items of one feed session (a first page and its next pages)"),
        Row("feed_cursor_ttl", _duration, 3600.0, "duration",
            "a feed session's cursors expire this long after its first page"),
        Row("playback_base", _url, None, "URL",
            "the edge the web page (`/`) plays and shows posters from; default: the file's "
            "first `role = \"edge\"` node"),
        Row("prewarm_top", _count(0, 1000), 10, "integer 0..1000",
            "after each trending recompute, the top this many trending videos are pre-warmed "
            "into every node with an admin listener (shield, regionals, edges); 0: off"),
        Row("prewarm_rungs", _count(1, 20), 2, "integer 1..20",
            "pre-warm the init and first segments of this many of the lowest renditions"),
        Row("prewarm_segments", _count(0, 100), 2, "integer 0..100",
            "the first this many segments of each of those renditions"),
        Row("prewarm_timeout", _duration, 30.0, "duration",
            "one node's prewarm request gives up after this long (counted, logged)"),
    )},
    "queue": {r.name: r for r in (
        Row("type", _choice("sqlite", "sqs"), "sqlite", '"sqlite" or "sqs"',
            "embedded (one host) or Amazon SQS (workers on many hosts)"),
        Row("path", _string, None, "path",
            "sqlite: the queue's file (default: `DATA_DIR/queue.sqlite`)"),
        Row("name", _string, None, "string",
            "sqs: the queues `NAME.fifo` and `NAME-dead.fifo` (found, or made with `create`)"),
        Row("endpoint_url", _url, None, "URL", "sqs: the API endpoint (default: AWS's)"),
        Row("region", _string, None, "string", "sqs: the region"),
        Row("create", _flag, False, "boolean",
            "sqs: create the queues and their redrive policy when missing"),
        Row("max_attempts", _count(1, 1000), 3, "integer 1..1000",
            "runs of a job before it is dead-lettered (sqs: the redrive policy's count)"),
        Row("wait", _count(0, 20), 10, "integer 0..20",
            "sqs: seconds a worker's receive waits for a job (long polling)"),
    )},
    "catalog": {r.name: r for r in (
        Row("type", _choice("sqlite", "dynamodb"), "sqlite", '"sqlite" or "dynamodb"',
            "embedded (one API host) or DynamoDB (API hosts and workers share it)"),
        Row("path", _string, None, "path",
            "sqlite: the catalog's file (default: `DATA_DIR/videos.sqlite`)"),
        Row("table", _string, None, "string", "dynamodb: the table's name"),
        Row("endpoint_url", _url, None, "URL", "dynamodb: the API endpoint (default: AWS's)"),
        Row("region", _string, None, "string", "dynamodb: the region"),
        Row("create", _flag, False, "boolean", "dynamodb: create the table when missing"),
    )},
    "cache": {r.name: r for r in (
        Row("servers", _servers, (), "array of HOST:PORT",
            "memcached servers (a cluster by consistent hashing: pymemcache's HashClient); "
            "empty: no memcached, every read goes to the database"),
        Row("prefix", _key_prefix, "reelcdn:", "string",
            "prefix of every key (deployments sharing a memcached keep theirs apart)"),
        Row("connect_timeout", _short(10.0), 0.05, "duration ≤ 10s",
            "connecting to a server gives up after this long (then it is taken out)"),
        Row("timeout", _short(10.0), 0.05, "duration ≤ 10s",
            "a call to a server gives up after this long (then it is taken out)"),
        Row("retry_attempts", _count(0, 10), 0, "integer 0..10",
            "failed calls before a server is taken out of the ring (0: at the first); calls "
            "meanwhile read as misses"),
        Row("dead_timeout", _duration, 10.0, "duration",
            "a server taken out is tried again after this long"),
        Row("page_ttl", _duration, 30.0, "duration", "feed pages stay fresh this long"),
        Row("video_ttl", _duration, 300.0, "duration",
            "video rows (ready ones) stay fresh this long"),
        Row("counters_ttl", _duration, 5.0, "duration",
            "views and likes shown on feed items stay fresh this long"),
        Row("stale_ttl", _duration, 60.0, "duration",
            "a page past its TTL is kept this much longer, served while one caller recomputes"),
        Row("lock_ttl", _short(60.0), 2.0, "duration ≤ 1m",
            "the recompute lock of a hot key expires after this long (a caller that died)"),
        Row("lock_wait", _short(10.0), 0.5, "duration ≤ 10s",
            "callers without a stale copy wait this long for another's recompute, then read "
            "the database"),
        Row("near_ttl", _duration_or_off(60.0), 1.0, "duration 0..1m",
            "each process keeps the fresh values it read or wrote this long (never past their "
            "TTL) and answers them without asking memcached; 0: off"),
        Row("near_size", _count(0, 1_000_000), 10_000, "integer 0..1000000",
            "keys each process keeps near copies of (the oldest go first); 0: off"),
    )},
    "transcode": {r.name: r for r in (
        Row("lease", _duration, 60.0, "duration",
            "a job is held this long (renewed while it runs) before another worker may "
            "take it over"),
        Row("workdir", _string, None, "path", "scratch space for ffmpeg (`DATA_DIR/work`)"),
        Row("max_duration", _duration, MAX_DURATION, "duration",
            "longer sources fail with a reason"),
        Row("max_source_size", _size, MAX_SIZE, "size", "larger sources fail with a reason"),
        Row("segment_seconds", _duration, 2.0, "duration", "segment and GOP length"),
        Row("preset", _string, "veryfast", "string", "x264's preset"),
        Row("max_frame_rate", _positive, 60.0, "number", "higher frame rates are halved"),
        Row("rungs", _rungs, None, "array of tables",
            "the ladder: `name`, `height` (the short side), `video_bitrate`, `audio_bitrate` "
            "(bits/s), `profile`; default 360p, 720p, 1080p; never upscaled"),
    )},
}


def _parse_section(
    section: str, table: Mapping[str, Any], file: str, problems: Problems
) -> dict[str, Any]:
    """A section's values (defaults for keys not set); a bad key is recorded in ``problems``
    and its value is ``FAILED``, an unknown one recorded and left out."""
    rows = SECTIONS[section]
    values = {name: row.default for name, row in rows.items()}
    for name, raw in table.items():
        if name not in rows:
            problems.add(unknown_key(file, section, name, rows))
            continue
        values[name] = problems.attempt(rows[name].parse, raw, file, f"{section}.{name}")
    return values


def reference_markdown() -> str:
    """The keys of every section as Markdown tables (docs/origin.md)."""
    out: list[str] = []
    for section, rows in SECTIONS.items():
        out += [f"`[{section}]`", "", "| key | kind | default | meaning |", "|---|---|---|---|"]
        for row in rows.values():
            default = row.default
            if isinstance(default, tuple) and len(default) == 2 and isinstance(default[1], int):
                shown = f"`{default[0]}:{default[1]}`"
            elif default is None:
                shown = "—"
            else:
                shown = f"`{default!r}`"
            out.append(f"| `{row.name}` | {row.kind} | {shown} | {row.doc} |")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# The settings.


@dataclass(frozen=True)
class QueueSettings:
    type: str = "sqlite"
    path: Path | None = None
    name: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    create: bool = False
    max_attempts: int = 3
    wait: int = 10


@dataclass(frozen=True)
class CatalogSettings:
    type: str = "sqlite"
    path: Path | None = None
    table: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    create: bool = False


@dataclass(frozen=True)
class TranscodeSettings:
    ladder: Ladder = field(default_factory=Ladder)
    lease: float = 60.0
    workdir: Path | None = None
    max_duration: float = MAX_DURATION
    max_source_size: int = MAX_SIZE


@dataclass(frozen=True)
class ApiSettings:
    listen: tuple[str, int]
    admin: tuple[str, int] | None
    key_file: Path
    max_size: int
    upload_ttl: float
    uploads_per_window: int
    rate_window: float
    cors_origins: tuple[str, ...]
    purge_nodes: bool
    direct_bucket: str | None
    direct_prefix: str
    direct_endpoint_url: str | None
    direct_region: str | None
    direct_part_size: int
    plays_token: str | None = None
    plays_token_env: str | None = None
    trending_interval: float = 60.0
    trending_window: float = 48 * 3600.0
    trending_half_life: float = 6 * 3600.0
    feed_pool: int = 5000
    feed_depth: int = 500
    feed_cursor_ttl: float = 3600.0
    playback_base: str | None = None
    prewarm_top: int = 10
    prewarm_rungs: int = 2
    prewarm_segments: int = 2
    prewarm_timeout: float = 30.0


@dataclass(frozen=True)
class OriginServices:
    """The validated services of a topology file."""

    file: str
    data_dir: Path
    api: ApiSettings
    #: The origin videos are published into; None only when the file has no ``[api]`` and no
    #: fs or s3 origin (a topology of nodes alone): :meth:`publish_origin` then explains.
    publish: StorageOrigin | None
    queue: QueueSettings
    catalog: CatalogSettings
    transcode: TranscodeSettings
    #: The nodes a deleted video is purged from: (name, admin URL, token), parents first.
    purge_targets: tuple[tuple[str, str, str | None], ...] = ()
    #: Every node with an admin listener (trending videos are pre-warmed into them).
    admin_nodes: tuple[AdminTarget, ...] = ()
    cache: CacheSettings = field(default_factory=CacheSettings)

    def publish_origin(self) -> StorageOrigin:
        """Where videos are published; a ConfigError when the file names none."""
        if self.publish is None:
            _publish_origin_of(self.file, {}, None)  # raises, saying what to add
        assert self.publish is not None
        return self.publish

    def keys(self) -> Keys:
        """The user-token keys (read now: a rotated key file takes effect at the next start)."""
        try:
            return load_keys(self.api.key_file)
        except OSError as exc:
            raise ConfigError(self.file, "api.key_file",
                              f"cannot read {self.api.key_file}: {exc.strerror or exc} "
                              "(one 'KID SECRET' a line; `reelcdn up` makes one)") from None
        except ValueError as exc:
            raise ConfigError(self.file, "api.key_file", f"{self.api.key_file}: {exc}") from None

    def service_config(self) -> Any:
        """The API service's :class:`~reelcdn.origin.state.OriginConfig`."""
        from reelcdn.origin.state import OriginConfig

        api, publish = self.api, self.publish_origin()
        return OriginConfig(
            data_dir=self.data_dir, keys=self.keys(), max_size=api.max_size,
            upload_ttl=api.upload_ttl, uploads_per_window=api.uploads_per_window,
            rate_window=api.rate_window, cors_origins=api.cors_origins,
            origin_root=Path(publish.root) if publish.type == "fs" and publish.root else None,
            purge_targets=self.purge_targets,
            s3_bucket=api.direct_bucket, s3_prefix=api.direct_prefix,
            s3_endpoint_url=api.direct_endpoint_url, s3_region=api.direct_region,
            s3_part_size=api.direct_part_size, max_attempts=self.queue.max_attempts,
            plays_token=self.plays_token(), trending_interval=api.trending_interval,
            trending_window=api.trending_window, trending_half_life=api.trending_half_life,
            feed_pool=api.feed_pool, feed_depth=api.feed_depth,
            feed_cursor_ttl=api.feed_cursor_ttl, playback_base=api.playback_base,
            cache=self.cache, prewarm_targets=self.admin_nodes, prewarm_top=api.prewarm_top,
            prewarm_rungs=api.prewarm_rungs, prewarm_segments=api.prewarm_segments,
            prewarm_timeout=api.prewarm_timeout,
        )

    def plays_token(self) -> str | None:
        """The edges' play-count token: ``plays_token``, or the value of the environment
        variable ``plays_token_env`` names (read now); None when neither is set."""
        name = self.api.plays_token_env
        if name is None:
            return self.api.plays_token
        value = os.environ.get(name, "").strip()
        if len(value) < MIN_PLAYS_TOKEN:
            raise ConfigError(self.file, "api.plays_token_env",
                              f"the environment variable {name} is "
                              + ("not set" if not value else
                                 f"shorter than {MIN_PLAYS_TOKEN} characters"))
        return value


def _resolve(base: str, path: str) -> Path:
    return Path(path) if os.path.isabs(path) else Path(base) / path


def _publish_origin_of(file: str, origins: Mapping[str, StorageOrigin], name: str | None,
                       ) -> StorageOrigin:
    stores = {n: o for n, o in origins.items() if o.type in ("fs", "s3")}
    if name is None:
        if len(stores) == 1:
            return next(iter(stores.values()))
        if not stores:
            raise ConfigError(file, "api.publish_to", "this file has no fs or s3 origin to "
                              "publish videos into: add one ([origin.NAME] type = \"fs\", "
                              "root = …) and name it here")
        raise ConfigError(file, "api.publish_to", "this file has several fs/s3 origins ("
                          + ", ".join(stores) + "): name the one workers publish into")
    origin = origins.get(name)
    if origin is None:
        raise ConfigError(file, "api.publish_to", f"no [origin.{name}] in this file"
                          + (f"; origins are: {', '.join(origins)}" if origins else ""))
    if origin.type not in ("fs", "s3"):
        raise ConfigError(file, "api.publish_to", f"origin {name!r} is of type {origin.type}: "
                          "workers publish into an fs or s3 origin")
    return origin


def services_from_topology(topology: Topology) -> OriginServices:
    """Validate a loaded topology's service sections (absent ones take their defaults); every
    problem is raised at once (:class:`ConfigErrors`)."""
    problems = Problems(topology.file)
    services = _services(topology, problems)
    problems.raise_if_any()
    assert services is not None
    return services


def check_services(topology: Topology, problems: Problems) -> None:
    """The service sections' check for ``load_topology(..., check=check_services)``: their
    problems join the nodes' in one list. ``topology`` may hold only what parsed: a check that
    needs an origin with problems of its own is skipped."""
    _services(topology, problems)


def _services(topology: Topology, problems: Problems) -> OriginServices | None:
    """The services, with every problem recorded in ``problems``; None when there was one."""
    file = topology.file
    before = len(problems)
    parsed = {section: _parse_section(section, topology.services.get(section, {}), file,
                                      problems)
              for section in SECTIONS}
    api, queue, catalog, transcode = (parsed[s] for s in ("api", "queue", "catalog",
                                                          "transcode"))
    cache = parsed["cache"]
    base = topology.base_dir

    def ok(*values: Any) -> bool:
        return all(value is not FAILED for value in values)

    data_dir_value = api.pop("data_dir")
    data_dir = _resolve(base, data_dir_value if ok(data_dir_value) else ".")
    if (ok(api["plays_token"], api["plays_token_env"]) and api["plays_token"] is not None
            and api["plays_token_env"] is not None):
        problems.add(ConfigError(file, "api.plays_token_env", "set plays_token or "
                                 "plays_token_env, not both"))
    if ok(queue["type"], queue["name"]) and queue["type"] == "sqs" and not queue["name"]:
        problems.add(ConfigError(file, "queue.name", 'required with type = "sqs"'))
    if (ok(catalog["type"], catalog["table"]) and catalog["type"] == "dynamodb"
            and not catalog["table"]):
        problems.add(ConfigError(file, "catalog.table", 'required with type = "dynamodb"'))
    rungs = transcode.pop("rungs")
    ladder_config: dict[str, Any] = {k: transcode.pop(k) for k in
                                     ("segment_seconds", "preset", "max_frame_rate")}
    if rungs is not None:
        ladder_config["rungs"] = rungs
    ladder: Any = FAILED
    if ok(*ladder_config.values()):
        try:
            ladder = Ladder.from_config(ladder_config)
        except ValueError as exc:
            problems.add(ConfigError(file, "transcode.rungs", str(exc)))
    workdir = transcode.pop("workdir")
    publish_to = api.pop("publish_to")
    publish: Any = None
    if "api" in topology.services or any(o.type in ("fs", "s3")
                                         for o in topology.origins.values()):
        # An origin with problems of its own may be the one meant: no guess about it.
        unsure = (problems.failed_under("origin") if publish_to is None
                  else not ok(publish_to) or problems.failed_under(f"origin.{publish_to}"))
        publish = (FAILED if unsure else
                   problems.attempt(_publish_origin_of, file, topology.origins, publish_to))
    if api["playback_base"] is None:  # the web page plays from the first edge of the file
        edge = next((n for n in topology.nodes.values() if n.role == "edge"), None)
        api["playback_base"] = http_base(edge.advertised()) if edge is not None else None
    if len(problems) > before or not ok(*api.values(), *queue.values(), *catalog.values(),
                                        *transcode.values(), *cache.values(), workdir, ladder,
                                        publish):
        return None
    admins: list[AdminTarget] = []
    for name in topology.order_for_start():  # parents first
        node = topology.nodes[name]
        admin = node.admin_advertised()  # the origin API may run on another host
        if admin is not None:
            renders = (node.render_playlists if node.render_playlists is not None
                       else node.role == "edge")
            admins.append(AdminTarget(name, node.role, http_base(admin), node.admin_token,
                                      renders))
    purge = [(a.name, a.url, a.token) for a in admins] if api["purge_nodes"] else []
    return OriginServices(
        file=file,
        data_dir=data_dir,
        api=ApiSettings(**{**api, "key_file": _resolve(base, api["key_file"])}),
        publish=publish,
        queue=QueueSettings(**{**queue, "path": _resolve(base, queue["path"]) if queue["path"]
                               else data_dir / "queue.sqlite"}),
        catalog=CatalogSettings(**{**catalog, "path": _resolve(base, catalog["path"])
                                   if catalog["path"] else data_dir / "videos.sqlite"}),
        transcode=TranscodeSettings(ladder=ladder, workdir=_resolve(base, workdir) if workdir
                                    else data_dir / "work", **transcode),
        purge_targets=tuple(purge),
        admin_nodes=tuple(admins),
        cache=CacheSettings(**cache),
    )


def load_services(path: str | os.PathLike[str] | None, *, data_dir: str | None = None,
                  ) -> OriginServices:
    """Load a topology file (``None``: the embedded default, based in ``data_dir``) and
    validate its service sections: the problems of both, nodes and services, are raised
    together (:class:`ConfigErrors`)."""
    return services_from_topology(load_topology(path, data_dir=data_dir, check=check_services))


# --------------------------------------------------------------------------------------------
# The running parts.


def open_queue(settings: QueueSettings) -> Any:
    """The job queue the settings describe (a :class:`~reelcdn.origin.queue.JobQueue`)."""
    if settings.type == "sqlite":
        from reelcdn.origin.queue import SqliteQueue

        assert settings.path is not None
        settings.path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteQueue(settings.path)
    import boto3

    from reelcdn.origin.queue_sqs import SqsQueue, create_queues

    client = boto3.client("sqs", endpoint_url=settings.endpoint_url,
                          region_name=settings.region)
    assert settings.name is not None
    if settings.create:
        queue_url, dead_url = create_queues(client, settings.name, settings.max_attempts)
    else:
        queue_url = client.get_queue_url(QueueName=f"{settings.name}.fifo")["QueueUrl"]
        dead_url = client.get_queue_url(QueueName=f"{settings.name}-dead.fifo")["QueueUrl"]
    return SqsQueue(queue_url, dead_url, client=client, wait_seconds=settings.wait)


def open_catalog(settings: CatalogSettings) -> Any:
    """The video catalog the settings describe."""
    if settings.type == "sqlite":
        from reelcdn.origin.videos import VideoCatalog

        assert settings.path is not None
        settings.path.parent.mkdir(parents=True, exist_ok=True)
        return VideoCatalog(settings.path)
    from reelcdn.origin.videos_dynamo import DynamoCatalog

    assert settings.table is not None
    return DynamoCatalog(settings.table, endpoint_url=settings.endpoint_url,
                         region=settings.region, create_table=settings.create)


def open_store(origin: StorageOrigin) -> Any:
    """The object store workers publish into: the same place the shield's origin reads."""
    from reelcdn.origin.storage import FsStore, S3Store

    if origin.type == "fs":
        assert origin.root is not None
        return FsStore(origin.root)
    import boto3

    session = boto3.session.Session(profile_name=origin.profile) if origin.profile else boto3
    client = session.client("s3", endpoint_url=origin.endpoint_url, region_name=origin.region)
    assert origin.bucket is not None
    return S3Store(origin.bucket, origin.prefix, client)


if __name__ == "__main__":  # the reference for docs/origin.md
    print(reference_markdown())
