"""TOML configuration -> validated, plain spec.Config. The only module that imports pydantic."""

from __future__ import annotations

import difflib
import os
import stat
import tomllib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationError

from trafmetuxd import config_values as cv
from trafmetuxd import spec
from trafmetuxd.config_values import parse_duration, parse_size
from trafmetuxd.packet import PORTED  # the protocols parse() reads ports for
from trafmetuxd.spec import DIR_ANY, Network, PortRange

__all__ = ["ConfigError", "load", "parse", "parse_duration", "parse_size"]

MAX_BYTES = 1024 * 1024  # a configuration file is small; refuse a huge one rather than read it
Loc = tuple[str | int, ...]
_M = TypeVar("_M", bound=BaseModel)
_Indexed = tuple[int, dict[str, Any], spec.MonitorSpec]  # index in the file, table, value


class ConfigError(Exception):
    """The configuration is unusable; .problems lists every problem found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _v(convert: Callable[[Any], Any]) -> PlainValidator:
    return PlainValidator(convert)


# --- the schema --------------------------------------------------------------------------


class _Model(BaseModel):
    # strict: TOML has real types, so "1" is not silently an int nor "yes" a bool
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Rule(_Model):
    direction: Annotated[int, _v(cv.direction)] = DIR_ANY
    interface: Annotated[str | None, _v(cv.interface)] = None
    protocol: Annotated[int | None, _v(cv.protocol)] = None
    family: Annotated[int | None, _v(cv.family)] = None
    src: Annotated[tuple[Network, ...] | None, _v(cv.networks)] = None
    dst: Annotated[tuple[Network, ...] | None, _v(cv.networks)] = None
    host: Annotated[tuple[Network, ...] | None, _v(cv.networks)] = None
    src_port: Annotated[tuple[PortRange, ...] | None, _v(cv.ports)] = None
    dst_port: Annotated[tuple[PortRange, ...] | None, _v(cv.ports)] = None
    port: Annotated[tuple[PortRange, ...] | None, _v(cv.ports)] = None


_CollectorSize = Annotated[int, Field(ge=100, le=1_000_000)]


class _Monitor(_Model):
    name: Annotated[str, _v(cv.name)]
    collector_size: _CollectorSize = 1000
    flush_collector_size: _CollectorSize | None = None  # default: max(2000, collector_size)
    compress_ports: bool = True
    flow_log: str = ""
    hosts: Annotated[tuple[Network, ...], _v(cv.network_list)] = ()
    host_prefix_v6: Annotated[int, Field(ge=1, le=128)] = 128
    max_hosts: Annotated[int, Field(ge=1, le=1_000_000)] = 4096
    rules: list[Any] = []  # validated one by one so every rule's problems show


class _Quota(_Model):
    name: Annotated[str, _v(cv.name)]
    monitors: Annotated[list[Annotated[str, _v(cv.name)]], Field(min_length=1)]
    limit: Annotated[int, _v(parse_size), Field(gt=0)]
    period: Annotated[str, _v(cv.period)] = "month"
    start_day: Annotated[int, Field(ge=1, le=28)] = 1
    warn: Annotated[float, Field(gt=0, le=1)] = 0.8
    action: Annotated[str, _v(cv.quota_action)] = "report"
    mark: Annotated[int, Field(ge=0, le=0xFFFFFFFF)] | None = None
    mask: Annotated[int, Field(ge=1, le=0xFFFFFFFF)] = 0xFFFFFFFF
    exempt: list[Any] = []  # rules, validated one by one as a monitor's
    strict: bool = False
    per_host: bool = False


_QUEUE_MAX = 65535


class _Capture(_Model):
    queue: Annotated[int, Field(ge=0, le=_QUEUE_MAX)] = 0
    interfaces: Annotated[tuple[str, ...], _v(cv.capture_interfaces)] = ()
    hooks: Annotated[str, _v(cv.capture_hooks)] = spec.HOOKS_PREROUTING
    manage_rules: bool = True
    fail_open: bool = True
    copy_range: Annotated[int, Field(ge=64, le=65535)] = 128
    queue_maxlen: Annotated[int, Field(ge=16, le=1_000_000)] = 4096
    rcvbuf: Annotated[int, _v(parse_size), Field(ge=65536, le=2**31 - 1)] = 8 * 1024 * 1024
    queues: Annotated[int, _v(cv.queues)] = 1
    stall_timeout: Annotated[float, _v(cv.stall_timeout)] = 1.0
    enabled: bool = True


class _Store(_Model):
    url: Annotated[str, _v(cv.store_url)] = ""
    url_file: Annotated[Path | None, _v(cv.absolute_path)] = None
    gateway: Annotated[str, _v(cv.gateway)] = ""
    pending_memory: Annotated[int, _v(parse_size), Field(ge=0, le=2**40)] = 64 * 2**20
    connect_timeout: Annotated[float, _v(cv.store_timeout)] = 5.0
    statement_timeout: Annotated[float, _v(cv.store_timeout)] = 15.0


class _Retention(_Model):
    minutes: Annotated[int, _v(cv.retention)] = 7 * 86400
    flows: Annotated[int, _v(cv.retention)] = 30 * 86400
    quarters: Annotated[int, _v(cv.retention)] = 0


class _Http(_Model):
    listen: Annotated[tuple[tuple[str, int], ...], _v(cv.listen_addresses)] = ()
    allow_remote: bool = False
    user: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^:]+$")] = "trafmetux"
    password_hash: Annotated[str, _v(cv.password_hash)] = ""
    password_file: Annotated[Path | None, _v(cv.absolute_path)] = None
    max_clients: Annotated[int, Field(ge=1, le=1024)] = 64
    max_host_series: Annotated[int, Field(ge=0, le=100_000)] = 1000


class _Root(_Model):
    state_dir: Annotated[Path, _v(cv.absolute_path)] = Path("/var/lib/trafmetux")
    socket: Annotated[Path, _v(cv.path)] = Path("/run/trafmetux/trafmetuxd.sock")
    socket_group: str = "trafmetux"
    admin_group: str = ""
    timezone: Annotated[str, _v(cv.timezone)] = "local"
    week_start: Annotated[int, _v(cv.week_start)] = 6
    flush_interval: Annotated[float, _v(cv.flush_interval)] = 60.0
    local_networks: Annotated[tuple[Network, ...], _v(cv.network_list)] = ()
    capture: _Capture = _Capture()
    retention: _Retention = _Retention()
    http: _Http = _Http()
    store: _Store = _Store()
    monitor: list[dict[str, Any]] = []
    quota: list[dict[str, Any]] = []


_MODELS = (_Root, _Capture, _Retention, _Monitor, _Rule, _Quota, _Http, _Store)
_KEYS = sorted({key for model in _MODELS for key in model.model_fields})


# --- problems: every one names the file, the key path, the value and what is expected -----


class _Problems:
    """Collects problems for one file."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.lines: list[str] = []

    def add(self, loc: Loc, value: Any, message: str) -> None:
        """Record that the value at loc is wrong (a store URL's password is never shown)."""
        if loc[:1] == ("store",) and loc[-1] == "url":
            value = cv.redact_url(value)
        self.lines.append(f"{self.file}: {_key_path(loc)} = {value!r}: {message}")

    def validate(self, model: type[_M], data: Any, loc: Loc) -> _M | None:
        """The model built from data, or None after recording each of its errors."""
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                self._pydantic(loc + tuple(error["loc"]), error)
            return None

    def _pydantic(self, loc: Loc, error: Any) -> None:
        if error["type"] == "missing":
            self.lines.append(f"{self.file}: {_key_path(loc)}: required key is missing")
            return
        message = error["msg"]
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, cv.EntriesError):
            for index, value, entry_message in cause.entries:
                self.add((*loc, index), value, entry_message)
            return
        if error["type"] == "value_error":
            message = str(cause)
        elif error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _KEYS, n=1)
            message = "unknown key" + (f"; did you mean {close[0]!r}?" if close else "")
        self.add(loc, error["input"], message)


def _key_path(loc: Loc) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


# --- checks across fields and sections ---------------------------------------------------


def _check_rule(rule: _Rule, raw: dict[str, Any], loc: Loc, problems: _Problems) -> None:
    """A port field needs a ported protocol; address families must leave something to match."""
    for key in ("src_port", "dst_port", "port"):
        if key in raw and rule.protocol is not None and rule.protocol not in PORTED:
            protocol = raw["protocol"]
            problems.add((*loc, key), raw[key], f"protocol {protocol!r} has no ports")
    families = {4, 6} if rule.family is None else {rule.family}
    for key in ("src", "dst", "host"):
        networks = getattr(rule, key)
        if networks is not None:
            families &= {net.version for net in networks}
            if not families:
                message = "address family conflicts with the rule's family or other addresses"
                problems.add((*loc, key), raw[key], message)
                return


def _flow_log(model: _Monitor, state_dir: Path, loc: Loc, problems: _Problems) -> str:
    """The monitor's log file pattern, {monitor} replaced and made absolute ('' = no log)."""
    pattern = model.flow_log
    if not pattern:
        return ""
    if Path(pattern).is_absolute():
        problems.add(loc, pattern, f"expected a pattern relative to state_dir ({state_dir})")
    elif ".." in Path(pattern).parts:
        problems.add(loc, pattern, "expected a pattern without '..' path components")
    elif "{" in pattern.replace("{monitor}", ""):
        problems.add(loc, pattern, "the only placeholder allowed is '{monitor}'")
    return str(state_dir / pattern.replace("{monitor}", model.name))


def _check_names(names: Sequence[Any], section: str, problems: _Problems) -> None:
    """Names are unique within their section."""
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if isinstance(name, str) and first.setdefault(name, index) != index:
            message = f"expected a unique name; {section}[{first[name]}] has it too"
            problems.add((section, index, "name"), name, message)


def _check_flow_logs(monitors: Sequence[_Indexed], p: _Problems) -> None:
    """No two monitors write the same flow log file (after {monitor} substitution)."""
    first: dict[str, int] = {}
    for index, raw, monitor in monitors:
        log = monitor.flow_log
        if log and first.setdefault(log, index) != index:
            message = f"monitor[{first[log]}] already logs to {log!r}"
            p.add(("monitor", index, "flow_log"), raw["flow_log"], message)


def _check_queues(capture: _Capture, p: _Problems) -> None:
    """The queues used are queue .. queue + queues - 1: all must be valid queue numbers."""
    last = capture.queue + capture.queues - 1
    if last > _QUEUE_MAX:
        message = (
            f"capture.queue ({capture.queue}) + capture.queues ({capture.queues}) - 1 = {last}: "
            f"expected at most {_QUEUE_MAX}"
        )
        p.add(("capture", "queues"), capture.queues, message)


def _http(http: _Http, p: _Problems) -> spec.HttpSpec:
    """The HTTP listener: loopback only unless allow_remote; the hash from the config or a file."""
    if not http.allow_remote:
        for index, (host, port) in enumerate(http.listen):
            if not cv.is_loopback(host):
                message = "not a loopback address: set http.allow_remote = true to listen there"
                p.add(("http", "listen", index), f"{host}:{port}", message)
    digest = http.password_hash
    if http.password_file is not None:
        if digest:
            p.add(("http", "password_file"), str(http.password_file), "give password_hash or "
                  "password_file, not both")  # fmt: skip
        digest = _password_file(http.password_file, p)
    return spec.HttpSpec(
        listen=http.listen, allow_remote=http.allow_remote, user=http.user,
        password_hash=digest, max_clients=http.max_clients,
        max_host_series=http.max_host_series,
    )  # fmt: skip


def _first_line(path: Path, loc: Loc, what: str, p: _Problems) -> str | None:
    """The first line of a secret's file (None after recording why it cannot be read)."""
    try:
        text = _read_regular(path).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        p.add(loc, str(path), f"cannot read the {what}: {exc}")
        return None
    except ConfigError as exc:
        p.add(loc, str(path), str(exc))
        return None
    return text.splitlines()[0] if text else ""


def _password_file(path: Path, p: _Problems) -> str:
    """The bcrypt hash on the first line of path ('' after recording a problem)."""
    loc: Loc = ("http", "password_file")
    line = _first_line(path, loc, "password hash", p)
    if line is None:
        return ""
    try:
        return cv.password_hash(line)
    except ValueError as exc:
        p.add(loc, str(path), str(exc))
        return ""


def _store(store: _Store, p: _Problems) -> spec.StoreSpec:
    """The store: SQLite unless a URL is given (in the config or a file); the gateway name."""
    url = store.url
    if store.url_file is not None:
        if url:
            p.add(("store", "url_file"), str(store.url_file), "give url or url_file, not both")
        url = _url_file(store.url_file, p)
    gateway = store.gateway or spec.default_gateway()
    return spec.StoreSpec(
        url=url, gateway=gateway, pending_memory=store.pending_memory,
        connect_timeout=store.connect_timeout, statement_timeout=store.statement_timeout,
    )  # fmt: skip


def _url_file(path: Path, p: _Problems) -> str:
    """The PostgreSQL URL on the first line of path ('' after recording a problem)."""
    loc: Loc = ("store", "url_file")
    line = _first_line(path, loc, "store URL", p)
    if line is None:
        return ""
    try:
        return cv.store_url(line)
    except ValueError as exc:  # the file's text is not shown: it may hold a password
        p.add(loc, str(path), f"its first line: {exc}")
        return ""


def _check_quota(raw: dict[str, Any], index: int, monitors: Sequence[Any], p: _Problems) -> None:
    """A quota sums distinct, existing monitors."""
    names = raw.get("monitors")
    names = names if isinstance(names, list) else []
    for position, name in enumerate(names):
        loc: Loc = ("quota", index, "monitors", position)
        if isinstance(name, str) and name not in monitors:
            p.add(loc, name, "expected the name of a [[monitor]]")
        elif name in names[:position]:
            p.add(loc, name, "expected each monitor once")


def _check_action(quota: _Quota, raw: dict[str, Any], loc: Loc, p: _Problems) -> None:
    """mark wants a mark within its mask; the enforcing keys want an enforcing action."""
    if quota.action == "mark":
        if quota.mark is None:
            p.add((*loc, "mark"), None, 'required with action = "mark" (a value such as 0x10)')
        elif quota.mark & ~quota.mask:
            p.add((*loc, "mark"), quota.mark, f"has bits outside mask {quota.mask:#x}")
        return
    for key in ("mark", "mask"):
        if key in raw:
            p.add((*loc, key), raw[key], f'only used with action = "mark" (action is '
                  f"{quota.action!r})")  # fmt: skip
    if quota.action == "report":
        for key in ("exempt", "strict"):
            if key in raw:
                p.add((*loc, key), raw[key], 'only used with action = "block" or "mark"')


def _quota(
    raw: dict[str, Any], index: int, names: Sequence[Any], p: _Problems
) -> spec.QuotaSpec | None:
    """One [[quota]] (None when it has problems: they are reported)."""
    loc: Loc = ("quota", index)
    quota = p.validate(_Quota, raw, loc)
    _check_quota(raw, index, names, p)
    raw_exempt = quota.exempt if quota else raw.get("exempt")
    raw_exempt = raw_exempt if isinstance(raw_exempt, list) else []
    exempt = [_rule(r, (*loc, "exempt", i), p) for i, r in enumerate(raw_exempt)]
    if quota is None:
        return None
    _check_action(quota, raw, loc, p)
    return spec.QuotaSpec(
        **_fields(quota, ("monitors", "mark", "exempt")),
        monitors=tuple(quota.monitors),
        mark=quota.mark or 0,
        exempt=tuple(rule for rule in exempt if rule is not None),
    )


def _check_per_host(
    quota: spec.QuotaSpec, index: int, monitors: Sequence[spec.MonitorSpec], p: _Problems
) -> None:
    """A per-host quota's monitors all have `hosts` (else it would have no host to limit)."""
    if not quota.per_host:
        return
    for monitor in monitors:
        if monitor.name in quota.monitors and not monitor.hosts:
            message = (
                f"expected monitor {monitor.name!r} to have `hosts` (a per-host quota needs them)"
            )
            p.add(("quota", index, "per_host"), True, message)


# --- building the plain values ------------------------------------------------------------


def _fields(model: BaseModel, skip: Iterable[str] = ()) -> dict[str, Any]:
    return {key: getattr(model, key) for key in type(model).model_fields if key not in skip}


def _rule(raw: Any, loc: Loc, p: _Problems) -> spec.RuleSpec | None:
    """One rule of a monitor, None when it has problems (they are reported)."""
    if not isinstance(raw, dict):
        p.add(loc, raw, "expected a table of rule fields such as { direction = 'in' }")
        return None
    rule = p.validate(_Rule, raw, loc)
    if rule is None:
        return None
    _check_rule(rule, raw, loc, p)
    return spec.RuleSpec(**_fields(rule))


def _monitor(raw: dict[str, Any], loc: Loc, state_dir: Path, p: _Problems) -> spec.MonitorSpec:
    """One [[monitor]] (placeholder values where it has problems: they are reported)."""
    model = p.validate(_Monitor, raw, loc)
    raw_rules = model.rules if model else raw.get("rules")
    raw_rules = raw_rules if isinstance(raw_rules, list) else []
    # a bad name or size must not hide the rules' own problems: check them either way
    rules = [_rule(raw_rule, (*loc, "rules", i), p) for i, raw_rule in enumerate(raw_rules)]
    if model is None:
        return spec.MonitorSpec(name="")
    flush_size = model.flush_collector_size or max(2000, model.collector_size)
    if flush_size < model.collector_size:
        message = f"expected at least collector_size ({model.collector_size})"
        p.add((*loc, "flush_collector_size"), flush_size, message)
    return spec.MonitorSpec(
        name=model.name,
        rules=tuple(rule for rule in rules if rule is not None),
        collector_size=model.collector_size,
        flush_collector_size=flush_size,
        compress_ports=model.compress_ports,
        flow_log=_flow_log(model, state_dir, (*loc, "flow_log"), p),
        hosts=model.hosts,
        host_prefix_v6=model.host_prefix_v6,
        max_hosts=model.max_hosts,
    )


def _dicts(data: dict[str, Any], key: str) -> list[tuple[int, dict[str, Any]]]:
    """The tables of an array of tables with their index (other shapes: reported by _Root)."""
    items = data.get(key)
    if not isinstance(items, list):
        return []
    return [(index, item) for index, item in enumerate(items) if isinstance(item, dict)]


def _config(data: dict[str, Any], path: Path, p: _Problems) -> spec.Config:
    """Validate every section, then the checks across them."""
    root = p.validate(_Root, data, ())
    state_dir = root.state_dir if root else spec.Config(path=path).state_dir
    monitors = [
        (i, raw, _monitor(raw, ("monitor", i), state_dir, p)) for i, raw in _dicts(data, "monitor")
    ]
    names = [raw.get("name") for _, raw in _dicts(data, "monitor")]
    _check_names(names, "monitor", p)
    _check_flow_logs(monitors, p)
    quotas = [_quota(raw, index, names, p) for index, raw in _dicts(data, "quota")]
    for index, quota in enumerate(quotas):
        if quota is not None:
            _check_per_host(quota, index, [monitor for _, _, monitor in monitors], p)
    _check_names([raw.get("name") for _, raw in _dicts(data, "quota")], "quota", p)
    if root is None:
        return spec.Config(path=path)
    _check_queues(root.capture, p)
    return spec.Config(
        path=path,
        **_fields(root, ("capture", "retention", "monitor", "quota", "http", "store")),
        http=_http(root.http, p),
        store=_store(root.store, p),
        capture=spec.CaptureSpec(**_fields(root.capture)),
        retention=spec.RetentionSpec(**_fields(root.retention)),
        monitors=tuple(monitor for _, _, monitor in monitors),
        quotas=tuple(q for q in quotas if q is not None),
    )


def parse(text: str, path: Path) -> spec.Config:
    """Validate TOML text (read from path, which names it in messages) into a spec.Config."""
    problems = _Problems(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None
    config = _config(data, path, problems)
    if problems.lines:
        raise ConfigError(problems.lines)
    return config


def _read_regular(path: Path) -> bytes:
    """The bytes of a regular file; a FIFO, device or directory is refused, never waited on."""
    # O_NONBLOCK: opening a FIFO for reading would otherwise block until a writer comes
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    with os.fdopen(fd, "rb") as file:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError([f"{path}: not a regular file ({_file_kind(mode)}): refused"])
        data = file.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ConfigError([f"{path}: larger than {MAX_BYTES} bytes: refused"])
    return data


def _file_kind(mode: int) -> str:
    kinds = {stat.S_IFIFO: "a FIFO", stat.S_IFDIR: "a directory", stat.S_IFSOCK: "a socket"}
    kinds |= {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}
    return kinds.get(stat.S_IFMT(mode), "not a file")


def load(path: str | Path) -> spec.Config:
    """Read and validate the configuration file at path (a regular file of at most 1 MiB)."""
    path = Path(path)
    try:
        text = _read_regular(path).decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the configuration: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}"]) from None
    return parse(text, path)
