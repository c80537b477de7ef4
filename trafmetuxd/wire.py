"""Frames between the main process and its capture workers, and the shared progress page.

A frame is a 4-byte big-endian length, one kind byte and the body. Shipments of counts are
marshal data (plain dicts, lists, tuples and ints of our own making; both ends are this
package), sent in pieces of at most SHIP_CHUNK flow positions so that encoding one never holds
up the worker's verdicts for long. The main process applies a shipment only once its DONE frame
arrived: a worker that dies midway loses that shipment whole and never counts anything twice.
"""

from __future__ import annotations

import itertools
import json
import marshal
import mmap
import os
import struct
from collections.abc import Iterator, Sequence
from typing import Any

from trafmetuxd.collector import Snapshot

HEADER = struct.Struct("!IB")
MAX_FRAME = 1 << 30
SHIP_CHUNK = 4096  # flow positions per PART frame

# main -> worker
CONFIG = ord("C")  # JSON {"capture": ..., "monitors": [...]}: (re)configure
SHIP = ord("S")  # 8-byte request id: ship everything counted so far
STOP = ord("Q")  # take what is queued, ship it, exit
# JSON {"quotas": [enforcing quotas], "over": {name: {"all", "hosts"}}}: what to drop or mark
ENFORCE = ord("E")
# worker -> main
READY = ord("R")  # JSON {"queue", "pid", "unmetered"}: bound, metering
FAILED = ord("F")  # UTF-8 text: could not bind or configure; the worker exits
# marshal (monitor, totals, flows, overflow, hosts, host overflow): a piece of a shipment
PART = ord("P")
DONE = ord("D")  # marshal (request id, stats): the shipment is complete

_ID = struct.Struct("!Q")
# The progress page: verdict batches sent, loop turns (the heartbeat), both counting up.
PROGRESS = struct.Struct("=QQ")


def frame(kind: int, body: bytes = b"") -> bytes:
    """One frame."""
    return HEADER.pack(len(body) + 1, kind) + body


def json_frame(kind: int, value: object) -> bytes:
    """A frame with a JSON body."""
    return frame(kind, json.dumps(value).encode())


def ship_frame(request: int) -> bytes:
    """Ask for a shipment, acknowledged by a DONE frame with this id (or a later one)."""
    return frame(SHIP, _ID.pack(request))


def request_id(body: bytes) -> int:
    """The id of a SHIP frame's body."""
    return int(_ID.unpack(body)[0])


class Frames:
    """Splits a byte stream into (kind, body) frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The frames completed by data; a partial one waits for the rest."""
        self._buf += data
        out: list[tuple[int, bytes]] = []
        buf = self._buf
        at = 0
        while len(buf) - at >= HEADER.size:
            length, kind = HEADER.unpack_from(buf, at)
            if length < 1 or length > MAX_FRAME:
                raise ValueError(f"bad frame length {length}")
            end = at + 4 + length
            if end > len(buf):
                break
            out.append((kind, bytes(buf[at + HEADER.size : end])))
            at = end
        del buf[:at]
        return out


def shipment(
    batches: Sequence[tuple[str, Snapshot]], request: int, stats: dict[str, int]
) -> Iterator[bytes]:
    """The frames of one shipment: pieces of every non-empty snapshot, then DONE.

    A piece holds at most SHIP_CHUNK flow positions and SHIP_CHUNK hosts.
    """
    for name, snap in batches:
        if not snap.totals and not snap.flows and not snap.overflow and not snap.hosts:
            continue
        items = iter(snap.flows.items())
        hosts = iter(snap.hosts.items())
        first = True
        while True:
            chunk = dict(itertools.islice(items, SHIP_CHUNK))
            host_chunk = dict(itertools.islice(hosts, SHIP_CHUNK))
            if not chunk and not host_chunk and not first:
                break
            totals = snap.totals if first else {}
            overflow = snap.overflow if first else 0
            host_overflow = snap.host_overflow if first else 0
            body = (name, totals, chunk, overflow, host_chunk, host_overflow)
            yield frame(PART, marshal.dumps(body))
            first = False
    yield frame(DONE, marshal.dumps((request, stats)))


def read_part(body: bytes) -> tuple[str, Snapshot]:
    """A PART frame's monitor name and counts."""
    name, totals, flows, overflow, hosts, host_overflow = marshal.loads(body)
    return str(name), Snapshot(totals, flows, int(overflow), hosts, int(host_overflow))


def read_done(body: bytes) -> tuple[int, dict[str, int]]:
    """A DONE frame's request id and stats."""
    request, stats = marshal.loads(body)
    return int(request), {str(k): int(v) for k, v in stats.items()}


def json_body(body: bytes) -> Any:
    """A JSON frame's value."""
    return json.loads(body)


class Progress:
    """The 16-byte shared page through which a worker shows that it moves."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, PROGRESS.size)

    @classmethod
    def create(cls) -> Progress:
        """A new page (memfd), zeroed; its descriptor is inherited by the worker."""
        fd = os.memfd_create("trafmetux-progress", 0)
        os.ftruncate(fd, PROGRESS.size)
        return cls(fd)

    def write(self, batches: int, loops: int) -> None:
        """The worker's counters now."""
        PROGRESS.pack_into(self._map, 0, batches, loops)

    def read(self) -> tuple[int, int]:
        """(verdict batches, loop turns) as last written."""
        batches, loops = PROGRESS.unpack_from(self._map, 0)
        return int(batches), int(loops)

    def close(self) -> None:
        """Unmap and close the descriptor."""
        self._map.close()
        os.close(self.fd)
