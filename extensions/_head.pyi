"""Types of the compiled twin of :mod:`reelcdn.extensions._head_py` (same contract, same names)."""

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
) -> bytes: ...
