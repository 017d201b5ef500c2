"""One SQLite file shared by the threads of one process, as the origin's embedded stores keep
theirs (the video catalog, the feed's engagement store): one connection behind a lock, WAL,
every write one ``BEGIN IMMEDIATE`` transaction (rolled back on any exception)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["SqliteFile"]


class SqliteFile:
    """Base of a store in one SQLite file: :meth:`_open` it, then :meth:`_write` and
    :meth:`_read`; ``_lock`` guards ``_conn`` for any other use."""

    path: Path
    _lock: threading.Lock
    _conn: sqlite3.Connection

    def _open(self, path: str | Path, schema: str, *, synchronous: str, busy_timeout: float,
              row_factory: Any = None) -> None:
        """Open (or make) the file with ``PRAGMA synchronous`` *synchronous* and run the
        ``;``-separated *schema* statements in one transaction."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None,
                                     check_same_thread=False)
        if row_factory is not None:
            self._conn.row_factory = row_factory
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        with self._write() as conn:
            for statement in schema.split(";"):
                if statement.strip():
                    conn.execute(statement)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()
