"""What a shared fill asks upstream (``FillOrder``), made by the node from a cache key.

Its own small module, below the request steps, so that what starts fills — the node, and the
video features through the node (``edge/video/host.py``) — can name it without importing the
node.
"""

from __future__ import annotations

__all__ = ["FillOrder"]


class FillOrder:
    """What a shared fill asks upstream: the origin-form ``target``, the request ``fields``
    (the node's own and the allow-listed client ones), and ``selecting``, the client fields it
    forwarded by lower-cased name: what the origin saw, so what a ``Vary`` of its answer
    selects on. A fill is made from a key and this, never from a client's whole request."""

    __slots__ = ("target", "fields", "selecting")

    def __init__(
        self, target: str, fields: list[tuple[bytes, bytes]], selecting: dict[bytes, bytes]
    ) -> None:
        self.target = target
        self.fields = fields
        self.selecting = selecting
