"""docs/performance.md from the benchmark results: the machine, the commands, figures, targets."""

from __future__ import annotations

import time
from typing import Any

from bench.analysis import ANALYSIS
from bench.common import ROOT, Result

PAGE = ROOT / "docs" / "performance.md"

HEAD = """# Performance

Figures measured by `make bench` (`.venv/bin/python -m bench`; one benchmark:
`.venv/bin/python -m bench --only pipeline`), raw results in `bench/results/*.json`. Every
figure is compared with a baseline measured in the same run on the same machine. The machine is
shared and has 2 cores: expect a few percent of noise between runs, more on the latency maxima.
"""


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _targets(result: Result) -> list[str]:
    lines = ["| target | measured | limit | met |", "|---|---|---|---|"]
    for t in result.get("targets", []):
        verdict = "yes" if t["met"] else f"**no** ({t['ratio_to_limit']}x the limit)"
        limit = f"{t['op']} {_fmt(t['limit'])} {t['unit']}"
        lines.append(f"| {t['name']} | {_fmt(t['value'])} {t['unit']} | {limit} | {verdict} |")
    return [*lines, ""]


def _summary(results: dict[str, Result]) -> list[str]:
    lines = ["| benchmark | target | measured | limit | met |", "|---|---|---|---|---|"]
    for name, _title, _fn in SECTIONS:
        r = results.get(name, {})
        if "skipped" in r or "error" in r:
            lines.append(
                f"| {name} | (not run: {'skipped' if 'skipped' in r else 'failed'}) | | | |"
            )
        for t in r.get("targets", []):
            verdict = "yes" if t["met"] else f"**no** ({t['ratio_to_limit']}x the limit)"
            limit = f"{t['op']} {_fmt(t['limit'])} {t['unit']}"
            measured = f"{_fmt(t['value'])} {t['unit']}"
            lines.append(f"| {name} | {t['name']} | {measured} | {limit} | {verdict} |")
    return [*lines, ""]


def _pipeline(r: Result) -> list[str]:
    p = r["params"]
    lines = [
        f"{p['packets']:,} pre-generated packets (IMIX {p['imix']}, 80/18/2 TCP/UDP/ICMP, 30% "
        f"IPv6, {p['flows']:,} Zipf-ranked flows, first {p['copy_range']} bytes as NFQUEUE "
        f"copies them), timed over the same list, best of {p['repeats']} passes after a warm-up "
        f"pass, pinned to core {p['core']}.",
        "",
        "| stage | ns/packet | packets/s | x no-op call |",
        "|---|---|---|---|",
    ]
    for name, s in r["stages"].items():
        lines.append(
            f"| {name} | {_fmt(s['ns_per_packet'])} | {_fmt(s['packets_per_second'])} "
            f"| {s['x_noop']} |"
        )
    if "replay" in r:
        lines += [
            "",
            "The same packets written as a capture file (raw IP pcap): the replay path (the "
            "capture reader's batches into `Meter.feed_frames`, 20 monitors) against a naive "
            "one-dict loop over the same file (struct per record, bytes per address pair).",
            "",
            "| replay | ns/packet | packets/s |",
            "|---|---|---|",
        ]
        for name, s in r["replay"].items():
            lines.append(
                f"| {name} | {_fmt(s['ns_per_packet'])} | {_fmt(s['packets_per_second'])} |"
            )
    return [*lines, ""]


def _e2e(r: Result) -> list[str]:
    if "skipped" in r:
        return [f"Skipped: {r['skipped']}.", ""]
    lines = [
        "| run | arrived/s | delivered/s | queued (metered)/s | fail-open/s | dropped | "
        "CPU s per M packets |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in r["runs"].items():
        if "arrived_pps" not in s:
            continue
        unqueued = s["unqueued"] / s["seconds"] if s.get("queued_pps") else 0
        lines.append(
            f"| {name} | {_fmt(s['arrived_pps'])} | {_fmt(s['delivered_pps'])} | "
            f"{_fmt(s['queued_pps'])} | {_fmt(round(unqueued))} | {_fmt(s['dropped'])} | "
            f"{_fmt(s['cpu_s_per_million'])} |"
        )
    two = r["runs"].get("d_trafmetuxd_two_queues", {}).get("per_worker")
    if two:
        lines += ["", "| two queues: worker of queue | queued (metered)/s | CPU s per M packets |",
                  "|---|---|---|"]  # fmt: skip
        for queue, w in two.items():
            lines.append(f"| {queue} | {_fmt(w['queued_pps'])} | {_fmt(w['cpu_s_per_million'])} |")
    acc = r["runs"]["c_trafmetuxd_accuracy"]
    lines += [
        "",
        f"Accuracy below saturation ({_fmt(r['params']['low_pps'])} packets/s): kernel rule "
        f"counters {_fmt(acc['kernel_packets'])} packets / {_fmt(acc['kernel_bytes'])} bytes; "
        f"meter {_fmt(acc['metered_packets'])} packets / {_fmt(acc['metered_bytes'])} bytes; "
        f"monitor `all` (report over the socket) {_fmt(acc['monitor_all_bytes'])} bytes.",
        "",
    ]
    return lines


def _latency(r: Result, key: str) -> list[str]:
    lines = ["| query | median ms | p99 ms | max ms |", "|---|---|---|---|"]
    for name, s in r[key].items():
        lines.append(f"| {name} | {_fmt(s['median'])} | {_fmt(s['p99'])} | {_fmt(s['max'])} |")
    return [*lines, ""]


def _reports(r: Result) -> list[str]:
    lines = [
        "Warm: the same request again (the daemon's report cache holds the period sums).",
        "",
        *_latency(r, "latency_ms"),
    ]
    if "cold_latency_ms" in r:
        lines += [
            "Cold: a flush of every monitor committed from another connection before each "
            "request, so the daemon's cache is cleared and the sums are read from the tables "
            "again (the first report after each flush).",
            "",
            *_latency(r, "cold_latency_ms"),
        ]
    return lines


def _stall(r: Result) -> list[str]:
    if "skipped" in r:
        return [f"Skipped: {r['skipped']}.", ""]
    p, q, w = r["params"], r["quiet"], r["loaded"]
    heaviest = ", ".join(f"{k}={v}" for k, v in p["heaviest"].items())
    return [
        f"A ping every {p['interval'] * 1000:g} ms ({p['pings']:,} of them) across the metered "
        f"link, under a background load of {p['load_pps']:,} packets/s and a flush every second "
        f"(20 monitors, 2 years of history). Loaded: {p['clients']} clients asking `{heaviest}` "
        f"(the heaviest report accepted) in a loop: {r['reports_answered']:,} answered, median "
        f"{_fmt(r['report_seconds']['median'])} s each; {r['flushes_during']} flushes meanwhile.",
        "",
        "| pings | lost | median RTT ms | p99 RTT ms | max RTT ms |",
        "|---|---|---|---|---|",
        f"| quiet (load and flushes only) | {q['lost']} | {_fmt(q['rtt_ms']['median'])} | "
        f"{_fmt(q['rtt_ms']['p99'])} | {_fmt(q['rtt_ms']['max'])} |",
        f"| while the reports run | {w['lost']} | {_fmt(w['rtt_ms']['median'])} | "
        f"{_fmt(w['rtt_ms']['p99'])} | {_fmt(w['rtt_ms']['max'])} |",
        "",
    ]


def _memory(r: Result) -> list[str]:
    lines = ["| process | after its imports MiB | positions full MiB |", "|---|---|---|"]
    for role, m in r["processes_mib"].items():
        lines.append(f"| {role} | {_fmt(m['baseline'])} | {_fmt(m['full'])} |")
    return [
        *lines,
        "",
        f"All processes together: {_fmt(r['realtime_total_mib'])} MiB with the worker's "
        f"realtime positions full, {_fmt(r['both_total_mib'])} MiB with the main process's "
        f"flush positions full as well. A realtime position costs "
        f"{r['bytes_per_realtime_position']} bytes, a flush position "
        f"{r['bytes_per_flush_position']}.",
        "",
    ]


def _ctl(r: Result) -> list[str]:
    return [
        f"Measured with {r['params']['tool']}, {r['params']['runs']} runs each. Ratio "
        f"show-daily / `python3 -c pass` (the venv interpreter): {r['ratio']}; against the "
        f"python3 on PATH ({r['params']['path_python3']}): {r['ratio_vs_path_python3']}; "
        f"against `python3 -I -S -c pass`: {r['ratio_vs_no_site']}.",
        "",
        *_latency(r, "wall_ms"),
    ]


def _scrape(r: Result) -> list[str]:
    p = r["params"]
    lines = [
        f"Paced UDP at {p['pps']:,} packets/s ({p['size']} payload bytes) into the metered veth "
        f"for {p['seconds']} s, flush every {p['flush_interval']}: once quiet, once with "
        f"{p['scrapers']} clients each fetching `/metrics` every second (one daemon, one run).",
        "",
        "| phase | sent | wire bytes | metered bytes | metered B/s | unmetered | flushes | "
        "flush gap median | flush gap max | scrapes | scrape ms median / max |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label in ("quiet", "scraped"):
        x = r[label]
        s = x.get("scrapes") or {}
        answered = f"{s.get('statuses', {}).get('200', 0)}/{s['requests']}" if s else "-"
        ms = f"{s['latency_ms_median']} / {s['latency_ms_max']}" if s else "-"
        lines.append(
            f"| {label} | {_fmt(x['sent'])} | {_fmt(x['wire_bytes'])} | "
            f"{_fmt(x['metered_bytes'])} | {_fmt(x['metered_bytes_per_s'])} | "
            f"{_fmt(x['unmetered_bytes'])} | {x['flushes']} | "
            f"{x['flush_gap_median_s']} s | {x['flush_gap_max_s']} s | {answered} | {ms} |"
        )
    return [*lines, ""]


def _fleet(r: Result) -> list[str]:
    if "skipped" in r:
        return [f"Skipped: {r['skipped']}.", ""]
    p = r["params"]
    lines = [
        f"Flush: {p['monitors']} monitors x {p['positions']:,} flow positions (and five minutes "
        f"of totals each), {p['flushes']} flushes, the same batches to each store.",
        "",
        "| store | median ms | p99 ms | max ms |",
        "|---|---|---|---|",
    ]
    for store, s in r["flush_ms"].items():
        lines.append(f"| {store} | {_fmt(s['median'])} | {_fmt(s['p99'])} | {_fmt(s['max'])} |")
    lines += [
        "",
        f"Reports: {p['years']} years x {p['monitors']} monitors x {p['gateways']} gateways of "
        f"quarter, hour and day rows ({p['rows']:,} rows, generated in {p['fill_seconds']} s); "
        "the period sums of each command (all monitors), read by the fleet store's reader for "
        "one gateway and for every gateway summed.",
        "",
    ]
    if "cold_latency_ms" in r:
        lines += [
            "Warm: the same request again (the reader's cache holds the period sums).",
            "",
            *_latency(r, "latency_ms"),
            "Cold: a write committed from another connection before each request (as every "
            "flush of any gateway does), so the reader's cache is cleared and the sums are read "
            "from the tables again.",
            "",
            *_latency(r, "cold_latency_ms"),
        ]
    else:
        lines += _latency(r, "latency_ms")
    return lines


def _enforce(r: Result) -> list[str]:
    p = r["params"]
    lines = [
        f"{p['packets']:,} packets in batches of 64 as the worker receives them, 20 monitors, "
        f"a block quota on {p['quota'].split()[-1]}; the stages take turns batch by batch, each "
        f"batch's best of {p['repeats']} passes, core {p['core']}. Ratios are to the batch "
        "path before enforcement, timed in the same run.",
        "",
        "| stage | ns/packet | packets/s | x baseline |",
        "|---|---|---|---|",
    ]
    for name, s in r["stages"].items():
        lines.append(
            f"| {name} | {_fmt(s['ns_per_packet'])} | {_fmt(s['packets_per_second'])} "
            f"| {s['x_baseline']} |"
        )
    return [*lines, ""]


SECTIONS: tuple[tuple[str, str, Any], ...] = (
    ("pipeline", "1. Pipeline in process (parse + classify + collect)", _pipeline),
    ("e2e", "2. End to end through NFQUEUE", _e2e),
    ("reports", "3. Reports through the socket (2 years of history, 20 monitors)", _reports),
    ("stall", "4. Flushes and heavy reports against the packet path", _stall),
    ("memory", "5. Memory at 20 x 65,536 positions", _memory),
    ("ctl", "6. trafmetuxctl show-daily start-up", _ctl),
    ("scrape", "7. /metrics scraped by 10 clients while traffic is metered", _scrape),
    ("fleet", "8. PostgreSQL fleet store against SQLite", _fleet),
    ("enforce", "9. Quota enforcement on the capture worker's batch path", _enforce),
)


def render(results: dict[str, Result], machine: dict[str, object], scale: str) -> str:
    """The whole page."""
    out = [HEAD]
    out += [
        "## Machine and run",
        "",
        f"- page rendered: {time.strftime('%Y-%m-%d %H:%M %Z')}; scale: {scale}",
        "- each benchmark's own run: "
        + ", ".join(f"{name} {r['date']}" for name, r in results.items() if "date" in r),
        f"- CPU: {machine['cpu']}, {machine['nproc']} cores (nproc)",
        f"- kernel: {machine['kernel']}; Python: {machine['implementation']} {machine['python']}",
        "",
        "## Summary of targets",
        "",
    ]
    out += _summary(results)
    for name, title, fn in SECTIONS:
        r = results.get(name)
        if r is None:
            continue
        out += [f"## {title}", ""]
        if "error" in r:
            out += ["The benchmark failed to run:", "", "```", r["error"], "```", ""]
            continue
        out += fn(r) if fn is not None else _latency(r, "latency_ms")
        out += _targets(r)
        out += [ANALYSIS.get(name, ""), ""]
    return "\n".join(out).rstrip() + "\n"
