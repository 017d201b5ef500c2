"""A Merkle tree over the segment digests of a rendition (RFC 6962 shape and hashing).

``meta.json`` lists a SHA-256 digest per segment, so a player or a tier that has the whole
file can verify any segment. The tree lets something that only trusts one 32-byte value (the
rendition's ``merkle_root``, e.g. signed, or pinned in a small manifest) verify one segment
with ``log2(n)`` sibling hashes instead of the whole digest list.

Leaves are the 32 raw bytes of each segment's SHA-256 (the hex of ``sha256:<hex>``), in
playback order. Hashing follows RFC 6962 §2.1:

- leaf hash ``SHA-256(0x00 || digest)``, inner node ``SHA-256(0x01 || left || right)``;
- ``n`` leaves split at ``k``, the largest power of two below ``n``: left subtree of the first
  ``k`` leaves, right subtree of the rest (no leaf is ever duplicated to fill the tree);
- the empty tree's root is ``SHA-256("")``.

Why the 0x00 / 0x01 prefixes (domain separation): without them a leaf hash and an inner-node
hash are computed the same way, so the root of leaves ``[a, b, c, d]`` is also the root of the
two "leaves" ``[H(a‖b), H(c‖d)]``, and an inclusion proof for an inner node passes as a proof
for a leaf (the second-preimage attack on Merkle trees): a verifier could accept a value that
was never a segment, or a different list of segments under the same root. With distinct
prefixes a leaf hash can only equal an inner hash through a SHA-256 collision.

A proof is the audit path from the leaf to the root, each step ``(side, hex)``: ``side`` is
``"L"`` when the sibling is on the left (hash ``sibling || node``) and ``"R"`` when on the
right. The sides spell out the leaf's position, so a proof for segment 3 does not verify
segment 3's digest as any other position's in a tree of the same size (callers that know the
index and the tree size can also compare :func:`proof`'s sides with their own).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["leaf_hash", "node_hash", "proof", "root", "verify"]

_LEAF = b"\x00"
_NODE = b"\x01"
Proof = list[tuple[str, str]]


def _raw(digest: str | bytes) -> bytes:
    """The 32 bytes of a segment digest given as bytes, hex or ``sha256:<hex>``."""
    if isinstance(digest, bytes | bytearray):
        raw = bytes(digest)
    else:
        text = digest[len("sha256:"):] if digest.startswith("sha256:") else digest
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"not a hex SHA-256 digest: {digest!r}") from None
    if len(raw) != 32:
        raise ValueError(f"a SHA-256 digest is 32 bytes (got {len(raw)}): {digest!r}")
    return raw


def leaf_hash(digest: str | bytes) -> bytes:
    """``SHA-256(0x00 || digest)``: the tree's leaf for one segment digest."""
    return hashlib.sha256(_LEAF + _raw(digest)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``: an inner node."""
    return hashlib.sha256(_NODE + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below *n* (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _root(leaves: Sequence[bytes]) -> bytes:
    n = len(leaves)
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(_root(leaves[:k]), _root(leaves[k:]))


def root(digests: Sequence[str | bytes]) -> str:
    """Hex root of the tree over *digests* (bytes, hex or ``sha256:<hex>``, playback order)."""
    if not digests:
        return hashlib.sha256(b"").hexdigest()
    return _root([leaf_hash(d) for d in digests]).hex()


def proof(digests: Sequence[str | bytes], index: int) -> Proof:
    """Audit path of leaf *index*: ``[(side, sibling_hex), ...]`` from the leaf up to the root.

    At most ``ceil(log2(n))`` entries. IndexError for an index outside the list.
    """
    n = len(digests)
    if not 0 <= index < n:
        raise IndexError(f"leaf {index} of a tree of {n}")
    leaves = [leaf_hash(d) for d in digests]
    path: Proof = []
    lo, hi = 0, n  # the subtree holding the leaf, as a half-open range of leaves
    steps: list[tuple[str, bytes]] = []
    while hi - lo > 1:
        k = lo + _split(hi - lo)
        if index < k:
            steps.append(("R", _root(leaves[k:hi])))
            hi = k
        else:
            steps.append(("L", _root(leaves[lo:k])))
            lo = k
    for side, sibling in reversed(steps):  # leaf first
        path.append((side, sibling.hex()))
    return path


def verify(digest: str | bytes, path: Sequence[tuple[str, str]], root_hex: str) -> bool:
    """Whether *digest* with audit *path* hashes up to *root_hex*. Never raises on bad input."""
    try:
        node = leaf_hash(digest)
        for side, sibling_hex in path:
            sibling = bytes.fromhex(sibling_hex)
            if len(sibling) != 32:
                return False
            if side == "L":
                node = node_hash(sibling, node)
            elif side == "R":
                node = node_hash(node, sibling)
            else:
                return False
        expected = root_hex[len("sha256:"):] if root_hex.startswith("sha256:") else root_hex
        return node.hex() == expected.lower()
    except (ValueError, TypeError, AttributeError):
        return False
