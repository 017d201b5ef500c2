"""Types of the compiled twin of :mod:`reelcdn.extensions._ranges_py` (same contract)."""

from reelcdn.extensions._ranges_py import MAX_DIGITS as MAX_DIGITS
from reelcdn.extensions._ranges_py import UNSATISFIABLE as UNSATISFIABLE
from reelcdn.extensions._ranges_py import RangeResult as RangeResult
from reelcdn.extensions._ranges_py import Unsatisfiable as Unsatisfiable

def parse_range(header: bytes | str | None, size: int, max_ranges: int = 16) -> RangeResult: ...
def content_range(start: int, end: int, size: int) -> bytes: ...
def unsatisfied_range(size: int) -> bytes: ...
def multipart_plan(
    ranges: list[tuple[int, int]],
    size: int,
    content_type: bytes | None,
    boundary: bytes,
) -> tuple[list[tuple[bytes, int, int]], bytes, int]: ...
def new_boundary() -> bytes: ...
