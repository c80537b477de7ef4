"""Converters for single configuration values; each raises ValueError saying what is expected.

Plain stdlib, so config.py keeps only the schema and the checks across fields.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from trafmetuxd.ipproto import NUMBERS as _PROTOCOLS
from trafmetuxd.spec import DIR_ANY, DIR_IN, DIR_OUT, HOOKS, Network, PortRange

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_DURATION_UNITS = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NUMBER_UNIT = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", re.ASCII | re.IGNORECASE)
_PORT_RANGE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", re.ASCII)
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAYS = {day: i for i, day in enumerate(_DAYS)} | {day[:3]: i for i, day in enumerate(_DAYS)}
_NAME = re.compile(r"(?!\.+$)[A-Za-z0-9_.-]{1,64}")  # no "." or "..": names go into paths
IFNAMSIZ = 16  # the kernel's buffer for an interface name, its NUL included
# what the kernel's dev_valid_name() refuses besides length; '*' is our glob character
_IFACE_FORBIDDEN = frozenset("\0/: \t\n\v\f\r")
QUEUES_MAX = 64
PERIODS = ("day", "week", "month")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # TOML true is no number


def parse_size(value: str | int) -> int:
    """Bytes from an int or text such as '3GiB', '500MB', '1.5 GB' or '1024'."""
    if _is_int(value) and int(value) >= 0:
        return int(value)
    match = _NUMBER_UNIT.fullmatch(value) if isinstance(value, str) else None
    unit = _SIZE_UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None or (unit == 1 and "." in match.group(1)):
        raise ValueError("expected a byte count or a size such as '3GiB', '500MB' or '1.5 GB'")
    return int((Decimal(match.group(1)) * unit).to_integral_value(ROUND_HALF_UP))


def parse_duration(value: str | float) -> float:
    """Seconds (> 0) from a number or text such as '10s', '5m', '1h', '1d' or '500ms'."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _NUMBER_UNIT.fullmatch(value)):
        unit = _DURATION_UNITS.get(match.group(2).lower())
        seconds = None if unit is None else float(match.group(1)) * unit
    if seconds is None or not 0 < seconds < float("inf"):
        raise ValueError("expected a duration > 0 such as '10s', '5m', '1h', '1d' or '500ms'")
    return seconds


def _bounded_duration(value: Any, low: float, high: float, expected: str) -> float:
    """A duration within [low, high] seconds, else ValueError(expected) (no other suggestion)."""
    try:
        seconds = parse_duration(value)
    except ValueError:
        seconds = None
    if seconds is None or not low <= seconds <= high:
        raise ValueError(expected)
    return seconds


def flush_interval(value: Any) -> float:
    """Seconds between flushes: a duration of at least one second."""
    expected = "expected a duration of at least 1s such as '1s', '60s' or '5m'"
    return _bounded_duration(value, 1.0, float("inf"), expected)


def stall_timeout(value: Any) -> float:
    """Seconds a capture worker may hold waiting packets without a verdict: 200ms..60s."""
    expected = "expected a duration from 200ms to 60s such as '500ms', '1s' or '10s'"
    return _bounded_duration(value, 0.2, 60.0, expected)


def queues(value: Any, cpu_count: int | None = None) -> int:
    """Queues (capture workers) 1..QUEUES_MAX, or 'auto': the CPU count within those bounds."""
    if value == "auto":
        count = os.cpu_count() if cpu_count is None else cpu_count
        return min(max(count or 1, 1), QUEUES_MAX)
    if _is_int(value) and 1 <= value <= QUEUES_MAX:
        return int(value)
    raise ValueError(f"expected a number of queues 1..{QUEUES_MAX} or 'auto' (one per CPU)")


def retention(value: Any) -> int:
    """Whole seconds to keep data; 0, '0' or 'forever' keep it forever (0)."""
    if value in ("0", "forever") or (_is_int(value) and value == 0):
        return 0
    try:
        return max(1, round(parse_duration(value)))
    except ValueError:
        raise ValueError("expected a duration such as '7d', or 'forever'") from None


def choice(table: dict[str, int], what: str) -> Callable[[Any], int]:
    """A converter from the (case-insensitive) names of table to their values."""

    def convert(value: Any) -> int:
        if isinstance(value, str) and value.lower() in table:
            return table[value.lower()]
        raise ValueError(f"expected {what}: " + ", ".join(table))

    return convert


direction = choice({"in": DIR_IN, "out": DIR_OUT, "any": DIR_ANY}, "one of")
week_start = choice(_WEEKDAYS, "a day name or its first three letters")


def protocol(value: Any) -> int | None:
    """An IP protocol number from a number 0..255 or a name; None for 'any'."""
    if _is_int(value) and 0 <= value <= 255:
        return int(value)
    if isinstance(value, str) and value.lower() == "any":
        return None
    return choice(_PROTOCOLS, "'any', an IP protocol number 0..255 or one of")(value)


def family(value: Any) -> int:
    """4 or 6 from 'ipv4' / 'ipv6' (or the numbers themselves)."""
    if _is_int(value) and value in (4, 6):
        return int(value)
    return choice({"ipv4": 4, "ipv6": 6}, "the address family")(value)


def period(value: Any) -> str:
    """A quota period name."""
    if value in PERIODS:
        return str(value)
    raise ValueError("expected one of: " + ", ".join(PERIODS))


QUOTA_ACTIONS = ("report", "block", "mark")


def quota_action(value: Any) -> str:
    """What a quota does once used up: report only, block (drop) or mark."""
    if value in QUOTA_ACTIONS:
        return str(value)
    raise ValueError("expected one of: " + ", ".join(QUOTA_ACTIONS))


def _one_or_list(value: Any, convert: Callable[[Any], Any]) -> tuple[Any, ...]:
    if not isinstance(value, list):
        return (convert(value),)
    if not value:
        raise ValueError("expected at least one value (leave the key out to match any)")
    return _each(value, convert)


def _network(value: Any) -> Network:
    if not isinstance(value, str):
        raise ValueError(f"expected an address or CIDR string, got {value!r}")
    try:
        return ipaddress.ip_network(value)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4/IPv6 address or CIDR") from None
    # Host bits set usually means a typo: refuse rather than silently widen or narrow.
    raise ValueError(f"{value!r} has host bits set; did you mean {str(loose)!r}?")


def networks(value: Any) -> tuple[Network, ...]:
    """Networks from one address/CIDR string or a list of them."""
    return _one_or_list(value, _network)


def network_list(value: Any) -> tuple[Network, ...]:
    """Networks from a (possibly empty) list of address/CIDR strings."""
    if not isinstance(value, list):
        raise ValueError("expected a list of CIDR strings such as ['192.168.0.0/16']")
    return _each(value, _network)


def _port_range(value: Any) -> PortRange:
    text = str(value) if _is_int(value) or isinstance(value, str) else ""
    match = _PORT_RANGE.fullmatch(text)
    if match is None:
        raise ValueError(f"expected a port 0..65535 or a range such as '1024-65535', got {value!r}")
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if high > 65535:
        raise ValueError(f"port {high} is out of range: expected 0..65535")
    if low > high:
        raise ValueError(f"range {value!r} is reversed: expected low-high")
    return (low, high)


def ports(value: Any) -> tuple[PortRange, ...]:
    """Inclusive port ranges from a port, a 'low-high' range or a list of those."""
    return _one_or_list(value, _port_range)


class EntriesError(ValueError):
    """Several entries of one list are wrong: (index, value, message) for each of them."""

    def __init__(self, entries: list[tuple[int, Any, str]]) -> None:
        super().__init__("; ".join(f"[{i}] {v!r}: {m}" for i, v, m in entries))
        self.entries = entries


def _each(items: list[Any], convert: Callable[[Any], Any]) -> tuple[Any, ...]:
    """Every item converted, or EntriesError naming each wrong item (not just the first)."""
    out, errors = [], []
    for index, item in enumerate(items):
        try:
            out.append(convert(item))
        except ValueError as exc:
            errors.append((index, item, str(exc)))
    if errors:
        raise EntriesError(errors)
    return tuple(out)


def interface(value: Any) -> str:
    """An interface name (or '*' glob) as the kernel takes it: 1..15 bytes, no NUL '/' ':' blank."""
    if not isinstance(value, str) or value in ("", ".", ".."):
        raise ValueError("expected an interface name such as 'eth0' or a glob such as 'wlan*'")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size >= IFNAMSIZ:
        raise ValueError(f"interface name is {size} bytes long: the kernel allows {IFNAMSIZ - 1}")
    bad = sorted(set(value) & _IFACE_FORBIDDEN)
    if bad:
        raise ValueError(f"interface name contains {bad[0]!r}: no NUL, '/', ':' or blanks")
    return value


def _capture_interface(value: Any) -> str:
    name = interface(value)
    if name != "*" and fnmatch.fnmatchcase("lo", name):
        raise ValueError("matches 'lo', which is never metered: name the interfaces instead")
    return name


def capture_interfaces(value: Any) -> tuple[str, ...]:
    """Distinct interface names, never 'lo' (the daemon's own socket traffic); '*' = all but lo."""
    if not isinstance(value, list):
        raise ValueError("expected a list of interface names such as ['eth0', 'wlan*']")
    names = _each(value, _capture_interface)
    duplicates = [(i, n, "listed twice") for i, n in enumerate(names) if n in names[:i]]
    if duplicates:
        raise EntriesError(duplicates)
    return () if "*" in names else names


def capture_hooks(value: Any) -> str:
    """Where the queue rules sit: one of spec.HOOKS."""
    if isinstance(value, str) and value in HOOKS:
        return value
    raise ValueError(
        'expected "prerouting" (mangle PREROUTING and POSTROUTING) or "forward" (mangle INPUT,'
        " FORWARD and OUTPUT: LAN addresses on both sides of a NAT gateway)"
    )


def timezone(value: Any) -> str:
    """'local' or an IANA zone name the system's zone database has."""
    if value == "local":
        return "local"
    try:
        ZoneInfo(value)
    except (ValueError, KeyError, OSError, TypeError):
        raise ValueError("expected 'local' or an IANA time zone such as 'Europe/Paris'") from None
    return str(value)


def absolute_path(value: Any) -> Path:
    """An absolute path."""
    if isinstance(value, str) and value.startswith("/"):
        return Path(value)
    raise ValueError("expected an absolute path")


def path(value: Any) -> Path:
    """A non-empty path."""
    if isinstance(value, str) and value:
        return Path(value)
    raise ValueError("expected a path")


def name(value: Any) -> str:
    """A monitor or quota name (it appears in file names and reports)."""
    if isinstance(value, str) and _NAME.fullmatch(value):
        return value
    raise ValueError("expected a name of 1..64 characters A-Z a-z 0-9 _ . -")


def listen_address(value: Any) -> tuple[str, int]:
    """(host, port) from 'HOST:PORT' text; an IPv6 host in brackets: '[::1]:9731'."""
    expected = "expected 'HOST:PORT' with an IP address, such as '127.0.0.1:9731' or '[::1]:9731'"
    if not isinstance(value, str):
        raise ValueError(expected)
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ipaddress_version(host) != 6:
            raise ValueError(expected)
    elif ipaddress_version(host) != 4:
        raise ValueError(expected)
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(expected + " (port 1..65535)")
    return host, int(port)


def ipaddress_version(host: str) -> int:
    """4 or 6 for an IP address literal, 0 for anything else."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return 0


def listen_addresses(value: Any) -> tuple[tuple[str, int], ...]:
    """A list of 'HOST:PORT' addresses (a single string is one address); no duplicates."""
    items = _each(value if isinstance(value, list) else [value], listen_address)
    if len(set(items)) != len(items):
        raise ValueError("expected each address once")
    return items


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8 and ::1."""
    return ipaddress.ip_address(host).is_loopback


def password_hash(value: Any) -> str:
    """A bcrypt hash ('$2b$12$...', 60 characters), as `trafmetuxd --hash-password` prints."""
    if not isinstance(value, str) or not BCRYPT.fullmatch(value):
        raise ValueError("expected a bcrypt hash such as '$2b$12$...' (60 characters)")
    return value


BCRYPT = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")


_URL_PASSWORD = re.compile(r"(://[^:/@]*):[^@]*@")
_PG_SCHEMES = ("postgresql://", "postgres://")


def redact_url(value: Any) -> Any:
    """The URL with any password replaced by '***' (what messages may show of it)."""
    if not isinstance(value, str):
        return value
    return _URL_PASSWORD.sub(r"\1:***@", value)


def store_url(value: Any) -> str:
    """A PostgreSQL URL 'postgresql://[user[:password]@][host][:port][/database][?...]'."""
    expected = "expected a URL such as 'postgresql://trafmetux@db.example/trafmetux'"
    if not isinstance(value, str) or not value.startswith(_PG_SCHEMES):
        raise ValueError(expected)
    if any(ch.isspace() for ch in value.strip()) or "\x00" in value:
        raise ValueError(f"{expected} (no spaces)")
    return value.strip()


def gateway(value: Any) -> str:
    """This daemon's name in a fleet store: a name, not the reserved word 'all'."""
    if value == "all":
        raise ValueError("'all' is reserved (it means every gateway in reports)")
    return name(value)


def store_timeout(value: Any) -> float:
    """Seconds a store connection or statement may take: 500ms..300s."""
    expected = "expected a duration from 500ms to 300s such as '5s'"
    return _bounded_duration(value, 0.5, 300.0, expected)
