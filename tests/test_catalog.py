"""The video catalog's rules, on both implementations: SQLite (``origin/videos.py``) and
DynamoDB (``origin/videos_dynamo.py``) against moto's server over a socket (``s3server.py``'s
fixture: moto serves every AWS API at one endpoint, DynamoDB included).

Every behavioural test runs on both; SQLite is the reference. ``hosts()`` opens another catalog
on the same store (another process on the SQLite file, another origin host on the DynamoDB
table), so the tests of two hosts and of races run on both too. The DynamoDB runs are ``slow``
(they start the moto server).
"""

from __future__ import annotations

import inspect
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from s3server import free_port, s3_endpoint  # noqa: F401  (s3_endpoint is a fixture)

from reelcdn.origin.videos import (
    STATUSES,
    Catalog,
    CatalogUnavailable,
    VideoCatalog,
)
from reelcdn.origin.videos_dynamo import OWNER_INDEX, DynamoCatalog

BACKENDS = ["sqlite", pytest.param("dynamodb", marks=pytest.mark.slow)]
REGION = "us-east-1"
ROW_KEYS = {"id", "owner", "title", "caption", "hashtags", "filename", "status", "error",
            "duration", "renditions", "created", "updated"}


class Hosts:
    """Catalogs of one backend over one shared store: each call opens another host's."""

    def __init__(self, backend: str, tmp_path: Path, endpoint: str | None) -> None:
        self.backend = backend
        self.path = tmp_path / "videos.sqlite"
        self.endpoint = endpoint
        self.table = f"videos-{uuid.uuid4().hex[:12]}"
        self.opened: list[Catalog] = []

    def __call__(self) -> Catalog:
        catalog: Catalog
        if self.backend == "sqlite":
            catalog = VideoCatalog(self.path)
        else:
            catalog = DynamoCatalog(self.table, endpoint_url=self.endpoint, region=REGION,
                                    create_table=True)
        self.opened.append(catalog)
        return catalog

    def close(self) -> None:
        for catalog in self.opened:
            catalog.close()


@pytest.fixture(params=BACKENDS)
def hosts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hosts]:
    endpoint = request.getfixturevalue("s3_endpoint") if request.param == "dynamodb" else None
    made = Hosts(request.param, tmp_path, endpoint)
    yield made
    made.close()


@pytest.fixture
def catalog(hosts: Hosts) -> Catalog:
    return hosts()


def dynamo_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("dynamodb", endpoint_url=endpoint, region_name=REGION)


def in_status(catalog: Catalog, video_id: str, status: str, owner: str = "alice") -> None:
    """A row in ``status``, got there as the service and the workers get it there."""
    catalog.create(video_id, owner, {"title": video_id})
    if status != "uploading":
        catalog.set_status(video_id, status)


# ---------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------

PROTOCOL_METHODS = ("create", "set_status", "get", "count_by_status", "by_owner", "close",
                    "record_timings", "publish_times", "newest")


@pytest.mark.parametrize("implementation", [VideoCatalog, DynamoCatalog])
def test_implementations_have_the_protocols_methods_and_signatures(implementation: type) -> None:
    declared = {name for name, value in vars(Catalog).items()
                if callable(value) and not name.startswith("_")}
    assert declared == set(PROTOCOL_METHODS)
    for name in PROTOCOL_METHODS:
        expected = inspect.signature(getattr(Catalog, name))
        assert inspect.signature(getattr(implementation, name)) == expected, name


# ---------------------------------------------------------------------------------------------
# Both implementations
# ---------------------------------------------------------------------------------------------


def test_create_and_get_round_trip(catalog: Catalog) -> None:
    before = time.time()
    catalog.create("v1", "alice", {
        "title": "t" * 250, "caption": "c" * 2500, "hashtags": "#cats  dogs,#fun #cats",
        "filename": "f" * 300 + ".mp4", "other": "ignored",
    })
    after = time.time()
    row = catalog.get("v1")
    assert row is not None
    assert set(row) == ROW_KEYS
    created = row.pop("created")
    assert isinstance(created, float) and before <= created <= after
    assert row.pop("updated") == created
    assert row == {
        "id": "v1", "owner": "alice", "title": "t" * 200, "caption": "c" * 2000,
        "hashtags": ["cats", "dogs", "fun"], "filename": "f" * 255, "status": "uploading",
        "error": None, "duration": None, "renditions": [],
    }
    assert catalog.get("v2") is None


def test_create_with_empty_metadata_and_a_status(catalog: Catalog) -> None:
    catalog.create("v1", "alice", {}, status="processing")
    row = catalog.get("v1")
    assert row is not None
    assert (row["title"], row["caption"], row["hashtags"], row["filename"]) == ("", "", [], "")
    assert row["status"] == "processing"


def test_create_again_changes_nothing_even_from_another_host(hosts: Hosts) -> None:
    first, second = hosts(), hosts()
    first.create("v1", "alice", {"title": "first", "hashtags": "#a"})
    row = first.get("v1")
    first.set_status("v1", "ready", renditions=["360p"], duration=4.0)
    ready = first.get("v1")
    time.sleep(0.01)
    # A retried creation (the hook again after a restart) from another host, other text.
    second.create("v1", "mallory", {"title": "second", "hashtags": "#b"}, status="processing")
    assert second.get("v1") == first.get("v1") == ready
    assert row is not None and ready is not None and ready["created"] == row["created"]
    assert ready["owner"] == "alice" and ready["title"] == "first"


def test_every_status_transition(catalog: Catalog) -> None:
    """From any status to any other, but ``ready`` → ``processing``, which changes nothing."""
    for n, (current, new) in enumerate(itertools.product(STATUSES, STATUSES)):
        video_id = f"v{n}"
        in_status(catalog, video_id, current)
        catalog.set_status(video_id, new)
        row = catalog.get(video_id)
        assert row is not None
        expected = "ready" if (current, new) == ("ready", "processing") else new
        assert row["status"] == expected, (current, new)
    assert sum(catalog.count_by_status().values()) == len(STATUSES) ** 2


def test_set_status_refuses_an_unknown_status_and_an_unknown_id(catalog: Catalog) -> None:
    catalog.create("v1", "alice", {})
    before = catalog.get("v1")
    with pytest.raises(ValueError, match="unknown status"):
        catalog.set_status("v1", "published")
    assert catalog.get("v1") == before
    for status in STATUSES:  # processing has a guard of its own: both paths
        with pytest.raises(KeyError):
            catalog.set_status("nope", status, error="x", duration=1.0, renditions=["360p"])
    assert catalog.get("nope") is None  # no row was made by the refused update
    assert catalog.count_by_status() == {"uploading": 1}


def test_set_status_fields(catalog: Catalog) -> None:
    catalog.create("v1", "alice", {})
    created = catalog.get("v1")
    assert created is not None
    time.sleep(0.01)
    catalog.set_status("v1", "processing", duration=14.98, renditions=("360p",))
    row = catalog.get("v1")
    assert row is not None
    assert (row["status"], row["duration"], row["renditions"], row["error"]) == \
        ("processing", 14.98, ["360p"], None)
    assert row["created"] == created["created"] and row["updated"] > created["updated"]

    # An error is set with its status; duration and renditions are kept when not given.
    catalog.set_status("v1", "failed", error="the source has no video stream")
    row = catalog.get("v1")
    assert row is not None
    assert (row["status"], row["duration"], row["renditions"], row["error"]) == \
        ("failed", 14.98, ["360p"], "the source has no video stream")

    # A status given without an error clears it; an empty list of renditions is a value.
    catalog.set_status("v1", "processing", renditions=[])
    row = catalog.get("v1")
    assert row is not None
    assert (row["status"], row["duration"], row["renditions"], row["error"]) == \
        ("processing", 14.98, [], None)

    catalog.set_status("v1", "ready", duration=15, renditions=["360p", "720p", "1080p"])
    row = catalog.get("v1")
    assert row is not None
    assert row["duration"] == 15.0 and isinstance(row["duration"], float)
    assert row["renditions"] == ["360p", "720p", "1080p"]


def test_a_ready_video_is_not_set_back_to_processing(catalog: Catalog) -> None:
    """A step run again after a lost lease republishes its first rendition: nothing changes,
    not even ``updated``."""
    catalog.create("v1", "alice", {})
    catalog.set_status("v1", "ready", duration=15.0, renditions=["360p", "720p"])
    ready = catalog.get("v1")
    time.sleep(0.01)
    catalog.set_status("v1", "processing", duration=14.0, renditions=["360p"], error="x")
    assert catalog.get("v1") == ready
    catalog.set_status("v1", "failed", error="later")  # other statuses still apply
    row = catalog.get("v1")
    assert row is not None and (row["status"], row["error"]) == ("failed", "later")


def test_by_owner_newest_first_and_limit(catalog: Catalog) -> None:
    ids = [f"a{n}" for n in range(5)]
    for n, video_id in enumerate(ids):
        catalog.create(video_id, "alice", {"title": f"clip {n}"})
        catalog.create(f"b{n}", "bob", {})
        time.sleep(0.005)
    catalog.set_status("a0", "ready", renditions=["360p"])  # updated, not created, changes
    newest_first = ids[::-1]
    rows = catalog.by_owner("alice")
    assert [row["id"] for row in rows] == newest_first
    assert rows == [catalog.get(video_id) for video_id in newest_first]
    assert [row["id"] for row in catalog.by_owner("alice", limit=2)] == newest_first[:2]
    assert [row["id"] for row in catalog.by_owner("alice", limit=1)] == newest_first[:1]
    assert [row["id"] for row in catalog.by_owner("alice", limit=5)] == newest_first
    assert [row["id"] for row in catalog.by_owner("alice", limit=50)] == newest_first
    assert catalog.by_owner("alice", limit=0) == []
    assert [row["id"] for row in catalog.by_owner("alice", limit=-1)] == newest_first
    assert {row["owner"] for row in catalog.by_owner("bob")} == {"bob"}
    assert catalog.by_owner("carol") == []


def test_newest_lists_a_status_newest_first(catalog: Catalog) -> None:
    """The feeds' pool: rows in one status, newest created first, at most ``limit``."""
    for n in range(5):
        in_status(catalog, f"VID{n}", "ready", owner=f"user{n % 2}")
        time.sleep(0.002)  # created is the host's clock: keep the order unambiguous
    in_status(catalog, "VIDP", "processing")
    in_status(catalog, "VIDD", "deleted")
    ready = catalog.newest("ready", 10)
    assert [row["id"] for row in ready] == ["VID4", "VID3", "VID2", "VID1", "VID0"]
    assert set(ready[0]) == ROW_KEYS and ready[0]["owner"] == "user0"
    assert [row["id"] for row in catalog.newest("ready", 2)] == ["VID4", "VID3"]
    assert len(catalog.newest("ready", -1)) == 5
    assert catalog.newest("ready", 0) == []
    assert [row["id"] for row in catalog.newest("processing", 10)] == ["VIDP"]
    assert catalog.newest("failed", 10) == []


def test_count_by_status(catalog: Catalog) -> None:
    assert catalog.count_by_status() == {}
    for n, status in enumerate(["uploading", "processing", "processing", "ready", "ready",
                                "ready", "failed", "deleted"]):
        in_status(catalog, f"v{n}", status, owner=f"user{n % 3}")
    assert catalog.count_by_status() == {
        "uploading": 1, "processing": 2, "ready": 3, "failed": 1, "deleted": 1}
    catalog.set_status("v0", "processing")
    catalog.set_status("v3", "processing")  # ready stays ready
    assert catalog.count_by_status() == {
        "processing": 3, "ready": 3, "failed": 1, "deleted": 1}


def test_deleted_videos_keep_their_row(catalog: Catalog) -> None:
    catalog.create("v1", "alice", {"title": "gone"})
    catalog.set_status("v1", "ready", duration=3.0, renditions=["360p"])
    catalog.set_status("v1", "deleted")
    row = catalog.get("v1")
    assert row is not None
    assert (row["status"], row["title"], row["renditions"], row["duration"]) == \
        ("deleted", "gone", ["360p"], 3.0)
    assert [r["status"] for r in catalog.by_owner("alice")] == ["deleted"]  # the API filters
    assert catalog.count_by_status() == {"deleted": 1}
    catalog.create("v1", "alice", {"title": "again"})  # a creation retried: still deleted
    row = catalog.get("v1")
    assert row is not None and (row["status"], row["title"]) == ("deleted", "gone")


def test_two_hosts_see_each_others_writes(hosts: Hosts) -> None:
    a, b = hosts(), hosts()
    a.create("v1", "alice", {"title": "from a"})
    row = b.get("v1")
    assert row is not None and row["title"] == "from a"
    b.set_status("v1", "processing", renditions=["360p"])
    row = a.get("v1")
    assert row is not None and (row["status"], row["renditions"]) == ("processing", ["360p"])
    b.create("v2", "alice", {"title": "from b"})
    assert [r["id"] for r in a.by_owner("alice")] == ["v2", "v1"]
    a.set_status("v2", "failed", error="bad")
    assert b.count_by_status() == a.count_by_status() == {"processing": 1, "failed": 1}
    # The rule holds across hosts: one host's ready is not undone by another's processing.
    a.set_status("v1", "ready", renditions=["360p", "720p"])
    b.set_status("v1", "processing", renditions=["360p"])
    row = a.get("v1")
    assert row is not None and (row["status"], row["renditions"]) == ("ready", ["360p", "720p"])


# moto's DynamoDB server does not serialise a conditional write against a concurrent one (its
# backend checks and writes without a lock), so a race it loses says nothing of DynamoDB's
# atomic conditional writes: the races run on SQLite, whose transaction is the rule; on
# DynamoDB the same conditions are tested one write at a time above.
def _races_are_real(hosts: Hosts) -> None:
    if hosts.backend == "dynamodb":
        pytest.skip("moto's DynamoDB does not make conditional writes atomic under concurrent "
                    "requests (real DynamoDB does); the rule is tested sequentially")


def race(*calls: Callable[[], None]) -> list[BaseException]:
    """Run the calls at once, each on its own thread (released together); their errors."""
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(call: Callable[[], None]) -> None:
        barrier.wait()
        try:
            call()
        except BaseException as exc:  # reported to the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_racing_ready_and_processing_end_ready(hosts: Hosts) -> None:
    """A worker publishing ``ready`` while a worker that lost the job's lease republishes the
    first rendition (``processing``), on two hosts: whichever write lands first, the video ends
    ``ready`` with the whole ladder, as SQLite's transaction guarantees."""
    _races_are_real(hosts)
    a, b = hosts(), hosts()
    ladder = ["360p", "720p", "1080p"]
    videos = [f"v{n}" for n in range(30)]
    for video_id in videos:
        a.create(video_id, "alice", {}, status="processing")
    for video_id in videos:
        errors = race(
            lambda v=video_id: a.set_status(v, "ready", duration=15.0, renditions=ladder),
            *[lambda v=video_id, host=host: host.set_status(v, "processing", duration=15.0,
                                                            renditions=["360p"])
              for host in (b, a, b)],
        )
        assert errors == []
    for video_id in videos:
        row = b.get(video_id)
        assert row is not None
        assert (video_id, row["status"], row["renditions"]) == (video_id, "ready", ladder)


def test_racing_creations_keep_one_row(hosts: Hosts) -> None:
    _races_are_real(hosts)
    a, b = hosts(), hosts()
    for n in range(20):
        video_id = f"v{n}"
        errors = race(lambda v=video_id: a.create(v, "alice", {"title": "a"}),
                      lambda v=video_id: b.create(v, "alice", {"title": "b"}, status="processing"))
        assert errors == []
        row = a.get(video_id)
        assert row is not None and row == b.get(video_id)
        assert (row["title"], row["status"]) in {("a", "uploading"), ("b", "processing")}
        again = dict(row)
        b.create(video_id, "alice", {"title": "c"})
        assert a.get(video_id) == again
    assert sum(a.count_by_status().values()) == 20


# ---------------------------------------------------------------------------------------------
# DynamoDB only: the table, and a database that fails
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def dynamo(s3_endpoint: str) -> Iterator[tuple[str, Any]]:  # noqa: F811  (the fixture)
    """A fresh table name (not created) and a client for the moto server."""
    client = dynamo_client(s3_endpoint)
    yield f"videos-{uuid.uuid4().hex[:12]}", client
    client.close()


@pytest.mark.slow
def test_dynamo_table_created_as_documented(s3_endpoint: str,  # noqa: F811
                                            dynamo: tuple[str, Any]) -> None:
    table, client = dynamo
    with pytest.raises(CatalogUnavailable, match=table):  # not created unless asked
        DynamoCatalog(table, endpoint_url=s3_endpoint, region=REGION)
    first = DynamoCatalog(table, endpoint_url=s3_endpoint, region=REGION, create_table=True)
    again = DynamoCatalog(table, client=client, create_table=True)  # exists: used as it is
    description = client.describe_table(TableName=table)["Table"]
    assert description["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert description["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    (index,) = description["GlobalSecondaryIndexes"]
    assert index["IndexName"] == OWNER_INDEX == "owner-created"
    assert index["KeySchema"] == [{"AttributeName": "owner", "KeyType": "HASH"},
                                  {"AttributeName": "created", "KeyType": "RANGE"}]
    assert index["Projection"]["ProjectionType"] == "ALL"
    types = {d["AttributeName"]: d["AttributeType"] for d in description["AttributeDefinitions"]}
    assert types == {"id": "S", "owner": "S", "created": "N"}

    first.create("v1", "alice", {"hashtags": "#a #b"})
    first.set_status("v1", "failed", error="bad", duration=1.5, renditions=["360p"])
    item = client.get_item(TableName=table, Key={"id": {"S": "v1"}})["Item"]
    assert item["status"] == {"S": "failed"} and item["error"] == {"S": "bad"}
    assert item["hashtags"] == {"L": [{"S": "a"}, {"S": "b"}]}
    assert item["renditions"] == {"L": [{"S": "360p"}]} and item["duration"] == {"N": "1.5"}
    first.set_status("v1", "processing")
    assert "error" not in client.get_item(TableName=table, Key={"id": {"S": "v1"}})["Item"]
    again.close()  # not its client: still usable
    assert client.describe_table(TableName=table)["Table"]["TableName"] == table
    first.close()


@pytest.mark.slow
def test_dynamo_table_without_the_owner_index_is_refused(s3_endpoint: str,  # noqa: F811
                                                         dynamo: tuple[str, Any]) -> None:
    table, client = dynamo
    client.create_table(TableName=table, BillingMode="PAY_PER_REQUEST",
                        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
    with pytest.raises(CatalogUnavailable, match=OWNER_INDEX):
        DynamoCatalog(table, endpoint_url=s3_endpoint, region=REGION)


@pytest.mark.slow
def test_dynamo_refuses_an_empty_owner(s3_endpoint: str,  # noqa: F811
                                       dynamo: tuple[str, Any]) -> None:
    table, client = dynamo
    catalog = DynamoCatalog(table, client=client, create_table=True)
    with pytest.raises(ValueError, match="owner"):
        catalog.create("v1", "", {})
    assert catalog.get("v1") is None and catalog.by_owner("") == []


@pytest.mark.slow
def test_dynamo_unreachable_is_catalog_unavailable(s3_endpoint: str) -> None:  # noqa: F811
    import boto3
    from botocore.config import Config

    dead = boto3.client("dynamodb", endpoint_url=f"http://127.0.0.1:{free_port()}",
                        region_name=REGION,
                        config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    started = time.monotonic()
    with pytest.raises(CatalogUnavailable, match="Could not connect"):
        DynamoCatalog("videos", client=dead)
    assert time.monotonic() - started < 10


@pytest.mark.slow
def test_dynamo_failures_are_catalog_unavailable(s3_endpoint: str,  # noqa: F811
                                                 dynamo: tuple[str, Any]) -> None:
    """A table gone under a running catalog: every method raises CatalogUnavailable (the API's
    503), never botocore's own error or a wrong answer (None, [], {})."""
    table, client = dynamo
    catalog = DynamoCatalog(table, client=client, create_table=True)
    catalog.create("v1", "alice", {})
    client.delete_table(TableName=table)
    calls: list[Callable[[], object]] = [
        lambda: catalog.create("v2", "alice", {}),
        lambda: catalog.set_status("v1", "ready"),
        lambda: catalog.set_status("v1", "processing"),
        lambda: catalog.get("v1"),
        catalog.count_by_status,
        lambda: catalog.by_owner("alice"),
    ]
    for call in calls:
        with pytest.raises(CatalogUnavailable, match="ResourceNotFoundException"):
            call()


@pytest.mark.slow
async def test_api_answers_503_when_the_catalog_fails(tmp_path: Path,
                                                      s3_endpoint: str) -> None:  # noqa: F811
    from reelcdn.origin.service import OriginConfig, OriginService
    from reelcdn.origin.users import Keys, mint

    keys = Keys({"k1": b"s" * 40}, "k1")
    table = f"videos-{uuid.uuid4().hex[:12]}"
    client = dynamo_client(s3_endpoint)
    service = OriginService(OriginConfig(data_dir=tmp_path / "data", keys=keys))
    service.catalog.close()
    service.catalog = DynamoCatalog(table, client=client, create_table=True)
    port, _ = await service.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/api/v1/videos"
    auth = {"Authorization": f"Bearer {mint('alice', keys, 3600)}"}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url, headers=auth) as resp:
                assert resp.status == 200
                assert (await resp.json())["items"] == []
            client.delete_table(TableName=table)
            async with http.get(url, headers=auth) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "1"
                assert (await resp.json())["error"] == "catalog_unavailable"
    finally:
        await service.stop()
        client.close()


def test_publish_times_are_kept_beside_the_row(hosts: Hosts) -> None:
    """Workers record each rendition's publish time; any host reads them all back (the
    samples of the service's histogram); they are not part of a row."""
    first, second = hosts(), hosts()
    first.create("VIDA", "ann", {})
    first.create("VIDB", "ann", {})
    first.record_timings("VIDA", {"360p": 2.5, "720p": 8.0})
    first.record_timings("VIDA", {"360p": 2.0, "720p": 7.5})  # a rerun replaces
    second.record_timings("VIDB", {"360p": 3.0})
    times = first.publish_times()
    assert sorted(times) == ["360p", "720p"]
    assert sorted(times["360p"]) == [2.0, 3.0] and times["720p"] == [7.5]
    assert "timings" not in first.get("VIDA")
    with pytest.raises(KeyError):
        first.record_timings("NOSUCH", {"360p": 1.0})
