"""What machine a benchmark ran on, for the report.

Why: numbers from a shared, noisy 2-core box mean little without the box; the report carries CPU
count and model, kernel, Python, the tool versions and the load average at start, so a reader can
tell a regression from a busy neighbour.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class MachineInfo:
    nproc: int
    cpu_model: str
    kernel: str
    python: str
    loadavg: str
    tools: dict[str, str]

    def markdown_lines(self) -> list[str]:
        lines = [
            f"- CPUs: {self.nproc} × {self.cpu_model}",
            f"- kernel: {self.kernel}",
            f"- Python: {self.python}",
        ]
        lines += [f"- {name}: {version}" for name, version in self.tools.items()]
        lines.append(f"- load average at start (1/5/15 min): {self.loadavg}")
        return lines


def cpu_model() -> str:
    """``model name`` from /proc/cpuinfo (x86), else the ARM-style fields, else platform."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "cpu model", "Processor"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if m:
            return " ".join(m.group(1).split())
    return platform.processor() or "unknown"


def usable_cpus() -> int:
    """CPUs this process may run on (what ``nproc`` prints), not the host's total."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 0


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def nginx_version(nginx: str) -> str:
    """``nginx -v`` prints "nginx version: nginx/1.22.1" on stderr."""
    try:
        done = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    out = (done.stderr + done.stdout).strip().splitlines()
    return out[0].removeprefix("nginx version: ") if out else "unknown"


def wrk_version(wrk: str) -> str:
    """``wrk -v`` prints "wrk 4.1.0 [epoll] Copyright ..." then usage, and exits 1."""
    try:
        done = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    for line in (done.stdout + done.stderr).splitlines():
        if line.startswith("wrk "):
            return line.split(" Copyright")[0].strip()
    return "unknown (wrk -v printed no version)"


def source_revision(path: Path) -> str:
    """The git commit of the tree at ``path`` (+ "with uncommitted changes"), or "unknown".

    Why: "reelcdn 0.1.0" does not identify the code that was measured; the commit does.
    """
    try:
        head = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    suffix = " with uncommitted changes" if dirty.stdout.strip() else ""
    return f"git {head.stdout.strip()}{suffix}"


def collect(tools: dict[str, str]) -> MachineInfo:
    return MachineInfo(
        nproc=usable_cpus(),
        cpu_model=cpu_model(),
        kernel=f"{platform.system()} {platform.release()}",
        python=f"{platform.python_implementation()} {platform.python_version()}",
        loadavg=loadavg(),
        tools=tools,
    )
