"""The ``reelcdn`` command: run a node, validate a config file.

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

from reelcdn import __version__


def _die_with_supervisor() -> None:
    """Under ``reelcdn up`` (``REELCDN_SUPERVISED=1``), ask Linux to SIGTERM this node when
    the supervisor dies, even by SIGKILL, so no node outlives it."""
    if os.environ.get("REELCDN_SUPERVISED") != "1" or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        sys.exit(0)


def _cmd_node(args: argparse.Namespace) -> int:
    from reelcdn.edge.config import ConfigError, load_node_config

    _die_with_supervisor()
    from reelcdn.edge.server import install_uvloop, serve

    try:
        config = load_node_config(args.config, args.name)
    except ConfigError as exc:
        print(f"reelcdn: config error: {exc}", file=sys.stderr)
        return 2
    if args.no_uvloop:
        loop_name = "asyncio"
    else:
        loop_name = "uvloop" if install_uvloop() else "asyncio (uvloop not installed)"
    logging.getLogger("reelcdn").info("event loop: %s", loop_name)

    def reload() -> object:
        return load_node_config(args.config, args.name)

    try:
        asyncio.run(serve(config, reload_config=reload))  # type: ignore[arg-type]
    except OSError as exc:
        print(f"reelcdn: node {args.name} could not start: {exc}", file=sys.stderr)
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
        print(f"{name}: {node.role} listen {node.listen_host}:{node.listen_port} "
              f"{describe_upstream(node)}")
    print(f"{args.config}: OK ({len(nodes)} node{'s' if len(nodes) != 1 else ''})")
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from reelcdn.edge.config import ConfigError
    from reelcdn.edge.server import install_uvloop
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
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
