"""The dashboard page: bar charts, quota gauges and top flows as server-side SVG and HTML.

Drawn in the front from the daemon's own answers (report, quota, flows), so the page needs no
script, no asset and no network: it works offline and in any browser. Labels are the report's,
in the configured zone (a DST day's 23 or 25 hours are the report's rows).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from html import escape
from typing import Any

from trafmetuxctl.units import format_bytes
from trafmetuxd import protocol

Ask = Callable[[protocol.Request], Awaitable[protocol.Reply]]
CHARTS = (("hour", 48, "Last 48 hours"), ("day", 31, "Last 31 days"),
          ("month", 12, "Last 12 months"))  # fmt: skip
WIDTH, HEIGHT, MARGIN = 720, 150, 18
TOP_FLOWS = 10
STYLE = """
body { font: 14px sans-serif; margin: 1.5em; color: #222; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
svg { display: block; margin: 0.3em 0 1em; background: #fafafa; }
rect.in { fill: #2b7bb9; } rect.out { fill: #e8833a; }
.legend span { display: inline-block; width: 0.8em; height: 0.8em; margin: 0 0.3em 0 1em; }
table { border-collapse: collapse; } td, th { padding: 0.15em 0.6em; text-align: right; }
th { border-bottom: 1px solid #ccc; } td.t { text-align: left; }
"""


def bar_chart(monitor: str, period: str, rows: Sequence[dict[str, Any]]) -> str:
    """One SVG: in and out bars side by side per row, each with its figures as a tooltip."""
    values = [row["values"][monitor] for row in rows]
    peak = max([max(v) for v in values] + [1])
    slot = (WIDTH - 2 * MARGIN) / max(1, len(rows))
    bar = max(1.0, slot / 2 - 1)
    scale = (HEIGHT - 2 * MARGIN) / peak
    parts = [
        f'<svg class="chart" data-monitor="{escape(monitor)}" data-period="{period}" '
        f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img">'
    ]
    for i, (row, (rx, tx)) in enumerate(zip(rows, values, strict=True)):
        x = MARGIN + i * slot
        label = escape(row["label"])
        for cls, value, dx in (("in", rx, 0.0), ("out", tx, bar)):
            h = value * scale
            parts.append(
                f'<rect class="{cls}" data-label="{label}" data-bytes="{value}" '
                f'x="{x + dx:.1f}" y="{HEIGHT - MARGIN - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}"><title>{label} {cls}: {format_bytes(value)}</title></rect>'
            )
    first, last = escape(rows[0]["label"]), escape(rows[-1]["label"])
    parts.append(f'<text x="{MARGIN}" y="{HEIGHT - 4}" font-size="11">{first}</text>')
    parts.append(
        f'<text x="{WIDTH - MARGIN}" y="{HEIGHT - 4}" font-size="11" '
        f'text-anchor="end">{last}</text>'
    )
    parts.append(f'<text x="{MARGIN}" y="12" font-size="11">peak {format_bytes(peak)}</text></svg>')
    return "".join(parts)


def gauge(quota: dict[str, Any]) -> str:
    """A quota as a horizontal bar: used, the end-of-period estimate as a mark, the limit."""
    limit = max(1, quota["limit"])
    used = min(1.0, quota["used"] / limit)
    guess = min(1.0, quota["estimate"] / limit)
    width = WIDTH - 2 * MARGIN
    name = escape(quota["name"])
    color = {"OK": "#3a9d4a", "WARNING": "#e0a000"}.get(quota["state"], "#c0392b")
    return (
        f'<div class="quota" data-quota="{name}" data-used="{quota["used"]}" '
        f'data-limit="{quota["limit"]}" data-estimate="{quota["estimate"]}">'
        f"<b>{name}</b> ({escape(quota['period_label'])}): {format_bytes(quota['used'])} of "
        f"{format_bytes(quota['limit'])} ({quota['percent']:.1f} %), "
        f"estimate {format_bytes(quota['estimate'])}, {escape(quota['state'])}"
        f'<svg width="{WIDTH}" height="26"><rect x="{MARGIN}" y="5" width="{width}" '
        f'height="16" fill="#ddd"/><rect class="used" x="{MARGIN}" y="5" '
        f'width="{used * width:.1f}" height="16" fill="{color}"/><rect class="estimate" '
        f'x="{MARGIN + guess * width - 1:.1f}" y="1" width="2" height="24" fill="#222">'
        f"<title>estimate {format_bytes(quota['estimate'])}</title></rect></svg></div>"
    )


def flows_table(result: dict[str, Any]) -> str:
    """A monitor's top flows of today."""
    rows = [
        '<table class="flows"><tr><th class="t">protocol</th><th class="t">client</th>'
        '<th class="t">server</th><th>sent</th><th>received</th><th>packets</th></tr>'
    ]
    for f in result["flows"]:
        client = f["client"] if f["client_port"] < 0 else f"{f['client']}:{f['client_port']}"
        server = f["server"] if f["server_port"] < 0 else f"{f['server']}:{f['server_port']}"
        rows.append(
            f'<tr><td class="t">{escape(f["proto_name"])}</td><td class="t">{escape(client)}'
            f'</td><td class="t">{escape(server)}</td><td>{format_bytes(f["sent"])}</td>'
            f"<td>{format_bytes(f['received'])}</td><td>{f['packets']}</td></tr>"
        )
    if not result["flows"]:
        rows.append('<tr><td class="t" colspan="6">no flows today</td></tr>')
    return "".join(rows) + "</table>"


async def _result(ask: Ask, cmd: str, **args: Any) -> Any:
    reply = await ask(protocol.Request(cmd, args))
    if not reply.ok:
        raise protocol.ProtocolError(reply.code, f"{cmd}: {reply.message}")
    return reply.result


async def render(ask: Ask) -> str:
    """The whole page, from the daemon's answers."""
    try:
        return await _page(ask)
    except protocol.ProtocolError as exc:
        return _html('<p class="error">The daemon did not answer: ' + escape(exc.message))


async def _page(ask: Ask) -> str:
    reports = {kind: await _result(ask, "report", period=kind, last=n) for kind, n, _ in CHARTS}
    monitors = reports["day"]["monitors"]
    today = reports["day"]["rows"][-1]["begin"]  # local midnight, from the report's calendar
    quotas = (await _result(ask, "quota"))["quotas"]
    body = [f"<p>Times in {escape(reports['day']['timezone'])}.</p>"]
    if quotas:
        body.append("<h2>Quotas</h2>" + "".join(gauge(q) for q in quotas))
    for name in monitors:
        body.append(f'<h2 id="monitor-{escape(name)}">{escape(name)}</h2>')
        body.append(
            '<div class="legend"><span style="background:#2b7bb9"></span>in'
            '<span style="background:#e8833a"></span>out</div>'
        )
        for kind, _, title in CHARTS:
            rows = reports[kind]["rows"]
            total_in = sum(r["values"][name][0] for r in rows)
            total_out = sum(r["values"][name][1] for r in rows)
            body.append(
                f"<h3>{title}: in {format_bytes(total_in)}, out {format_bytes(total_out)}</h3>"
            )
            body.append(bar_chart(name, kind, rows))
        flows = await _result(ask, "flows", monitor=name, begin=today, limit=TOP_FLOWS)
        body.append("<h3>Top flows today</h3>" + flows_table(flows))
    return _html("".join(body))


def _html(body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width">'
        f"<title>trafmetux</title><style>{STYLE}</style></head>"
        f"<body><h1>trafmetux</h1>{body}</body></html>"
    )
