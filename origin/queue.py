"""The origin's durable job queue: what feeds the transcoding workers.

An upload that completes enqueues a job per processing step of its video (``video_id``, ``step``,
a JSON payload); workers lease jobs, run them (ffmpeg), and complete or fail them. Two backends
implement one interface, :class:`JobQueue`:

- :class:`SqliteQueue` — one SQLite file, for the workers of one host (any number of processes);
- :class:`reelcdn.origin.queue_sqs.SqsQueue` — Amazon SQS, for many workers on many hosts.

Three ideas carry the design:

**Leases, not locks.** ``lease`` hands a job to one worker until ``lease_until``; the worker
extends the lease while it works (``extend``, a heartbeat) and ends it with ``complete`` or
``fail``. Nothing else marks a job as taken, so a worker that dies — SIGKILL, OOM, a lost host —
loses nothing: its lease runs out and the next ``lease`` hands the job to another worker, with
the attempt counted. A worker that only *thinks* it holds a job (its lease ran out while it was
paused) is told so: ``extend`` raises :class:`LeaseLost`, and so do ``complete`` and ``fail``
once another worker has leased the job. The price is that a step can run more than once (a
worker that finished but died before ``complete``), so a step must be idempotent: write its
outputs under deterministic keys and overwrite.

**Idempotent enqueue by (video_id, step).** The upload service may retry (a timeout after the
job was recorded, a tus upload finished twice); enqueueing the same step of the same video
again must not make a second job, and a step that is done is not redone. The pair is the job's
identity; payloads of later enqueues are ignored.

**Retries with backoff, then a dead letter.** ``fail`` puts the job back after an exponential
delay with jitter (:class:`Backoff`): a failing dependency (the object store, a full disk) is
not hammered, and jobs failing together do not retry together. After ``max_attempts`` leases the
job moves to the dead-letter store with its last error, where an operator reads it
(``dead_letters``) and, once the cause is fixed, sends it back (``requeue_dead``). A poison job
(a corrupt upload that crashes ffmpeg every time) stops there instead of cycling forever.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "STATES",
    "Backoff",
    "Job",
    "JobNotFound",
    "JobQueue",
    "LeaseLost",
    "QueueError",
    "SqliteQueue",
]

State = Literal["pending", "leased", "done", "dead"]
STATES: tuple[State, ...] = ("pending", "leased", "done", "dead")


class QueueError(Exception):
    """A job queue operation that cannot be done."""


class LeaseLost(QueueError):
    """The worker no longer holds the job's lease: it ran out (and another worker may have
    leased the job since), or the job was completed, failed or dead-lettered. The worker must
    stop working on the job; whatever it wrote may be redone by the new holder."""


class JobNotFound(QueueError, KeyError):
    """No job (or no dead letter) has this id."""


@dataclasses.dataclass
class Job:
    """One step of one video's processing, as the queue hands it out.

    ``attempts`` counts leases (the one being held included), so a job whose worker died counts
    the lost attempt too. ``lease_until`` and ``worker`` describe the current lease (wall-clock
    seconds since the epoch: shared by processes and hosts); ``not_before`` is when a failed job
    may be leased again. ``receipt`` is the backend's handle on the lease (SQS's receipt handle;
    ``None`` for SQLite, where the worker and the attempt number identify the lease).
    """

    id: str
    video_id: str
    step: str
    payload: dict[str, Any]
    attempts: int = 0
    max_attempts: int = 5
    last_error: str | None = None
    lease_until: float | None = None
    worker: str | None = None
    state: State = "pending"
    not_before: float = 0.0
    receipt: str | None = dataclasses.field(default=None, repr=False)


@dataclasses.dataclass(frozen=True)
class Backoff:
    """The delay before a failed job's next attempt: ``base * 2**(attempt - 1)``, at most
    ``cap``, less a random part of up to ``jitter`` of it ("equal jitter" for 0.5).

    The exponential spacing gives a failing dependency time to recover; the jitter spreads the
    retries of jobs that failed together (an object-store outage fails every worker at once).
    ``jitter=0`` makes the delay exact, which tests use.
    """

    base: float = 5.0
    cap: float = 600.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError("backoff base and cap must be >= 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("backoff jitter must be within [0, 1]")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``attempt``-th attempt (1 for the first) failed."""
        exponent = max(0, attempt - 1)
        raw = self.cap if exponent >= 64 else min(self.cap, self.base * 2.0**exponent)
        draw = (rng or random).random()
        return raw * (1.0 - self.jitter * draw)


class JobQueue(abc.ABC):
    """What the upload service (enqueue) and the transcoding workers (the rest) use."""

    @abc.abstractmethod
    def enqueue(
        self, video_id: str, step: str, payload: dict[str, Any], *, max_attempts: int = 5
    ) -> Job:
        """Record a job for ``(video_id, step)`` unless one exists; return the job.

        Idempotent: an existing job — pending, leased, done or dead — is returned as it is
        and nothing changes (a done job is not redone; a dead one comes back only through
        ``requeue_dead``)."""

    @abc.abstractmethod
    def lease(self, worker_id: str, lease_seconds: float) -> Job | None:
        """Lease the oldest job that may run now (pending and past its ``not_before``, or
        leased with an expired lease) to ``worker_id``, counting an attempt; ``None`` if none.
        A job whose expired lease was its last attempt is dead-lettered instead."""

    @abc.abstractmethod
    def extend(self, job: Job, lease_seconds: float) -> Job:
        """Heartbeat: the lease now ends ``lease_seconds`` from now. Updates ``job`` in place
        and returns it. Raises :class:`LeaseLost` if the lease has already run out or the job
        is no longer this lease's — extending it would let two workers run the job."""

    @abc.abstractmethod
    def complete(self, job: Job) -> None:
        """The job is done: it is never leased again."""

    @abc.abstractmethod
    def fail(self, job: Job, error: str) -> Job:
        """The attempt failed with ``error``: retry after the backoff, or, if it was the last
        attempt, dead-letter the job with ``error``. Returns ``job`` updated (its ``state`` is
        ``pending`` with ``not_before`` set, or ``dead``)."""

    @abc.abstractmethod
    def depth(self) -> int:
        """Jobs not finished: pending (waiting out a backoff included) plus leased. The figure
        to scale workers on."""

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """Jobs per state, for metrics."""

    @abc.abstractmethod
    def dead_letters(self) -> list[Job]:
        """The dead-lettered jobs, each with its attempts and last error."""

    @abc.abstractmethod
    def requeue_dead(self, job_id: str) -> Job:
        """Send a dead job back to the queue with its attempts reset (its last error kept for
        context). Raises :class:`JobNotFound` if no dead letter has this id."""

    def close(self) -> None:  # noqa: B027  (optional: a queue may hold nothing to release)
        """Release what the queue holds open (connections); it is not used afterwards."""


# ---------------------------------------------------------------------------------------------
# SQLite
# ---------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    video_id TEXT NOT NULL,
    step TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'leased', 'done')),
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    last_error TEXT,
    not_before REAL NOT NULL,
    lease_until REAL,
    worker TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (video_id, step)
);
CREATE INDEX IF NOT EXISTS jobs_pending ON jobs (state, not_before);
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs (state, lease_until);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    video_id TEXT NOT NULL,
    step TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    last_error TEXT,
    dead_at REAL NOT NULL,
    UNIQUE (video_id, step)
);
"""

_JOB_COLUMNS = (
    "id, video_id, step, payload, state, attempts, max_attempts, last_error, not_before, "
    "lease_until, worker"
)
_DEAD_COLUMNS = "id, video_id, step, payload, attempts, max_attempts, last_error, dead_at"


class SqliteQueue(JobQueue):
    """A job queue in one SQLite file, shared by the worker processes of one host.

    Why it is safe across processes: the file is in WAL mode (readers never block the writer)
    with a ``busy_timeout`` (a process waiting for the write lock waits instead of failing), and
    every operation is one transaction that takes the write lock first (``BEGIN IMMEDIATE``).
    ``lease`` reads the oldest candidate and marks it leased inside that one transaction, so two
    processes can never both see it free: the second one's transaction starts after the first
    commits and finds it leased. ``synchronous=FULL`` makes each commit durable before the call
    returns, so an enqueued job survives a power cut as well as a crash (jobs are per video, a
    few per second at most: the fsync is affordable).

    Jobs stay in ``jobs`` when done (the idempotency record: enqueueing a done step returns it);
    dead jobs move to ``dead_letters``. Times are wall-clock (``time.time()``), the clock every
    process shares. Open one ``SqliteQueue`` per process; a queue used after ``fork`` opens its
    own connection, and a lock makes one queue usable from several threads (a heartbeat thread).
    SQLite's locking needs a local filesystem: not NFS, not one file for several hosts (that is
    what :class:`~reelcdn.origin.queue_sqs.SqsQueue` is for).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        backoff: Backoff | None = None,
        busy_timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.path = Path(path)
        self.backoff = backoff or Backoff()
        self.busy_timeout = busy_timeout
        self._rng = rng
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        with self._transaction() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    # -- connection and transactions ----------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():
            # After a fork the parent's connection must not be used (SQLite's locks are per
            # process): open a new one and leave the inherited one alone.
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                conn.close()
                raise QueueError(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.row_factory = sqlite3.Row
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    @contextlib.contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> SqliteQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- rows ---------------------------------------------------------------------------------

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return Job(
            id=str(row["id"]), video_id=row["video_id"], step=row["step"],
            payload=json.loads(row["payload"]), attempts=row["attempts"],
            max_attempts=row["max_attempts"], last_error=row["last_error"],
            lease_until=row["lease_until"], worker=row["worker"], state=row["state"],
            not_before=row["not_before"],
        )

    @staticmethod
    def _dead_job(row: sqlite3.Row) -> Job:
        return Job(
            id=str(row["id"]), video_id=row["video_id"], step=row["step"],
            payload=json.loads(row["payload"]), attempts=row["attempts"],
            max_attempts=row["max_attempts"], last_error=row["last_error"], state="dead",
            not_before=row["dead_at"],
        )

    def _held(self, conn: sqlite3.Connection, job: Job) -> sqlite3.Row:
        """The job's row if ``job`` still holds its lease (same worker, same attempt: a later
        lease by anyone counts another attempt), else :class:`LeaseLost`."""
        row = conn.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (_int_id(job.id),)
        ).fetchone()
        if row is None or row["state"] != "leased" or row["worker"] != job.worker \
                or row["attempts"] != job.attempts:
            now_state = "gone" if row is None else row["state"]
            raise LeaseLost(
                f"job {job.id} ({job.video_id}/{job.step}): lease of {job.worker!r} on attempt "
                f"{job.attempts} lost (the job is {now_state}"
                + (f", worker {row['worker']!r}, attempt {row['attempts']})"
                   if row is not None and row["state"] == "leased" else ")")
            )
        return row

    def _bury(self, conn: sqlite3.Connection, row: sqlite3.Row, error: str | None,
              now: float) -> Job:
        conn.execute(
            f"INSERT OR REPLACE INTO dead_letters ({_DEAD_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
            (row["id"], row["video_id"], row["step"], row["payload"], row["attempts"],
             row["max_attempts"], error, now),
        )
        conn.execute("DELETE FROM jobs WHERE id = ?", (row["id"],))
        dead = conn.execute(
            f"SELECT {_DEAD_COLUMNS} FROM dead_letters WHERE id = ?", (row["id"],)
        ).fetchone()
        return self._dead_job(dead)

    # -- the interface ------------------------------------------------------------------------

    def enqueue(
        self, video_id: str, step: str, payload: dict[str, Any], *, max_attempts: int = 5
    ) -> Job:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True)
        with self._transaction() as conn:
            row = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE video_id = ? AND step = ?",
                (video_id, step),
            ).fetchone()
            if row is not None:
                return self._job(row)
            dead = conn.execute(
                f"SELECT {_DEAD_COLUMNS} FROM dead_letters WHERE video_id = ? AND step = ?",
                (video_id, step),
            ).fetchone()
            if dead is not None:
                return self._dead_job(dead)
            now = time.time()
            cursor = conn.execute(
                "INSERT INTO jobs (video_id, step, payload, state, max_attempts, not_before, "
                "created_at, updated_at) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?)",
                (video_id, step, body, max_attempts, now, now, now),
            )
            row = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (cursor.lastrowid,)
            ).fetchone()
            return self._job(row)

    def lease(self, worker_id: str, lease_seconds: float) -> Job | None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be > 0")
        with self._transaction() as conn:
            while True:
                now = time.time()
                row = conn.execute(
                    f"SELECT {_JOB_COLUMNS} FROM jobs WHERE "
                    "(state = 'pending' AND not_before <= ?) "
                    "OR (state = 'leased' AND lease_until <= ?) ORDER BY id LIMIT 1",
                    (now, now),
                ).fetchone()
                if row is None:
                    return None
                if row["state"] == "leased" and row["attempts"] >= row["max_attempts"]:
                    # Its last attempt's worker vanished: that counts as a failure, and it was
                    # the last one allowed.
                    error = f"lease expired on attempt {row['attempts']} (worker {row['worker']!r})"
                    if row["last_error"]:
                        error += f"; previous error: {row['last_error']}"
                    self._bury(conn, row, error, now)
                    continue
                conn.execute(
                    "UPDATE jobs SET state = 'leased', attempts = attempts + 1, worker = ?, "
                    "lease_until = ?, updated_at = ? WHERE id = ?",
                    (worker_id, now + lease_seconds, now, row["id"]),
                )
                leased = conn.execute(
                    f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (row["id"],)
                ).fetchone()
                return self._job(leased)

    def extend(self, job: Job, lease_seconds: float) -> Job:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be > 0")
        with self._transaction() as conn:
            row = self._held(conn, job)
            now = time.time()
            if row["lease_until"] <= now:
                # Nobody has taken it yet, but anyone could have: a late heartbeat is a lost
                # lease (SQS behaves the same), so the worker's view never depends on luck.
                raise LeaseLost(
                    f"job {job.id} ({job.video_id}/{job.step}): the lease of {job.worker!r} "
                    f"ran out {now - row['lease_until']:.3f} s ago"
                )
            conn.execute(
                "UPDATE jobs SET lease_until = ?, updated_at = ? WHERE id = ?",
                (now + lease_seconds, now, row["id"]),
            )
        job.lease_until = now + lease_seconds
        return job

    def complete(self, job: Job) -> None:
        with self._transaction() as conn:
            row = self._held(conn, job)
            conn.execute(
                "UPDATE jobs SET state = 'done', lease_until = NULL, updated_at = ? "
                "WHERE id = ?", (time.time(), row["id"]),
            )
        job.state = "done"
        job.lease_until = None

    def fail(self, job: Job, error: str) -> Job:
        with self._transaction() as conn:
            row = self._held(conn, job)
            now = time.time()
            if row["attempts"] >= row["max_attempts"]:
                dead = self._bury(conn, row, error, now)
                job.state, job.last_error, job.lease_until = "dead", error, None
                job.not_before = dead.not_before
                return job
            not_before = now + self.backoff.delay(row["attempts"], self._rng)
            conn.execute(
                "UPDATE jobs SET state = 'pending', last_error = ?, not_before = ?, "
                "lease_until = NULL, worker = NULL, updated_at = ? WHERE id = ?",
                (error, not_before, now, row["id"]),
            )
        job.state, job.last_error, job.not_before = "pending", error, not_before
        job.lease_until = job.worker = None
        return job

    def depth(self) -> int:
        with self._transaction(write=False) as conn:
            return int(conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE state IN ('pending', 'leased')"
            ).fetchone()[0])

    def counts(self) -> dict[str, int]:
        """Jobs per state; ``leased`` includes leases that ran out and are not re-leased yet
        (the queue only learns of a dead worker when it hands its job out again)."""
        result = dict.fromkeys(STATES, 0)
        with self._transaction(write=False) as conn:
            for state, n in conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
                result[state] = int(n)
            result["dead"] = int(conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])
        return result

    def get(self, job_id: str) -> Job:
        """The job as the queue holds it now (dead letters included)."""
        with self._transaction(write=False) as conn:
            row = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (_int_id(job_id),)
            ).fetchone()
            if row is not None:
                return self._job(row)
            dead = conn.execute(
                f"SELECT {_DEAD_COLUMNS} FROM dead_letters WHERE id = ?", (_int_id(job_id),)
            ).fetchone()
        if dead is None:
            raise JobNotFound(job_id)
        return self._dead_job(dead)

    def dead_letters(self) -> list[Job]:
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                f"SELECT {_DEAD_COLUMNS} FROM dead_letters ORDER BY dead_at, id"
            ).fetchall()
        return [self._dead_job(row) for row in rows]

    def requeue_dead(self, job_id: str) -> Job:
        with self._transaction() as conn:
            dead = conn.execute(
                f"SELECT {_DEAD_COLUMNS} FROM dead_letters WHERE id = ?", (_int_id(job_id),)
            ).fetchone()
            if dead is None:
                raise JobNotFound(job_id)
            now = time.time()
            # The job keeps its id (AUTOINCREMENT never gives it to another job), so it takes
            # its place in the order of first enqueueing: a requeued job is not starved.
            conn.execute(
                "INSERT INTO jobs (id, video_id, step, payload, state, attempts, max_attempts, "
                "last_error, not_before, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?)",
                (dead["id"], dead["video_id"], dead["step"], dead["payload"],
                 dead["max_attempts"], dead["last_error"], now, now, now),
            )
            conn.execute("DELETE FROM dead_letters WHERE id = ?", (dead["id"],))
            row = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (dead["id"],)
            ).fetchone()
            return self._job(row)


def _int_id(job_id: str) -> int:
    try:
        return int(job_id)
    except (TypeError, ValueError):
        raise JobNotFound(job_id) from None
