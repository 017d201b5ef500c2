"""The job queue on Amazon SQS: for many workers on many hosts.

:class:`SqsQueue` implements :class:`reelcdn.origin.queue.JobQueue` (read that module first:
leases, idempotent enqueue, backoff and dead letters) with SQS's own mechanisms:

=============  ==========================================================================
enqueue        ``SendMessage`` to a FIFO queue, group ``video_id``, deduplication id
               ``video_id:step``
lease          ``ReceiveMessage`` with ``VisibilityTimeout`` = the lease; the attempt count
               is the message's ``ApproximateReceiveCount``
extend         ``ChangeMessageVisibility`` (the heartbeat)
complete       ``DeleteMessage``
fail           ``ChangeMessageVisibility`` to the backoff delay; on the last attempt the
               message is sent to the dead-letter queue with its error and deleted
lost workers   the **redrive policy** (``maxReceiveCount`` = max attempts): a message received
               that many times without being deleted moves to the dead-letter queue on its
               next receive, so a job whose every worker died still ends there
depth/counts   ``GetQueueAttributes`` (approximate numbers, as SQS gives them)
=============  ==========================================================================

Why a FIFO queue rather than a standard queue with an idempotency record: FIFO queues
deduplicate by ``MessageDeduplicationId`` themselves, so idempotent enqueue needs no second
store (a DynamoDB table, say) kept consistent with the queue — a crash between writing the
record and sending the message would lose the job or require a repair pass. The message group
gives each video an order: its steps run one after the other, and a step waiting out a backoff
holds back the video's later steps, which depend on it anyway. Other videos are not held back:
SQS hands out the heads of different groups in parallel, and high-throughput FIFO mode
(``create_queues`` sets it) scales with the number of groups.

What SQS cannot give, and what this backend therefore does not promise (``SqliteQueue`` does):

- **Deduplication lasts five minutes.** Enqueueing a step again after that window makes a second
  job, even if the first is done. Steps must be idempotent anyway (a worker can die between
  finishing and ``complete``); the transcoder checks its outputs (``meta.json``'s state).
- **enqueue cannot return the existing job**: SQS cannot look a message up. The job returned
  for a duplicate is built from the arguments (``attempts`` 0, ``state`` pending); its ``id``
  (``video_id:step``) is the existing job's.
- **A stale receipt handle is not always refused.** ``extend`` refuses a lease that has run out
  by the worker's own clock before asking SQS; ``complete`` after another worker re-leased the
  job deletes nothing on AWS (and ``LeaseLost`` is not raised).
- **No "done" count**: SQS forgets deleted messages; ``counts()`` has no ``done`` key.
- **max_attempts is the queue's**: ``maxReceiveCount`` is set per queue, so a job's
  ``max_attempts`` can only be lower (enforced here), never higher.
- **dead_letters() peeks by receiving**: it receives the dead-letter queue's messages (making
  them invisible for ``peek_seconds``) and releases them at once. Dead letters this module sends
  use the job as their group, so none hides another; messages moved by the redrive policy keep
  their video as group, and a second one of the same video stays hidden until the first is gone.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import string
import time
from typing import Any

from reelcdn.origin.queue import Backoff, Job, JobNotFound, JobQueue, LeaseLost, QueueError

__all__ = ["MAX_VISIBILITY", "SqsQueue", "create_queues"]

MAX_VISIBILITY = 12 * 3600  # SQS's limit for a visibility timeout, seconds
MAX_RETENTION = 14 * 24 * 3600  # SQS's longest message retention, seconds
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + string.punctuation)
_LOST_CODES = frozenset({
    "ReceiptHandleIsInvalid", "MessageNotInflight", "InvalidParameterValue",
    "AWS.SimpleQueueService.MessageNotInflight", "AWS.SimpleQueueService.NonExistentQueue",
})


def _token(text: str) -> str:
    """A group or deduplication id: SQS allows 128 characters of letters, digits and
    punctuation; anything else is replaced by its digest (stable, so still deduplicating)."""
    if 0 < len(text) <= 128 and all(c in _TOKEN_CHARS for c in text):
        return text
    return "sha256-" + hashlib.sha256(text.encode()).hexdigest()


def _visibility(seconds: float) -> int:
    return max(0, min(MAX_VISIBILITY, math.ceil(seconds)))


def create_queues(
    sqs_client: Any,
    name: str,
    max_attempts: int,
    *,
    visibility_timeout: int = 60,
) -> tuple[str, str]:
    """Create the FIFO job queue ``{name}.fifo`` and its dead-letter queue
    ``{name}-dead.fifo``, wired by a redrive policy with ``maxReceiveCount = max_attempts``;
    return ``(queue_url, dead_letter_url)``.

    The redrive policy is what makes a lost worker's job finite: each lease is a receive, and
    the receive after the ``max_attempts``-th moves the message to the dead-letter queue instead
    of handing it out. Both queues keep messages 14 days (SQS's longest), so a job waiting out a
    long outage or an operator's attention is not silently dropped. SQS's CreateQueue is
    idempotent for identical attributes, so running this again is harmless.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    base = name.removesuffix(".fifo")
    dead_url = sqs_client.create_queue(
        QueueName=f"{base}-dead.fifo",
        Attributes={"FifoQueue": "true", "MessageRetentionPeriod": str(MAX_RETENTION)},
    )["QueueUrl"]
    dead_arn = sqs_client.get_queue_attributes(
        QueueUrl=dead_url, AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    queue_url = sqs_client.create_queue(
        QueueName=f"{base}.fifo",
        Attributes={
            "FifoQueue": "true",
            "DeduplicationScope": "messageGroup",
            "FifoThroughputLimit": "perMessageGroupId",
            "VisibilityTimeout": str(visibility_timeout),
            "MessageRetentionPeriod": str(MAX_RETENTION),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dead_arn, "maxReceiveCount": str(max_attempts)}
            ),
        },
    )["QueueUrl"]
    return queue_url, dead_url


class SqsQueue(JobQueue):
    """A job queue on an SQS FIFO queue and its dead-letter queue (see the module docstring
    for the mapping and its limits). Create both with :func:`create_queues`.

    ``wait_seconds`` is ReceiveMessage's long poll: 0 makes ``lease`` return ``None`` at once
    when nothing is ready; workers in a loop should use up to 20 to save requests.
    """

    def __init__(
        self,
        queue_url: str,
        dead_letter_url: str,
        *,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        client: Any = None,
        backoff: Backoff | None = None,
        wait_seconds: int = 0,
        peek_seconds: int = 30,
        rng: random.Random | None = None,
    ) -> None:
        if client is None:
            import boto3

            client = boto3.client("sqs", region_name=region_name, endpoint_url=endpoint_url)
        self.client = client
        self.queue_url = queue_url
        self.dead_letter_url = dead_letter_url
        self.backoff = backoff or Backoff()
        self.wait_seconds = wait_seconds
        self.peek_seconds = peek_seconds
        self._rng = rng
        attributes = client.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["FifoQueue", "RedrivePolicy"]
        ).get("Attributes", {})
        if attributes.get("FifoQueue") != "true":
            raise QueueError(f"{queue_url} is not a FIFO queue (create it with create_queues)")
        if "RedrivePolicy" not in attributes:
            raise QueueError(
                f"{queue_url} has no redrive policy: jobs of workers that die would be retried "
                "forever (create it with create_queues)"
            )
        self.max_receive = int(json.loads(attributes["RedrivePolicy"])["maxReceiveCount"])

    def close(self) -> None:
        self.client.close()

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _key(video_id: str, step: str) -> str:
        return f"{video_id}:{step}"

    def _job_from(self, message: dict[str, Any], *, dead: bool = False) -> Job:
        body = json.loads(message["Body"])
        received = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "0"))
        max_attempts = int(body.get("max_attempts", self.max_receive))
        job = Job(
            id=self._key(body["video_id"], body["step"]),
            video_id=body["video_id"],
            step=body["step"],
            payload=body.get("payload", {}),
            attempts=received,
            max_attempts=max_attempts,
            last_error=body.get("last_error"),
            receipt=message["ReceiptHandle"],
        )
        if dead:
            job.state = "dead"
            if "dead_at" in body:
                job.attempts = int(body["attempts"])
                job.not_before = float(body["dead_at"])
            else:  # moved by the redrive policy: its last worker vanished
                job.attempts = min(self.max_receive, max_attempts)
                job.last_error = "lease expired on the last attempt (moved by the redrive " \
                    "policy)" + (f"; previous error: {job.last_error}" if job.last_error else "")
        return job

    def _body(self, job: Job, **extra: Any) -> str:
        body = {
            "video_id": job.video_id, "step": job.step, "payload": job.payload,
            "max_attempts": job.max_attempts, **extra,
        }
        if job.last_error is not None:
            body.setdefault("last_error", job.last_error)
        return json.dumps(body, separators=(",", ":"), sort_keys=True)

    def _lost(self, job: Job, error: Exception) -> LeaseLost:
        return LeaseLost(f"job {job.id}: lease of {job.worker!r} on attempt {job.attempts} "
                         f"lost ({error})")

    def _bury(self, job: Job, error: str) -> Job:
        """Send ``job`` to the dead-letter queue with ``error``, then delete it from the queue
        (in this order: a crash between the two leaves a duplicate, never a loss)."""
        from botocore.exceptions import ClientError

        assert job.receipt is not None
        now = time.time()
        job.last_error = error
        self.client.send_message(
            QueueUrl=self.dead_letter_url,
            MessageBody=self._body(job, attempts=job.attempts, dead_at=now),
            # One group per job: no dead letter hides another from dead_letters().
            MessageGroupId=_token(job.id),
            # One deduplication id per receive: a retried send is dropped, a later death kept.
            MessageDeduplicationId=hashlib.sha256(job.receipt.encode()).hexdigest(),
        )
        try:
            self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=job.receipt)
        except ClientError as exc:
            raise self._lost(job, exc) from exc
        job.state, job.lease_until, job.not_before = "dead", None, now
        return job

    def _peek_dead(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        while True:
            batch = self.client.receive_message(
                QueueUrl=self.dead_letter_url, MaxNumberOfMessages=10,
                VisibilityTimeout=self.peek_seconds, WaitTimeSeconds=0,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            ).get("Messages", [])
            if not batch:
                return messages
            messages.extend(batch)

    def _release(self, messages: list[dict[str, Any]]) -> None:
        for start in range(0, len(messages), 10):
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for i, m in enumerate(messages[start:start + 10])
            ]
            if entries:
                self.client.change_message_visibility_batch(
                    QueueUrl=self.dead_letter_url, Entries=entries
                )

    # -- the interface ------------------------------------------------------------------------

    def enqueue(
        self, video_id: str, step: str, payload: dict[str, Any], *, max_attempts: int = 5
    ) -> Job:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        job = Job(
            id=self._key(video_id, step), video_id=video_id, step=step, payload=payload,
            max_attempts=min(max_attempts, self.max_receive), not_before=time.time(),
        )
        self.client.send_message(
            QueueUrl=self.queue_url,
            MessageBody=self._body(job, enqueued_at=job.not_before),
            MessageGroupId=_token(video_id),
            MessageDeduplicationId=_token(job.id),
        )
        return job

    def lease(self, worker_id: str, lease_seconds: float) -> Job | None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be > 0")
        visibility = max(1, _visibility(lease_seconds))
        while True:
            started = time.time()
            messages = self.client.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=1, VisibilityTimeout=visibility,
                WaitTimeSeconds=self.wait_seconds,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            ).get("Messages", [])
            if not messages:
                return None
            job = self._job_from(messages[0])
            job.worker, job.state = worker_id, "leased"
            # From before the request: the worker's view of its lease never outlasts SQS's.
            job.lease_until = started + visibility
            if job.attempts > job.max_attempts:
                # The job's own limit is below the redrive policy's and its last worker
                # vanished: dead-letter it as the policy would.
                self._bury(job, f"lease expired on attempt {job.attempts - 1}"
                           + (f"; previous error: {job.last_error}" if job.last_error else ""))
                continue
            return job

    def extend(self, job: Job, lease_seconds: float) -> Job:
        from botocore.exceptions import ClientError

        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be > 0")
        now = time.time()
        if job.receipt is None or job.lease_until is None or job.lease_until <= now:
            # SQS may still accept the receipt handle, but another worker may have received
            # the message since: refuse rather than let two workers run the job.
            raise LeaseLost(f"job {job.id}: the lease of {job.worker!r} ran out")
        visibility = _visibility(lease_seconds)
        try:
            self.client.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=job.receipt, VisibilityTimeout=visibility
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _LOST_CODES:
                raise self._lost(job, exc) from exc
            raise
        job.lease_until = now + visibility
        return job

    def complete(self, job: Job) -> None:
        from botocore.exceptions import ClientError

        if job.receipt is None:
            raise LeaseLost(f"job {job.id} is not leased")
        try:
            self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=job.receipt)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _LOST_CODES:
                raise self._lost(job, exc) from exc
            raise
        job.state, job.lease_until = "done", None

    def fail(self, job: Job, error: str) -> Job:
        from botocore.exceptions import ClientError

        if job.receipt is None:
            raise LeaseLost(f"job {job.id} is not leased")
        if job.attempts >= job.max_attempts:
            return self._bury(job, error)
        delay = self.backoff.delay(job.attempts, self._rng)
        try:
            self.client.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=job.receipt,
                VisibilityTimeout=_visibility(delay),
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _LOST_CODES:
                raise self._lost(job, exc) from exc
            raise
        # SQS keeps no error with a message: the last one travels only into the dead letter.
        job.state, job.last_error = "pending", error
        job.not_before = time.time() + _visibility(delay)
        job.lease_until = job.worker = None
        return job

    def _attributes(self, url: str) -> dict[str, int]:
        names = [
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        attributes = self.client.get_queue_attributes(QueueUrl=url, AttributeNames=names)
        return {name: int(attributes["Attributes"].get(name, 0)) for name in names}

    def depth(self) -> int:
        counts = self.counts()
        return counts["pending"] + counts["leased"]

    def counts(self) -> dict[str, int]:
        """``pending``: visible or delayed messages; ``leased``: messages in flight, which on
        SQS includes failed jobs waiting out their backoff; ``dead``: the dead-letter queue's
        messages. Approximate (SQS's figures); no ``done``: SQS keeps no deleted message."""
        main = self._attributes(self.queue_url)
        dead = self._attributes(self.dead_letter_url)
        return {
            "pending": main["ApproximateNumberOfMessages"]
            + main["ApproximateNumberOfMessagesDelayed"],
            "leased": main["ApproximateNumberOfMessagesNotVisible"],
            "dead": sum(dead.values()),
        }

    def dead_letters(self) -> list[Job]:
        messages = self._peek_dead()
        try:
            return [self._job_from(m, dead=True) for m in messages]
        finally:
            self._release(messages)

    def requeue_dead(self, job_id: str) -> Job:
        messages = self._peek_dead()
        matching = [m for m in messages if self._job_from(m, dead=True).id == job_id]
        try:
            if not matching:
                raise JobNotFound(job_id)
            dead = self._job_from(matching[0], dead=True)
            job = Job(
                id=dead.id, video_id=dead.video_id, step=dead.step, payload=dead.payload,
                max_attempts=dead.max_attempts, last_error=dead.last_error,
                not_before=time.time(),
            )
            self.client.send_message(
                QueueUrl=self.queue_url,
                MessageBody=self._body(job, enqueued_at=job.not_before),
                MessageGroupId=_token(job.video_id),
                # Not the job's own id: that one may still be inside the deduplication window,
                # and the send would be dropped.
                MessageDeduplicationId=hashlib.sha256(
                    f"requeue:{matching[0]['MessageId']}".encode()
                ).hexdigest(),
            )
            for message in matching:  # duplicates of the dead letter go too
                self.client.delete_message(
                    QueueUrl=self.dead_letter_url, ReceiptHandle=message["ReceiptHandle"]
                )
            return job
        finally:
            self._release([m for m in messages if m not in matching])
