"""Plain, frozen configuration values: what config.py validates and the pure core consumes."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PortRange = tuple[int, int]  # inclusive (low, high)

# Direction bit masks: a packet carries one of IN/OUT (or UNKNOWN = both bits when a replayed
# packet's direction cannot be told); a rule matches when the masks share a bit.
DIR_IN = 1
DIR_OUT = 2
DIR_ANY = DIR_IN | DIR_OUT

# Where the queue rules sit (capture.hooks): mangle PREROUTING + POSTROUTING, or mangle INPUT +
# FORWARD + OUTPUT, which see forwarded packets between de-NAT and SNAT (a NAT gateway's LAN).
HOOKS_PREROUTING = "prerouting"
HOOKS_FORWARD = "forward"
HOOKS = (HOOKS_PREROUTING, HOOKS_FORWARD)


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One rule: every field that is set must match (None means 'any')."""

    direction: int = DIR_ANY
    interface: str | None = None  # exact name or shell glob ("wlan*")
    protocol: int | None = None  # IP protocol number
    family: int | None = None  # 4 or 6
    src: tuple[Network, ...] | None = None
    dst: tuple[Network, ...] | None = None
    host: tuple[Network, ...] | None = None  # either side
    src_port: tuple[PortRange, ...] | None = None
    dst_port: tuple[PortRange, ...] | None = None
    port: tuple[PortRange, ...] | None = None  # either side


@dataclass(frozen=True, slots=True)
class MonitorSpec:
    """A named monitor: its rules OR together; no rules matches everything."""

    name: str
    rules: tuple[RuleSpec, ...] = ()
    collector_size: int = 1000
    flush_collector_size: int = 2000
    compress_ports: bool = True
    flow_log: str = ""  # strftime pattern with {monitor} already replaced; "" = no text log
    hosts: tuple[Network, ...] = ()  # per-host totals for addresses inside these prefixes
    host_prefix_v6: int = 128  # IPv6 hosts are grouped by this prefix length
    max_hosts: int = 4096  # distinct hosts per collector; beyond it packets count in "other"


@dataclass(frozen=True, slots=True)
class CaptureSpec:
    """How the daemon binds the kernel queue and installs its rules."""

    queue: int = 0
    interfaces: tuple[str, ...] = ()  # empty: every interface but lo
    hooks: str = HOOKS_PREROUTING  # one of HOOKS
    manage_rules: bool = True
    fail_open: bool = True
    copy_range: int = 128
    queue_maxlen: int = 4096
    rcvbuf: int = 8 * 1024 * 1024
    queues: int = 1  # consecutive queues from `queue`, one capture worker each
    stall_timeout: float = 1.0  # seconds a worker may hold waiting packets without a verdict
    enabled: bool = True  # False: reporting only (no queue, no rules, no workers)


@dataclass(frozen=True, slots=True)
class RetentionSpec:
    """How long detailed data is kept, in seconds (0 = forever)."""

    minutes: int = 7 * 86400
    flows: int = 30 * 86400
    quarters: int = 0


def default_gateway() -> str:
    """The host's name as a gateway name (characters a name may not hold become '-')."""
    text = "".join(c if c.isalnum() or c in "_.-" else "-" for c in socket.gethostname())
    return text[:64].strip(".") or "gateway"


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """Where flushes go: the embedded SQLite file (url "") or a PostgreSQL fleet store."""

    url: str = field(default="", repr=False)  # a libpq URL; may hold a password: never shown
    gateway: str = field(default_factory=lambda: default_gateway())  # name in the fleet store
    pending_memory: int = 64 * 1024 * 1024  # bytes of unwritten flushes held before the journal
    connect_timeout: float = 5.0  # seconds
    statement_timeout: float = 15.0  # seconds

    @property
    def postgresql(self) -> bool:
        """True when flushes go to PostgreSQL."""
        return bool(self.url)


@dataclass(frozen=True, slots=True)
class QuotaSpec:
    """A traffic cap over the summed monitors for a day, week or (billing) month."""

    name: str
    monitors: tuple[str, ...]
    limit: int  # bytes
    period: str = "month"  # day | week | month
    start_day: int = 1  # billing day of month, 1..28
    warn: float = 0.8
    per_host: bool = False  # each host of the monitors' `hosts` gets the limit of its own
    action: str = "report"  # report | block | mark: what happens once used >= limit
    mark: int = 0  # action "mark": the packet mark set under mask
    mask: int = 0xFFFFFFFF
    exempt: tuple[RuleSpec, ...] = ()  # packets matching any of these are never blocked/marked
    strict: bool = False  # queue rules without --queue-bypass: no daemon, no traffic

    @property
    def enforces(self) -> bool:
        """Whether the quota acts on packets (block or mark) rather than only reporting."""
        return self.action != "report"


@dataclass(frozen=True, slots=True)
class HttpSpec:
    """The read-only HTTP listener of the front: metrics, JSON API, dashboard."""

    listen: tuple[tuple[str, int], ...] = ()  # (host, port); empty = no listener
    allow_remote: bool = False
    user: str = "trafmetux"  # the basic-auth user name
    password_hash: str = ""  # bcrypt hash; "" = no authentication
    max_clients: int = 64
    max_host_series: int = 1000  # hosts per monitor in /metrics; the rest summed into "other"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    path: Path
    state_dir: Path = Path("/var/lib/trafmetux")
    socket: Path = Path("/run/trafmetux/trafmetuxd.sock")
    socket_group: str = "trafmetux"
    admin_group: str = ""  # may run quota-extend and quota-reset besides root ("" = root only)
    timezone: str = "local"  # "local" or an IANA name
    week_start: int = 6  # 0 = Monday .. 6 = Sunday
    flush_interval: float = 60.0  # seconds
    local_networks: tuple[Network, ...] = ()
    capture: CaptureSpec = field(default_factory=CaptureSpec)
    retention: RetentionSpec = field(default_factory=RetentionSpec)
    monitors: tuple[MonitorSpec, ...] = ()
    quotas: tuple[QuotaSpec, ...] = ()
    http: HttpSpec = field(default_factory=HttpSpec)
    store: StoreSpec = field(default_factory=StoreSpec)

    @property
    def strict(self) -> bool:
        """Whether a quota asks for the queue rules without --queue-bypass."""
        return any(q.strict for q in self.quotas)

    @property
    def database(self) -> Path:
        """The SQLite store's path."""
        return self.state_dir / "trafmetux.sqlite3"

    @property
    def journal(self) -> Path:
        """Where flushes wait while the PostgreSQL store cannot be reached (beyond memory)."""
        return self.state_dir / "pending.sqlite3"
