"""Building the head of a response the node writes: one function, two implementations.

Every response a node sends (a HIT above all) gets a head made of the status line, the stored
header block, and what this node adds: ``Age``, its ``Cache-Status`` entry appended to the
ones of the tiers above (RFC 9211), its ``Via`` hop, the framing (``Content-Length`` or
``Transfer-Encoding: chunked``) and ``Connection`` when needed. It runs once per response, so
it has a Cython twin (``extensions/_head.pyx``) that sizes the result first and copies each
piece once into a single ``bytes``; this module is the reference (and what runs without a C
compiler), chosen in ``reelcdn.extensions``.

Why plain arguments rather than an entry object: the same head is built for HITs, 206s,
304/412s, fills and passes, from different sources, and plain ``bytes``/``int`` arguments are
what a C function takes without touching Python attributes.
"""

from __future__ import annotations

from reelcdn.extensions.message import status_line

__all__ = ["build_head"]


def build_head(
    status: int,
    header_block: bytes,
    age: int | None,
    prior_status: bytes,
    node_member: bytes,
    detail: bytes,
    ttl: int | None,
    prior_via: bytes,
    via_hop: bytes,
    length: int | None,
    chunked: bool,
    connection: bytes,
) -> bytes:
    """The full response head, ending with the blank line.

    * ``header_block``: the stored fields, each line ending in CRLF (may be empty).
    * ``age``: seconds for the ``Age`` field (negative counts as 0), or None for no field.
    * ``Cache-Status``: ``prior_status`` (the entries of the tiers above, may be empty), then
      ``node_member; detail`` (e.g. ``reelcdn-edge-a; hit``), with ``; ttl=N`` when ``ttl`` is
      not None and ``detail`` starts with ``hit``.
    * ``Via``: ``prior_via`` (may be empty) then ``via_hop`` (e.g. ``1.1 edge-a``).
    * ``length``: ``Content-Length`` if not None; else ``Transfer-Encoding: chunked`` if
      ``chunked``; else no framing field.
    * ``connection``: a complete ``Connection: …\\r\\n`` line, or empty.
    """
    parts = [status_line(status), header_block]
    if age is not None:
        parts.append(b"Age: %d\r\n" % (age if age > 0 else 0))
    member = node_member + b"; " + detail
    if ttl is not None and detail.startswith(b"hit"):
        member += b"; ttl=%d" % ttl
    if prior_status:
        member = prior_status + b", " + member
    parts.append(b"Cache-Status: " + member + b"\r\n")
    if prior_via:
        parts.append(b"Via: " + prior_via + b", " + via_hop + b"\r\n")
    else:
        parts.append(b"Via: " + via_hop + b"\r\n")
    if length is not None:
        parts.append(b"Content-Length: %d\r\n" % length)
    elif chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if connection:
        parts.append(connection)
    parts.append(b"\r\n")
    return b"".join(parts)
