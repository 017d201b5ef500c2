"""Running wrk and parsing its text report.

Why parse text: wrk 4.1 (Debian) has no machine-readable output without a Lua script, and a
``done()`` script would be one more moving part. The report format is stable; the parser is
strict about the two numbers that matter (Requests/sec, Transfer/sec) and lenient about the rest,
and it keeps error counts, because a fast run full of socket errors or 5xx is not a result.

Units as wrk prints them: latency ``us ms s m h``; bytes base 1024 (``KB`` = KiB).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_BYTE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "PB": 1024**5}

_NUM = r"([0-9]+(?:\.[0-9]+)?)"
_RE_RPS = re.compile(rf"^\s*Requests/sec:\s*{_NUM}\s*$", re.M)
_RE_TPS = re.compile(rf"^\s*Transfer/sec:\s*{_NUM}\s*([KMGTP]?B)\s*$", re.M)
_RE_LAT = re.compile(rf"^\s*Latency\s+{_NUM}(us|ms|s|m|h)\s", re.M)
_RE_PCT = re.compile(rf"^\s*(50|75|90|99)(?:\.0+)?%\s+{_NUM}(us|ms|s|m|h)\s*$", re.M)
_RE_TOTAL = re.compile(
    rf"^\s*([0-9]+) requests in {_NUM}(us|ms|s|m|h),\s*{_NUM}([KMGTP]?B) read\s*$", re.M
)
_RE_SOCK = re.compile(
    r"^\s*Socket errors:\s*connect ([0-9]+),\s*read ([0-9]+),\s*write ([0-9]+),"
    r"\s*timeout ([0-9]+)\s*$",
    re.M,
)
_RE_NON2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s*([0-9]+)\s*$", re.M)
_RE_DURATION = re.compile(r"^([0-9]+)(s|m|h)?$")


class WrkError(RuntimeError):
    """wrk failed or printed something without the numbers we need."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run. Times in seconds, sizes in bytes; None when wrk did not print the value."""

    requests_per_sec: float
    bytes_per_sec: float
    latency_avg: float | None = None
    latency_p50: float | None = None
    latency_p99: float | None = None
    requests: int | None = None
    duration: float | None = None
    bytes_read: float | None = None
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx_3xx: int = 0

    @property
    def error_count(self) -> int:
        return self.non_2xx_3xx + sum(self.socket_errors.values())

    def error_summary(self) -> str:
        """Human summary of errors ("" when clean), e.g. "non-2xx/3xx 12, read 3"."""
        parts = [f"non-2xx/3xx {self.non_2xx_3xx}"] if self.non_2xx_3xx else []
        parts += [f"{kind} {n}" for kind, n in self.socket_errors.items() if n]
        return ", ".join(parts)


def parse_duration(value: str) -> int:
    """wrk-style duration ("10", "10s", "2m") -> whole seconds (>= 1)."""
    m = _RE_DURATION.match(value.strip())
    if not m:
        raise ValueError(f"bad duration {value!r} (use e.g. 10s, 30, 2m)")
    seconds = int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    if seconds < 1:
        raise ValueError("duration must be at least 1 s")
    return seconds


def _time(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS[unit]


def parse_wrk_output(text: str) -> WrkResult:
    """Parse wrk's report; raises WrkError when Requests/sec or Transfer/sec is missing."""
    rps = _RE_RPS.search(text)
    tps = _RE_TPS.search(text)
    if rps is None or tps is None:
        raise WrkError("wrk output has no Requests/sec or Transfer/sec line")
    pct = {m.group(1): _time(m.group(2), m.group(3)) for m in _RE_PCT.finditer(text)}
    lat = _RE_LAT.search(text)
    total = _RE_TOTAL.search(text)
    sock = _RE_SOCK.search(text)
    non2xx = _RE_NON2XX.search(text)
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True))
        if sock
        else {}
    )
    return WrkResult(
        requests_per_sec=float(rps.group(1)),
        bytes_per_sec=float(tps.group(1)) * _BYTE_UNITS[tps.group(2)],
        latency_avg=_time(lat.group(1), lat.group(2)) if lat else None,
        latency_p50=pct.get("50"),
        latency_p99=pct.get("99"),
        requests=int(total.group(1)) if total else None,
        duration=_time(total.group(2), total.group(3)) if total else None,
        bytes_read=float(total.group(4)) * _BYTE_UNITS[total.group(5)] if total else None,
        socket_errors=socket_errors,
        non_2xx_3xx=int(non2xx.group(1)) if non2xx else 0,
    )


@dataclass(frozen=True, slots=True)
class WrkSettings:
    """The load shape, identical for every server in a run (that is the point of the run)."""

    threads: int = 1
    connections: int = 64
    duration: int = 10  # seconds

    def argv(
        self, wrk: str, url: str, script: str | None = None, script_args: Sequence[str] = ()
    ) -> list[str]:
        return [
            wrk,
            f"-t{self.threads}",
            f"-c{self.connections}",
            f"-d{self.duration}s",
            "--latency",
            *(["-s", script] if script else []),
            url,
            *(["--", *script_args] if script_args else []),
        ]

    def describe(self) -> str:
        return f"-t{self.threads} -c{self.connections} -d{self.duration}s --latency"


def run_wrk(
    wrk: str,
    url: str,
    settings: WrkSettings,
    script: str | None = None,
    script_args: Sequence[str] = (),
) -> tuple[WrkResult, str]:
    """Run wrk once against ``url`` (with a Lua ``script`` shaping requests, if given, and
    ``script_args`` passed to its ``init``); returns the parsed result and the raw report.

    Bounded: wrk gets its duration plus 30 s before it is killed.
    """
    argv = settings.argv(wrk, url, script, script_args)
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=settings.duration + 30,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish within {settings.duration + 30} s") from exc
    output = done.stdout + (("\n" + done.stderr) if done.stderr.strip() else "")
    if done.returncode != 0:
        raise WrkError(f"wrk exited with status {done.returncode}:\n{output.strip()}")
    try:
        return parse_wrk_output(done.stdout), output
    except WrkError as exc:
        raise WrkError(f"{exc}:\n{output.strip()}") from exc
