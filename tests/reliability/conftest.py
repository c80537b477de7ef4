"""Reliability tests: faults, bad input and abuse against the real daemon (and the pure core).

Kernel-side tests use the shared harness (tests/harness/netns.py): everything happens inside network
namespaces created and deleted by each test. They need root; without it they are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness import prereq
from harness.netns import Pair, veth_pair

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
