"""`make deps`: apt only for a missing Debian package, so `make test` runs offline when none is."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(
    MAKE is None or shutil.which("dpkg-query") is None, reason="needs make and dpkg (Debian)"
)


def make_deps(*assignments: str) -> subprocess.CompletedProcess[str]:
    """`make deps` with apt-get replaced by echo: what would run is printed, nothing installed."""
    assert MAKE is not None
    return subprocess.run(
        [MAKE, "-s", "--no-print-directory", "deps", "APT_GET=echo apt-get", *assignments],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_make_deps_runs_no_apt_when_every_package_is_present() -> None:
    # the real package list against this machine's dpkg database
    present = ["make", "gcc"]  # needed to get here at all: make runs, the core is compiled
    out = make_deps(f"DEB_PACKAGES={' '.join(present)}")
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


def test_make_deps_installs_only_what_is_missing() -> None:
    out = make_deps("DEB_PACKAGES=make no-such-package-trafmetux")
    if os.geteuid() != 0:
        assert out.returncode != 0
        assert "needs root: sudo make deps" in out.stdout
        return
    assert out.returncode == 0, out
    assert out.stdout.splitlines() == [
        "apt-get install: no-such-package-trafmetux",
        "apt-get update -qq",
        "apt-get install -y -qq no-such-package-trafmetux",
    ]
