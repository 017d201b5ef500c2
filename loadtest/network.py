"""Per-player network conditions: a bandwidth cap and an added round-trip time.

Why in the harness and not with ``tc``: the harness runs unprivileged next to the CDN on
loopback, and every player needs its own link. A cap is enforced by pacing the player's reads
(a virtual-clock token bucket with no burst credit: ``n`` bytes may complete no earlier than
``n / rate`` after the link was last busy), so a segment of ``size`` bytes on a 1 Mbit/s link
takes at least ``size * 8 / 1e6`` seconds, as on a real link. Kernel socket buffers still let
the server push ahead of the reader; that affects only when the server thinks it is done.

Distributions are written on the command line as:

- ``5Mbit`` / ``20ms``: every player gets that value; ``inf`` or ``0``: no cap / no delay;
- ``uniform:1Mbit-10Mbit``: uniform between the bounds;
- ``lognormal:5Mbit,0.5``: log-normal with that median and sigma (access-network speeds are
  roughly log-normal);
- ``choice:1Mbit|5Mbit|20Mbit``: one of the values, equally likely.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from dataclasses import dataclass

_RATE_UNITS = {
    "bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9,
    "bps": 1.0, "kbps": 1e3, "mbps": 1e6, "gbps": 1e9,
}
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([a-z]*)\s*$", re.I)


def parse_rate(text: str) -> float:
    """``5Mbit`` → 5e6 bit/s (``inf`` → infinity). ValueError names the problem."""
    if text.strip().lower() in ("inf", "unlimited", "none"):
        return math.inf
    match = _NUMBER_UNIT.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _RATE_UNITS:
        raise ValueError(f"{text!r} is not a bit rate (e.g. 500kbit, 5Mbit, 1Gbit, inf)")
    return float(match.group(1)) * _RATE_UNITS[unit]


def parse_seconds(text: str) -> float:
    """``20ms`` → 0.02, ``2s`` / ``2`` → 2.0, ``2m`` / ``2min`` → 120.0, ``1h`` → 3600.0.
    ValueError names the problem."""
    match = _NUMBER_UNIT.match(text)
    unit = (match.group(2).lower() or "s") if match else ""
    if not match or unit not in _TIME_UNITS:
        raise ValueError(f"{text!r} is not a duration (e.g. 250ms, 2s, 2m)")
    return float(match.group(1)) * _TIME_UNITS[unit]


@dataclass(frozen=True, slots=True)
class Distribution:
    """A sampled value: ``kind`` is fixed | uniform | lognormal | choice."""

    kind: str
    values: tuple[float, ...]
    text: str

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.values[0]
        if self.kind == "uniform":
            return rng.uniform(self.values[0], self.values[1])
        if self.kind == "lognormal":
            median, sigma = self.values
            return median * math.exp(rng.gauss(0.0, sigma))
        return rng.choice(self.values)


def parse_distribution(text: str, unit: str) -> Distribution:
    """A distribution of rates (``unit="rate"``) or durations (``unit="time"``)."""
    parse = parse_rate if unit == "rate" else parse_seconds
    kind, _, spec = text.partition(":")
    kind = kind.strip().lower()
    if not spec:
        return Distribution("fixed", (parse(text),), text)
    if kind == "uniform":
        low, sep, high = spec.partition("-")
        if not sep:
            raise ValueError(f"{text!r}: uniform needs LOW-HIGH, e.g. uniform:1Mbit-10Mbit")
        bounds = (parse(low), parse(high))
        if bounds[0] > bounds[1]:
            raise ValueError(f"{text!r}: the low bound is above the high bound")
        return Distribution("uniform", bounds, text)
    if kind == "lognormal":
        median, sep, sigma = spec.partition(",")
        if not sep:
            raise ValueError(f"{text!r}: lognormal needs MEDIAN,SIGMA, e.g. lognormal:5Mbit,0.5")
        try:
            sigma_value = float(sigma)
        except ValueError:
            raise ValueError(f"{text!r}: sigma {sigma!r} is not a number") from None
        if sigma_value < 0:
            raise ValueError(f"{text!r}: sigma must be >= 0")
        return Distribution("lognormal", (parse(median), sigma_value), text)
    if kind == "choice":
        values = tuple(parse(v) for v in spec.split("|") if v.strip())
        if not values:
            raise ValueError(f"{text!r}: choice needs values separated by |")
        return Distribution("choice", values, text)
    raise ValueError(f"{text!r}: unknown distribution {kind!r} (use uniform:, lognormal:, "
                     "choice: or a single value)")


class Link:
    """One player's access link: a bit-rate cap shared by its requests, and an added RTT."""

    __slots__ = ("rate_bps", "rtt", "_busy_until")

    def __init__(self, rate_bps: float = math.inf, rtt: float = 0.0) -> None:
        self.rate_bps = rate_bps if rate_bps > 0 else math.inf
        self.rtt = max(0.0, rtt)
        self._busy_until = 0.0

    @property
    def capped(self) -> bool:
        return math.isfinite(self.rate_bps)

    async def round_trip(self) -> None:
        """The request's trip to the server and the first byte's trip back."""
        if self.rtt > 0:
            await asyncio.sleep(self.rtt)

    async def deliver(self, nbytes: int) -> None:
        """Wait until ``nbytes`` more could have crossed the link."""
        if not self.capped or nbytes <= 0:
            return
        now = time.monotonic()
        self._busy_until = max(self._busy_until, now) + nbytes * 8 / self.rate_bps
        delay = self._busy_until - now
        if delay > 0:
            await asyncio.sleep(delay)
