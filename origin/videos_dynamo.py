"""The video catalog in DynamoDB: one catalog shared by many origin hosts.

:class:`DynamoCatalog` implements :class:`reelcdn.origin.videos.Catalog` with the rules of the
SQLite :class:`~reelcdn.origin.videos.VideoCatalog` (read that first). Where SQLite relies on a
transaction, a single conditional write does the same here, so hosts racing end as they would
on one SQLite file:

==============  ===========================================================================
create          ``PutItem`` with ``attribute_not_exists(id)``: the first write wins, a
                retried or racing creation changes nothing (SQLite's ``INSERT OR IGNORE``)
set_status      one ``UpdateItem`` with ``attribute_exists(id)`` (an unknown id is KeyError,
                never an upserted row) and, for ``processing``, ``status <> ready``: a ready
                video is never set back, checked in the same write (SQLite's read and update
                in one ``BEGIN IMMEDIATE``). A refused condition returns the old item
                (``ReturnValuesOnConditionCheckFailure``), which tells the two apart
get             ``GetItem`` with ``ConsistentRead``: a host sees every write acknowledged
                before, its own or another's
by_owner        ``Query`` on the index ``owner-created``, newest first, paged up to ``limit``
count_by_status ``Scan`` of ``status`` alone, eventually consistent, paged (below)
newest          ``Scan`` filtered on ``status``, eventually consistent, sorted here (below)
==============  ===========================================================================

The table (``docs/origin.md`` has it for an operator's IaC): partition key ``id`` (S); a global
secondary index ``owner-created``, partition key ``owner`` (S), sort key ``created`` (N),
projecting all attributes. Other attributes: ``title``, ``caption``, ``filename``, ``status``,
``error`` (S; absent when None), ``hashtags``, ``renditions`` (L of S), ``duration``,
``updated`` (N). Numbers are written as ``repr(float)``, so they read back bit for bit.

What DynamoDB gives differently, and why it is acceptable:

- **by_owner is eventually consistent**: a global secondary index cannot be read
  consistently, so a row written a moment ago (by any host) may be missing from the listing,
  or show its previous status, for a fraction of a second. ``get`` is always current.
- **count_by_status reads the whole table**: a Scan (the projection saves bandwidth, not read
  units: DynamoDB charges for whole items), eventually consistent (a Scan of many pages is no
  snapshot even with consistent reads, which would double its cost). It is called only when
  ``/metrics`` is scraped, and at the catalog sizes meant (up to some hundred thousand
  videos: about 6 000 read units a scrape with 0.5 KB rows) that is acceptable. Per-status
  counter items would cost no Scan, but put every write of every host on one hot item and
  need a read and a transaction per status change, where now the rule that keeps ``ready``
  is one conditional write.
- **newest reads the whole table** too: the feeds' pool of ready videos, newest first, is a
  Scan filtered on ``status`` and sorted here (a filter saves bandwidth, not read units). The
  feed service calls it in the background, once per refresh of its pool (``[api]
  trending_interval``), never per request; at 100 000 videos of 0.5 KB that is about 6 000 read
  units per refresh and API host. An index that serves it by key (a sparse global secondary
  index on the ready videos, its partition key sharded by day so that no partition is hot)
  is not built: until it is, the feed on DynamoDB is for catalogs of that size.
- **an empty owner is refused** (ValueError): DynamoDB does not allow an empty string as an
  index key. The API only passes user names, which are never empty.

Errors from DynamoDB (throttling after botocore's retries, an endpoint that cannot be reached,
the table missing) raise :class:`~reelcdn.origin.videos.CatalogUnavailable`; a request the
service refuses as malformed (``ValidationException``) is a bug and is raised as it is.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from reelcdn.origin.videos import STATUSES, CatalogUnavailable, row_fields

__all__ = ["OWNER_INDEX", "DynamoCatalog"]

OWNER_INDEX = "owner-created"
_BUG_CODES = frozenset({"ValidationException", "SerializationException"})


def _num(value: float) -> dict[str, str]:
    return {"N": repr(float(value))}


def _text_list(values: Sequence[str]) -> dict[str, Any]:
    return {"L": [{"S": str(value)} for value in values]}


def _row(item: dict[str, Any]) -> dict[str, Any]:
    """A DynamoDB item as the row ``VideoCatalog`` returns."""

    def text(name: str, default: str | None = "") -> str | None:
        return item[name]["S"] if name in item else default

    def number(name: str) -> float | None:
        return float(item[name]["N"]) if name in item else None

    def texts(name: str) -> list[str]:
        return [value["S"] for value in item[name]["L"]] if name in item else []

    return {
        "id": text("id"), "owner": text("owner"), "title": text("title"),
        "caption": text("caption"), "hashtags": texts("hashtags"),
        "filename": text("filename"), "status": text("status"),
        "error": text("error", None), "duration": number("duration"),
        "renditions": texts("renditions"), "created": number("created"),
        "updated": number("updated"),
    }


class DynamoCatalog:
    """The catalog in one DynamoDB table, shared by every host that names it.

    ``client``: a boto3 DynamoDB client (made from ``endpoint_url`` and ``region`` with boto3's
    credential chain when None; closed by :meth:`close` only then). ``create_table``: create the
    table (on-demand capacity) if it is missing, for tests and ``reelcdn up``; otherwise the
    table must exist with its index, which is checked here, so a host fails at start rather
    than at its first upload.
    """

    def __init__(self, table: str, endpoint_url: str | None = None, region: str | None = None,
                 client: Any = None, create_table: bool = False) -> None:
        self.table = table
        self._own_client = client is None
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "dynamodb", endpoint_url=endpoint_url, region_name=region,
                config=Config(connect_timeout=3, read_timeout=10,
                              retries={"mode": "standard", "max_attempts": 4}))
        self.client = client
        self._ensure_table(create_table)

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    # -- the table -------------------------------------------------------------------------

    def _ensure_table(self, create: bool) -> None:
        try:
            with self._errors():
                description = self.client.describe_table(TableName=self.table)["Table"]
        except CatalogUnavailable as exc:
            if not (create and _code(exc.__cause__) == "ResourceNotFoundException"):
                raise
            description = self._create_table()
        indexes = {index["IndexName"] for index in description.get("GlobalSecondaryIndexes", [])}
        if OWNER_INDEX not in indexes:
            raise CatalogUnavailable(
                f"DynamoDB table {self.table!r} has no index {OWNER_INDEX!r} (owner, created): "
                "create it as docs/origin.md says")

    def _create_table(self) -> dict[str, Any]:
        with self._errors():
            try:
                self.client.create_table(
                    TableName=self.table,
                    BillingMode="PAY_PER_REQUEST",
                    AttributeDefinitions=[
                        {"AttributeName": "id", "AttributeType": "S"},
                        {"AttributeName": "owner", "AttributeType": "S"},
                        {"AttributeName": "created", "AttributeType": "N"},
                    ],
                    KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                    GlobalSecondaryIndexes=[{
                        "IndexName": OWNER_INDEX,
                        "KeySchema": [{"AttributeName": "owner", "KeyType": "HASH"},
                                      {"AttributeName": "created", "KeyType": "RANGE"}],
                        "Projection": {"ProjectionType": "ALL"},
                    }],
                )
            except self.client.exceptions.ResourceInUseException:
                pass  # another host is creating it: wait for it as for ours
            self.client.get_waiter("table_exists").wait(
                TableName=self.table, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
            return self.client.describe_table(TableName=self.table)["Table"]

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """botocore's failures as CatalogUnavailable (but a malformed request's: a bug)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = _code(exc)
            if code in _BUG_CODES:
                raise
            raise CatalogUnavailable(
                f"DynamoDB table {self.table!r}: {code}: "
                f"{exc.response.get('Error', {}).get('Message', '')}") from exc
        except BotoCoreError as exc:
            raise CatalogUnavailable(f"DynamoDB table {self.table!r}: {exc}") from exc

    # -- the catalog -----------------------------------------------------------------------

    def create(self, video_id: str, owner: str, metadata: dict[str, str],
               status: str = "uploading") -> None:
        """A row for a new upload (nothing changes if it exists: creation is retried)."""
        if not owner:
            raise ValueError("owner must not be empty (DynamoDB refuses empty index keys)")
        fields = row_fields(metadata)
        now = time.time()
        item = {
            "id": {"S": video_id}, "owner": {"S": owner},
            "title": {"S": fields["title"]}, "caption": {"S": fields["caption"]},
            "hashtags": _text_list(fields["hashtags"]), "filename": {"S": fields["filename"]},
            "status": {"S": status}, "renditions": _text_list([]),
            "created": _num(now), "updated": _num(now),
        }
        with self._errors():
            try:
                self.client.put_item(TableName=self.table, Item=item,
                                     ConditionExpression="attribute_not_exists(#id)",
                                     ExpressionAttributeNames={"#id": "id"})
            except self.client.exceptions.ConditionalCheckFailedException:
                pass  # the row exists: the first creation wins

    def set_status(
        self,
        video_id: str,
        status: str,
        *,
        error: str | None = None,
        duration: float | None = None,
        renditions: Sequence[str] | None = None,
    ) -> None:
        """Move a video along. A ``ready`` video is never set back to ``processing`` (a step
        run again after a lost lease republishes the same result)."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        # Attribute names go through placeholders (status, owner, ... are reserved words).
        names = {"#id": "id", "#status": "status", "#updated": "updated", "#error": "error"}
        values: dict[str, Any] = {":status": {"S": status}, ":updated": _num(time.time())}
        sets = ["#status = :status", "#updated = :updated"]
        if error is not None:
            sets.append("#error = :error")
            values[":error"] = {"S": error}
        if duration is not None:
            sets.append("#duration = :duration")
            names["#duration"] = "duration"
            values[":duration"] = _num(duration)
        if renditions is not None:
            sets.append("#renditions = :renditions")
            names["#renditions"] = "renditions"
            values[":renditions"] = _text_list(list(renditions))
        update = "SET " + ", ".join(sets) + (" REMOVE #error" if error is None else "")
        condition = "attribute_exists(#id)"
        if status == "processing":
            condition += " AND #status <> :ready"
            values[":ready"] = {"S": "ready"}
        with self._errors():
            try:
                self.client.update_item(
                    TableName=self.table, Key={"id": {"S": video_id}},
                    UpdateExpression=update, ConditionExpression=condition,
                    ExpressionAttributeNames=names, ExpressionAttributeValues=values,
                    ReturnValuesOnConditionCheckFailure="ALL_OLD")
            except self.client.exceptions.ConditionalCheckFailedException as exc:
                if "Item" not in exc.response:
                    raise KeyError(video_id) from None
                # It exists, so it was ready: a processing step run again changes nothing.

    def get(self, video_id: str) -> dict[str, Any] | None:
        with self._errors():
            item = self.client.get_item(TableName=self.table, Key={"id": {"S": video_id}},
                                        ConsistentRead=True).get("Item")
        return None if item is None else _row(item)

    def count_by_status(self) -> dict[str, int]:
        """Rows per status: an eventually consistent Scan of the table reading ``status``
        alone (see the module's docstring for why a Scan)."""
        counts: dict[str, int] = {}
        with self._errors():
            pages = self.client.get_paginator("scan").paginate(
                TableName=self.table, ProjectionExpression="#status",
                ExpressionAttributeNames={"#status": "status"})
            for page in pages:
                for item in page.get("Items", []):
                    status = item["status"]["S"]
                    counts[status] = counts.get(status, 0) + 1
        return counts

    def record_timings(self, video_id: str, timings: Mapping[str, float]) -> None:
        """A map attribute ``timings`` on the video's item, set if the item exists."""
        value = {"M": {str(k): _num(float(v)) for k, v in timings.items()}}
        with self._errors():
            try:
                self.client.update_item(
                    TableName=self.table, Key={"id": {"S": video_id}},
                    UpdateExpression="SET timings = :t",
                    ConditionExpression="attribute_exists(#id)",
                    ExpressionAttributeNames={"#id": "id"},
                    ExpressionAttributeValues={":t": value})
            except self.client.exceptions.ConditionalCheckFailedException:
                raise KeyError(video_id) from None

    def publish_times(self) -> dict[str, list[float]]:
        """An eventually consistent Scan reading ``timings`` alone, of the items that have
        it (the same cost as :meth:`count_by_status`'s, once per scrape)."""
        samples: dict[str, list[float]] = {}
        with self._errors():
            pages = self.client.get_paginator("scan").paginate(
                TableName=self.table, ProjectionExpression="timings",
                FilterExpression="attribute_exists(timings)")
            for page in pages:
                for item in page.get("Items", []):
                    for rendition, seconds in item["timings"]["M"].items():
                        samples.setdefault(rendition, []).append(float(seconds["N"]))
        return samples

    def newest(self, status: str, limit: int = 100) -> list[dict[str, Any]]:
        """Rows in ``status``, newest first, at most ``limit`` (0: none, negative: all): an
        eventually consistent Scan with a filter, sorted here (see the module's docstring)."""
        if limit == 0:
            return []
        rows: list[dict[str, Any]] = []
        with self._errors():
            pages = self.client.get_paginator("scan").paginate(
                TableName=self.table, FilterExpression="#status = :status",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={":status": {"S": status}})
            for page in pages:
                rows.extend(_row(item) for item in page.get("Items", []))
        rows.sort(key=lambda row: (row["created"] or 0.0, row["id"]), reverse=True)
        return rows if limit < 0 else rows[:limit]

    def by_owner(self, owner: str, limit: int = 100) -> list[dict[str, Any]]:
        """An owner's videos, newest first, at most ``limit`` (0: none, negative: all, as
        SQLite's LIMIT)."""
        if limit == 0 or not owner:
            return []
        rows: list[dict[str, Any]] = []
        query: dict[str, Any] = {
            "TableName": self.table, "IndexName": OWNER_INDEX,
            "KeyConditionExpression": "#owner = :owner",
            "ExpressionAttributeNames": {"#owner": "owner"},
            "ExpressionAttributeValues": {":owner": {"S": owner}},
            "ScanIndexForward": False,
        }
        with self._errors():
            while True:
                if limit > 0:
                    query["Limit"] = limit - len(rows)
                page = self.client.query(**query)
                rows.extend(_row(item) for item in page.get("Items", []))
                last = page.get("LastEvaluatedKey")
                if last is None or 0 < limit <= len(rows):
                    return rows
                query["ExclusiveStartKey"] = last


def _code(exc: BaseException | None) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))
