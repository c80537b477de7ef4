"""Journald-style stderr logging and the rate-limited error log."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from trafmetuxd import logs


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Captured output; the daemon's logger is reset afterwards."""
    out = io.StringIO()
    yield out
    logger = logging.getLogger("trafmetuxd")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True


def test_under_systemd_each_line_carries_its_syslog_priority(stream: io.StringIO) -> None:
    logs.setup(logging.DEBUG, stream, {"JOURNAL_STREAM": "8:1234"})
    log = logging.getLogger("trafmetuxd.capture")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("two\nlines")
    log.critical("c")
    assert stream.getvalue().splitlines() == [
        "<7>trafmetuxd.capture: d",
        "<6>trafmetuxd.capture: i",
        "<4>trafmetuxd.capture: w",
        "<3>trafmetuxd.capture: two",
        "<3>lines",
        "<2>trafmetuxd.capture: c",
    ]


def test_invocation_id_alone_also_means_systemd() -> None:
    assert logs.under_systemd({"INVOCATION_ID": "abc"})
    assert not logs.under_systemd({"TERM": "xterm"})


def test_on_a_terminal_lines_are_plain_with_time_and_level(stream: io.StringIO) -> None:
    logs.setup(logging.INFO, stream, {})
    logging.getLogger("trafmetuxd").info("bound queue %d", 0)
    logging.getLogger("trafmetuxd").debug("hidden at INFO")
    (line,) = stream.getvalue().splitlines()
    assert not line.startswith("<")
    assert line.endswith(" INFO trafmetuxd: bound queue 0")


def test_setup_twice_does_not_duplicate_lines(stream: io.StringIO) -> None:
    logs.setup(logging.INFO, stream, {})
    logs.setup(logging.INFO, stream, {})
    logging.getLogger("trafmetuxd").info("once")
    assert len(stream.getvalue().splitlines()) == 1


def test_a_storm_of_errors_is_logged_a_few_times_then_summarised(stream: io.StringIO) -> None:
    logs.setup(logging.INFO, stream, {"JOURNAL_STREAM": "1:2"})
    now = [1000.0]
    limited = logs.RateLimitedLog(
        logging.getLogger("trafmetuxd.capture"), interval=60.0, burst=3, clock=lambda: now[0]
    )
    emitted = [limited.error("bad packet %d", n) for n in range(10)]
    assert emitted == [True] * 3 + [False] * 7
    assert limited.suppressed == 7
    now[0] += 60.0
    assert limited.error("bad packet %d", 10)
    assert stream.getvalue().splitlines() == [
        "<3>trafmetuxd.capture: bad packet 0",
        "<3>trafmetuxd.capture: bad packet 1",
        "<3>trafmetuxd.capture: bad packet 2",
        "<3>trafmetuxd.capture: 7 similar messages suppressed in the last period",
        "<3>trafmetuxd.capture: bad packet 10",
    ]


def test_custom_levels_round_down_to_a_known_priority() -> None:
    assert logs.priority(logging.WARNING + 5) == 4
    assert logs.priority(5) == 7
