"""``reelcdn loadtest`` options checked together: parsed arguments → ``RunOptions``.

Apart from ``cli.py`` (the parser and the text summary) so that ``compare.py``, which runs
the same options against two CDNs, and ``cli.py``, which dispatches to it, do not import each
other.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .catalog import CatalogError, load_catalog
from .player import PlayerOptions
from .workload import Workload

EXIT_OK, EXIT_SLO, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3


class UsageError(ValueError):
    """Options that parse one by one but do not go together."""


def build_options(args: argparse.Namespace) -> Any:
    """Options → RunOptions, checking what argparse cannot; UsageError names the option."""
    from .runner import RunOptions
    from .scrape import (
        Endpoint,
        edge_urls_from_topology,
        endpoints_from_topology,
        tier_roles_from_topology,
    )

    feed_url, feed_token = _feed_options(args)
    if args.catalog is None and feed_url is None:
        raise UsageError("--catalog: needed (or --feed: the videos come from the feed)")
    try:
        catalog = tuple(load_catalog(args.catalog)) if args.catalog is not None else ()
    except CatalogError as exc:
        raise UsageError(str(exc)) from None
    targets = [t.rstrip("/") for t in args.target]
    for target in targets:
        if not target.startswith(("http://", "https://")):
            raise UsageError(f"--target {target!r}: give a base URL like http://127.0.0.1:8080")
    endpoints = [Endpoint(url.rstrip("/"), args.admin_token) for url in args.admin]
    tier_roles = None
    if args.topology:
        from reelcdn.edge.config import ConfigError

        try:
            endpoints += endpoints_from_topology(args.topology)
            if not targets:
                targets = edge_urls_from_topology(args.topology)
            tier_roles = tier_roles_from_topology(args.topology)
        except (ConfigError, OSError) as exc:
            raise UsageError(f"--topology {args.topology}: {exc}") from None
    if not targets and any(v.url is None for v in catalog):
        raise UsageError("--target: needed (or --topology) when the catalog has video ids "
                         "or paths rather than full URLs")
    if feed_url is not None:
        if not targets:
            raise UsageError("--feed: needs --target or --topology (the edges that play the "
                             "feed's videos)")
        if args.scenario == "flash-crowd":
            raise UsageError("--feed: a flash crowd plays one catalog video; drop --feed")
        if getattr(args, "verify", None):
            raise UsageError("--verify: not with --feed (the reference digests are the "
                             "catalog's)")
    flash_index = len(catalog) - 1
    if args.flash_video is not None:
        names = [v.video for v in catalog]
        if args.flash_video not in names:
            raise UsageError(f"--flash-video {args.flash_video!r}: not in the catalog")
        flash_index = names.index(args.flash_video)
    if args.rate is not None and args.scenario == "flash-crowd":
        raise UsageError("--rate: a flash crowd starts --players players at once; drop --rate")
    if args.retries < 0:
        raise UsageError("--retries: must be >= 0")
    ramp = args.ramp if args.ramp is not None else min(5.0, args.duration / 4)
    player = PlayerOptions(
        start_estimate_bps=args.start_estimate, patience=args.patience,
        decode_allowance=args.decode_allowance, time_scale=args.time_scale,
        watch=args.watch, max_buffer=args.max_buffer, request_timeout=args.request_timeout,
        retries=args.retries, send_cmcd=not args.no_cmcd,
        feed_url=feed_url, feed_token=feed_token or "", feed_type=args.feed_type,
    )
    workload = Workload(
        targets=tuple(targets), catalog=catalog, players=args.players,
        duration=args.duration, rate=args.rate, zipf=args.zipf, scenario=args.scenario,
        flash_window=args.flash_window, flash_video=flash_index, ramp=ramp, player=player,
        bandwidth=args.bandwidth, rtt=args.rtt, seed=args.seed,
        max_sessions=args.max_sessions,
    )
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    return RunOptions(
        workload=workload, endpoints=endpoints, cache=args.cache, processes=args.processes,
        scrape_interval=args.scrape_interval, slos=args.slo or [], progress=progress,
        tier_roles=tier_roles, label=args.label, verify=getattr(args, "verify", None),
    )


def _feed_options(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(--feed base URL, the user token) checked, or (None, None) without --feed."""
    feed = getattr(args, "feed", None)
    token, token_file = getattr(args, "feed_token", None), getattr(args, "feed_token_file", None)
    if feed is None:
        if token is not None or token_file is not None:
            raise UsageError("--feed-token/--feed-token-file: only with --feed URL")
        return None, None
    if not feed.startswith(("http://", "https://")):
        raise UsageError(f"--feed {feed!r}: give the origin API's base URL like "
                         "http://127.0.0.1:8300")
    if token is not None and token_file is not None:
        raise UsageError("--feed-token and --feed-token-file: give one")
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"--feed-token-file {token_file}: {exc.strerror or exc}") from None
    if not token:
        raise UsageError("--feed: needs a user token (--feed-token TOKEN or --feed-token-file "
                         "FILE; reelcdn user-token NAME --config FILE makes one)")
    return feed.rstrip("/"), token
