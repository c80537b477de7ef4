"""Reliability tests: faults, bad input and abuse against the real daemon (and the pure core).

Kernel-side tests reuse the e2e harness (tests/e2e/netns.py): everything happens inside network
namespaces created and deleted by each test. They need root; without it they are skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parents[1] / "e2e"
HERE = Path(__file__).resolve().parent
for _dir in (E2E, HERE):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))

import prereq  # noqa: E402
from netns import Pair, veth_pair  # noqa: E402

TOOLS = ("ip", "iptables", "ip6tables", "nft", "ethtool")


def missing_requirements() -> str:
    """Why the kernel-side tests cannot run here, or '' when they can."""
    return prereq.missing_requirements(
        "needs", TOOLS, root_for="network namespaces, netfilter rules, uids"
    )


@pytest.fixture
def kernel() -> None:
    """Skip (or, in CI, fail) a kernel-side test when the machine cannot run it."""
    prereq.require(missing_requirements(), "the reliability tests")


@pytest.fixture
def pair(kernel: None) -> Iterator[Pair]:
    """Two fresh namespaces joined by a veth pair, quiet, offloads off; removed afterwards."""
    with veth_pair() as made:
        made.settle()
        yield made
