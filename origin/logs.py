"""Structured logs of the origin services: one JSON object a line.

``reelcdn origin`` and ``reelcdn worker`` write every log record as JSON (:class:`JsonFormatter`:
``time``, ``level``, ``logger``, ``message`` and the record's structured fields), so a log
pipeline (Loki, CloudWatch, jq) filters by video, user or status without parsing prose. The
API writes one ``request`` record per answered request (:class:`AccessLogger`: method, path,
status, bytes, milliseconds, the user once authenticated, the video id when the path names
one); the worker writes a record per job step with the video id.

Structured fields ride on a record as ``extra={"fields": {...}}``: one attribute, so they can
never collide with ``logging``'s own (``msg``, ``args``, ``name``…).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

__all__ = ["USER", "AccessLogger", "JsonFormatter", "fields", "use_json_logs"]

access_log = logging.getLogger("reelcdn.origin.access")

#: The authenticated user of an API request (set by the API's middleware).
USER = web.RequestKey("origin_user", str)


def fields(**values: Any) -> dict[str, Any]:
    """``log.info("…", extra=fields(video=…, user=…))``."""
    return {"fields": values}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            line.update({k: v for k, v in extra.items() if k not in line})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def use_json_logs() -> None:
    """Format every handler of the root logger as JSON lines."""
    root = logging.getLogger()
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter())


class AccessLogger(AbstractAccessLogger):
    """One ``request`` record per answer of the API (aiohttp's access log hook)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        values: dict[str, Any] = {
            "remote": request.remote,
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "bytes": response.body_length,
            "ms": round(time * 1000, 1),
        }
        user = request.get(USER) if isinstance(request, web.Request) else None
        if user:
            values["user"] = user
        video = request.match_info.get("video_id") if isinstance(request, web.Request) else None
        if video:
            values["video"] = video
        self.logger.info("request", extra=fields(**values))

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
