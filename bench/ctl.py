"""Benchmark 6: `trafmetuxctl show-daily` wall time versus `python3 -c pass`, same machine.

hyperfine runs the commands when it is installed (warm-up runs, no shell), else a timed loop
of subprocess runs; either way against one running daemon serving 2 years of history.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import PYTHON, VENV_BIN, Result, summary, target
from bench.served import served_store

FULL = {"monitors": 20, "years": 2.0, "runs": 40}
SMOKE = {"monitors": 2, "years": 0.02, "runs": 2}


def loop_ms(argv: Sequence[str], runs: int, env: dict[str, str]) -> list[float]:
    """Milliseconds per run of a command (one warm-up run first); each must exit 0."""
    out = []
    for i in range(runs + 1):
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True, timeout=60)
        if i:
            out.append((time.perf_counter() - start) * 1000)
    return out


def hyperfine_ms(
    commands: Sequence[str], runs: int, env: dict[str, str], tmp: Path
) -> list[list[float]]:
    """Per command, milliseconds per run as hyperfine measured them."""
    export = tmp / "hyperfine.json"
    argv = ["hyperfine", "-N", "--warmup", "3", "--runs", str(runs), "--export-json", str(export)]
    subprocess.run([*argv, *commands], env=env, capture_output=True, check=True, timeout=600)
    results = json.loads(export.read_text())["results"]
    return [[t * 1000 for t in r["times"]] for r in results]


def _measure(
    commands: Sequence[Sequence[str]], runs: int, env: dict[str, str], tmp: Path
) -> tuple[str, list[list[float]]]:
    if shutil.which("hyperfine") and all(" " not in a for cmd in commands for a in cmd):
        return "hyperfine", hyperfine_ms([" ".join(c) for c in commands], runs, env, tmp)
    return "subprocess loop", [loop_ms(c, runs, env) for c in commands]


def _real_python3() -> str:
    """The interpreter `python3` on PATH really is (past shims), else the venv's."""
    found = shutil.which("python3")
    if found is None:
        return PYTHON
    argv = [found, "-c", "import sys; print(sys.executable)"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    return out.stdout.strip() or PYTHON


def run(scale: str = "full") -> Result:
    """Bare interpreters and the client, measured against one daemon."""
    size = FULL if scale == "full" else SMOKE
    # The target's baseline is the interpreter trafmetuxctl runs on: the venv's python3. The
    # python3 found on PATH is measured too (resolved past wrappers such as a pyenv shim, whose
    # own start-up would flatter the ratio); its site-packages may make it slower to start.
    python3 = _real_python3()
    commands = {
        "python3 -c pass": [PYTHON, "-c", "pass"],
        "python3 (PATH) -c pass": [python3, "-c", "pass"],
        "python3 -I -S -c pass": [PYTHON, "-I", "-S", "-c", "pass"],
        "trafmetuxctl show-daily": [str(VENV_BIN / "trafmetuxctl"), "show-daily"],
    }
    with (
        tempfile.TemporaryDirectory(prefix="tmx-bench-ctl-") as tmp,
        served_store(Path(tmp), int(size["monitors"]), size["years"]) as (sock, _rows),
    ):
        env = {**os.environ, "TRAFMETUX_SOCKET": str(sock)}
        # As installed: with its bytecode cached (pip writes it at install time; an editable
        # install writes it on first use). Without this, a session that sets
        # PYTHONDONTWRITEBYTECODE compiles every client module from source on every run.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        tool, times = _measure(list(commands.values()), int(size["runs"]), env, Path(tmp))
    figures = {label: summary(t) for label, t in zip(commands, times, strict=True)}
    ctl = figures["trafmetuxctl show-daily"]["median"]
    ratio = ctl / figures["python3 -c pass"]["median"]
    ratio_path = ctl / figures["python3 (PATH) -c pass"]["median"]
    ratio_bare = ctl / figures["python3 -I -S -c pass"]["median"]
    return {
        "params": {**size, "tool": tool, "python3": PYTHON, "path_python3": python3},
        "wall_ms": figures,
        "ratio": round(ratio, 2),
        "ratio_vs_path_python3": round(ratio_path, 2),
        "ratio_vs_no_site": round(ratio_bare, 2),
        "targets": [
            target("show-daily / python3 -c pass (medians)", round(ratio, 2), "<=", 2.0, "x")
        ],
    }
