"""A 3-tier topology (shield → regional → edge) in the test's event loop, over ffmpeg demo
videos: what the playlist, prefetch and player tests share.

The demo videos are synthesised once per test module (``synthesise``: about 3 s for one 6 s
video with two renditions); each test starts fresh nodes over them (milliseconds), so every
test begins with cold caches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reelcdn.edge.config import NodeConfig, topology_from_text
from reelcdn.edge.ops.server import NodeServer
from reelcdn.loadtest.bench.procs import free_ports
from reelcdn.origin.demo import DEFAULT_LADDER, synthesise_demo_videos
from reelcdn.shield.connectors import build_upstream

VIDEO = "demo-1"
# 360p (avc1 Main) and 720p (avc1 High): enough to see every filter choose differently.
LADDER = DEFAULT_LADDER[:2]
DURATION = 6.0  # three 2 s segments per rendition

TOPOLOGY = """
[defaults]
cache_memory = "64MiB"

[[defaults.ttl]]
match = "*.m4s"
ttl = "1d"

[[defaults.ttl]]
match = "*/init.mp4"
ttl = "1d"

[[defaults.ttl]]
match = "*/meta.json"
ttl = "{meta_ttl}"

[[defaults.ttl]]
match = "*"
ttl = "5s"
statuses = [404]

[origin.main]
type = "fs"
root = "{root}"

[node.shield-1]
role = "shield"
listen = "127.0.0.1:{shield}"
origins = ["main"]

[node.regional-1]
role = "regional"
listen = "127.0.0.1:{regional}"
parents = ["shield-1"]

[node.edge-a]
role = "edge"
listen = "127.0.0.1:{edge}"
parents = ["regional-1"]
{edge_extra}
"""


def synthesise(root: Path, duration: float = DURATION) -> Path:
    """The origin folder with ``demo-1`` (two renditions, three 2 s segments each by
    default)."""
    synthesise_demo_videos(root, count=1, duration=duration, renditions=LADDER,
                           log=lambda _message: None)
    return root



def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return str(value)


def _tokens_table(tokens: dict[str, Any]) -> str:
    """``[node.edge-a.tokens]`` with the given keys (e.g. format, keys = {kid: secret})."""
    lines = ["[node.edge-a.tokens]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in tokens.items()]
    return "\n".join(lines)


class DemoTiers:
    """Three running nodes over the demo origin; ``edge`` is where players connect.

    ``tokens`` (a dict of ``[tokens]`` keys) makes the edge check signed URLs; ``text`` is
    the topology as written, ``edge_config(tokens=...)`` the edge's config with other tokens
    (same ports: for a reload). ``more_nodes`` is TOML appended to the topology (another
    edge under ``regional-1``, say)."""

    def __init__(self, root: Path, meta_ttl: str = "2s", tokens: dict[str, Any] | None = None,
                 more_nodes: str = "", **edge_keys: Any) -> None:
        shield, regional, edge = free_ports(3)
        self._root = root
        self._fields = dict(root=root, shield=shield, regional=regional, edge=edge,
                            meta_ttl=meta_ttl)
        self._edge_keys = edge_keys
        self._more_nodes = more_nodes
        self.text = self._text(tokens)
        self.topology = topology_from_text(self.text, base_dir=str(root))
        self.servers: dict[str, NodeServer] = {}

    def _text(self, tokens: dict[str, Any] | None) -> str:
        extra = "\n".join(f"{k} = {_toml_value(v)}" for k, v in self._edge_keys.items())
        if tokens is not None:
            extra += "\n" + _tokens_table(tokens)
        return TOPOLOGY.format(edge_extra=extra, **self._fields) + self._more_nodes

    def edge_config(self, tokens: dict[str, Any] | None) -> NodeConfig:
        """The edge's config as it would read with ``tokens`` instead (a reload's input)."""
        return topology_from_text(self._text(tokens), base_dir=str(self._root)).nodes["edge-a"]

    async def start(self) -> DemoTiers:
        for name in self.topology.order_for_start():
            server = NodeServer(self.topology.nodes[name], build_upstream)
            await server.start()
            self.servers[name] = server
        return self

    async def stop(self) -> None:
        for server in reversed(list(self.servers.values())):
            await server.stop(grace=1.0)

    @property
    def edge(self) -> NodeServer:
        return self.servers["edge-a"]

    @property
    def port(self) -> int:
        return self.edge.port

    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def upstream_paths(self, node: str = "regional-1") -> dict[str, int]:
        """Requests ``node`` answered, by cache status (what the edge asked of its parent)."""
        return dict(self.servers[node].node.stats.requests)
