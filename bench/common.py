"""What every benchmark shares: the machine description, targets, timing and result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable

Result = dict[str, Any]


def machine() -> dict[str, object]:
    """CPU, core count, kernel and Python of this machine."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
    }


def target(name: str, value: float, op: str, limit: float, unit: str) -> dict[str, object]:
    """One target check: value op limit ('>=' or '<='), with how far off it is."""
    met = value >= limit if op == ">=" else value <= limit
    ratio = value / limit if limit else 0.0
    return {
        "name": name,
        "value": value,
        "op": op,
        "limit": limit,
        "unit": unit,
        "met": met,
        "ratio_to_limit": round(ratio, 3),
    }


def percentile(values: Sequence[float], pct: float) -> float:
    """The pct-th percentile (nearest rank) of values."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, p99, min and max of a list of samples."""
    return {
        "n": len(values),
        "median": statistics.median(values) if values else 0.0,
        "p99": percentile(values, 99),
        "min": min(values, default=0.0),
        "max": max(values, default=0.0),
    }


def best_of(repeats: int, run: Callable[[], float]) -> tuple[float, list[float]]:
    """Run a timed function `repeats` times; (the fastest, every run) in its unit."""
    runs = [run() for _ in range(repeats)]
    return min(runs), runs


def write_result(name: str, result: Result, directory: Path = RESULTS) -> Path:
    """Write one benchmark's result as bench/results/<name>.json."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    stamped = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **result}
    path.write_text(json.dumps(stamped, indent=2, sort_keys=False) + "\n")
    return path


def rss_kib(pid: int | str = "self") -> int:
    """VmRSS of a process in KiB (0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int, reaped: bool = False) -> float:
    """utime + stime of a process from /proc/PID/stat, in seconds (0 when it is gone).

    With reaped, the CPU of its children that exited and were waited for is added.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    if reaped:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Every descendant of a process, from /proc/*/stat."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and all its descendants, living or reaped."""
    return cpu_seconds(pid, reaped=True) + sum(cpu_seconds(c, reaped=True) for c in children(pid))
