"""Per-monitor exact totals per UTC minute and fixed-size flow positions. Pure."""

from __future__ import annotations

from typing import NamedTuple

from trafmetuxd.packet import PacketInfo

# (family, protocol, client address, client port, server address, server port); ports are
# packet.NO_PORT (-1) for protocols without ports. OTHER collects flows that found no free position.
FlowKey = tuple[int, int, int, int, int, int]
OTHER: FlowKey = (0, 0, 0, 0, 0, 0)
COMPRESSED_PORT = 65535

# UTC minute (int(unix_seconds) // 60) -> [in_bytes, in_packets, out_bytes, out_packets]
Totals = dict[int, list[int]]
# flow key -> [bytes sent by the client, bytes received by the client, packets]
Flows = dict[FlowKey, list[int]]


class Snapshot(NamedTuple):
    """What a collector held at swap time; never mutated after the swap."""

    totals: Totals
    flows: Flows
    overflow: int  # packets that went to OTHER because the positions were full


class RealtimeCollector:
    """Counts packets as they arrive; swap() hands the contents over in O(1)."""

    def __init__(self, size: int, compress_ports: bool = True) -> None:
        raise NotImplementedError

    def add(self, minute: int, pkt: PacketInfo, direction: int) -> None:
        """Count one packet (direction DIR_OUT counts as out, anything else as in)."""
        raise NotImplementedError

    def swap(self) -> Snapshot:
        """Hand over everything counted so far and start empty."""
        raise NotImplementedError


class FlushCollector:
    """Accumulates snapshots until a write commits; keeps everything while writes fail."""

    def __init__(self, size: int) -> None:
        raise NotImplementedError

    def merge(self, snap: Snapshot) -> None:
        """Add a snapshot; flows beyond `size` positions go to OTHER."""
        raise NotImplementedError

    def pending(self) -> Snapshot:
        """A read-only view of what has not been written yet."""
        raise NotImplementedError

    def clear(self) -> None:
        """Forget everything: call only after the write committed."""
        raise NotImplementedError
