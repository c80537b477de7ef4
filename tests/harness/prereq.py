"""What the kernel-side tests and benchmarks need from the machine: root, tools, netfilter.

Stdlib only at import time, so the end-to-end benchmark can ask it too.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path


def missing_requirements(
    needs: str,
    tools: Sequence[str],
    root_for: str = "network namespaces, netfilter rules",
    hint: str = "on PATH (make deps)",
    netfilter: bool = True,
) -> str:
    """Why the work that `needs` the tools cannot run here, or '' when it can."""
    if os.geteuid() != 0:
        return f"{needs} root ({root_for})"
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return f"{needs} {', '.join(missing)} {hint}"
    if netfilter and not Path("/proc/net/netfilter").exists():
        return f"{needs} netfilter (/proc/net/netfilter missing)"
    return ""


def require(reason: str, what: str) -> None:
    """Skip the test with the reason; in CI (CI set) fail loudly instead."""
    import pytest  # here, not at the top: the benchmarks import this module without pytest

    if reason and os.environ.get("CI"):
        pytest.fail(f"CI cannot run {what}: {reason}", pytrace=False)
    if reason:
        pytest.skip(reason)
