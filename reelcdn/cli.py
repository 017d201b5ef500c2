"""The ``reelcdn`` command: run a node, validate a config file, run a topology.

``reelcdn node`` runs one node in this process, or, when the node's ``workers`` is above 1, a
master process that starts that many workers of the node (``edge/ops/workers.py``) with hidden
``--worker-*`` options.

Sub-commands stay thin: each parses its options and calls the part of the system that does
the work, so everything here is also usable from Python.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from typing import Any

from reelcdn import __version__


def _config_error(exc: Exception, command: str = "") -> None:
    """Print a config error to stderr: every problem of the file, one per line
    (``FILE:LINE: key: problem``) under a line that counts them."""
    errors = getattr(exc, "errors", None) or (exc,)
    prefix = f"reelcdn: {command}: " if command else "reelcdn: "
    if len(errors) == 1:
        print(f"{prefix}config error: {errors[0]}", file=sys.stderr)
        return
    where = getattr(exc, "file", "the config file")
    print(f"{prefix}{len(errors)} config errors in {where}:", file=sys.stderr)
    for error in errors:
        print(error, file=sys.stderr)


def _die_with_supervisor() -> None:
    """Under a supervisor (``reelcdn up``, or the master of a multi-worker node; both set
    ``REELCDN_SUPERVISED=1``), ask Linux to SIGTERM this process when the supervisor dies,
    even by SIGKILL, so nothing outlives it."""
    if os.environ.get("REELCDN_SUPERVISED") != "1" or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    # The supervisor died before prctl took effect: we were re-parented. A supervisor that
    # says who it is is checked by pid (it may itself be pid 1 in a container); else the
    # re-parenting to init is the sign.
    expected = os.environ.get("REELCDN_SUPERVISOR_PID", "")
    orphaned = os.getppid() != int(expected) if expected.isdigit() else os.getppid() == 1
    if orphaned:
        sys.exit(0)


def _cmd_node(args: argparse.Namespace) -> int:
    from reelcdn.edge.config import ConfigError, load_node_config

    _die_with_supervisor()
    from reelcdn.edge.ops.server import install_uvloop, serve
    from reelcdn.shield.connectors import build_upstream

    worker = args.worker_index is not None
    if worker and (args.worker_admin_socket is None or args.worker_count is None
                   or not 0 <= args.worker_index < args.worker_count):
        print("reelcdn: --worker-index needs --worker-count (greater than the index) and "
              "--worker-admin-socket", file=sys.stderr)
        return 2
    try:
        config = load_node_config(args.config, args.name)
    except ConfigError as exc:
        _config_error(exc)
        return 2
    if not worker and config.workers > 1 and config.listen_port == 0:
        print(f"reelcdn: config error: node.{args.name}.workers = {config.workers} needs a "
              "fixed listen port (with port 0 each worker would get a port of its own)",
              file=sys.stderr)
        return 2
    if args.no_uvloop:
        loop_name = "asyncio"
    else:
        loop_name = "uvloop" if install_uvloop() else "asyncio (uvloop not installed)"
    logging.getLogger("reelcdn").info("event loop: %s", loop_name)

    if not worker and config.workers > 1:
        from reelcdn.edge.ops.workers import Master

        master = Master(
            str(args.config), config, lambda: load_node_config(args.config, args.name),
            log_level=args.log_level, no_uvloop=args.no_uvloop,
        )
        return asyncio.run(master.run())

    from reelcdn.edge.ops.workers import worker_config

    def reload() -> object:
        fresh = load_node_config(args.config, args.name)
        # A worker's share of the cache: divided by the running worker count, not the
        # reloaded file's (a changed ``workers`` needs a restart).
        return worker_config(fresh, args.worker_count) if worker else fresh

    if worker:
        config = worker_config(config, args.worker_count)
    try:
        asyncio.run(serve(  # type: ignore[arg-type]
            config, build_upstream, reload_config=reload, reuse_port=worker,
            admin_socket=args.worker_admin_socket if worker else None,
            worker_index=args.worker_index,
        ))
    except OSError as exc:
        what = f" worker {args.worker_index}" if worker else ""
        print(f"reelcdn: node {args.name}{what} could not start: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from reelcdn.edge.config import ConfigError, describe_upstream, load_topology
    from reelcdn.edge.config.values import format_address
    from reelcdn.origin.config import check_services, services_from_topology

    try:  # node keys and service keys: every problem of the file in one list
        topology = load_topology(args.config, check=check_services)
        services = services_from_topology(topology)
    except ConfigError as exc:
        _config_error(exc)
        return 2
    nodes = topology.nodes
    for name, node in nodes.items():
        workers = f" ({node.workers} workers)" if node.workers > 1 else ""
        advertise = format_address(*node.advertised())
        admin = node.admin_advertised()
        admin_shown = f" admin {format_address(*admin)}" if admin is not None else ""
        print(f"{name}: {node.role} listen {format_address(node.listen_host, node.listen_port)}"
              f" advertise {advertise}{admin_shown}{workers} {describe_upstream(node)}")
    if services.publish is not None:
        print(f"origin services: API {services.api.listen[0]}:{services.api.listen[1]}, "
              f"{services.queue.type} queue, {services.catalog.type} catalog, publishing to "
              f"{services.publish.name}")
    print(f"{args.config}: OK ({len(nodes)} node{'s' if len(nodes) != 1 else ''})")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from reelcdn.edge.config import ConfigError
    from reelcdn.edge.ops.server import install_uvloop
    from reelcdn.up import run_up

    install_uvloop()
    try:
        return asyncio.run(run_up(args.config, args.data_dir, args.log_level,
                                  demo=not args.no_demo))
    except ConfigError as exc:
        _config_error(exc)
        return 2
    except KeyboardInterrupt:
        return 130


def _cmd_loadtest(args: argparse.Namespace) -> int:
    from reelcdn.edge.ops.server import install_uvloop
    from reelcdn.loadtest.cli import main_args

    install_uvloop()
    return main_args(args)


def _cmd_soak(args: argparse.Namespace) -> int:
    from reelcdn.edge.ops.server import install_uvloop
    from reelcdn.loadtest.chaos.cli import main_args

    install_uvloop()
    return main_args(args)


def _load_services(args: argparse.Namespace, command: str) -> Any:
    """The topology's service sections, or None after printing the config error."""
    from reelcdn.edge.config import ConfigError
    from reelcdn.origin.config import load_services

    try:
        return load_services(args.config)
    except ConfigError as exc:
        _config_error(exc, command)
        return None


def _cmd_origin(args: argparse.Namespace) -> int:
    from reelcdn.edge.config import ConfigError
    from reelcdn.edge.ops.server import install_uvloop
    from reelcdn.origin.logs import use_json_logs
    from reelcdn.origin.service import run

    _die_with_supervisor()
    use_json_logs()
    services = _load_services(args, "origin")
    if services is None:
        return 2
    try:  # a missing key file or publish origin is a config error, before binding
        services.keys()
        services.publish_origin()
    except ConfigError as exc:
        _config_error(exc, "origin")
        return 2
    install_uvloop()
    try:
        asyncio.run(run(services))
    except ConfigError as exc:
        _config_error(exc, "origin")
        return 2
    except OSError as exc:
        print(f"reelcdn: origin could not start: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    """Run transcoding jobs from the topology's queue until SIGTERM/SIGINT."""
    import signal
    import threading

    from reelcdn.edge.config import ConfigError
    from reelcdn.origin.config import open_catalog, open_queue, open_store
    from reelcdn.origin.logs import use_json_logs
    from reelcdn.origin.pipeline import TranscodeWorker

    _die_with_supervisor()
    use_json_logs()
    services = _load_services(args, "worker")
    if services is None:
        return 2
    transcode, api = services.transcode, services.api
    try:
        queue = open_queue(services.queue)
        catalog = open_catalog(services.catalog)
    except Exception as exc:  # the queue or catalog service unreachable, a missing table
        print(f"reelcdn: worker: cannot open the queue or catalog: {exc}", file=sys.stderr)
        return 1
    s3 = None
    if api.direct_bucket:
        from reelcdn.origin.direct import s3_client

        s3 = s3_client(api.direct_endpoint_url, api.direct_region)
    try:
        publish = services.publish_origin()
    except ConfigError as exc:
        _config_error(exc, "worker")
        return 2
    worker = TranscodeWorker(queue, open_store(publish), catalog,
                             workdir=transcode.workdir or services.data_dir / "work",
                             ladder=transcode.ladder, lease_seconds=transcode.lease,
                             s3_client=s3,
                             s3_buckets=(api.direct_bucket,) if api.direct_bucket else (),
                             max_duration=transcode.max_duration,
                             max_size=transcode.max_source_size)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    where = publish.root if publish.type == "fs" else f"s3://{publish.bucket}/{publish.prefix}"
    print(f"worker {worker.worker_id}: {services.queue.type} queue, publishing to "
          f"{publish.name} ({where})", flush=True)
    worker.run(stop)
    return 0


def _cmd_upload(args: argparse.Namespace) -> int:
    """Upload a video over tus, wait for its first rendition, print where it plays."""
    from pathlib import Path

    from reelcdn.upload import UploadFailed, upload, wait_playable

    path = Path(args.file)
    if not path.is_file():
        print(f"reelcdn: upload: {path}: no such file", file=sys.stderr)
        return 2
    token = args.token
    if token is None:
        token_file = Path(args.token_file)
        if not token_file.is_file():
            print(f"reelcdn: upload: no --token and no token file {token_file} (reelcdn up "
                  "writes one; reelcdn user-token makes one)", file=sys.stderr)
            return 2
        token = token_file.read_text().strip()
    api = args.origin.rstrip("/")

    async def run() -> int:
        started = time.monotonic()
        video_id = await upload(path, api, token, title=args.title or "",
                                caption=args.caption or "", hashtags=args.hashtags or "")
        uploaded = time.monotonic()
        print(f"video {video_id}: uploaded in {uploaded - started:.1f} s; waiting for the "
              "first rendition", flush=True)
        state = await wait_playable(api, token, video_id)
        print(f"playable {time.monotonic() - uploaded:.1f} s after the last byte "
              f"({state['status']}, {', '.join(state.get('renditions') or [])}):")
        print(f"  {args.edge.rstrip('/')}{state['playback']}", flush=True)
        return 0

    try:
        return asyncio.run(run())
    except (UploadFailed, OSError) as exc:
        print(f"reelcdn: upload: {exc}", file=sys.stderr)
        return 1


def _cmd_user_token(args: argparse.Namespace) -> int:
    from reelcdn.edge.config import ConfigError
    from reelcdn.origin.users import load_keys, mint, parse_duration

    try:
        if args.config:
            services = _load_services(args, "user-token")
            if services is None:
                return 2
            key_file, keys = services.api.key_file, services.keys()
        else:
            key_file, keys = args.key_file, load_keys(args.key_file)
        kid = args.kid or keys.current
        if kid not in keys.keys:
            raise ValueError(f"no key {kid!r} in {key_file}")
        print(mint(args.name, (kid, keys.keys[kid]), parse_duration(args.ttl)))
    except ConfigError as exc:
        _config_error(exc, "user-token")
        return 2
    except (OSError, ValueError) as exc:
        print(f"reelcdn: user-token: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    """Every node of a topology from its admin API: a live table, or one JSON snapshot."""
    from pathlib import Path

    from reelcdn.edge.config import ConfigError, load_topology
    from reelcdn.status import Options, run, targets_of

    if args.interval <= 0 or args.timeout <= 0 or (args.count is not None and args.count < 1):
        print("reelcdn: status: --interval, --timeout and --count must be positive",
              file=sys.stderr)
        return 2
    config = args.config
    if config is None:  # what `reelcdn up` wrote (with its admin token), else the default
        written = Path(args.data_dir) / "topology.toml"
        config = str(written) if written.is_file() else None
    from reelcdn.origin.config import check_services

    def services_too(topology: Any, problems: Any) -> None:
        if "api" in topology.services:  # status reads the origin API's admin listener
            check_services(topology, problems)

    try:
        targets = targets_of(load_topology(config, data_dir=args.data_dir, check=services_too))
    except ConfigError as exc:
        _config_error(exc, "status")
        return 2
    return run(targets, Options(interval=args.interval, timeout=args.timeout, json=args.json,
                                once=args.once, count=args.count))


def _cmd_sign(args: argparse.Namespace) -> int:
    """Print a signed URL (or the cookies) for the tokens of a node of a topology."""
    from pathlib import Path

    from reelcdn.edge.config import ConfigError, load_topology
    from reelcdn.origin.users import parse_duration
    from reelcdn.sign import SignRequest, sign_url, tokens_of

    try:
        topology = load_topology(args.config, data_dir=args.data_dir)
        _, tokens = tokens_of(topology.nodes, args.node)
        signed = sign_url(tokens, SignRequest(
            url=args.url, ttl=parse_duration(args.ttl), acl=args.acl, ip=args.ip,
            kid=args.kid, cookie=args.cookie,
            private_key=Path(args.private_key) if args.private_key else None))
    except ConfigError as exc:
        _config_error(exc, "sign")
        return 2
    except (OSError, ValueError) as exc:
        print(f"reelcdn: sign: {exc}", file=sys.stderr)
        return 2
    if signed.cookies:
        for name, value in signed.cookies:
            print(f"Cookie: {name}={value}")
    else:
        print(signed.url)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reelcdn",
        description="reelcdn: a tiered video edge / CDN layer (edge POPs, regional caches, "
        "origin shield) for HLS and CMAF.",
    )
    parser.add_argument("--version", action="version", version=f"reelcdn {__version__}")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    node = sub.add_parser("node", help="run one cache node from a TOML config file")
    node.add_argument("--config", required=True, help="the TOML file describing the node")
    node.add_argument("--name", required=True, help="which [node.NAME] table to run")
    node.add_argument("--no-uvloop", action="store_true",
                      help="use the plain asyncio loop (for debugging)")
    # Internal: how the master of a node with workers > 1 starts each worker (edge/ops/workers.py).
    node.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    node.add_argument("--worker-count", type=int, help=argparse.SUPPRESS)
    node.add_argument("--worker-admin-socket", help=argparse.SUPPRESS)
    node.set_defaults(func=_cmd_node)

    up = sub.add_parser(
        "up", help="run a whole topology (default: shield, regional, two edges, demo videos)"
    )
    up.add_argument("--config", help="a topology TOML file (default: the embedded one)")
    up.add_argument("--data-dir", default="./data",
                    help="where the default origin, demo videos and token live (./data)")
    up.add_argument("--no-demo", action="store_true",
                    help="do not synthesise demo videos into filesystem origins")
    up.set_defaults(func=_cmd_up)

    from reelcdn.loadtest.cli import add_arguments as add_loadtest_arguments

    loadtest = sub.add_parser(
        "loadtest", help="emulate HLS players against a CDN: TTFF, start failures, "
        "rebuffering, hit ratio per tier, origin offload (docs/loadtest.md)",
    )
    add_loadtest_arguments(loadtest)
    loadtest.set_defaults(func=_cmd_loadtest)

    from reelcdn.loadtest.chaos.cli import add_arguments as add_soak_arguments

    soak = sub.add_parser(
        "soak", help="chaos soak: players through the default topology while a plan kills "
        "nodes and breaks the origin; every body verified; report (docs/chaos.md)",
    )
    add_soak_arguments(soak)
    soak.set_defaults(func=_cmd_soak)

    origin = sub.add_parser(
        "origin", help="run the origin API: tus uploads and the video API, from the [api], "
        "[queue] and [catalog] of a topology file (docs/origin.md)"
    )
    origin.add_argument("--config", required=True, help="the topology TOML file")
    origin.set_defaults(func=_cmd_origin)

    worker = sub.add_parser(
        "worker", help="run transcoding jobs (uploaded videos to an HLS ladder) from the "
        "[queue] of a topology file, publishing into its [api] publish_to origin "
        "(docs/origin.md)"
    )
    worker.add_argument("--config", required=True, help="the topology TOML file")
    worker.set_defaults(func=_cmd_worker)

    up_file = sub.add_parser(
        "upload", help="upload a video (tus) and print where it plays once the first rendition "
        "is ready"
    )
    up_file.add_argument("file", help="the video file")
    up_file.add_argument("--title")
    up_file.add_argument("--caption")
    up_file.add_argument("--hashtags", help='e.g. "#cats #fun"')
    up_file.add_argument("--origin", default="http://127.0.0.1:8300",
                         help="the origin API (http://127.0.0.1:8300, as reelcdn up runs it)")
    up_file.add_argument("--edge", default="http://127.0.0.1:8080",
                         help="the edge to print the playback URL at (http://127.0.0.1:8080)")
    up_file.add_argument("--token", help="a user token (default: read from --token-file)")
    up_file.add_argument("--token-file", default="data/user-token",
                         help="where reelcdn up wrote the demo user's token (data/user-token)")
    up_file.set_defaults(func=_cmd_upload)

    token = sub.add_parser("user-token", help="print a signed user token for the origin API")
    token.add_argument("name", help="the user name (A-Z a-z 0-9 _ -)")
    source = token.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="the topology file: signs with its [api] key_file")
    source.add_argument("--key-file", help="the key file itself")
    token.add_argument("--ttl", default="30d", help="how long the token is valid (30d)")
    token.add_argument("--kid", help="sign with this key id (default: the file's first)")
    token.set_defaults(func=_cmd_user_token)

    sign = sub.add_parser(
        "sign", help="print a signed URL (or cookie) for the tokens a node checks "
        "(docs/tokens.md)")
    sign.add_argument("url", help="the URL (or path) to sign, e.g. "
                      "http://127.0.0.1:8080/v/demo-1/master.m3u8")
    sign.add_argument("--config", help="the topology file (default: the embedded one, "
                      "based in --data-dir)")
    sign.add_argument("--data-dir", default="./data",
                      help="the embedded topology's data dir (./data)")
    sign.add_argument("--node", help="whose [tokens] (default: the first node that has some)")
    sign.add_argument("--ttl", default="1h", help="how long the token is valid (1h)")
    sign.add_argument("--acl", help="what it grants: a path prefix ending in /, or a glob "
                      "(default: the URL's video, /v/ID/)")
    sign.add_argument("--ip", help="bind it to this client address or prefix")
    sign.add_argument("--kid", help="sign with this key id (default: current_key)")
    sign.add_argument("--cookie", action="store_true",
                      help="print the cookie(s) to send instead of a URL")
    sign.add_argument("--private-key", help="cloudfront: the key pair's private key (PEM)")
    sign.set_defaults(func=_cmd_sign)

    status = sub.add_parser(
        "status", help="every node of a topology from its admin API: up/down, requests/s, "
        "hit ratio, bytes/s, upstreams, cache fill, the origin queue (docs/operations.md)")
    status.add_argument("--config", help="the topology file (default: DATA_DIR/topology.toml "
                        "as reelcdn up writes it, else the embedded default)")
    status.add_argument("--data-dir", default="./data",
                        help="where reelcdn up keeps its topology (./data)")
    status.add_argument("--interval", type=float, default=2.0,
                        help="seconds between samples; rates are over it (2)")
    status.add_argument("--timeout", type=float, default=2.0,
                        help="seconds each admin request may take (2)")
    status.add_argument("--json", action="store_true",
                        help="print one snapshot as JSON (two samples --interval apart)")
    status.add_argument("--once", action="store_true",
                        help="print the table once (two samples --interval apart) and exit")
    status.add_argument("--count", type=int,
                        help="live view: stop after this many refreshes (default: until Ctrl-C)")
    status.set_defaults(func=_cmd_status)

    validate = sub.add_parser("validate", help="check a config file and report problems")
    validate.add_argument("config", help="the TOML file")
    validate.set_defaults(func=_cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    # Workers of one node share its stderr: tag their lines with the worker index.
    index = getattr(args, "worker_index", None)
    tag = f"[w{index}]" if index is not None else ""
    logging.basicConfig(
        level=args.log_level,
        format=f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s",
        stream=sys.stderr,
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
