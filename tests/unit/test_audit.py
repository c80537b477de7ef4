"""The capture side of status: queue counters summed over our queues, the rule audit."""

from __future__ import annotations

from trafmetuxd.audit import capture_status, compare
from trafmetuxd.kernel import QueueStats
from trafmetuxd.spec import DIR_IN, DIR_OUT, CaptureSpec

STATS = {"in_packets": 10, "in_bytes": 1000, "out_packets": 4, "out_bytes": 900}


def queue(number: int, queue_dropped: int, user_dropped: int) -> QueueStats:
    """A line of the kernel's queue table."""
    return QueueStats(number, 1234, 0, 2, 128, queue_dropped, user_dropped, 99)


def test_audit_counts_what_the_rules_saw_and_the_meter_did_not() -> None:
    audit = compare({DIR_IN: (12, 1300), DIR_OUT: (4, 800)}, STATS)
    assert audit["in"] == {
        "kernel_packets": 12,
        "kernel_bytes": 1300,
        "metered_packets": 10,
        "metered_bytes": 1000,
        "unmetered_bytes": 300,
    }
    # metered more than the rules counted (counters read a moment apart): never negative
    assert audit["out"]["unmetered_bytes"] == 0


def test_audit_of_a_direction_the_rules_did_not_report_reads_zero() -> None:
    audit = compare({DIR_IN: (10, 1000)}, STATS)
    assert audit["out"] == {
        "kernel_packets": 0,
        "kernel_bytes": 0,
        "metered_packets": 4,
        "metered_bytes": 900,
        "unmetered_bytes": 0,
    }


def test_queue_drops_are_summed_over_our_queues_only() -> None:
    spec = CaptureSpec(queue=5, queues=2, stall_timeout=1.5, hooks="forward")
    table = {4: queue(4, 100, 100), 5: queue(5, 1, 2), 6: queue(6, 3, 4), 7: queue(7, 50, 50)}
    shipped = {"packets": 40, "truncated": 1, "errors_capture": 2}
    out = capture_status(spec, shipped, table, [])
    assert out["queue"] == {"queue_dropped": 4, "user_dropped": 6}
    assert out["capture"] == {
        "queues": [5, 6],
        "hooks": "forward",
        "stall_timeout": 1.5,
        "packets": 40,
        "truncated": 1,
        "errors": 2,
        "workers": [],
    }
