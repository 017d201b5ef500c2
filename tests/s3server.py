"""A real S3 API server for tests: moto's server in a subprocess, one per test session.

Every real component is tested for real (docs/contributing.md), and for S3 that is moto's server
(``moto[server]``) over a socket, not ``mock_aws`` patching botocore in-process — the origin's
threads, connection pool, streaming reads and error mapping all run as they would against AWS
or MinIO.

Import the fixture into a test module to use it (``tests/conftest.py`` is shared and does not
load it)::

    from s3server import s3_endpoint  # noqa: F401  (a fixture)

The fixture sets fake credentials and region in the environment for the whole session, and
points boto3's config and credentials files at nothing, so a developer's real AWS profile is
never picked up by a test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from reelcdn.loadtest.bench.procs import free_port

__all__ = ["FAKE_ENV", "MotoServer", "s3_endpoint"]

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
_DROPPED_ENV = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")



class MotoServer:
    """``python -m moto.server`` on a free loopback port, started and stopped explicitly."""

    def __init__(self, startup_timeout: float = 30.0) -> None:
        self.startup_timeout = startup_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        # The server logs every request: a file, not a pipe nobody reads (it would fill up
        # and stall the server).
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by the fixture)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        """Start the server and return its endpoint URL once it answers HTTP."""
        for _ in range(3):  # the free port may be taken between probe and bind: retry
            self.port = free_port()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=self.log,
                stderr=subprocess.STDOUT,
            )
            if self._wait_ready():
                return self.url
            self.stop()
        self.log.seek(0)
        tail = self.log.read()[-2000:].decode(errors="replace")
        raise RuntimeError(f"moto server did not start (is moto[server] installed?):\n{tail}")

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/moto-api/", timeout=1.0):
                    return True
            except urllib.error.HTTPError:
                return True  # any HTTP answer means it listens
            except OSError:
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The endpoint URL of a moto S3 server shared by the session, with fake credentials."""
    saved = {name: os.environ.get(name) for name in (*FAKE_ENV, *_DROPPED_ENV)}
    os.environ.update(FAKE_ENV)
    for name in _DROPPED_ENV:
        os.environ.pop(name, None)
    server = MotoServer()
    try:
        yield server.start()
    finally:
        server.stop()
        server.log.close()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
