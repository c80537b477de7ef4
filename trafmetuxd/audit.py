"""What status says of the capture side: the queues, the kernel's counters and the rule audit.

The audit sets what the kernel's queue rules counted against what the meter metered; bytes
the rules saw and the meter did not are traffic that went past it (bypassed or dropped).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from trafmetuxd.kernel import KernelError, QueueRules, QueueStats
from trafmetuxd.spec import DIR_IN, DIR_OUT, CaptureSpec

# The audit runs iptables; a client asking for status in a loop must not turn that into a
# stall of the meter, so one audit serves every status request for this long.
AUDIT_TTL = 0.2


def capture_status(
    spec: CaptureSpec,
    shipped: Mapping[str, int],
    table: Mapping[int, QueueStats],
    workers: list[dict[str, object]],
) -> dict[str, object]:
    """The "capture" and "queue" sections of status, from the kernel's queue table."""
    queues = range(spec.queue, spec.queue + spec.queues)
    waiting = [table[q] for q in queues if q in table]
    return {
        "capture": {
            "queues": list(queues),
            "hooks": spec.hooks,
            "stall_timeout": spec.stall_timeout,
            "packets": shipped.get("packets", 0),
            "truncated": shipped.get("truncated", 0),
            "errors": shipped.get("errors_capture", 0),
            "workers": workers,
        },
        "queue": {
            "queue_dropped": sum(q.queue_dropped for q in waiting),
            "user_dropped": sum(q.user_dropped for q in waiting),
        },
    }


def compare(kernel: Mapping[int, tuple[int, int]], stats: Mapping[str, int]) -> dict[str, object]:
    """Per direction: what the queue rules counted versus what the meter metered."""
    metered = {
        DIR_IN: (stats["in_packets"], stats["in_bytes"]),
        DIR_OUT: (stats["out_packets"], stats["out_bytes"]),
    }
    out: dict[str, object] = {}
    for direction, label in ((DIR_IN, "in"), (DIR_OUT, "out")):
        k_packets, k_bytes = kernel.get(direction, (0, 0))
        m_packets, m_bytes = metered[direction]
        out[label] = {
            "kernel_packets": k_packets,
            "kernel_bytes": k_bytes,
            "metered_packets": m_packets,
            "metered_bytes": m_bytes,
            "unmetered_bytes": max(0, k_bytes - m_bytes),
        }
    return out


class Audit:
    """The rule audit, recomputed at most once per AUDIT_TTL (kernel and meter read together)."""

    def __init__(self, rules: QueueRules, meter_stats: Callable[[], dict[str, int]]) -> None:
        self.rules = rules
        self.meter_stats = meter_stats
        self._cache: tuple[float, dict[str, object]] = (-AUDIT_TTL, {})
        self._task: asyncio.Future[dict[str, object]] | None = None

    async def read(self) -> dict[str, object]:
        """The audit, cached for AUDIT_TTL.

        Reading the rule counters runs iptables: in a worker thread, so a client asking for
        status in a loop never holds up the packet loop; concurrent requests share one read.
        """
        at, audit = self._cache
        if time.monotonic() - at < AUDIT_TTL:
            return audit
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(asyncio.to_thread(self.read_now))
        audit = await asyncio.shield(self._task)
        self._cache = (time.monotonic(), audit)
        return audit

    def read_now(self) -> dict[str, object]:
        """Read the rule counters and the meter's now (blocking: runs iptables)."""
        try:
            kernel = self.rules.counters()
        except KernelError as exc:
            return {"error": str(exc)}
        return compare(kernel, self.meter_stats())
