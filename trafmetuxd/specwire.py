"""The plain specs as JSON-able values and back: how the main process configures its workers.

The capture workers never import pydantic or read the config file: the main process validated
it once and sends them the resulting frozen specs in this form.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, fields
from typing import Any

from trafmetuxd.spec import CaptureSpec, MonitorSpec, Network, QuotaSpec, RuleSpec

_NETWORKS = ("src", "dst", "host")
_PORTS = ("src_port", "dst_port", "port")


def rule_to_wire(rule: RuleSpec) -> dict[str, Any]:
    """One rule as JSON-able values (networks as text, port ranges as pairs)."""
    out: dict[str, Any] = {}
    for f in fields(rule):
        value = getattr(rule, f.name)
        if value is None:
            continue
        if f.name in _NETWORKS:
            value = [str(net) for net in value]
        elif f.name in _PORTS:
            value = [list(pair) for pair in value]
        out[f.name] = value
    return out


def rule_from_wire(data: dict[str, Any]) -> RuleSpec:
    """A rule back from rule_to_wire's values."""
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in _NETWORKS:
            values[key] = tuple(_network(text) for text in value)
        elif key in _PORTS:
            values[key] = tuple((int(lo), int(hi)) for lo, hi in value)
        else:
            values[key] = value
    return RuleSpec(**values)


def _network(text: str) -> Network:
    return ipaddress.ip_network(text)


def monitor_to_wire(monitor: MonitorSpec) -> dict[str, Any]:
    """One monitor as JSON-able values."""
    out = asdict(monitor)
    out["rules"] = [rule_to_wire(rule) for rule in monitor.rules]
    out["hosts"] = [str(net) for net in monitor.hosts]
    return out


def monitor_from_wire(data: dict[str, Any]) -> MonitorSpec:
    """A monitor back from monitor_to_wire's values."""
    values = dict(data)
    values["rules"] = tuple(rule_from_wire(rule) for rule in data["rules"])
    values["hosts"] = tuple(_network(text) for text in data.get("hosts", ()))
    return MonitorSpec(**values)


def capture_to_wire(spec: CaptureSpec) -> dict[str, Any]:
    """The capture settings as JSON-able values."""
    out = asdict(spec)
    out["interfaces"] = list(spec.interfaces)
    return out


def capture_from_wire(data: dict[str, Any]) -> CaptureSpec:
    """The capture settings back from capture_to_wire's values."""
    known = {f.name for f in fields(CaptureSpec)}
    values = {k: v for k, v in data.items() if k in known}
    values["interfaces"] = tuple(values.get("interfaces", ()))
    return CaptureSpec(**values)


def quota_to_wire(quota: QuotaSpec) -> dict[str, Any]:
    """One quota as JSON-able values (what an enforcing worker needs of it)."""
    out = asdict(quota)
    out["monitors"] = list(quota.monitors)
    out["exempt"] = [rule_to_wire(rule) for rule in quota.exempt]
    return out


def quota_from_wire(data: dict[str, Any]) -> QuotaSpec:
    """A quota back from quota_to_wire's values."""
    values = dict(data)
    values["monitors"] = tuple(data["monitors"])
    values["exempt"] = tuple(rule_from_wire(rule) for rule in data.get("exempt", ()))
    return QuotaSpec(**values)
