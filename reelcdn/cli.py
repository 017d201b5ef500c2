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

from reelcdn import __version__


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
        print(f"reelcdn: config error: {exc}", file=sys.stderr)
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
    from reelcdn.edge.config import ConfigError, describe_upstream, load_config_file

    try:
        nodes = load_config_file(args.config)
    except ConfigError as exc:
        print(f"reelcdn: config error: {exc}", file=sys.stderr)
        return 2
    for name, node in nodes.items():
        workers = f" ({node.workers} workers)" if node.workers > 1 else ""
        print(f"{name}: {node.role} listen {node.listen_host}:{node.listen_port}{workers} "
              f"{describe_upstream(node)}")
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
        print(f"reelcdn: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _cmd_loadtest(args: argparse.Namespace) -> int:
    from reelcdn.edge.ops.server import install_uvloop
    from reelcdn.loadtest.cli import main_args

    install_uvloop()
    return main_args(args)


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _cmd_origin(args: argparse.Namespace) -> int:
    from pathlib import Path

    from reelcdn.edge.ops.server import install_uvloop
    from reelcdn.origin.service import OriginConfig, run
    from reelcdn.origin.users import load_keys, parse_duration

    _die_with_supervisor()

    try:
        keys = load_keys(args.key_file)
        rate, _, window = args.upload_rate.partition("/")
        purge_targets: list[tuple[str, str, str | None]] = []
        if args.topology:
            from reelcdn.edge.config import load_topology

            topology = load_topology(Path(args.topology))
            for name in topology.order_for_start():
                node = topology.nodes[name]
                if node.admin_host and node.admin_port:
                    purge_targets.append((name, f"http://{node.admin_host}:{node.admin_port}",
                                          node.admin_token))
        config = OriginConfig(
            data_dir=Path(args.data_dir), keys=keys, max_size=args.max_size,
            upload_ttl=parse_duration(args.upload_ttl), uploads_per_window=int(rate),
            rate_window=parse_duration(window or "1h"),
            cors_origins=tuple(o.strip() for o in args.cors_origins.split(",") if o.strip()),
            origin_root=Path(args.origin_root) if args.origin_root else None,
            purge_targets=tuple(purge_targets),
            s3_bucket=args.s3_bucket, s3_prefix=args.s3_prefix,
            s3_endpoint_url=args.s3_endpoint_url, s3_region=args.s3_region,
        )
    except (OSError, ValueError) as exc:
        print(f"reelcdn: origin: {exc}", file=sys.stderr)
        return 2
    install_uvloop()
    host, port = args.listen
    admin_host, admin_port = args.admin if args.admin else (None, None)
    try:
        asyncio.run(run(config, host, port, admin_host, admin_port))
    except OSError as exc:
        print(f"reelcdn: origin could not start: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    """Run transcoding jobs from the origin's queue until SIGTERM/SIGINT."""
    import signal
    import threading
    from pathlib import Path

    from reelcdn.origin.pipeline import TranscodeWorker
    from reelcdn.origin.queue import SqliteQueue
    from reelcdn.origin.storage import FsStore
    from reelcdn.origin.videos import VideoCatalog

    _die_with_supervisor()
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        print(f"reelcdn: worker: --data-dir {data_dir}: no such directory (the origin "
              "service's)", file=sys.stderr)
        return 2
    queue = SqliteQueue(data_dir / "queue.sqlite")
    catalog = VideoCatalog(data_dir / "videos.sqlite")
    s3 = None
    if args.s3_endpoint_url or args.s3_region or args.s3_bucket:
        from reelcdn.origin.direct import s3_client

        s3 = s3_client(args.s3_endpoint_url, args.s3_region)
    worker = TranscodeWorker(queue, FsStore(args.origin_root), catalog,
                             workdir=args.workdir or data_dir / "work",
                             lease_seconds=args.lease, s3_client=s3,
                             s3_buckets=(args.s3_bucket,) if args.s3_bucket else ())
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(f"worker {worker.worker_id}: jobs from {data_dir / 'queue.sqlite'}, publishing to "
          f"{args.origin_root}", flush=True)
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
    from reelcdn.origin.users import load_keys, mint, parse_duration

    try:
        keys = load_keys(args.key_file)
        kid = args.kid or keys.current
        if kid not in keys.keys:
            raise ValueError(f"no key {kid!r} in {args.key_file}")
        print(mint(args.name, (kid, keys.keys[kid]), parse_duration(args.ttl)))
    except (OSError, ValueError) as exc:
        print(f"reelcdn: user-token: {exc}", file=sys.stderr)
        return 2
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

    origin = sub.add_parser(
        "origin", help="run the origin service: tus uploads and the video API (docs/origin.md)"
    )
    origin.add_argument("--data-dir", required=True, help="where uploads and their state live")
    origin.add_argument("--listen", type=_address, default=("127.0.0.1", 8300),
                        help="HOST:PORT of the API (127.0.0.1:8300)")
    origin.add_argument("--admin", type=_address,
                        help="HOST:PORT of the admin listener (/metrics, /health); none if unset")
    origin.add_argument("--key-file", required=True,
                        help="user-token keys, one 'KID SECRET' a line (docs/origin.md)")
    origin.add_argument("--max-size", type=int, default=4 << 30,
                        help="Tus-Max-Size in bytes (4 GiB)")
    origin.add_argument("--upload-ttl", default="24h",
                        help="an incomplete upload expires this long after its last write (24h)")
    origin.add_argument("--upload-rate", default="30/1h",
                        help="upload creations allowed per user, N/WINDOW (30/1h)")
    origin.add_argument("--cors-origins", default="*",
                        help="browser origins allowed, comma-separated (*)")
    origin.add_argument("--origin-root",
                        help="where workers publish videos (the shield's fs origin root): "
                        "DELETE /api/v1/videos/{id} removes a video's objects there")
    origin.add_argument("--topology",
                        help="the topology file: a deleted video is purged from its nodes "
                        "through their admin APIs"),
    origin.add_argument("--s3-bucket",
                        help="direct-to-bucket uploads: clients PUT sources to this S3 bucket "
                        "in presigned parts (POST /api/v1/videos; off without it; credentials "
                        "from boto3's usual chain)")
    origin.add_argument("--s3-prefix", default="sources/",
                        help="key prefix of the sources in --s3-bucket: PREFIX{id}/source "
                        "(sources/)")
    origin.add_argument("--s3-endpoint-url",
                        help="the S3 API endpoint (default: AWS's); the presigned URLs point "
                        "there, so clients must reach it")
    origin.add_argument("--s3-region", help="the bucket's region (default: boto3's)")
    origin.set_defaults(func=_cmd_origin)

    worker = sub.add_parser(
        "worker", help="run transcoding jobs: uploaded videos to an HLS ladder (docs/origin.md)"
    )
    worker.add_argument("--data-dir", required=True,
                        help="the origin service's data dir (its queue and video catalog)")
    worker.add_argument("--origin-root", required=True,
                        help="where videos are published: the shield's fs origin root")
    worker.add_argument("--workdir", help="scratch space for ffmpeg (DATA_DIR/work)")
    worker.add_argument("--lease", type=float, default=60.0,
                        help="seconds a job is held before another worker may take it over (60)")
    worker.add_argument("--s3-bucket",
                        help="read direct-to-bucket sources from this bucket only (default: "
                        "the bucket each job names)")
    worker.add_argument("--s3-endpoint-url",
                        help="the S3 API endpoint of the sources' bucket (default: AWS's)")
    worker.add_argument("--s3-region", help="the sources' bucket region (default: boto3's)")
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
    token.add_argument("--key-file", required=True, help="the origin's key file")
    token.add_argument("--ttl", default="30d", help="how long the token is valid (30d)")
    token.add_argument("--kid", help="sign with this key id (default: the file's first)")
    token.set_defaults(func=_cmd_user_token)

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
