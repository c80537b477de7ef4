"""Human text for the daemon's replies: classic report lines, flows, top, quota. Pure."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from trafmetuxctl.units import format_bytes, format_rate

TYPE_CHECKING = False  # typing costs ~2 ms of the client's start-up: annotations only
if TYPE_CHECKING:
    from typing import Any

QUOTA_STATES = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}


def report_line(
    row: Mapping[str, Any], monitors: Sequence[str], unit: str, split: bool, add_sum: bool = False
) -> str:
    """'2008-10-21: [input= 98.83 MiB] [output= 16.46 MiB]': the monitors asked for, in order.

    add_sum appends '[sum= ...]', the listed monitors added up: a packet that several of them
    match is in it several times, so it is only shown when asked for.
    """
    values: Mapping[str, Sequence[int]] = row["values"]
    parts = []
    total_in = total_out = 0
    for name in monitors:
        rx, tx = values.get(name, (0, 0))
        total_in, total_out = total_in + rx, total_out + tx
        parts.append(_cell(name, rx, tx, unit, split))
    if add_sum:
        parts.append(_cell("sum", total_in, total_out, unit, split))
    return f"{row['label']}: " + " ".join(parts)


def _cell(name: str, rx: int, tx: int, unit: str, split: bool) -> str:
    if split:
        return f"[{name} in= {format_bytes(rx, unit)} out= {format_bytes(tx, unit)}]"
    return f"[{name}= {format_bytes(rx + tx, unit)}]"


def report_lines(
    result: Mapping[str, Any], unit: str = "auto", split: bool = False, add_sum: bool = False
) -> list[str]:
    """One line per period, in the order the daemon sent them (oldest first)."""
    monitors = result["monitors"]
    return [report_line(row, monitors, unit, split, add_sum) for row in result["rows"]]


def _endpoint(addr: str, port: int) -> str:
    if port < 0:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def flow_lines(result: Mapping[str, Any], unit: str = "auto") -> list[str]:
    """'tcp 10.0.0.2:51234 -> 1.2.3.4:443 sent= 1.00 KiB received= 2.00 MiB packets=12'."""
    lines = []
    for f in result["flows"]:
        proto = f.get("proto_name") or str(f["protocol"])
        client = _endpoint(f["client"], f["client_port"])
        server = _endpoint(f["server"], f["server_port"])
        lines.append(
            f"{_gw(f)}{proto} {client} -> {server} sent= {format_bytes(f['sent'], unit)} "
            f"received= {format_bytes(f['received'], unit)} packets={f['packets']}"
        )
    return lines


def top_lines(result: Mapping[str, Any], unit: str = "auto") -> list[str]:
    """'    12.00 MiB  10.0.0.2' lines, largest first."""
    return [f"{format_bytes(e['bytes'], unit):>14}  {_gw(e)}{e['key']}" for e in result["entries"]]


def host_lines(result: Mapping[str, Any], unit: str = "auto") -> list[str]:
    """'192.168.1.23: [in= 1.21 GiB] [out= 83.10 MiB] [total= 1.29 GiB]', in the daemon's order."""
    return [
        f"{_gw(h)}{h['host']}: [in= {format_bytes(h['in'], unit)}] "
        f"[out= {format_bytes(h['out'], unit)}] [total= {format_bytes(h['in'] + h['out'], unit)}]"
        for h in result["hosts"]
    ]


def host_period_lines(result: Mapping[str, Any], unit: str = "auto") -> list[str]:
    """Per period, oldest first: its label line, then its host lines indented (or '(none)')."""
    lines = []
    for period in result["periods"]:
        hosts = host_lines(period, unit) or ["(none)"]
        lines += [f"{period['label']}:", *("  " + line for line in hosts)]
    return lines


def live_lines(result: Mapping[str, Any], unit: str = "auto") -> list[str]:
    """'input: in= 1.00 KiB/s out= 0 B/s' per monitor."""
    return [
        f"{name}: in= {format_rate(r[0], unit)} out= {format_rate(r[1], unit)}"
        for name, r in result["rates"].items()
    ]


def live_host_lines(result: Mapping[str, Any], unit: str = "auto") -> list[str]:
    """'192.168.1.23: in= 1.00 KiB/s out= 0 B/s' per host, largest first; '(none)' if idle."""
    lines = [
        f"{h['host']}: in= {format_rate(h['in'], unit)} out= {format_rate(h['out'], unit)}"
        for h in result["hosts"]
    ]
    return lines or ["(none)"]


def quota_summary(q: Mapping[str, Any], unit: str = "auto") -> str:
    """'mobile: used 1.20 GiB of 3.00 GiB (40.0%), 2026-11-01 - 2026-11-30, estimate ...'.

    A per-host quota's figures are its worst host's, named, with the hosts over each level.
    """
    per_host = q.get("per_host", False)
    who = f"host {q['host']} " if per_host and q.get("host") else ""
    each = " per host" if per_host else ""
    allowance = q["limit"] + q.get("extended", 0)  # what quota-extend added, this period
    text = (
        f"{q['name']}: {who}used {format_bytes(q['used'], unit)} of "
        f"{format_bytes(allowance, unit)}{each} ({q['percent']:.1f}%), "
        f"period {q['period_label']}, "
        f"estimate {format_bytes(q['estimate'], unit)} at period end"
    )
    if per_host:
        text += f"; {_hosts(q['hosts_critical'])} over limit, {q['hosts_warning']} over warn"
    return text


def _hosts(n: int) -> str:
    return f"{n} host" if n == 1 else f"{n} hosts"


def quota_lines(result: Mapping[str, Any], unit: str = "auto") -> list[str]:
    """'OK       mobile: used ...' for each quota, what it enforces and who adjusted it; below
    a per-host one its hosts over warn."""
    lines = []
    for q in result["quotas"]:
        lines.append(f"{q['state']:<9}{_gw(q)}{quota_summary(q, unit)}{enforcement_text(q, unit)}")
        lines += [f"         {entry}" for entry in q.get("history", ())]
        if q.get("per_host"):
            lines += _host_lines(q, unit)
    return lines


def _host_lines(q: Mapping[str, Any], unit: str) -> list[str]:
    """A per-host quota's listed hosts over warn (largest first), the rest counted, 'other'."""
    over = [h for h in q["hosts"] if h["state"] != "OK"]
    lines = [
        f"         {h['state']:<9}{h['host']}: used {format_bytes(h['used'], unit)} "
        f"({h['percent']:.1f}%)"
        for h in over
    ]
    rest = q["hosts_warning"] + q["hosts_critical"] - len(over)
    if rest > 0:
        lines.append(f"         ... and {rest} more over warn")
    if q["other"]:
        used = format_bytes(q["other"], unit)
        lines.append(f"         other (hosts beyond max_hosts, no limit): used {used}")
    return lines


def _gw(entry: Mapping[str, Any]) -> str:
    """'branch-3: ' when the entry names its gateway (reports across a fleet store)."""
    gateway = entry.get("gateway")
    return f"{gateway}: " if gateway else ""


def enforcement_text(q: Mapping[str, Any], unit: str = "auto") -> str:
    """'; block, blocked since ..., 12 packets (17.58 KiB) dropped' ('' for report quotas)."""
    action = q.get("action", "report")
    if action == "report":
        return ""
    text = f"; {action}"
    if q.get("extended"):
        text += f", extended by {format_bytes(q['extended'], unit)}"
    if q.get("reset_used"):
        text += f", reset at {format_bytes(q['reset_used'], unit)}"
    since = q.get("blocked_since")
    if since is not None:
        verb = "blocked" if action == "block" else "marked"
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(since))
        text += f", {verb} since {stamp}"
    counts = q.get("enforced") or {}
    kind = "dropped" if action == "block" else "marked"
    if counts.get(f"{kind}_packets"):
        size = format_bytes(counts[f"{kind}_bytes"], unit)
        text += f", {counts[f'{kind}_packets']} packets ({size}) {kind}"
    return text


def perfdata(q: Mapping[str, Any]) -> str:
    """Nagios perfdata: 'used=123B;warn;crit;0;limit', then each listed host of a per-host quota."""
    levels = f"{q['warn_bytes']};{q['limit']};0;{q['limit']}"
    items = [f"used={q['used']}B;{levels}"]
    if q.get("per_host"):
        items += [f"'{h['host']}'={h['used']}B;{levels}" for h in q["hosts"]]
    return " ".join(items)


def check_quota_line(q: Mapping[str, Any]) -> tuple[int, str]:
    """(exit status, 'QUOTA WARNING - mobile: ... | used=...') per plugin conventions."""
    state = q["state"]
    summary = quota_summary(q) + enforcement_text(q)
    return QUOTA_STATES.get(state, 3), f"QUOTA {state} - {summary} | {perfdata(q)}"
