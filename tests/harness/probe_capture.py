"""Runs the real Capture + QueueRules inside a namespace and reports what it metered.

    probe_capture.py QUEUE IFACE [--maxlen N] [--sleep S] [--raise] [--no-fail-open] [--no-rules]

Prints READY once the queue is bound and the rules are in. Each line "MARK" on stdin prints
the counts so far as JSON; SIGTERM or end of input removes the rules, closes the queue and
prints the final counts. Counts are keyed "dir/iface/family/proto" -> [packets, ip_bytes].
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
import time

from trafmetuxd.capture import Capture
from trafmetuxd.kernel import QueueRules
from trafmetuxd.nfbatch import packets
from trafmetuxd.packet import parse
from trafmetuxd.spec import DIR_IN, CaptureSpec


class Counter:
    """The test's own meter: per direction, interface, family and protocol."""

    def __init__(self, sleep: float, fail: bool) -> None:
        self.counts: dict[str, list[int]] = {}
        self.sleep = sleep
        self.fail = fail

    def handle(self, ts: float, buf: bytes, direction: int, iface: str) -> None:
        """Count one packet (or raise, or stall, as the scenario asks)."""
        info = parse(buf)
        if info is None:
            return
        proto = str(info.proto)
        if info.proto == 58 and len(buf) > 40 and buf[40] not in (128, 129):
            proto = "58-other"  # neighbour discovery and MLD, not echo
        key = f"{'in' if direction == DIR_IN else 'out'}/{iface}/{info.family}/{proto}"
        entry = self.counts.setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] += info.length
        if self.sleep:
            time.sleep(self.sleep)
        if self.fail:
            raise RuntimeError("handle failure injected by the test")

    def consume(self, ts: float, buf: bytes, count: int, slot: int) -> None:
        """The capture's batch consumer: every whole packet of the batch to handle()."""
        names = dict(socket.if_nameindex())
        for direction, ifindex, payload in packets(buf, count, slot):
            self.handle(ts, payload, direction, names.get(ifindex, f"if{ifindex}"))


def report(counter: Counter, capture: Capture, rules: QueueRules | None) -> str:
    """JSON line with the counts, the capture stats and the rule counters."""
    kernel = rules.counters() if rules is not None else {}
    return json.dumps(
        {
            "counts": counter.counts,
            "packets": capture.stats.messages,
            "errors": capture.stats.errors,
            "last_error": capture.stats.last_error,
            "unmetered": capture.stats.unmetered,
            "rules": {str(k): list(v) for k, v in kernel.items()},
        }
    )


async def main(args: argparse.Namespace) -> None:
    """Open, install, serve MARK requests, clean up in the daemon's order."""
    spec = CaptureSpec(
        queue=args.queue,
        interfaces=(args.iface,) if args.iface != "all" else (),
        fail_open=not args.no_fail_open,
        queue_maxlen=args.maxlen,
    )
    counter = Counter(args.sleep, args.raise_)
    capture = Capture(spec, args.queue, counter.consume)
    capture.open()
    rules = None if args.no_rules else QueueRules(spec)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(capture.fileno(), capture.drain)
    try:
        if rules is not None:
            rules.install()
        print("READY", flush=True)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while not stop.is_set():
            line_task = asyncio.ensure_future(reader.readline())
            stop_task = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({line_task, stop_task}, return_when="FIRST_COMPLETED")
            for task in (line_task, stop_task):
                if task not in done:
                    task.cancel()
            if line_task in done:
                line = line_task.result()
                if not line:
                    break
                # Give the loop a moment so packets already queued are taken first.
                await asyncio.sleep(0.2)
                print(report(counter, capture, rules), flush=True)
    finally:
        if rules is not None:
            rules.remove()
        loop.remove_reader(capture.fileno())
        capture.drain()
        print(report(counter, capture, None), flush=True)
        capture.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("queue", type=int)
    parser.add_argument("iface")
    parser.add_argument("--maxlen", type=int, default=4096)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--raise", dest="raise_", action="store_true")
    parser.add_argument("--no-fail-open", action="store_true")
    parser.add_argument("--no-rules", action="store_true")
    asyncio.run(main(parser.parse_args()))
