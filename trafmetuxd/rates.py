"""Live rates: per-monitor byte counters sampled once a second, differenced over a window."""

from __future__ import annotations

from collections import deque

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
