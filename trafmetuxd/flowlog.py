"""The classic text flow log: one block per flush, one line per flow position.

A block reads::

    --- Time: 2001-09-12 11:32:54
    TCP 192.168.190.62 65535 192.168.190.11 143 2548 3748
    * * 0 * 0 1200 800

The header carries the flush time in the configured local zone. Each line is
`PROTOCOL CLIENT CLIENT_PORT SERVER SERVER_PORT SENT RECEIVED` (bytes sent and received by the
client). Protocols are upper-case names (TCP, UDP, ICMP, ICMPV6, IGMP, GRE, ESP, AH, SCTP,
UDPLITE), any other protocol is its number; ports that do not exist (-1) are printed as 0.
Lines are sorted by sent + received bytes, largest first (ties by key); the "other" position,
which holds flows that found no free position, comes last as `* * 0 * 0 SENT RECEIVED`.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from trafmetuxd import ipproto
from trafmetuxd.addresses import address_text
from trafmetuxd.collector import OTHER, FlowKey, Snapshot

DIR_MODE = 0o750
FILE_MODE = 0o640


def protocol_name(proto: int) -> str:
    """The log's name for an IP protocol number: the one table's, upper case (TCP, ICMPV6)."""
    return ipproto.name(proto).upper()


def flow_line(key: FlowKey, sent: int, received: int) -> str:
    """One position as a log line (without the newline)."""
    if key == OTHER:
        return f"* * 0 * 0 {sent} {received}"
    family, proto, client, client_port, server, server_port = key
    return (
        f"{protocol_name(proto)} {address_text(family, client)} {max(client_port, 0)} "
        f"{address_text(family, server)} {max(server_port, 0)} {sent} {received}"
    )


def render(flush_time_local: datetime, snap: Snapshot) -> str:
    """The text block for one flush of one monitor."""
    header = f"--- Time: {flush_time_local:%Y-%m-%d %H:%M:%S}\n"
    positions = [(k, e) for k, e in snap.flows.items() if k != OTHER and e[2]]
    positions.sort(key=lambda item: (-(item[1][0] + item[1][1]), item[0]))
    other = snap.flows.get(OTHER)
    if other is not None and other[2]:
        positions.append((OTHER, other))
    return header + "".join(flow_line(k, e[0], e[1]) + "\n" for k, e in positions)


class FlowLog:
    """A monitor's flow log files, named by a strftime pattern of the flush time."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    def path(self, flush_time_local: datetime) -> Path:
        """The file a flush at this local time goes to."""
        return Path(flush_time_local.strftime(self.pattern))

    def render(self, flush_time_local: datetime, snap: Snapshot) -> str:
        """The text block for one flush (pure; see the module docstring)."""
        return render(flush_time_local, snap)

    def append(self, flush_time_local: datetime, snap: Snapshot) -> None:
        """Render one flush and append it to its file."""
        self.append_text(flush_time_local, render(flush_time_local, snap))

    def append_text(self, flush_time_local: datetime, text: str) -> None:
        """Append already rendered text to the file for this time; OSError names the path."""
        if not text:
            return
        path = self.path(flush_time_local)
        try:
            _make_dirs(path.parent)
            # never through a symlink someone placed at the file's name
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(path, flags, FILE_MODE)
            try:
                _write_all(fd, text.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            # mkdir/open name the path themselves; write errors (ENOSPC, EIO) do not.
            if exc.filename is None:
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
            raise


def _make_dirs(directory: Path) -> None:
    """Create missing directories, every one with DIR_MODE (mkdir -p applies it to the last)."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(mode=DIR_MODE, exist_ok=True)


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
