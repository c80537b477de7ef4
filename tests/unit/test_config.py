"""Configuration: the example loads into plain values; every bad config is refused with a
message naming the file, the key path, the bad value and what is expected."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trafmetuxd import config
from trafmetuxd import config_values as cv
from trafmetuxd.spec import DIR_ANY, DIR_IN, DIR_OUT, Config

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"
FILE = Path("/etc/trafmetux/test.toml")


def parse(text: str) -> Config:
    return config.parse(text, FILE)


def problems(text: str) -> list[str]:
    with pytest.raises(config.ConfigError) as caught:
        parse(text)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def monitor(body: str = "", name: str = "m") -> str:
    return f'[[monitor]]\nname = "{name}"\n{body}\n'


def rule(fields: str) -> str:
    return monitor(f"rules = [{{ {fields} }}]")


def quota(extra: str = "", monitors: str = '["m"]', name: str = "q") -> str:
    """Monitor "m" and a quota on it (1 byte unless extra says otherwise)."""
    return monitor() + f'[[quota]]\nname = "{name}"\nmonitors = {monitors}\n{extra}\n'


# --- the example and good values -------------------------------------------------------------


def test_example_file_loads_into_plain_values():
    cfg = config.load(EXAMPLE)
    assert cfg.path == EXAMPLE
    assert cfg.state_dir == Path("/var/lib/trafmetux")
    assert cfg.week_start == 6 and cfg.timezone == "local" and cfg.flush_interval == 60.0
    assert [m.name for m in cfg.monitors] == ["input", "output", "ssh", "web"]
    by_name = {m.name: m for m in cfg.monitors}
    assert by_name["input"].rules[0].direction == DIR_IN
    assert by_name["output"].rules[0].direction == DIR_OUT
    assert by_name["ssh"].rules[0].protocol == 6
    assert by_name["ssh"].rules[0].port == ((22, 22),)
    assert by_name["ssh"].rules[0].direction == DIR_ANY
    assert by_name["web"].rules[0].port == ((80, 80), (443, 443))
    assert by_name["output"].flow_log == "/var/lib/trafmetux/flows/output-%Y-%m-%d.log"
    (mobile,) = cfg.quotas
    assert mobile.name == "mobile" and mobile.monitors == ("input", "output")
    assert mobile.limit == 3 * 1024 * 1024 * 1024
    assert (mobile.period, mobile.start_day, mobile.warn) == ("month", 1, 0.8)
    assert cfg.retention.quarters == 0 and cfg.retention.minutes == 7 * 24 * 3600


def test_empty_file_gives_the_spec_defaults():
    assert parse("") == Config(path=FILE)


def test_rule_values_become_numbers_masks_and_networks():
    cfg = parse(
        rule(
            'direction = "out", protocol = "UDP", family = "ipv6", interface = "wlan*", '
            'src = "2001:db8::/32", host = ["2001:db8:1::1"], src_port = [53, "1024-65535"], '
            "dst_port = 5353"
        )
    )
    (r,) = cfg.monitors[0].rules
    assert (r.direction, r.protocol, r.family, r.interface) == (DIR_OUT, 17, 6, "wlan*")
    assert r.src == (ipaddress.ip_network("2001:db8::/32"),)
    assert r.host == (ipaddress.ip_network("2001:db8:1::1/128"),)
    assert r.src_port == ((53, 53), (1024, 65535))
    assert r.dst_port == ((5353, 5353),)


@pytest.mark.parametrize(
    ("text", "number"),
    [
        *[("tcp", 6), ("udp", 17), ("icmp", 1), ("icmpv6", 58), ("sctp", 132)],
        *[("udplite", 136), ("gre", 47), ("esp", 50), ("any", None), ("0", 0), ("255", 255)],
    ],
)
def test_protocol_names_and_numbers(text, number):
    value = text if not text.isdigit() else int(text)
    fields = f"protocol = {value!r}".replace("'", '"')
    assert parse(rule(fields)).monitors[0].rules[0].protocol == number


@pytest.mark.parametrize(
    ("day", "number"),
    [("monday", 0), ("Tuesday", 1), ("wed", 2), ("thu", 3), ("friday", 4), ("sat", 5), ("sun", 6)],
)
def test_week_start_names(day, number):
    assert parse(f'week_start = "{day}"').week_start == number


def test_flow_log_pattern_is_made_absolute_with_the_monitor_name():
    cfg = parse(
        'state_dir = "/srv/meter"\n'
        + monitor('flow_log = "logs/{monitor}-%Y.log"', name="a")
        + monitor('flow_log = "{monitor}.log"', name="b")
    )
    assert [m.flow_log for m in cfg.monitors] == ["/srv/meter/logs/a-%Y.log", "/srv/meter/b.log"]


def test_flow_log_stays_inside_state_dir_absolute_path_refused():
    found = problems('state_dir = "/srv/meter"\n' + monitor('flow_log = "/var/log/{monitor}.log"'))
    assert found == [
        f"{FILE}: monitor[0].flow_log = '/var/log/{{monitor}}.log': "
        "expected a pattern relative to state_dir (/srv/meter)"
    ]


def test_flush_collector_size_defaults_to_at_least_collector_size():
    cfg = parse(monitor("collector_size = 5000") + monitor(name="n"))
    assert [m.flush_collector_size for m in cfg.monitors] == [5000, 2000]


def test_monitor_hosts_reach_the_workers_unchanged():
    from trafmetuxd.specwire import monitor_from_wire, monitor_to_wire

    cfg = parse(monitor('hosts = ["192.168.1.0/24", "fd00:1::/64"]\nhost_prefix_v6 = 64'))
    (spec,) = cfg.monitors
    assert [str(n) for n in spec.hosts] == ["192.168.1.0/24", "fd00:1::/64"]
    assert (spec.host_prefix_v6, spec.max_hosts) == (64, 4096)
    assert monitor_from_wire(json.loads(json.dumps(monitor_to_wire(spec)))) == spec
    assert parse(monitor()).monitors[0].hosts == ()


def test_retention_durations_and_forever():
    cfg = parse('[retention]\nminutes = "2d"\nflows = "forever"\nquarters = 0')
    assert (cfg.retention.minutes, cfg.retention.flows, cfg.retention.quarters) == (172800, 0, 0)


def test_capture_and_top_level_values():
    cfg = parse(
        'timezone = "Europe/Paris"\nflush_interval = "5m"\nlocal_networks = ["192.168.0.0/16"]\n'
        '[capture]\nqueue = 7\ninterfaces = ["eth0", "wlan0"]\nrcvbuf = "16MiB"\nfail_open = false'
    )
    assert cfg.timezone == "Europe/Paris" and cfg.flush_interval == 300.0
    assert cfg.local_networks == (ipaddress.ip_network("192.168.0.0/16"),)
    assert cfg.capture.queue == 7 and cfg.capture.interfaces == ("eth0", "wlan0")
    assert cfg.capture.rcvbuf == 16 * 1024 * 1024 and cfg.capture.fail_open is False


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("3GiB", 3 * 1024**3),
        ("500MB", 500 * 1000**2),
        ("1.5 GB", 1_500_000_000),
        ("1024", 1024),
        (1024, 1024),
        ("2KiB", 2048),
        ("1.5KiB", 1536),
        ("7B", 7),
        ("2 TB", 2 * 1000**4),
        ("1TiB", 1024**4),
        ("10kb", 10_000),
    ],
)
def test_parse_size(text, size):
    assert config.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GB", "3XB", "-1", -1, "1.5", "1e9", "3 G", True, "٣GB"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError, match="expected"):
        config.parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        *[("10s", 10), ("5m", 300), ("1h", 3600), ("1d", 86400), ("500ms", 0.5), (90, 90)],
        *[(0.25, 0.25), ("2.5", 2.5), ("1w", 604800)],
    ],
)
def test_parse_duration(text, seconds):
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", 0, -5, "", "5 parsecs", "h", True, float("inf"), "-1s"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError, match="expected"):
        config.parse_duration(text)


# --- invalid configs: (what, TOML, key path, bad value as repr, what the message says) ---------

INVALID = [
    ("unknown top-level key", "bogus = 1", "bogus", "1", "unknown key"),
    ("unknown capture key", "[capture]\nqueu = 1", "capture.queu", "1", "did you mean 'queue'"),
    ("unknown retention key", '[retention]\nminute = "1d"', "retention.minute", "'1d'", "unknown"),
    ("unknown monitor key", monitor("colector_size = 200"), "monitor[0].colector_size", "200",
     "did you mean 'collector_size'"),
    ("unknown rule key", rule("dst_prt = 1"), "monitor[0].rules[0].dst_prt", "1", "dst_port"),
    ("unknown quota key", quota("limit = 1\nlimt = 2"),
     "quota[0].limt", "2", "unknown key"),
    ("relative state_dir", 'state_dir = "var/lib/x"', "state_dir", "'var/lib/x'", "absolute"),
    ("state_dir not text", "state_dir = 5", "state_dir", "5", "absolute path"),
    ("socket_group not text", "socket_group = 5", "socket_group", "5", "valid string"),
    ("unknown time zone", 'timezone = "Mars/Olympus"', "timezone", "'Mars/Olympus'", "IANA"),
    ("time zone path", 'timezone = "../../etc/passwd"', "timezone", "'../../etc/passwd'", "IANA"),
    ("bad week_start", 'week_start = "funday"', "week_start", "'funday'", "monday"),
    ("week_start number", "week_start = 1", "week_start", "1", "day name"),
    ("flush too often", 'flush_interval = "0.5s"', "flush_interval", "'0.5s'", "at least 1s"),
    ("flush not a duration", 'flush_interval = "soon"', "flush_interval", "'soon'", "'60s'"),
    ("negative flush", "flush_interval = -5", "flush_interval", "-5", "at least 1s"),
    ("local_networks not a list", 'local_networks = "10.0.0.0/8"', "local_networks",
     "'10.0.0.0/8'", "list"),
    ("local network host bits", 'local_networks = ["10.0.0.1/8"]', "local_networks[0]",
     "'10.0.0.1/8'", "did you mean '10.0.0.0/8'"),
    ("queue too big", "[capture]\nqueue = 70000", "capture.queue", "70000", "65535"),
    ("lo captured", '[capture]\ninterfaces = ["eth0", "lo"]', "capture.interfaces[1]",
     "'lo'", "never metered"),
    ("copy_range too small", "[capture]\ncopy_range = 10", "capture.copy_range", "10", "64"),
    ("queue_maxlen too big", "[capture]\nqueue_maxlen = 2_000_000", "capture.queue_maxlen",
     "2000000", "1000000"),
    ("bool as text", '[capture]\nmanage_rules = "yes"', "capture.manage_rules", "'yes'",
     "boolean"),
    ("rcvbuf not a size", '[capture]\nrcvbuf = "lots"', "capture.rcvbuf", "'lots'", "'3GiB'"),
    ("bad retention", '[retention]\nminutes = "-1d"', "retention.minutes", "'-1d'", "forever"),
    ("capture not a table", "capture = 5", "capture", "5", "dictionary"),
    ("monitor not a table array", 'monitor = "input"', "monitor", "'input'", "list"),
    ("bad monitor name", monitor(name="in put"), "monitor[0].name", "'in put'", "A-Z a-z"),
    ("dots as monitor name", monitor(name=".."), "monitor[0].name", "'..'", "A-Z a-z"),
    ("duplicate monitor", monitor(name="input") + monitor(name="input"), "monitor[1].name",
     "'input'", "monitor[0] has it too"),
    ("collector too small", monitor("collector_size = 50"), "monitor[0].collector_size", "50",
     "greater than or equal to 100"),
    ("flush collector smaller", monitor("collector_size = 5000\nflush_collector_size = 1000"),
     "monitor[0].flush_collector_size", "1000", "at least collector_size (5000)"),
    ("compress_ports number", monitor("compress_ports = 1"), "monitor[0].compress_ports", "1",
     "boolean"),
    ("rules not tables", monitor('rules = ["in"]'), "monitor[0].rules[0]", "'in'", "table"),
    ("bad direction", rule('direction = "inn"'), "monitor[0].rules[0].direction", "'inn'",
     "in, out, any"),
    ("unknown protocol", rule('protocol = "tcpp"'), "monitor[0].rules[0].protocol", "'tcpp'",
     "0..255"),
    ("protocol number too big", rule("protocol = 300"), "monitor[0].rules[0].protocol", "300",
     "0..255"),
    ("bad family", rule('family = "ipv5"'), "monitor[0].rules[0].family", "'ipv5'", "ipv4, ipv6"),
    ("src host bits", rule('src = "10.0.0.1/8"'), "monitor[0].rules[0].src", "'10.0.0.1/8'",
     "did you mean '10.0.0.0/8'"),
    ("dst not an address", rule('dst = ["10.0.0.0/8", "nas.lan"]'),
     "monitor[0].rules[0].dst[1]", "'nas.lan'", "'nas.lan' is not an IPv4/IPv6 address"),
    ("empty host list", rule("host = []"), "monitor[0].rules[0].host", "[]", "at least one"),
    ("port too big", rule("dst_port = 70000"), "monitor[0].rules[0].dst_port", "70000",
     "0..65535"),
    ("port range reversed", rule('src_port = "20-10"'), "monitor[0].rules[0].src_port", "'20-10'",
     "reversed"),
    ("port not a number", rule('port = "abc"'), "monitor[0].rules[0].port", "'abc'",
     "'1024-65535'"),
    ("port list with a bool", rule("port = [22, true]"), "monitor[0].rules[0].port[1]",
     "True", "expected a port"),
    ("ports with icmp", rule('protocol = "icmp", dst_port = 22'), "monitor[0].rules[0].dst_port",
     "22", "protocol 'icmp' has no ports"),
    ("port with gre number", rule("protocol = 47, port = [1, 2]"), "monitor[0].rules[0].port",
     "[1, 2]", "has no ports"),
    ("family vs address", rule('family = "ipv4", dst = "2001:db8::/32"'),
     "monitor[0].rules[0].dst", "'2001:db8::/32'", "address family conflicts"),
    ("src vs dst families", rule('src = "10.0.0.0/8", dst = "::1"'), "monitor[0].rules[0].dst",
     "'::1'", "address family conflicts"),
    ("interface with space", rule('interface = "eth 0"'), "monitor[0].rules[0].interface",
     "'eth 0'", "interface name"),
    ("flow_log escapes", monitor('flow_log = "logs/../../etc/{monitor}"'), "monitor[0].flow_log",
     "'logs/../../etc/{monitor}'", "'..'"),
    ("flow_log placeholder", monitor('flow_log = "{name}.log"'), "monitor[0].flow_log",
     "'{name}.log'", "'{monitor}'"),
    ("flow_log not text", monitor("flow_log = 1"), "monitor[0].flow_log", "1", "valid string"),
    ("flow_log shared", monitor('flow_log = "flows.log"', "a") + monitor('flow_log = "flows.log"'),
     "monitor[1].flow_log", "'flows.log'", "monitor[0] already logs to '/var/lib/trafmetux/flows"),
    ("flow_log same after substitution",
     monitor('flow_log = "{monitor}.log"', "a") + monitor('flow_log = "a.log"', "b"),
     "monitor[1].flow_log", "'a.log'", "monitor[0] already logs"),
    ("quota unknown monitor", quota("limit = 1", '["m", "x"]'),
     "quota[0].monitors[1]", "'x'", "name of a [[monitor]]"),
    ("quota monitor twice", quota("limit = 1", '["m", "m"]'),
     "quota[0].monitors[1]", "'m'", "each monitor once"),
    ("warn above 1", quota("limit = 1\nwarn = 1.5"),
     "quota[0].warn", "1.5", "less than or equal to 1"),
    ("warn zero", quota("limit = 1\nwarn = 0"),
     "quota[0].warn", "0", "greater than 0"),
    ("start_day 29", quota("limit = 1\nstart_day = 29"),
     "quota[0].start_day", "29", "less than or equal to 28"),
    ("bad limit", quota('limit = "3XB"'),
     "quota[0].limit", "'3XB'", "'3GiB'"),
    ("zero limit", quota('limit = "0GB"'),
     "quota[0].limit", "'0GB'", "greater than 0"),
    ("bad period", quota('limit = 1\nperiod = "year"'),
     "quota[0].period", "'year'", "day, week, month"),
    ("quota without monitors", '[[quota]]\nname = "q"\nmonitors = []\nlimit = 1',
     "quota[0].monitors", "[]", "at least 1"),
    ("duplicate quota", quota("limit = 1") + quota("limit = 2", name="q").replace(monitor(), ""),
     "quota[1].name", "'q'", "quota[0] has it too"),
    ("hosts with host bits", monitor('hosts = ["192.168.1.1/24"]'),
     "monitor[0].hosts[0]", "'192.168.1.1/24'", "did you mean '192.168.1.0/24'"),
    ("hosts not a list", monitor('hosts = "192.168.1.0/24"'),
     "monitor[0].hosts", "'192.168.1.0/24'", "expected a list"),
    ("host_prefix_v6 above 128", monitor("host_prefix_v6 = 129"),
     "monitor[0].host_prefix_v6", "129", "less than or equal to 128"),
    ("max_hosts zero", monitor("max_hosts = 0"),
     "monitor[0].max_hosts", "0", "greater than or equal to 1"),
    ("unknown quota action", quota('limit = 1\naction = "drop"'),
     "quota[0].action", "'drop'", "report, block, mark"),
    ("mark action without mark", quota('limit = 1\naction = "mark"'),
     "quota[0].mark", "None", 'required with action = "mark"'),
    ("mark outside its mask", quota('limit = 1\naction = "mark"\nmark = 0x100\nmask = 0xff'),
     "quota[0].mark", "256", "bits outside mask 0xff"),
    ("mark above 32 bits", quota('limit = 1\naction = "mark"\nmark = 0x100000000'),
     "quota[0].mark", "4294967296", "less than or equal to 4294967295"),
    ("mark with block", quota('limit = 1\naction = "block"\nmark = 16'),
     "quota[0].mark", "16", 'only used with action = "mark"'),
    ("exempt on a report quota", quota('limit = 1\nexempt = [{ protocol = "udp" }]'),
     "quota[0].exempt", "[{'protocol': 'udp'}]", 'only used with action = "block" or "mark"'),
    ("strict on a report quota", quota("limit = 1\nstrict = true"),
     "quota[0].strict", "True", 'only used with action = "block" or "mark"'),
    ("bad exempt rule",
     quota('limit = 1\naction = "block"\nexempt = [{ protocol = "icmp", port = 53 }]'),
     "quota[0].exempt[0].port", "53", "protocol 'icmp' has no ports"),
    ("per_host quota on a monitor without hosts", quota("limit = 1\nper_host = true"),
     "quota[0].per_host", "True", "expected monitor 'm' to have `hosts`"),
    ("per_host not a boolean", quota('limit = 1\nper_host = "yes"'),
     "quota[0].per_host", "'yes'", "valid boolean"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "key_path", "value", "hint"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_config_names_file_key_value_and_expectation(text, key_path, value, hint):
    found = problems(text)
    prefix = f"{FILE}: {key_path} = {value}: "
    lines = [line for line in found if line.startswith(prefix)]
    assert lines, f"no problem starts with {prefix!r} in {found}"
    assert hint in lines[0]


def test_per_host_quota_names_each_monitor_without_hosts():
    text = (
        monitor('hosts = ["10.0.0.0/8"]', name="lan")
        + monitor("", name="wan")
        + monitor("", name="dmz")
        + '[[quota]]\nname = "q"\nmonitors = ["lan", "wan", "dmz"]\nlimit = 1\nper_host = true'
    )
    assert problems(text) == [
        f"{FILE}: quota[0].per_host = True: expected monitor 'wan' to have `hosts` "
        "(a per-host quota needs them)",
        f"{FILE}: quota[0].per_host = True: expected monitor 'dmz' to have `hosts` "
        "(a per-host quota needs them)",
    ]


def test_per_host_quota_on_monitors_with_hosts_loads():
    cfg = parse(
        monitor('hosts = ["10.0.0.0/8"]', name="lan")
        + '[[quota]]\nname = "q"\nmonitors = ["lan"]\nlimit = "1GiB"\nper_host = true'
    )
    (q,) = cfg.quotas
    assert q.per_host is True and q.monitors == ("lan",) and q.limit == 2**30
    assert parse(quota("limit = 1")).quotas[0].per_host is False


def test_missing_monitor_name_is_named_as_missing():
    assert problems('[[monitor]]\nrules = [{ direction = "in" }]') == [
        f"{FILE}: monitor[0].name: required key is missing"
    ]


def test_every_problem_is_reported_not_just_the_first():
    found = problems(
        'timezone = "Nowhere/City"\n[capture]\nqueue = -1\n'
        + monitor('rules = [{ port = 70000 }, { direction = "sideways" }]', name="a")
        + monitor("collector_size = 1", name="b")
        + '[[quota]]\nname = "q"\nmonitors = ["a", "c"]\nlimit = "x"'
    )
    paths = [line.split(": ")[1].split(" ")[0] for line in found]
    assert sorted(paths) == sorted(
        [
            "timezone",
            "capture.queue",
            "monitor[0].rules[0].port",
            "monitor[0].rules[1].direction",
            "monitor[1].collector_size",
            "quota[0].limit",
            "quota[0].monitors[1]",
        ]
    )


def test_toml_syntax_error_names_file_and_line():
    (line,) = problems('state_dir = "/x"\n\n[capture\nqueue = 1\n')
    assert line.startswith(f"{FILE}: TOML syntax error")
    assert "line 3" in line


def test_unreadable_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(config.ConfigError, match=f"^{missing}: cannot read"):
        config.load(missing)


def test_non_utf8_file_names_the_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'socket_group = "tr\xe4fik"\n')
    with pytest.raises(config.ConfigError, match=f"^{path}: not UTF-8"):
        config.load(str(path))


# --- interface names as the kernel takes them; lo is never queued ------------------------------


def test_interface_names_validated_as_the_kernel_does_every_entry_listed():
    found = problems(
        '[capture]\ninterfaces = ["eth0", "a b", "c/d", "' + "\u00e9" * 15 + '", "x:1", "n\\u0000"]'
    )
    assert [line.split(" = ")[0] for line in found] == [
        f"{FILE}: capture.interfaces[{i}]" for i in (1, 2, 3, 4, 5)
    ]
    assert "30 bytes long: the kernel allows 15" in found[2]
    assert "'\\x00'" in found[4]


def test_interface_name_of_15_bytes_passes_16_refused():
    assert parse('[capture]\ninterfaces = ["' + "e" * 15 + '"]').capture.interfaces == ("e" * 15,)
    (line,) = problems(rule('interface = "' + "\u00e9" * 8 + '"'))
    assert "monitor[0].rules[0].interface" in line and "16 bytes long" in line


def test_capture_star_means_every_interface_but_lo():
    assert parse('[capture]\ninterfaces = ["*"]').capture.interfaces == ()


def test_capture_glob_matching_loopback_is_refused():
    (line,) = problems('[capture]\ninterfaces = ["eth0", "l*"]')
    assert line.startswith(f"{FILE}: capture.interfaces[1] = 'l*': matches 'lo'")


def test_capture_hooks_default_to_prerouting_and_take_forward():
    assert parse("").capture.hooks == "prerouting"
    assert parse('[capture]\nhooks = "forward"').capture.hooks == "forward"


@pytest.mark.parametrize("value", ['"postrouting"', '"Forward"', "2", '["forward"]'])
def test_unknown_capture_hooks_are_named_with_the_choices(value):
    (line,) = problems(f"[capture]\nhooks = {value}")
    assert line.startswith(f"{FILE}: capture.hooks = ")
    assert '"prerouting"' in line and '"forward"' in line and "NAT gateway" in line


def test_duplicate_capture_interface_is_named():
    (line,) = problems('[capture]\ninterfaces = ["eth0", "eth0"]')
    assert line == f"{FILE}: capture.interfaces[1] = 'eth0': listed twice"


# --- every problem of every entry -------------------------------------------------------------


def test_bad_monitor_name_does_not_hide_its_rule_errors():
    found = problems(monitor('rules = [{ port = 70000 }, { src = ["x", "10.0.0.1/8"] }]', "a b"))
    paths = [line.split(" = ")[0].removeprefix(f"{FILE}: ") for line in found]
    assert paths == [
        "monitor[0].name",
        "monitor[0].rules[0].port",
        "monitor[0].rules[1].src[0]",
        "monitor[0].rules[1].src[1]",
    ]


def test_flush_interval_zero_suggests_only_accepted_values():
    (line,) = problems('flush_interval = "0s"')
    assert "at least 1s" in line and "ms" not in line.split(": ", 2)[2]


# --- the config file itself -------------------------------------------------------------------


def test_fifo_as_config_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "trafmetux.toml"
    os.mkfifo(fifo)
    with pytest.raises(config.ConfigError, match=f"^{fifo}: not a regular file \\(a FIFO\\)"):
        config.load(fifo)


def test_huge_config_file_is_refused(tmp_path):
    path = tmp_path / "big.toml"
    path.write_bytes(b"#" * (config.MAX_BYTES + 1))
    with pytest.raises(config.ConfigError, match="larger than"):
        config.load(path)


# --- capture workers: queues and stall_timeout --------------------------------------------------


def test_queues_and_stall_timeout_defaults():
    capture = parse("").capture
    assert (capture.queues, capture.stall_timeout) == (1, 1.0)


def test_queues_number_and_stall_timeout_duration():
    capture = parse('[capture]\nqueue = 10\nqueues = 4\nstall_timeout = "500ms"').capture
    assert (capture.queue, capture.queues, capture.stall_timeout) == (10, 4, 0.5)


def test_queues_auto_is_the_cpu_count_within_bounds():
    assert parse('[capture]\nqueues = "auto"').capture.queues == min(os.cpu_count() or 1, 64)
    assert cv.queues("auto", cpu_count=200) == 64
    assert cv.queues("auto", cpu_count=None) >= 1


@pytest.mark.parametrize("value", ["0", "65", '"many"', "true", "2.0"])
def test_queues_out_of_range_refused(value):
    (line,) = problems(f"[capture]\nqueues = {value}")
    assert line.startswith(f"{FILE}: capture.queues = ") and "1..64 or 'auto'" in line


def test_queues_past_the_last_queue_number_names_both_keys():
    (line,) = problems("[capture]\nqueue = 65530\nqueues = 7")
    assert "capture.queue (65530) + capture.queues (7) - 1 = 65536" in line
    assert parse("[capture]\nqueue = 65530\nqueues = 6").capture.queues == 6


@pytest.mark.parametrize("value", ['"100ms"', '"61s"', "0", '"soon"'])
def test_stall_timeout_out_of_range_refused(value):
    (line,) = problems(f"[capture]\nstall_timeout = {value}")
    assert line.startswith(f"{FILE}: capture.stall_timeout = ") and "200ms to 60s" in line


def test_stall_timeout_bounds_accepted():
    assert parse('[capture]\nstall_timeout = "200ms"').capture.stall_timeout == 0.2
    assert parse("[capture]\nstall_timeout = 60").capture.stall_timeout == 60.0


def test_store_defaults_to_sqlite_and_the_gateway_to_the_hostname():
    cfg = parse("")
    assert not cfg.store.postgresql
    assert cfg.store.gateway and cfg.store.gateway != "all"
    assert cfg.capture.enabled


def test_store_url_gateway_and_reporting_only_mode():
    cfg = parse(
        '[store]\nurl = "postgresql://meter@db.example/trafmetux"\ngateway = "branch-3"\n'
        'pending_memory = "8 MiB"\nconnect_timeout = "3s"\n[capture]\nenabled = false\n'
    )
    assert cfg.store.postgresql and cfg.store.url == "postgresql://meter@db.example/trafmetux"
    assert (cfg.store.gateway, cfg.store.pending_memory) == ("branch-3", 8 * 2**20)
    assert cfg.store.connect_timeout == 3.0
    assert not cfg.capture.enabled


def test_store_url_problems_never_show_the_password(tmp_path: Path):
    lines = problems('[store]\nurl = "mysql://meter:s3cret@db/x"\ngateway = "all"\n')
    assert any("store.url = 'mysql://meter:***@db/x'" in line for line in lines)
    assert any("store.gateway = 'all'" in line and "reserved" in line for line in lines)
    assert all("s3cret" not in line for line in lines)
    assert "s3cret" not in repr(parse('[store]\nurl = "postgresql://m:s3cret@db/x"\n'))


def test_store_url_file_is_read_and_its_bad_text_not_echoed(tmp_path: Path):
    good = tmp_path / "url"
    good.write_text("postgresql://meter:s3cret@db/x\n")
    assert parse(f'[store]\nurl_file = "{good}"\n').store.url == "postgresql://meter:s3cret@db/x"
    bad = tmp_path / "bad"
    bad.write_text("s3cret-password-only\n")
    lines = problems(f'[store]\nurl_file = "{bad}"\n')
    assert any("store.url_file" in line and "its first line" in line for line in lines)
    assert all("s3cret" not in line for line in lines)
    both = problems(f'[store]\nurl = "postgresql://db/x"\nurl_file = "{good}"\n')
    assert any("not both" in line for line in both)


def test_an_enforcing_quota_keeps_its_action_mark_exempt_rules_and_strictness():
    cfg = parse(
        'admin_group = "netadmin"\n'
        + quota('limit = "1MiB"\naction = "mark"\nmark = 0x10\nmask = 0xf0\nstrict = true\n'
                'exempt = [{ protocol = "udp", port = 53 }, { host = "192.168.1.10" }]')
    )  # fmt: skip
    (q,) = cfg.quotas
    assert (q.action, q.mark, q.mask, q.strict, q.enforces) == ("mark", 0x10, 0xF0, True, True)
    assert [r.port for r in q.exempt] == [((53, 53),), None]
    assert q.exempt[1].host == (ipaddress.ip_network("192.168.1.10/32"),)
    assert cfg.admin_group == "netadmin" and cfg.strict


def test_a_quota_only_reports_unless_told_otherwise():
    cfg = parse(quota("limit = 1"))
    (q,) = cfg.quotas
    assert (q.action, q.enforces, q.exempt, q.strict) == ("report", False, (), False)
    assert cfg.admin_group == "" and not cfg.strict


def test_check_warns_that_a_strict_quota_cuts_traffic_while_the_daemon_is_stopped(tmp_path):
    path = tmp_path / "strict.toml"
    path.write_text(quota('limit = 1\naction = "block"\nstrict = true'))
    run = [sys.executable, "-m", "trafmetuxd", "--config", str(path), "--check"]
    done = subprocess.run(run, capture_output=True, text=True, timeout=60, check=True)
    assert f"{path}: OK (1 monitors)" in done.stdout
    assert "WARNING: a quota has strict = true" in done.stdout
    assert "ALL traffic of the metered interfaces is dropped" in done.stdout
    path.write_text(quota('limit = 1\naction = "block"'))
    done = subprocess.run(run, capture_output=True, text=True, timeout=60, check=True)
    assert "WARNING" not in done.stdout
