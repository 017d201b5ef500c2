"""The job queue (``origin/queue.py``, ``origin/queue_sqs.py``) on real components.

SQLite: real files in ``tmp_path``, real worker processes (two leasing at once; one killed with
SIGKILL while it holds a lease). SQS: moto's server over a socket (``s3server.py``'s fixture:
moto serves every AWS service at one endpoint, SQS included). The behavioural tests run on
both backends; the SQS runs are ``slow`` (SQS counts visibility in whole seconds).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from s3server import s3_endpoint  # noqa: F401  (a fixture)

from reelcdn.origin.queue import Backoff, JobNotFound, JobQueue, LeaseLost, SqliteQueue
from reelcdn.origin.queue_sqs import SqsQueue, create_queues

BACKENDS = ["sqlite", pytest.param("sqs", marks=pytest.mark.slow)]
NO_DELAY = Backoff(base=0.0, cap=0.0, jitter=0.0)


class Queues:
    """Makes queues of one backend; ``tick`` is a short lease the backend can express."""

    def __init__(self, backend: str, tmp_path: Path, sqs_client: Any) -> None:
        self.backend = backend
        self.tick = 0.4 if backend == "sqlite" else 1.0
        self._tmp_path = tmp_path
        self._sqs = sqs_client
        self._n = itertools.count()

    def __call__(self, *, max_attempts: int = 3, backoff: Backoff = NO_DELAY) -> JobQueue:
        if self.backend == "sqlite":
            return SqliteQueue(self._tmp_path / f"jobs{next(self._n)}.db", backoff=backoff)
        urls = create_queues(self._sqs, f"jobs-{uuid.uuid4().hex[:12]}", max_attempts)
        return SqsQueue(*urls, client=self._sqs, backoff=backoff)


@pytest.fixture(scope="module")
def sqs_client(s3_endpoint: str) -> Any:  # noqa: F811  (the imported fixture)
    import boto3

    return boto3.client("sqs", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture(params=BACKENDS)
def queues(request: pytest.FixtureRequest, tmp_path: Path) -> Queues:
    client = request.getfixturevalue("sqs_client") if request.param == "sqs" else None
    return Queues(request.param, tmp_path, client)


def wait_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


# ---------------------------------------------------------------------------------------------
# Both backends
# ---------------------------------------------------------------------------------------------


def test_enqueue_is_idempotent_by_video_and_step(queues: Queues) -> None:
    q = queues()
    first = q.enqueue("v1", "transcode", {"source": "a.mp4"})
    again = q.enqueue("v1", "transcode", {"source": "other.mp4"})
    assert again.id == first.id
    if queues.backend == "sqlite":
        assert again == first

    job = q.lease("w1", 30)
    assert job is not None and job.id == first.id
    assert job.payload == {"source": "a.mp4"}  # the later payload was ignored
    assert q.lease("w2", 30) is None  # one job, not two

    assert q.enqueue("v1", "transcode", {"source": "a.mp4"}).id == first.id  # while leased
    q.complete(job)
    done = q.enqueue("v1", "transcode", {"source": "a.mp4"})  # a done job is not redone
    assert done.id == first.id
    if queues.backend == "sqlite":
        assert done.state == "done" and done.attempts == 1
        assert q.lease("w1", 30) is None
        assert q.depth() == 0
    # SQS keeps deduplicating a deleted message's id for five minutes; moto forgets it with the
    # message, so the server in these tests cannot show it.


def test_each_job_is_leased_once_and_complete_ends_it(queues: Queues) -> None:
    q = queues()
    ids = {q.enqueue(f"v{i}", "transcode", {"i": i}).id for i in range(3)}
    jobs = [q.lease(f"w{i}", 30) for i in range(3)]
    assert all(job is not None for job in jobs)
    assert {job.id for job in jobs if job} == ids
    assert all(job.attempts == 1 and job.state == "leased" for job in jobs if job)
    assert q.lease("w9", 30) is None
    assert q.depth() == 3
    assert q.counts()["leased"] == 3
    for job in jobs:
        assert job is not None
        q.complete(job)
    assert q.depth() == 0
    counts = q.counts()
    assert counts["pending"] == counts["leased"] == counts["dead"] == 0
    if queues.backend == "sqlite":
        assert counts["done"] == 3


def test_steps_of_one_video_come_out_in_order(queues: Queues) -> None:
    q = queues()
    for step in ("probe", "transcode", "publish"):
        q.enqueue("v1", step, {})
    seen = []
    while (job := q.lease("w1", 30)) is not None:
        seen.append(job.step)
        q.complete(job)
    assert seen == ["probe", "transcode", "publish"]


def test_an_expired_lease_goes_to_another_worker(queues: Queues) -> None:
    q = queues()
    q.enqueue("v1", "transcode", {})
    mine = q.lease("w1", queues.tick)
    assert mine is not None and mine.worker == "w1" and mine.attempts == 1
    assert q.lease("w2", 30) is None  # held

    assert mine.lease_until is not None
    wait_until(mine.lease_until + 0.1)
    theirs = q.lease("w2", 30)
    assert theirs is not None and theirs.id == mine.id
    assert theirs.worker == "w2" and theirs.attempts == 2  # the lost attempt counts

    with pytest.raises(LeaseLost):
        q.extend(mine, 30)  # the first worker learns it lost the job
    if queues.backend == "sqlite":  # SQS does not refuse a stale receipt handle (docstring)
        with pytest.raises(LeaseLost):
            q.complete(mine)
        with pytest.raises(LeaseLost):
            q.fail(mine, "late")
    q.complete(theirs)
    assert q.depth() == 0


def test_extend_keeps_the_lease(queues: Queues) -> None:
    q = queues()
    q.enqueue("v1", "transcode", {})
    job = q.lease("w1", queues.tick)
    assert job is not None and job.lease_until is not None
    first_end = job.lease_until
    time.sleep(queues.tick * 0.5)
    assert q.extend(job, queues.tick * 3) is job
    assert job.lease_until > first_end
    wait_until(first_end + 0.2)
    assert q.lease("w2", 30) is None  # past the first lease, still held
    q.complete(job)
    assert q.lease("w2", 30) is None


def test_fail_retries_after_the_backoff(queues: Queues) -> None:
    q = queues(backoff=Backoff(base=queues.tick, cap=60, jitter=0.0))
    q.enqueue("v1", "transcode", {})
    job = q.lease("w1", 30)
    assert job is not None
    before = time.time()
    failed = q.fail(job, "ffmpeg exited 1")
    assert failed.state == "pending" and failed.last_error == "ffmpeg exited 1"
    assert before + queues.tick - 0.05 <= failed.not_before <= time.time() + queues.tick + 0.05
    assert q.lease("w2", 30) is None  # backing off
    assert q.depth() == 1  # still a job to do

    wait_until(failed.not_before + 0.15)
    retry = q.lease("w2", 30)
    assert retry is not None and retry.id == job.id and retry.attempts == 2
    if queues.backend == "sqlite":  # SQS keeps no error with a message until it is dead
        assert retry.last_error == "ffmpeg exited 1"

    # The second failure waits twice as long.
    before = time.time()
    again = q.fail(retry, "ffmpeg exited 1")
    assert again.not_before - before >= 2 * queues.tick - 0.05
    assert q.lease("w3", 30) is None


def test_dead_letter_after_max_attempts_and_requeue(queues: Queues) -> None:
    q = queues(max_attempts=2)
    q.enqueue("v1", "transcode", {"source": "bad.mp4"}, max_attempts=2)
    q.enqueue("v2", "transcode", {"source": "good.mp4"}, max_attempts=2)
    for n in (1, 2):
        job = q.lease("w1", 30)
        assert job is not None and job.video_id == "v1" and job.attempts == n
        result = q.fail(job, f"corrupt input ({n})")
    assert result.state == "dead" and result.last_error == "corrupt input (2)"

    dead = q.dead_letters()
    assert [(d.id, d.state, d.attempts, d.last_error) for d in dead] == [
        (job.id, "dead", 2, "corrupt input (2)")
    ]
    assert dead[0].payload == {"source": "bad.mp4"}
    assert q.counts()["dead"] == 1
    assert [d.id for d in q.dead_letters()] == [job.id]  # reading them leaves them there

    other = q.lease("w1", 30)  # the dead job no longer blocks or comes back
    assert other is not None and other.video_id == "v2"
    q.complete(other)
    assert q.lease("w1", 30) is None

    if queues.backend == "sqlite":  # (SQS: deduplicated for five minutes; moto forgets)
        again = q.enqueue("v1", "transcode", {"source": "bad.mp4"}, max_attempts=2)
        assert again.id == job.id
        assert again.state == "dead"  # not a fresh job: the operator decides
        assert q.lease("w1", 30) is None

    with pytest.raises(JobNotFound):
        q.requeue_dead("no-such-job")
    back = q.requeue_dead(job.id)
    assert back.id == job.id and back.state == "pending" and back.attempts == 0
    assert q.dead_letters() == []
    retry = q.lease("w1", 30)
    assert retry is not None and retry.id == job.id and retry.attempts == 1
    assert retry.last_error == "corrupt input (2)"  # kept for context
    q.complete(retry)
    assert q.counts()["dead"] == 0


def test_a_job_whose_last_worker_vanished_is_dead_lettered(queues: Queues) -> None:
    q = queues(max_attempts=1)
    q.enqueue("v1", "transcode", {}, max_attempts=1)
    job = q.lease("w1", queues.tick)
    assert job is not None and job.lease_until is not None
    wait_until(job.lease_until + 0.1)
    assert q.lease("w2", 30) is None  # not handed out again: that was its last attempt
    dead = q.dead_letters()
    assert [d.id for d in dead] == [job.id]
    assert dead[0].last_error is not None and "lease expired" in dead[0].last_error


# ---------------------------------------------------------------------------------------------
# Backoff
# ---------------------------------------------------------------------------------------------


def test_backoff_is_exponential_capped_and_jittered() -> None:
    exact = Backoff(base=2.0, cap=30.0, jitter=0.0)
    assert [exact.delay(n) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]
    assert exact.delay(10_000) == 30.0

    jittered = Backoff(base=2.0, cap=30.0, jitter=0.5)
    rng = random.Random(7)
    draws = [jittered.delay(3, rng) for _ in range(500)]
    assert all(4.0 <= d <= 8.0 for d in draws)
    assert max(draws) - min(draws) > 3.0  # spread, not one value
    with pytest.raises(ValueError):
        Backoff(jitter=1.5)


# ---------------------------------------------------------------------------------------------
# SQLite across processes
# ---------------------------------------------------------------------------------------------

WORKER = r"""
import json, sys, time
from pathlib import Path
from reelcdn.origin.queue import SqliteQueue

path, worker, mode, together = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
q = SqliteQueue(path)
if together:  # start leasing only when every worker has started: a barrier of files
    ready = Path(path).with_name("ready")
    ready.mkdir(exist_ok=True)
    (ready / worker).touch()
    deadline = time.time() + 30
    while len(list(ready.iterdir())) < together and time.time() < deadline:
        time.sleep(0.002)
if mode == "drain":
    leased = []
    while (job := q.lease(worker, 30)) is not None:
        leased.append(job.id)
        time.sleep(0.005)  # the work: between transactions, as a real worker spends it
        q.complete(job)
    print(json.dumps(leased), flush=True)
else:  # hold a lease of `mode` seconds, then hang until killed
    job = q.lease(worker, float(mode))
    print(json.dumps({"id": job.id, "attempts": job.attempts}), flush=True)
    time.sleep(120)
"""


def start_worker(path: Path, worker: str, mode: str, together: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(path), worker, mode, str(together)],
        stdout=subprocess.PIPE, text=True,
    )


@pytest.mark.slow
def test_two_worker_processes_never_lease_the_same_job(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    q = SqliteQueue(path)
    ids = {q.enqueue(f"v{i}", "transcode", {"i": i}).id for i in range(120)}
    workers = [start_worker(path, f"w{n}", "drain", together=2) for n in range(2)]
    results = []
    for process in workers:
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        results.append(json.loads(out))
    first, second = results
    assert first and second  # both really worked
    assert not set(first) & set(second)  # no job leased twice
    assert len(first) + len(second) == len(ids) and set(first) | set(second) == ids
    assert q.counts() == {"pending": 0, "leased": 0, "done": 120, "dead": 0}


@pytest.mark.slow
def test_a_killed_worker_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    q = SqliteQueue(path)
    enqueued = q.enqueue("v1", "transcode", {"source": "a.mp4"})
    doomed = start_worker(path, "doomed", "1.0")
    try:
        assert doomed.stdout is not None
        held = json.loads(doomed.stdout.readline())
        assert held == {"id": enqueued.id, "attempts": 1}
        os.kill(doomed.pid, signal.SIGKILL)
    finally:
        doomed.kill()
        doomed.wait(timeout=10)
    assert doomed.returncode == -signal.SIGKILL

    state = q.get(enqueued.id)
    assert state.state == "leased" and state.worker == "doomed" and state.lease_until
    if time.time() < state.lease_until - 0.05:
        assert q.lease("survivor", 30) is None  # the dead worker's lease still holds
    wait_until(state.lease_until + 0.05)
    job = SqliteQueue(path).lease("survivor", 30)  # a fresh process-like opener
    assert job is not None and job.id == enqueued.id
    assert job.attempts == 2 and job.worker == "survivor"
    assert job.payload == {"source": "a.mp4"}


def test_queue_file_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with SqliteQueue(path) as q:
        job = q.enqueue("v1", "transcode", {"x": 1})
        leased = q.lease("w1", 30)
        assert leased is not None
    reopened = SqliteQueue(path)
    assert reopened.enqueue("v1", "transcode", {}).state == "leased"
    assert reopened.get(job.id).worker == "w1"
    reopened.complete(leased)  # the lease is the worker's, not the connection's
    assert reopened.counts()["done"] == 1
    mode = reopened._connection().execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_sqlite_reports_a_lost_lease_clearly(tmp_path: Path) -> None:
    q = SqliteQueue(tmp_path / "jobs.db")
    q.enqueue("v1", "transcode", {})
    job = q.lease("w1", 30)
    assert job is not None
    q.complete(job)
    with pytest.raises(LeaseLost, match=r"v1/transcode.*'w1'.*attempt 1.*done"):
        q.extend(job, 30)
    with pytest.raises(JobNotFound):
        q.get("12345")


# ---------------------------------------------------------------------------------------------
# SQS only
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sqs_queue_needs_fifo_and_a_redrive_policy(sqs_client: Any) -> None:
    name = f"plain-{uuid.uuid4().hex[:8]}"
    plain = sqs_client.create_queue(QueueName=name)["QueueUrl"]
    with pytest.raises(Exception, match="not a FIFO queue"):
        SqsQueue(plain, plain, client=sqs_client)
    fifo = sqs_client.create_queue(
        QueueName=f"{name}.fifo", Attributes={"FifoQueue": "true"}
    )["QueueUrl"]
    with pytest.raises(Exception, match="no redrive policy"):
        SqsQueue(fifo, fifo, client=sqs_client)

    queue_url, dead_url = create_queues(sqs_client, f"{name}-jobs", 4)
    attributes = sqs_client.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["RedrivePolicy"]
    )["Attributes"]
    policy = json.loads(attributes["RedrivePolicy"])
    assert int(policy["maxReceiveCount"]) == 4 and policy["deadLetterTargetArn"].endswith(
        f"{name}-jobs-dead.fifo"
    )
    q = SqsQueue(queue_url, dead_url, client=sqs_client)
    assert q.max_receive == 4
    # A job cannot ask for more attempts than the redrive policy allows.
    assert q.enqueue("v1", "transcode", {}, max_attempts=9).max_attempts == 4


@pytest.mark.slow
def test_sqs_ids_that_sqs_would_refuse_are_digested(sqs_client: Any) -> None:
    q = SqsQueue(*create_queues(sqs_client, f"ids-{uuid.uuid4().hex[:8]}", 3), client=sqs_client)
    video = "vidéo " + "x" * 200  # not ASCII, and too long for a group id
    first = q.enqueue(video, "transcode", {})
    q.enqueue(video, "transcode", {})
    job = q.lease("w1", 30)
    assert job is not None and job.id == first.id and job.video_id == video
    assert q.lease("w1", 30) is None  # deduplicated all the same
    q.complete(job)
