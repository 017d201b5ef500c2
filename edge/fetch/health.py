"""The health of one upstream (a parent, a fallback node, an origin): active checks and a breaker.

Two signals decide whether requests go to an upstream (docs/failover.md):

- **Active checks** (``checked``), as HAProxy counts them: a GET of the health path every
  ``interval``; ``fall`` failed checks in a row take the upstream out, ``rise`` passed ones in a
  row put it back. They notice a dead or stuck upstream with no client traffic at all.
- **A circuit breaker** fed by real requests (``answered`` / ``failed``): *closed* (in use);
  *open* after ``failures`` errors or 5xx in a row, and skipped; *half-open* once
  ``retry_after`` has passed (or the checks saw the upstream come back), where exactly one
  request is let through (``admit`` claims it): an answer closes the breaker, a failure opens it
  again for another ``retry_after``.

The state others see is ``up`` (checks pass and the breaker is closed), ``half_open`` (checks
pass, the one probe request may go) or ``down``. Each change is reported once, with its reason,
to ``notify(upstream, old, new, reason)``: the owner logs it and counts it in
``reelcdn_upstream_state_changes_total``.

``UpstreamHealth`` is pure bookkeeping (no I/O, the caller passes the clock,
``time.monotonic()``). Beside it, the two rules every owner of upstreams shares — the parents
(``parents.py``) and a shield's origin chain (``reelcdn.shield.failover``): ``plan`` (which
upstreams a request tries, in which order, and which half-open probes it holds) and
``check_loop`` (the periodic active check of one upstream).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

UP = "up"
DOWN = "down"
HALF_OPEN = "half_open"

CLOSED = "closed"
OPEN = "open"

Notify = Callable[[str, str, str, str], None]


def _quiet(upstream: str, old: str, new: str, reason: str) -> None:
    return None


class UpstreamHealth:
    """Checks, breaker and counters of one upstream."""

    __slots__ = (
        "name", "failures_to_open", "retry_after", "rise", "fall", "notify",
        "breaker", "opened_at", "probing", "consecutive",
        "checked_up", "check_passes", "check_fails", "last_check",
        "state", "requests", "errors",
    )

    def __init__(
        self,
        name: str,
        *,
        failures: int = 3,
        retry_after: float = 10.0,
        rise: int = 2,
        fall: int = 3,
        notify: Notify = _quiet,
    ) -> None:
        self.name = name
        self.failures_to_open = failures
        self.retry_after = retry_after
        self.rise = rise
        self.fall = fall
        self.notify = notify
        self.breaker = CLOSED
        self.opened_at = 0.0
        self.probing = False          # half-open: the one request is under way
        self.consecutive = 0          # request failures in a row
        # An upstream starts in rotation: a node must not refuse its parents for rise × interval
        # after a start; a dead one is out after `failures` requests or `fall` checks.
        self.checked_up = True
        self.check_passes = 0
        self.check_fails = 0
        self.last_check = ""          # the last check's outcome, for the admin API
        self.state = UP
        self.requests = 0
        self.errors = 0

    # -- what callers ask ---------------------------------------------------------------------
    def status(self, now: float) -> str:
        """``up``, ``half_open`` or ``down`` now (an open breaker turns half-open here once
        ``retry_after`` has passed)."""
        if self.breaker == OPEN and now - self.opened_at >= self.retry_after:
            self.breaker = HALF_OPEN
            self.probing = False
            self._sync(f"no request for {self.retry_after:g} s: one may try it")
        return self.state

    def admit(self, now: float) -> bool:
        """May a request go to this upstream now? In half-open, only the first caller gets
        ``True`` (it holds the probe until ``answered``, ``failed`` or ``release``)."""
        state = self.status(now)
        if state == UP:
            return True
        if state == HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def release(self) -> None:
        """A claimed probe that was not sent (an earlier upstream answered)."""
        self.probing = False

    # -- what happened --------------------------------------------------------------------------
    def answered(self, now: float) -> None:
        """A request got an answer that is not a failure: the breaker closes."""
        self.consecutive = 0
        self.probing = False
        if self.breaker != CLOSED:
            self.breaker = CLOSED
            self._sync("a request was answered")

    def failed(self, now: float, reason: str) -> None:
        """A request failed (connect, reset, timeout, a 5xx answer)."""
        self.errors += 1
        self.consecutive += 1
        was_probe = self.breaker == HALF_OPEN
        self.probing = False
        if was_probe or self.breaker == OPEN or self.consecutive >= self.failures_to_open:
            self.breaker = OPEN
            self.opened_at = now  # an open breaker's last-resort failure restarts the wait
            why = "the half-open request failed" if was_probe else (
                f"{self.consecutive} failed requests in a row")
            self._sync(f"{why}: {reason}")

    def checked(self, now: float, ok: bool, reason: str) -> None:
        """One active check's outcome."""
        self.last_check = reason
        if ok:
            self.check_passes += 1
            self.check_fails = 0
            if not self.checked_up and self.check_passes >= self.rise:
                self.checked_up = True
                if self.breaker == OPEN:
                    # The checks saw it go and come back: let one request confirm it now
                    # rather than after the rest of retry_after.
                    self.breaker = HALF_OPEN
                    self.probing = False
                self._sync(f"{self.check_passes} checks passed in a row")
        else:
            self.check_fails += 1
            self.check_passes = 0
            if self.checked_up and self.check_fails >= self.fall:
                self.checked_up = False
                self._sync(f"{self.check_fails} checks failed in a row: {reason}")

    # -- views ------------------------------------------------------------------------------------
    def view(self, now: float) -> dict[str, float | int | bool | str]:
        state = self.status(now)
        return {
            "up": state == UP,
            "state": state,
            "breaker": self.breaker,
            "checks": "up" if self.checked_up else "down",
            "last_check": self.last_check,
            "requests": self.requests,
            "errors": self.errors,
            "consecutive_failures": self.consecutive,
        }

    def _visible(self) -> str:
        if not self.checked_up or self.breaker == OPEN:
            return DOWN
        return HALF_OPEN if self.breaker == HALF_OPEN else UP

    def _sync(self, reason: str) -> None:
        new = self._visible()
        if new != self.state:
            old, self.state = self.state, new
            self.notify(self.name, old, new, reason)


S = TypeVar("S")


def plan(ranked: Sequence[S], health_of: Callable[[S], UpstreamHealth],
         now: float) -> tuple[list[S], list[S]]:
    """The order of one request over ``ranked`` upstreams: those that admit it (up, or
    half-open with the probe claimed here) in ``ranked`` order, then the others, in the same
    order — an upstream marked down is tried last, not never (a guess beats a certain
    failure). Also returns the half-open upstreams whose probe this request holds: the
    caller must ``release`` those it does not send to."""
    admitted: list[S] = []
    probes: list[S] = []
    for state in ranked:
        health = health_of(state)
        half_open = health.status(now) == HALF_OPEN
        if health.admit(now):
            admitted.append(state)
            if half_open:
                probes.append(state)
    rest = [state for state in ranked if state not in admitted]
    return admitted + rest, probes


async def check_loop(health: UpstreamHealth, probe: Callable[[], Awaitable[tuple[bool, str]]],
                     interval: float) -> None:
    """Check one upstream every ``interval`` for as long as its owner runs (cancel to stop):
    the first check after a random part of ``interval``, so that the checks of many
    upstreams and workers spread out. ``probe`` bounds its own time (the check timeout)."""
    await asyncio.sleep(random.uniform(0.0, interval))
    while True:
        ok, reason = await probe()
        health.checked(time.monotonic(), ok, reason)
        await asyncio.sleep(interval)
