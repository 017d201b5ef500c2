"""CMSD (CTA-5006, Common Media Server Data): what a node tells players and lower tiers.

Two response headers, both HTTP Structured Fields (RFC 8941):

``CMSD-Dynamic`` (an sf-list)
    One member per server the response passed through, each appending its own: a string item,
    the server's identifier, with parameters for what that server measured about the
    connection it sends on, e.g. ``"edge-a";etp=48000;rtt=12`` (``etp`` estimated throughput
    in kbit/s, ``rtt`` round-trip time in ms). Every tier of reelcdn appends its member (the
    parents' members arrive in the stored header fields, in path order: shield first), so a
    player sees the whole chain, like ``Cache-Status``.
``CMSD-Static`` (an sf-dictionary)
    Facts about the object that hold for every copy: here the object type (``ot=m``, a
    playlist), streaming format (``sf=h``, HLS), stream type (``st=v``, VOD; live is ``l``)
    and ``n``, the node that produced the object. Only rendered playlists get it, from the
    edge that rendered them: a cache does not invent facts about objects it only relays.

``etp`` and ``rtt`` come from the kernel's TCP_INFO for the client connection
(``tcpi_delivery_rate``, ``tcpi_rtt``), which only answers measured values. They are written
where the node builds a head per response (rendered playlists); stored objects' heads are
prebuilt once per second for all clients, so there the member is the identifier alone.
"""

from __future__ import annotations

import socket
import struct
from typing import Protocol

__all__ = ["dynamic_block", "dynamic_member", "node_block", "sf_string", "static_playlist_block",
           "tcp_measures"]

# struct tcp_info (linux/tcp.h): tcpi_rtt is the u32 at byte 68; tcpi_delivery_rate the u64 at
# byte 160 (Linux >= 4.9). Reading a shorter answer simply yields no measurement.
_TCPI_RTT_OFFSET = 68
_TCPI_DELIVERY_RATE_OFFSET = 160
_TCP_INFO_LEN = 232


def sf_string(text: str) -> str:
    """An RFC 8941 sf-string: printable ASCII in quotes, ``"`` and ``\\`` escaped."""
    cleaned = "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in text)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dynamic_member(node: str, etp_kbps: int | None = None, rtt_ms: int | None = None) -> str:
    """This node's ``CMSD-Dynamic`` list member."""
    member = sf_string(node)
    if etp_kbps is not None:
        member += f";etp={etp_kbps}"
    if rtt_ms is not None:
        member += f";rtt={rtt_ms}"
    return member


def node_block(node: str) -> bytes:
    """The ``CMSD-Dynamic`` field line every head of this node carries (identifier only)."""
    return b"CMSD-Dynamic: " + dynamic_member(node).encode() + b"\r\n"


def dynamic_block(node: str, etp_kbps: int | None, rtt_ms: int | None) -> bytes:
    """A ``CMSD-Dynamic`` field line whose member carries what was measured on one
    connection (for heads built per response)."""
    return b"CMSD-Dynamic: " + dynamic_member(node, etp_kbps, rtt_ms).encode() + b"\r\n"


def static_playlist_block(node: str, live: bool) -> bytes:
    """``CMSD-Static`` of a playlist rendered by ``node``."""
    return (b"CMSD-Static: ot=m,sf=h,st=" + (b"l" if live else b"v") + b",n="
            + sf_string(node).encode() + b"\r\n")


class _SocketLike(Protocol):
    """What ``tcp_measures`` reads: a socket, or the transport's socket view (asyncio's
    ``TransportSocket``, uvloop's ``PseudoSocket``), both of which have ``getsockopt``."""

    def getsockopt(self, level: int, option: int, buflen: int) -> bytes: ...


def tcp_measures(sock: _SocketLike | None) -> tuple[int | None, int | None]:
    """(etp kbit/s, rtt ms) of a connected TCP socket from TCP_INFO; None where unknown."""
    if sock is None or not hasattr(socket, "TCP_INFO"):
        return None, None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return None, None
    rtt = etp = None
    if len(info) >= _TCPI_RTT_OFFSET + 4:
        (rtt_us,) = struct.unpack_from("I", info, _TCPI_RTT_OFFSET)
        rtt = max(1, round(rtt_us / 1000)) if rtt_us else None
    if len(info) >= _TCPI_DELIVERY_RATE_OFFSET + 8:
        (rate,) = struct.unpack_from("Q", info, _TCPI_DELIVERY_RATE_OFFSET)
        etp = rate * 8 // 1000 if rate else None
    return etp, rtt
