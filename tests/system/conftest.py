"""System tests: the unit under a real systemd, in a container booted from a cached Debian root.

They need root, debootstrap, systemd-nspawn and the Debian mirror (the first run builds the
root, a few minutes). Outside CI a missing requirement skips them with the reason; in CI (CI
set) it fails loudly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from bootroot import TOOLS, cached_root
from machine import Container

from harness import prereq


def missing_requirements() -> str:
    """Why the system tests cannot run here, or '' when they can."""
    reason = prereq.missing_requirements(
        "system tests need", TOOLS, root_for="debootstrap, mounts, systemd-nspawn"
    )
    if not reason and "overlay" not in Path("/proc/filesystems").read_text():
        reason = "system tests need the overlay file system (modprobe overlay)"
    return reason


@pytest.fixture(scope="module")
def booted() -> Iterator[Container]:
    """A container booted from the cached root with the working tree installed; halted after."""
    prereq.require(missing_requirements(), "the system tests")
    container = Container(cached_root())
    try:
        container.prepare()
        container.boot()
        yield container
    finally:
        container.close()
