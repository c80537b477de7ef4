"""e2e tests: real kernel, inside network namespaces; they need root, ip, iptables, nft, ethtool.

Outside CI a missing requirement skips them with the reason; in CI (CI set) it fails loudly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import prereq
from harness.netns import Pair, veth_pair

TOOLS = ("ip", "iptables", "ip6tables", "iptables-save", "ip6tables-save", "nft", "ethtool")


def missing_requirements() -> str:
    """Why e2e tests cannot run here, or '' when they can."""
    return prereq.missing_requirements("e2e tests need", TOOLS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/e2e carries the e2e marker."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def _requirements() -> None:
    """Skip (or, in CI, fail) when the machine cannot run e2e tests."""
    prereq.require(missing_requirements(), "the e2e tests")


@pytest.fixture
def pair() -> Iterator[Pair]:
    """Two fresh namespaces joined by a veth pair, quiet, offloads off; removed afterwards."""
    with veth_pair() as made:
        made.settle()
        yield made
