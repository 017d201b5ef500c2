"""The Merkle tree over segment digests: RFC 6962 vectors, proofs, and properties."""

from __future__ import annotations

import hashlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelcdn.manifests import merkle
from reelcdn.manifests.meta import InitSection, Rendition, Segment, sha256_digest

digests = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=40)


def test_empty_single_and_two_leaves_follow_rfc6962() -> None:
    assert merkle.root([]) == hashlib.sha256(b"").hexdigest()
    d = hashlib.sha256(b"segment").digest()
    assert merkle.root([d]) == hashlib.sha256(b"\x00" + d).hexdigest()
    e = hashlib.sha256(b"other").digest()
    leaf = [hashlib.sha256(b"\x00" + x).digest() for x in (d, e)]
    assert merkle.root([d, e]) == hashlib.sha256(b"\x01" + leaf[0] + leaf[1]).hexdigest()
    # three leaves: split at 2, the third is not duplicated
    f = hashlib.sha256(b"third").digest()
    lf = hashlib.sha256(b"\x00" + f).digest()
    left = hashlib.sha256(b"\x01" + leaf[0] + leaf[1]).digest()
    assert merkle.root([d, e, f]) == hashlib.sha256(b"\x01" + left + lf).hexdigest()


def test_digest_forms_are_equivalent() -> None:
    data = [b"a", b"b", b"c"]
    as_meta = [sha256_digest(x) for x in data]
    as_hex = [hashlib.sha256(x).hexdigest() for x in data]
    as_raw = [hashlib.sha256(x).digest() for x in data]
    assert merkle.root(as_meta) == merkle.root(as_hex) == merkle.root(as_raw)
    with pytest.raises(ValueError):
        merkle.root(["sha256:1234"])


def test_domain_separation_defeats_the_inner_node_as_leaf_forgery() -> None:
    leaves = [hashlib.sha256(bytes([i])).digest() for i in range(4)]
    r = merkle.root(leaves)
    # Without prefixes, H(l0||l1) would be a valid leaf of a 2-leaf tree with the same root.
    inner = merkle.node_hash(merkle.leaf_hash(leaves[0]), merkle.leaf_hash(leaves[1]))
    right = merkle.node_hash(merkle.leaf_hash(leaves[2]), merkle.leaf_hash(leaves[3]))
    assert not merkle.verify(inner, [("R", right.hex())], r)
    assert merkle.root([inner, right]) != r


@settings(max_examples=60, deadline=None)
@given(digests)
def test_every_leaf_verifies_with_a_log_n_proof(ds: list[bytes]) -> None:
    r = merkle.root(ds)
    for i, d in enumerate(ds):
        path = merkle.proof(ds, i)
        assert len(path) <= math.ceil(math.log2(len(ds))) if len(ds) > 1 else path == []
        assert merkle.verify(d, path, r)
        assert merkle.verify(d.hex(), path, "sha256:" + r)


@settings(max_examples=60, deadline=None)
@given(digests, st.data())
def test_any_flipped_byte_fails(ds: list[bytes], data: st.DataObject) -> None:
    r = merkle.root(ds)
    i = data.draw(st.integers(0, len(ds) - 1))
    path = merkle.proof(ds, i)
    bit = data.draw(st.integers(0, 7))
    # in the leaf digest
    pos = data.draw(st.integers(0, 31))
    bad = bytearray(ds[i])
    bad[pos] ^= 1 << bit
    assert not merkle.verify(bytes(bad), path, r)
    # in the root
    raw = bytearray(bytes.fromhex(r))
    raw[pos] ^= 1 << bit
    assert not merkle.verify(ds[i], path, raw.hex())
    # in a sibling of the proof
    if path:
        step = data.draw(st.integers(0, len(path) - 1))
        side, sib = path[step]
        sraw = bytearray(bytes.fromhex(sib))
        sraw[pos] ^= 1 << bit
        forged = [*path[:step], (side, sraw.hex()), *path[step + 1:]]
        assert not merkle.verify(ds[i], forged, r)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), min_size=2, max_size=20, unique=True),
       st.data())
def test_a_proof_does_not_verify_another_leaf_or_position(ds: list[bytes],
                                                          data: st.DataObject) -> None:
    r = merkle.root(ds)
    i = data.draw(st.integers(0, len(ds) - 1))
    j = data.draw(st.integers(0, len(ds) - 1).filter(lambda x: x != i))
    assert not merkle.verify(ds[j], merkle.proof(ds, i), r)
    flipped = [("L" if s == "R" else "R", h) for s, h in merkle.proof(ds, i)]
    assert not merkle.verify(ds[i], flipped, r)


def test_malformed_proofs_are_false_not_errors() -> None:
    ds = [hashlib.sha256(b"x").digest(), hashlib.sha256(b"y").digest()]
    r = merkle.root(ds)
    assert not merkle.verify(ds[0], [("X", ds[1].hex())], r)
    assert not merkle.verify(ds[0], [("R", "zz")], r)
    assert not merkle.verify(ds[0], [("R", "00")], r)
    assert not merkle.verify("nothex", [], r)
    with pytest.raises(IndexError):
        merkle.proof(ds, 2)


def _rendition(segs: list[bytes], root: str | None) -> Rendition:
    return Rendition(
        name="360p", width=640, height=360, bandwidth=1000, average_bandwidth=1000,
        codecs="avc1.64001e", video_codec="avc1.64001e", audio_codec=None, frame_rate=30.0,
        init=InitSection("init.mp4", 10, sha256_digest(b"init")),
        segments=tuple(Segment(f"seg_{i:05d}.m4s", 2.0, len(s), sha256_digest(s))
                       for i, s in enumerate(segs)),
        merkle_root=root,
    )


def test_meta_checks_the_stored_root() -> None:
    segs = [b"one", b"two", b"three"]
    good = merkle.root([sha256_digest(s) for s in segs])
    r = _rendition(segs, good)
    r.validate()
    assert r.to_dict()["merkle_root"] == good
    assert Rendition.from_dict(r.to_dict()) == r
    assert "merkle_root" not in _rendition(segs, None).to_dict()  # old files keep version
    with pytest.raises(ValueError, match=r"rendition\.merkle_root: does not match"):
        _rendition(segs, merkle.root([sha256_digest(s) for s in segs[:2]])).validate()
    with pytest.raises(ValueError, match=r"merkle_root: must be 64 lowercase hex"):
        _rendition(segs, "sha256:" + good).validate()
