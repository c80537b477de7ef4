"""/metrics: the main process's figures (metrics.gather) as Prometheus metric families.

Runs in the front. A custom collector over its own CollectorRegistry (never the global one,
which would add the front's own process and GC metrics under the daemon's name); the text
format or OpenMetrics by the scraper's Accept header.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

DIRECTIONS = (("in", 0, 1), ("out", 2, 3))  # label, bytes index, packets index


def _traffic(figures: Mapping[str, Any]) -> Iterator[Metric]:
    octets = CounterMetricFamily(
        "trafmetux_bytes", "Bytes metered per monitor and direction, all time (stored + "
        "not yet flushed).", labels=["monitor", "direction"],
    )  # fmt: skip
    packets = CounterMetricFamily(
        "trafmetux_packets", "Packets metered per monitor and direction, all time.",
        labels=["monitor", "direction"],
    )  # fmt: skip
    for name, counts in figures.get("monitors", {}).items():
        for label, b, p in DIRECTIONS:
            octets.add_metric([name, label], counts[b])
            packets.add_metric([name, label], counts[p])
    yield from (octets, packets)
    yield from _hosts(figures.get("hosts", {}))
    overflow = GaugeMetricFamily(
        "trafmetux_flow_overflow_packets", "Packets folded into the 'other' flow position "
        "over the flushes still kept (flow retention).", labels=["monitor"],
    )  # fmt: skip
    for name, folded in figures.get("flow_overflow", {}).items():
        overflow.add_metric([name], folded)
    yield overflow


def _hosts(hosts: Mapping[str, Mapping[str, list[int]]]) -> Iterator[Metric]:
    if not hosts:  # no monitor has hosts: no empty families
        return
    labels = ["monitor", "host", "direction"]
    octets = CounterMetricFamily(
        "trafmetux_host_bytes", "Bytes to (in) and from (out) each host of a monitor with "
        "hosts, all time; beyond [http] max_host_series, hosts are summed in host=\"other\".",
        labels=labels,
    )  # fmt: skip
    packets = CounterMetricFamily(
        "trafmetux_host_packets", "Packets to and from each host of a monitor, all time.",
        labels=labels,
    )  # fmt: skip
    for name, per_host in hosts.items():
        for host, counts in per_host.items():
            for label, b, p in DIRECTIONS:
                octets.add_metric([name, host, label], counts[b])
                packets.add_metric([name, host, label], counts[p])
    yield from (octets, packets)


def _quotas(figures: Mapping[str, Any]) -> Iterator[Metric]:
    gauges = {
        "used": ("trafmetux_quota_used_bytes", "Bytes used in the quota's current period."),
        "limit": ("trafmetux_quota_limit_bytes", "The quota's limit in bytes."),
        "estimate": ("trafmetux_quota_estimate_bytes", "Usage extrapolated to the period end."),
        "end": (
            "trafmetux_quota_period_end_timestamp_seconds",
            "End of the quota's current period (unix seconds).",
        ),
    }
    for key, (name, doc) in gauges.items():
        family = GaugeMetricFamily(name, doc, labels=["quota"])
        for quota in figures.get("quotas", []):
            family.add_metric([quota["name"]], quota[key])
        yield family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _health(figures: Mapping[str, Any]) -> Iterator[Metric]:
    health = figures.get("health", {})
    meter = health.get("meter", {})
    yield _gauge("trafmetux_up", "1 when the daemon answered this scrape.", 1)
    yield _gauge(
        "trafmetux_last_flush_timestamp_seconds", "When the last flush committed (unix "
        "seconds, 0 = none since start).", health.get("last_flush", 0),
    )  # fmt: skip
    yield _counter("trafmetux_flushes", "Flushes committed since start.", health.get("flushes", 0))
    yield _gauge(
        "trafmetux_flush_failures", "Consecutive failed flushes (0 after a good one).",
        health.get("flush_failures", 0),
    )  # fmt: skip
    yield _gauge(
        "trafmetux_flush_held_bytes", "Bytes counted but held after a failed write.",
        health.get("held_bytes", 0),
    )  # fmt: skip
    yield _counter(
        "trafmetux_malformed_packets", "Packets that could not be parsed, since start.",
        meter.get("malformed", 0),
    )  # fmt: skip
    yield _gauge("trafmetux_start_time_seconds", "When the daemon started.", health["started"])
    if "unmetered" in health:
        family = CounterMetricFamily(
            "trafmetux_unmetered_bytes", "Bytes the kernel's queue rules counted and the "
            "meter did not (bypassed while no worker was bound), since start.",
            labels=["direction"],
        )  # fmt: skip
        for label, value in health["unmetered"].items():
            family.add_metric([label], value)
        yield family
    if "queue" in health:
        family = CounterMetricFamily(
            "trafmetux_queue_dropped_packets", "Packets the kernel dropped or passed unmetered "
            "at the queues (queue full, or the socket's buffer full).", labels=["reason"],
        )  # fmt: skip
        for reason, value in health["queue"].items():
            family.add_metric([reason.removesuffix("_dropped")], value)
        yield family
    yield from _workers(health.get("workers"))


def _workers(workers: list[dict[str, Any]] | None) -> Iterator[Metric]:
    if workers is None:
        return
    specs = (
        ("stalls", "trafmetux_capture_stalls", "Times the stall guard killed the queue's worker."),
        ("outage_seconds", "trafmetux_capture_outage_seconds", "Seconds the queue had no worker."),
        ("restarts", "trafmetux_capture_worker_restarts", "Times the queue's worker was started "
         "again."),
    )  # fmt: skip
    for key, name, doc in specs:
        family = CounterMetricFamily(name, doc, labels=["queue"])
        for worker in workers:
            family.add_metric([str(worker["queue"])], worker[key])
        yield family


class DaemonCollector(Collector):
    """Yields the families of the figures last fetched (None: the daemon did not answer)."""

    def __init__(self) -> None:
        self.figures: Mapping[str, Any] | None = None

    def collect(self) -> Iterator[Metric]:
        """Every family of one scrape."""
        if self.figures is None:
            yield _gauge("trafmetux_up", "1 when the daemon answered this scrape.", 0)
            return
        yield from _traffic(self.figures)
        yield from _quotas(self.figures)
        yield from _health(self.figures)


class Exposition:
    """A private registry with the daemon's collector; renders one scrape."""

    def __init__(self) -> None:
        self.collector = DaemonCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)

    def render(self, figures: Mapping[str, Any] | None, accept: str) -> tuple[bytes, str]:
        """(body, content type) for these figures, in the format the Accept header prefers."""
        self.collector.figures = figures
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
