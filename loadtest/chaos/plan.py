"""A chaos plan: a small TOML file of timed faults, validated like the topology file (an
unknown or misspelt key is an error naming the key, the fault and its line).

```toml
duration = "10m"      # default length of the soak (--duration overrides)
players = 30          # default concurrent players (--players overrides)

[[fault]]
at = "60s"
action = "kill"       # SIGKILL (or signal = "TERM") a node, started again after restart_after
node = "regional-1"
restart_after = "10s"

[[fault]]
at = "100s"
action = "origin"     # the origin misbehaves for `duration`
mode = "slow"         # fail | slow | truncate | reset
delay = "1500ms"      # slow: before each answer's head
duration = "30s"
fraction = 1.0        # share of origin requests affected

[[fault]]
at = "200s"
action = "abort_clients"   # players abandon downloads mid-body and reissue them
fraction = 0.1
duration = "20s"

[[fault]]
at = "240s"
action = "purge"      # drop the catalog from every node's cache (or node = "edge-a")
```
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..network import parse_seconds

ACTIONS = ("kill", "origin", "abort_clients", "purge")
ORIGIN_MODES = ("fail", "slow", "truncate", "reset")
SIGNALS = ("KILL", "TERM")
TOP_KEYS = ("duration", "players", "description", "fault")
COMMON_KEYS = ("at", "action", "note")
ACTION_KEYS: dict[str, tuple[str, ...]] = {
    "kill": ("node", "signal", "restart_after"),
    "origin": ("mode", "duration", "fraction", "delay", "status"),
    "abort_clients": ("fraction", "duration"),
    "purge": ("node", "prefix"),
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "kill": ("node",),
    "origin": ("mode", "duration"),
    "abort_clients": ("fraction", "duration"),
    "purge": (),
}
MAX_FAULTS = 1000


class PlanError(ValueError):
    """A plan that cannot be used; the message names the file, the line and the key."""


@dataclass(frozen=True, slots=True)
class Fault:
    at: float                       # seconds after the players start
    action: str
    index: int                      # 1-based, in file order
    line: int | None = None         # of its [[fault]] header
    node: str | None = None         # kill; purge (None: every node)
    signal: str = "KILL"
    restart_after: float | None = 10.0   # kill: None never restarts it
    mode: str | None = None         # origin
    duration: float = 0.0           # origin, abort_clients
    fraction: float = 1.0           # origin, abort_clients
    delay: float = 2.0              # origin slow
    status: int = 503               # origin fail
    prefix: str = "/v/"             # purge
    note: str = ""

    @property
    def ends(self) -> float:
        """When its effect is over (a kill: when the node is started again)."""
        if self.action == "kill":
            return self.at + (self.restart_after or 0.0)
        return self.at + self.duration

    def describe(self) -> str:
        if self.action == "kill":
            again = (f", restarted after {self.restart_after:g} s"
                     if self.restart_after is not None else ", not restarted")
            return f"SIG{self.signal} {self.node}{again}"
        if self.action == "origin":
            extra = {"slow": f" {self.delay * 1000:.0f} ms", "fail": f" {self.status}"}.get(
                self.mode or "", "")
            share = f", {self.fraction:.0%} of requests" if self.fraction < 1 else ""
            return f"origin {self.mode}{extra} for {self.duration:g} s{share}"
        if self.action == "abort_clients":
            return f"players abort {self.fraction:.0%} of downloads for {self.duration:g} s"
        return f"purge {self.prefix} on {self.node or 'every node'}"


@dataclass(frozen=True, slots=True)
class Plan:
    faults: tuple[Fault, ...]
    duration: float | None = None
    players: int | None = None
    description: str = ""
    source: str = "<plan>"

    def check_nodes(self, nodes: list[str]) -> None:
        """Every node a fault names exists in the topology."""
        for fault in self.faults:
            if fault.node is not None and fault.node not in nodes:
                raise PlanError(f"{self.source}:{fault.line or '?'}: fault {fault.index}: node "
                                f"{fault.node!r} is not in the topology ({', '.join(nodes)})")


def _suggest(key: str, allowed: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _fault_lines(text: str) -> list[int]:
    """Line numbers (1-based) of each ``[[fault]]`` header, in order."""
    return [n for n, line in enumerate(text.splitlines(), start=1)
            if re.match(r"\s*\[\[\s*fault\s*\]\]", line)]


def _key_line(text: str, start: int | None, key: str) -> int | None:
    """The line of ``key = ...`` in the table whose header is line ``start`` (None: the top
    level, before any table); ``start`` itself when the key is not written on a line of it."""
    lines = text.splitlines()
    for number in range(start or 0, len(lines)):
        if re.match(r"\s*\[", lines[number]):
            break
        if re.match(rf"\s*{re.escape(key)}\s*=", lines[number]):
            return number + 1
    return start


def _duration(value: Any, where: str, key: str, *, zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PlanError(f"{where}: {key}: a duration like \"30s\" or \"2m\" (got {value!r})")
    try:
        seconds = parse_seconds(str(value)) if isinstance(value, str) else float(value)
    except ValueError:
        raise PlanError(f"{where}: {key}: a duration like \"30s\" or \"2m\" (got {value!r})") \
            from None
    if not math.isfinite(seconds) or seconds < 0 or (not zero and seconds == 0):
        raise PlanError(f"{where}: {key}: must be {'>= 0' if zero else 'above zero'} "
                        f"(got {value!r})")
    return seconds


def _fraction(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise PlanError(f"{where}: fraction: a number in (0, 1] (got {value!r})")
    return float(value)


def parse_plan(text: str, source: str = "<plan>") -> Plan:
    """Parse and validate a plan; PlanError names the file, line and key of a problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{source}: not valid TOML: {exc}") from None
    for key in data:
        if key not in TOP_KEYS:
            line = _key_line(text, None, key)
            raise PlanError(f"{source}:{line or '?'}: unknown key {key!r}{_suggest(key, TOP_KEYS)}"
                            f"; a plan has {', '.join(TOP_KEYS[:-1])} and [[fault]] tables")
    duration = None
    if "duration" in data:
        duration = _duration(data["duration"], f"{source}:{_key_line(text, None, 'duration')}",
                             "duration", zero=False)
    players = data.get("players")
    if players is not None and (isinstance(players, bool) or not isinstance(players, int)
                                or not 1 <= players <= 100_000):
        raise PlanError(f"{source}:{_key_line(text, None, 'players')}: players: a whole number "
                        f"from 1 to 100000 (got {players!r})")
    raw = data.get("fault", [])
    if not isinstance(raw, list) or not all(isinstance(f, dict) for f in raw):
        raise PlanError(f"{source}: fault: write each fault as a [[fault]] table")
    if len(raw) > MAX_FAULTS:
        raise PlanError(f"{source}: {len(raw)} faults; at most {MAX_FAULTS}")
    headers = _fault_lines(text)
    faults = []
    for index, table in enumerate(raw, start=1):
        line = headers[index - 1] if index - 1 < len(headers) else None
        faults.append(_parse_fault(table, index, line, text, source))
    description = data.get("description", "")
    if not isinstance(description, str):
        raise PlanError(f"{source}: description: a string")
    return Plan(tuple(sorted(faults, key=lambda f: (f.at, f.index))), duration, players,
                description, source)


def _parse_fault(table: dict[str, Any], index: int, line: int | None, text: str,
                 source: str) -> Fault:
    def where(key: str | None = None) -> str:
        at = _key_line(text, line, key) if key else line
        return f"{source}:{at or '?'}: fault {index}"

    action = table.get("action")
    if action not in ACTIONS:
        raise PlanError(f"{where('action')}: action: one of {', '.join(ACTIONS)} "
                        f"(got {action!r})")
    allowed = COMMON_KEYS + ACTION_KEYS[action]
    for key in table:
        if key not in allowed:
            raise PlanError(f"{where(key)} (action {action!r}): unknown key {key!r}"
                            f"{_suggest(key, allowed)}; it takes {', '.join(allowed)}")
    if "at" not in table:
        raise PlanError(f"{where()}: at: required (when, after the players start: \"30s\")")
    for key in REQUIRED[action]:
        if key not in table:
            raise PlanError(f"{where()} (action {action!r}): {key}: required")
    fields: dict[str, Any] = {"at": _duration(table["at"], where("at"), "at"),
                              "action": action, "index": index, "line": line}
    if "note" in table:
        if not isinstance(table["note"], str):
            raise PlanError(f"{where('note')}: note: a string")
        fields["note"] = table["note"]
    if "node" in table:
        if not isinstance(table["node"], str) or not table["node"]:
            raise PlanError(f"{where('node')}: node: a node name of the topology")
        fields["node"] = table["node"]
    if "signal" in table:
        name = str(table["signal"]).upper().removeprefix("SIG")
        if name not in SIGNALS:
            raise PlanError(f"{where('signal')}: signal: KILL or TERM (got {table['signal']!r})")
        fields["signal"] = name
    if "restart_after" in table:
        value = table["restart_after"]
        fields["restart_after"] = None if value in ("never", False) else _duration(
            value, where("restart_after"), "restart_after")
    if "mode" in table:
        if table["mode"] not in ORIGIN_MODES:
            raise PlanError(f"{where('mode')}: mode: one of {', '.join(ORIGIN_MODES)} "
                            f"(got {table['mode']!r})")
        fields["mode"] = table["mode"]
    if "duration" in table:
        fields["duration"] = _duration(table["duration"], where("duration"), "duration",
                                       zero=False)
    if "fraction" in table:
        fields["fraction"] = _fraction(table["fraction"], where("fraction"))
    if "delay" in table:
        if table.get("mode") != "slow":
            raise PlanError(f"{where('delay')}: delay: only for mode = \"slow\"")
        fields["delay"] = _duration(table["delay"], where("delay"), "delay", zero=False)
    if "status" in table:
        status = table["status"]
        if table.get("mode") != "fail":
            raise PlanError(f"{where('status')}: status: only for mode = \"fail\"")
        if isinstance(status, bool) or not isinstance(status, int) or not 500 <= status <= 599:
            raise PlanError(f"{where('status')}: status: a 5xx code (got {status!r})")
        fields["status"] = status
    if "prefix" in table:
        prefix = table["prefix"]
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise PlanError(f"{where('prefix')}: prefix: a path starting with / "
                            f"(got {prefix!r})")
        fields["prefix"] = prefix
    return Fault(**fields)


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PlanError(f"{path}: cannot read the plan: {exc.strerror or exc}") from None
    return parse_plan(text, str(path))


STANDARD = Path(__file__).with_name("standard.toml")


def standard_plan() -> Plan:
    """The plan shipped with the package (``loadtest/chaos/standard.toml``)."""
    return load_plan(STANDARD)
