"""The fleet store tests: a real PostgreSQL server started by the tests (harness/postgres.py)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import postgres as pg
from harness import prereq
from harness.netns import Pair, veth_pair


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pg.Postgres]:
    """One server for the session (tests that stop it start their own: `own_server`)."""
    prereq.require(pg.missing(), "the fleet store tests")
    with pg.running(Path(tempfile.mkdtemp(prefix="trafmetux-pg-"))) as server:
        yield server


@pytest.fixture
def pg_url(pg_server: pg.Postgres) -> str:
    """A URL to a fresh, empty database of the session's server."""
    return pg_server.new_database()


@pytest.fixture
def own_server() -> Iterator[pg.Postgres]:
    """A server of the test's own, which it may stop and start."""
    prereq.require(pg.missing(), "the fleet store tests")
    with pg.running(Path(tempfile.mkdtemp(prefix="trafmetux-pg-"))) as server:
        yield server


@pytest.fixture
def pair() -> Iterator[Pair]:
    """Two fresh namespaces joined by a veth pair (the live daemon's), removed afterwards."""
    reason = prereq.missing_requirements("needs", ("ip", "iptables", "ip6tables", "nft"))
    prereq.require(reason, "the fleet store's live tests")
    with veth_pair() as made:
        made.settle()
        yield made
