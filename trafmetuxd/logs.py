"""Logging to stderr: journald priority prefixes under systemd, plain lines otherwise."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

# syslog priorities journald reads from a "<N>" line prefix (sd-daemon(3)).
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def under_systemd(environ: Mapping[str, str] = os.environ) -> bool:
    """True when stderr goes to the journal (systemd sets these for its services)."""
    return bool(environ.get("JOURNAL_STREAM") or environ.get("INVOCATION_ID"))


def priority(levelno: int) -> int:
    """The syslog priority for a logging level (custom levels round down to the next known)."""
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return _PRIORITY[logging.DEBUG]


class JournalFormatter(logging.Formatter):
    """'<N>logger: message', one prefix per line so multi-line records keep their priority."""

    def format(self, record: logging.LogRecord) -> str:
        """Format the record with the journald priority prefix on every line."""
        prefix = f"<{priority(record.levelno)}>"
        text = super().format(record)
        return "\n".join(prefix + line for line in text.splitlines() or [""])


def setup(
    level: int = logging.INFO,
    stream: TextIO | None = None,
    environ: Mapping[str, str] = os.environ,
) -> logging.Handler:
    """Route the 'trafmetuxd' loggers to stderr in the right format; returns the handler."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if under_systemd(environ):
        # The journal stamps time and unit itself.
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("trafmetuxd")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler


class RateLimitedLog:
    """At most `burst` records per `interval` seconds; the rest are counted and reported."""

    __slots__ = ("_burst", "_clock", "_interval", "_logger", "_sent", "_suppressed", "_window")

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._burst = burst
        self._clock = clock
        self._window = -interval
        self._sent = 0
        self._suppressed = 0

    def log(self, level: int, msg: str, *args: object) -> bool:
        """Log unless over the limit; True when the record was emitted."""
        now = self._clock()
        if now - self._window >= self._interval:
            self._window = now
            self._sent = 0
            if self._suppressed:
                self._logger.log(
                    level, "%d similar messages suppressed in the last period", self._suppressed
                )
                self._suppressed = 0
        if self._sent >= self._burst:
            self._suppressed += 1
            return False
        self._sent += 1
        self._logger.log(level, msg, *args)
        return True

    def error(self, msg: str, *args: object) -> bool:
        """Rate-limited error."""
        return self.log(logging.ERROR, msg, *args)

    @property
    def suppressed(self) -> int:
        """Records dropped in the current window so far."""
        return self._suppressed
