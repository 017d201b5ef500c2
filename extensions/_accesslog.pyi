"""Types of the compiled twin of :mod:`reelcdn.extensions._accesslog_py` (same contract, same
names)."""

from collections.abc import Callable

from reelcdn.extensions._accesslog_py import Record as Record
from reelcdn.extensions._accesslog_py import cmcd_session as cmcd_session
from reelcdn.extensions._accesslog_py import head_facts as head_facts
from reelcdn.extensions._accesslog_py import strip_target as strip_target
from reelcdn.extensions.message import Request

class Collector:
    pending: list[Record]
    capacity: int
    sample: float
    combined: bool
    queued: int
    written: int
    on_first: Callable[[], object]
    on_drop: Callable[[], object]
    def __init__(self, capacity: int, sample: float, combined: bool,
                 on_first: Callable[[], object], on_drop: Callable[[], object]) -> None: ...
    def emit(self, request: Request, client: str, head: bytes | None, sent: int, ttfb: float,
             end: float, aborted: bool) -> None: ...
    def take(self) -> list[Record]: ...

class LineFormatter:
    node: str
    member: bytes
    upstream_name: str
    strip: frozenset[str]
    def __init__(self, node: str, member: bytes, upstream_name: str,
                 strip: frozenset[str]) -> None: ...
    def json_lines(self, batch: list[Record], offset: float) -> bytes: ...
    def combined_lines(self, batch: list[Record], offset: float) -> bytes: ...
    def json_line(self, record: Record, offset: float) -> str: ...
    def combined_line(self, record: Record, offset: float) -> str: ...
