"""The main process's side of quota enforcement: over-limit state, operator adjustments, pushes.

Every second (after the workers shipped their counts) each enforcing quota's usage in its
period is evaluated from the stored totals plus what is not flushed yet; the set of quotas over
their limit goes to every capture worker whenever it changes (a quota crossed its limit, its
period rolled over, an operator extended or reset it, a reload changed the quotas). The
operator's extensions and resets are stored in state_dir, so a restart within the period keeps
them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from trafmetuxd import enforce, specwire
from trafmetuxd.periods import Period
from trafmetuxd.quota import (
    OTHER_HOST,
    Adjustment,
    OverLimit,
    QuotaStatus,
    Usage,
    bytes_left,
    counted,
    enforced_over,
    host_counted,
    quota_period,
)
from trafmetuxd.reports import Reports
from trafmetuxd.spec import QuotaSpec

log = logging.getLogger("trafmetuxd.quota")
ADJUSTMENTS_FILE = "quota-adjustments.json"
HISTORY_LIMIT = 20  # adjustments shown per quota and period
Push = Callable[[dict[str, object]], None]


def load_adjustments(path: Path) -> dict[str, Adjustment]:
    """The stored adjustments ({} when there is no file or it cannot be read: logged)."""
    try:
        data = json.loads(path.read_text())
        return {str(name): _adjustment(v) for name, v in data.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.error("%s: cannot read the quota adjustments, starting without them: %s", path, exc)
        return {}


def _adjustment(v: dict[str, Any]) -> Adjustment:
    history = tuple(str(h) for h in v.get("history", ()))
    hosts = {str(h): int(u) for h, u in v.get("reset_hosts", {}).items()}
    return Adjustment(int(v["period"]), int(v["extended"]), int(v["reset_used"]), history, hosts)


def save_adjustments(path: Path, adjustments: Mapping[str, Adjustment]) -> None:
    """Write the adjustments atomically (a new file renamed over the old one)."""
    data: dict[str, Any] = {
        name: {"period": a.period, "extended": a.extended, "reset_used": a.reset_used,
               "history": list(a.history), "reset_hosts": dict(a.reset_hosts)}
        for name, a in adjustments.items()
    }  # fmt: skip
    fd, tmp = tempfile.mkstemp(prefix=".quota-adjustments.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(data, file, indent=1, sort_keys=True)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


class Limits:
    """Which enforcing quotas are over their limit, told to the workers when it changes."""

    def __init__(self, reports: Reports, push: Push, shipped: Mapping[str, int]) -> None:
        self.reports = reports
        self.push = push
        self.shipped = shipped  # the workers' summed stats: the dropped/marked counts
        self.path = reports.backend.config.state_dir / ADJUSTMENTS_FILE
        self.adjustments = load_adjustments(self.path)
        self.since: dict[str, tuple[int, int]] = {}  # name -> (period begin, blocked since)
        self.hosts_over: dict[str, frozenset[str]] = {}  # per-host quotas: the hosts logged
        self.sent: dict[str, object] | None = None

    def enforcing(self) -> list[QuotaSpec]:
        """The quotas that block or mark, as configured now."""
        return [q for q in self.reports.backend.config.quotas if q.enforces]

    async def _usages(
        self, specs: Sequence[QuotaSpec], fresh: bool
    ) -> list[tuple[QuotaSpec, Period, Usage]]:
        """Each quota's current period and use in it (stored + unflushed)."""
        cal, now = self.reports.calendar(), self.reports.now()
        out = []
        for spec in specs:
            period = quota_period(spec, cal, now)
            out.append((spec, period, await self.reports.usage(spec, period, now, fresh=fresh)))
        return out

    async def check(self) -> None:
        """Evaluate every enforcing quota; push the over-limit state when it changed."""
        specs = self.enforcing()
        over: dict[str, enforce.Over] = {}
        left: dict[str, int] = {}
        for spec, period, usage in await self._usages(specs, fresh=False):
            adj = self._current(spec.name, period.begin)
            state = enforced_over(spec, usage, adj)
            if state.whole or state.hosts:
                over[spec.name] = enforce.Over(state.whole, state.hosts)
                self._note_over(spec, period, usage, state)
                continue
            if not spec.per_host:
                left[spec.name] = bytes_left(spec, usage, adj)
            if spec.name in self.since:
                del self.since[spec.name]
                self.hosts_over.pop(spec.name, None)
                log.warning("quota %s: %s lifted (period %s)", spec.name, spec.action,
                            period.label)  # fmt: skip
        for name in [n for n in self.since if n not in over]:
            del self.since[name]  # removed by a reload
            self.hosts_over.pop(name, None)
            log.warning("quota %s: no longer enforced", name)
        self.send(specs, over, left)

    def _note_over(self, spec: QuotaSpec, period: Period, usage: Usage, state: OverLimit) -> None:
        """Log a quota going over its limit (a per-host one: each host as it goes over)."""
        began = self.since.get(spec.name)
        new = began is None or began[0] != period.begin
        if new:
            self.since[spec.name] = (period.begin, int(self.reports.now()))
            self.hosts_over[spec.name] = frozenset()
        verb = "blocking" if spec.action == enforce.BLOCK else f"marking {spec.mark:#x}"
        if not spec.per_host:
            if new:
                log.warning("quota %s over its limit (%d B used in %s): %s its traffic",
                            spec.name, usage.total, period.label, verb)  # fmt: skip
            return
        for host in sorted(state.hosts - self.hosts_over.get(spec.name, frozenset())):
            log.warning("quota %s: host %s over its limit (%d B used in %s): %s its traffic",
                        spec.name, host, usage.hosts.get(host, 0), period.label, verb)  # fmt: skip
        self.hosts_over[spec.name] = state.hosts

    def send(
        self,
        specs: Sequence[QuotaSpec],
        over: Mapping[str, enforce.Over],
        left: Mapping[str, int] | None = None,
    ) -> None:
        """Push the quotas and their state to the workers, if it differs from the last push."""
        ports = [port for _host, port in self.reports.backend.config.http.listen]
        payload: dict[str, object] = {
            "quotas": [specwire.quota_to_wire(enforce.control_exempt(q, ports)) for q in specs],
            "over": enforce.over_to_wire(over),
            "left": dict(left or {}),
        }
        if payload != self.sent:
            self.push(payload)
            self.sent = payload

    def _current(self, name: str, begin: int) -> Adjustment | None:
        adj = self.adjustments.get(name)
        return adj if adj is not None and adj.period == begin else None

    def decorate(self, statuses: Sequence[QuotaStatus]) -> list[QuotaStatus]:
        """The statuses with when their action took effect and what it dropped or marked."""
        out = []
        for st in statuses:
            began = self.since.get(st.name)
            since = began[1] if began is not None and began[0] == st.begin else None
            prefix = f"{enforce.STATS_PREFIX}{st.name}:"
            counts = {k: self.shipped.get(prefix + k, 0) for k in enforce.COUNT_NAMES}
            enforced = counts if st.action != "report" else None
            out.append(replace(st, blocked_since=since, enforced=enforced))
        return out

    async def adjust(self, spec: QuotaSpec, extend: int | None, who: str) -> QuotaStatus:
        """Let `extend` more bytes through from now on in this period, or reset it (None).

        Over its limit, the quota's use already holds what was dropped (or marked) since: an
        extension counts from the use now (a per-host quota's: its worst host's), so it lets
        `extend` bytes pass, not fewer. A reset sets the use (every host's) aside.
        """
        ((_, period, usage),) = await self._usages([spec], fresh=True)
        adj = self._current(spec.name, period.begin) or Adjustment(period.begin)
        now = self.reports.now()
        if extend is None:
            adj = replace(adj, reset_used=usage.total, reset_hosts=dict(usage.hosts))
            line = f"{_when(now)} reset by {who} at {usage.total} B used"
        else:
            worst = max((host_counted(h, u, adj) for h, u in usage.hosts.items()
                         if h != OTHER_HOST), default=0)  # fmt: skip
            used = worst if spec.per_host else counted(usage.total, adj)
            beyond = max(0, used - (spec.limit + adj.extended))
            adj = replace(adj, extended=adj.extended + beyond + extend)
            line = f"{_when(now)} extended by {extend} B by {who}"
            if beyond:
                line += f" (from the use now, {beyond} B over the limit)"
        adj = replace(adj, history=(*adj.history, line)[-HISTORY_LIMIT:])
        adjustments = {**self.adjustments, spec.name: adj}
        await asyncio.to_thread(save_adjustments, self.path, adjustments)
        self.adjustments = adjustments
        log.warning("quota %s %s", spec.name, line.split(" ", 3)[3])
        await self.check()
        (st,) = await self.reports.quotas([spec], fresh=False, adjustments=self.adjustments)
        return self.decorate([st])[0]
