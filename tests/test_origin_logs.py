"""The origin API's structured logs: a JSON object a line, a ``request`` record per answer
with the user and the video, and events (upload created) with their fields."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import aiohttp
import pytest

from reelcdn.origin.logs import JsonFormatter
from reelcdn.origin.service import OriginConfig, OriginService
from reelcdn.origin.users import Keys, mint

KEY = ("k1", b"0" * 32)


async def test_each_answer_and_event_is_one_json_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    service = OriginService(OriginConfig(data_dir=tmp_path, keys=Keys({KEY[0]: KEY[1]}, KEY[0])))
    port, _ = await service.start("127.0.0.1", 0)
    caplog.set_level(logging.INFO, logger="reelcdn.origin")
    auth = {"Authorization": f"Bearer {mint('ann', KEY, 600)}", "Tus-Resumable": "1.0.0"}
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/api/v1/uploads",
                                    headers={**auth, "Upload-Length": "10"}) as response:
                assert response.status == 201
                video = response.headers["Location"].rsplit("/", 1)[1]
            async with session.get(f"http://127.0.0.1:{port}/api/v1/videos/{video}",
                                   headers={"Authorization": "Bearer forged"}) as response:
                assert response.status == 401
    finally:
        await service.stop()
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records
             if r.name.startswith("reelcdn.origin")]
    created = [line for line in lines if line.get("event") == "upload_created"]
    assert created and created[0]["video"] == video and created[0]["user"] == "ann"
    assert created[0]["length"] == 10 and created[0]["level"] == "INFO"
    requests = [line for line in lines if line["message"] == "request"]
    assert [(r["method"], r["status"]) for r in requests] == [("POST", 201), ("GET", 401)]
    assert requests[0]["user"] == "ann" and requests[0]["path"] == "/api/v1/uploads"
    assert "user" not in requests[1]  # a refused token names no one
    assert requests[1]["video"] == video and requests[1]["ms"] >= 0
    assert requests[0]["time"].endswith("Z")


def test_the_formatter_keeps_the_records_own_keys_and_the_exception() -> None:
    record = logging.LogRecord("reelcdn.worker", logging.ERROR, __file__, 1, "failed %s",
                               ("x",), None)
    record.fields = {"message": "spoofed", "video": "V1"}
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "failed x" and line["video"] == "V1"
    assert "ValueError: boom" in line["exception"]
