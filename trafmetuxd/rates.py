"""Live rates: per-monitor byte counters sampled once a second, differenced over a window."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from trafmetuxd.addresses import host_text
from trafmetuxd.collector import HostKey, Hosts

Counters = dict[str, tuple[int, int]]  # monitor -> (in bytes, out bytes) since start


class RateSampler:
    """Keeps the last few samples; rates are taken over the oldest and newest of them."""

    def __init__(self, window: int = 5) -> None:
        self._samples: deque[tuple[float, Counters]] = deque(maxlen=window + 1)

    def sample(self, when: float, counters: Counters) -> None:
        """Record the cumulative counters at `when` (unix seconds)."""
        if self._samples and when <= self._samples[-1][0]:
            self._samples.clear()  # the clock stepped back: start the window again
        self._samples.append((when, counters))

    def rates(self) -> dict[str, tuple[float, float]]:
        """Per monitor: (in B/s, out B/s); zero until two samples exist."""
        if len(self._samples) < 2:
            names = self._samples[-1][1] if self._samples else {}
            return dict.fromkeys(names, (0.0, 0.0))
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        span = t1 - t0
        out: dict[str, tuple[float, float]] = {}
        for name, (now_in, now_out) in last.items():
            was_in, was_out = first.get(name, (0, 0))
            out[name] = (max(0, now_in - was_in) / span, max(0, now_out - was_out) / span)
        return out


# monitor -> host text -> (in bytes, out bytes) counted between two samples
HostDeltas = dict[str, dict[str, tuple[int, int]]]


def host_bytes(hosts: Hosts) -> dict[HostKey, tuple[int, int]]:
    """Each host's (in, out) bytes summed over its minute rows."""
    out: dict[HostKey, tuple[int, int]] = {}
    for host, minutes in hosts.items():
        out[host] = (sum(r[0] for r in minutes.values()), sum(r[2] for r in minutes.values()))
    return out


class HostRates:
    """Per-host live rates, from the very rows the host totals are counted in.

    Each sample holds what every host counted since the previous one: the rows swapped out of
    the collectors since then (shipments of the capture workers, swaps of the in-process meter)
    plus what the in-process collectors' rows grew by. A rate is the sum over the last `window`
    intervals divided by their span. Only hosts that counted something are held, so memory
    follows the active hosts, and nothing is noted before the first sample (a replay without
    --serve never samples).
    """

    def __init__(self, window: int = 5) -> None:
        self._samples: deque[tuple[float, HostDeltas]] = deque(maxlen=window + 1)
        self._moved: dict[str, dict[HostKey, list[int]]] = {}
        self._seen: dict[str, dict[HostKey, tuple[int, int]]] = {}

    def moved(self, name: str, hosts: Hosts) -> None:
        """Note a monitor's host rows swapped out of a collector since the last sample."""
        if not hosts or not self._samples:
            return
        acc = self._moved.setdefault(name, {})
        for host, (rx, tx) in host_bytes(hosts).items():
            row = acc.setdefault(host, [0, 0])
            row[0] += rx
            row[1] += tx

    def sample(self, when: float, current: Mapping[str, Hosts]) -> None:
        """Record what each host counted since the last sample (current: the collectors now)."""
        moved, self._moved = self._moved, {}
        seen, self._seen = self._seen, {}
        deltas: HostDeltas = {}
        for name in set(moved) | set(current):
            now = self._seen[name] = host_bytes(current.get(name, {}))
            was, gone = seen.get(name, {}), moved.get(name, {})
            counted = {}
            for host in set(gone) | set(now):
                rx = gone.get(host, (0, 0))[0] + now.get(host, (0, 0))[0] - was.get(host, (0, 0))[0]
                tx = gone.get(host, (0, 0))[1] + now.get(host, (0, 0))[1] - was.get(host, (0, 0))[1]
                if rx > 0 or tx > 0:  # a collector replaced by a reload only ever shrinks
                    counted[host_text(host)] = (max(0, rx), max(0, tx))
            if counted:
                deltas[name] = counted
        if self._samples and when <= self._samples[-1][0]:
            self._samples.clear()  # the clock stepped back: start the window again
        self._samples.append((when, deltas))

    def rates(self, name: str) -> dict[str, tuple[float, float]]:
        """A monitor's hosts that counted something in the window: (in B/s, out B/s)."""
        if len(self._samples) < 2:
            return {}
        span = self._samples[-1][0] - self._samples[0][0]
        sums: dict[str, list[int]] = {}
        for _, deltas in list(self._samples)[1:]:
            for host, (rx, tx) in deltas.get(name, {}).items():
                acc = sums.setdefault(host, [0, 0])
                acc[0] += rx
                acc[1] += tx
        return {host: (rx / span, tx / span) for host, (rx, tx) in sums.items()}
