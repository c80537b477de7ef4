"""trafmetuxctl: reports, flows, live rates and quota checks from the daemon's socket.

Imports only the stdlib and trafmetuxd.protocol (through client.py) so it starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial

from trafmetuxctl import report, times
from trafmetuxctl.client import DEFAULT_SOCKET, Client, DaemonError, UnreachableError
from trafmetuxctl.units import UNIT_CHOICES, parse_size
from trafmetuxd import __version__

TYPE_CHECKING = False  # typing costs ~2 ms of start-up; annotations only need it for mypy
if TYPE_CHECKING:
    from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
SHOW = {
    "show-minutely": "minute",
    "show-hourly": "hour",
    "show-daily": "day",
    "show-weekly": "week",
    "show-monthly": "month",
    "show-yearly": "year",
    "show-total": "total",
}
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MAX_FLOWS, MAX_TOP, MAX_LAST = 100_000, 10_000, 20_000  # as the daemon's protocol allows
HOST_PERIODS = ("hour", "day", "week", "month", "year")
TIMES = (
    f"Times are local (the daemon's zone): {times.FORMATS}. A date (or month) given as the end "
    "includes that whole day (or month); an end with a time of day is exclusive."
)


def week_day(text: str) -> int:
    """'monday'..'sunday' or 'mon'..'sun' -> 0..6."""
    t = text.lower()
    for i, name in enumerate(DAYS):
        if t == name or t == name[:3]:
            return i
    raise argparse.ArgumentTypeError(f"not a day of the week: {text!r}")


def _time(convert: Callable[[str], str]) -> Callable[[str], str]:
    def check(text: str) -> str:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return check


begin_time = _time(times.begin)
end_time = _time(times.end)


def counted(maximum: int) -> Callable[[str], int]:
    """An integer argument 1..maximum; the error says the maximum."""

    def check(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = 0
        if not 1 <= n <= maximum:
            raise argparse.ArgumentTypeError(f"expected an integer 1..{maximum}: {text!r}")
        return n

    return check


class UsageError(Exception):
    """A command line argparse refuses: its usage text and the message."""

    def __init__(self, usage: str, message: str) -> None:
        super().__init__(message)
        self.usage = usage
        self.message = message


class Parser(argparse.ArgumentParser):
    """argparse, with its usage error raised (main prints it as text or JSON, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Raise UsageError instead of printing and exiting here."""
        raise UsageError(self.format_usage(), f"{self.prog}: error: {message}")


def terminal_columns() -> int:
    """shutil.get_terminal_size().columns: $COLUMNS when positive, else the terminal's, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        columns = 0
    return columns or 80


class Formatter(argparse.HelpFormatter):
    """argparse's help formatter, sized as argparse sizes it, without importing shutil.

    argparse builds a formatter for every add_argument call (to check metavars); its own
    sizing imports shutil, which pulls in zlib, bz2 and lzma: ~2 ms of every start.
    """

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        width = terminal_columns() - 2 if width is None else width
        super().__init__(prog, indent_increment, max_help_position, width)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    p = Parser(
        prog="trafmetuxctl",
        description=__doc__.splitlines()[0],
        epilog="COMMAND --help describes each command. " + TIMES,
        formatter_class=Formatter,
    )
    p.add_argument(
        "--socket",
        default=os.environ.get("TRAFMETUX_SOCKET", DEFAULT_SOCKET),
        help="daemon socket (default: $TRAFMETUX_SOCKET or %(default)s)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the reply's result as JSON; errors too, as the daemon's error object",
    )
    p.add_argument("--timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version=f"trafmetuxctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = partial(sub.add_parser, formatter_class=Formatter)
    for name, period in SHOW.items():
        _show_args(
            add(name, help=f"traffic per {period}", description=_SHOW_TEXT[period], epilog=TIMES),
            period,
        )
    s = add(
        "show-flows", help="a monitor's flows, largest first", description=_FLOWS_TEXT, epilog=TIMES
    )
    s.add_argument("monitor", metavar="MONITOR")
    _range_args(s, 20, MAX_FLOWS, "flows")
    _gateway_args(s, _GATEWAY_SUM)
    s = add(
        "show-hosts", help="a monitor's hosts, largest first", description=_HOSTS_TEXT, epilog=TIMES
    )
    s.add_argument("monitor", metavar="MONITOR")
    s.add_argument("-b", "--begin", type=begin_time, metavar="TIME",
                   help="start of the range (default: 24 hours before -e)")  # fmt: skip
    s.add_argument("-e", "--end", type=end_time, metavar="TIME",
                   help="end of the range (default: now); a date includes its day")  # fmt: skip
    s.add_argument("-n", type=counted(MAX_FLOWS), default=20,
                   help=f"how many hosts (default: %(default)s, at most {MAX_FLOWS})")  # fmt: skip
    s.add_argument("--sort", choices=("total", "in", "out"), default="total",
                   help="what to rank by (default: %(default)s)")  # fmt: skip
    s.add_argument("--period", choices=HOST_PERIODS,
                   help="the hosts per period: the last N (-t) or those of -b .. -e")  # fmt: skip
    s.add_argument("-t", "--last", type=counted(MAX_LAST), metavar="N",
                   help="with --period: the last N periods, up to -e or now")  # fmt: skip
    s.add_argument("-f", "--week-start", type=week_day, metavar="DAY",
                   help="first day of the week (default: the daemon's week_start)")  # fmt: skip
    _unit_arg(s)
    _gateway_args(s, _GATEWAY_SUM)
    s = add("top", help="top clients, servers or ports", description=_TOP_TEXT, epilog=TIMES)
    s.add_argument("--by", choices=("client", "server", "port", "host"), default="client",
                   help="what to rank (default: %(default)s)")  # fmt: skip
    s.add_argument("monitors", nargs="*", metavar="MONITOR", help="default: all")
    _range_args(s, 10, MAX_TOP, "entries")
    _gateway_args(s, _GATEWAY_SUM)
    s = add("live", help="current rates per monitor", description=_LIVE_TEXT)
    s.add_argument("--hosts", metavar="MONITOR",
                   help="rates per host of this monitor (with `hosts`), largest first")  # fmt: skip
    s.add_argument("-n", type=counted(MAX_FLOWS), default=None,
                   help="with --hosts: how many hosts (default: 20)")  # fmt: skip
    s.add_argument("--once", action="store_true", help="one sample, then exit")
    s.add_argument("-i", "--interval", type=float, default=1.0,
                   help="seconds between samples (default: %(default)s)")  # fmt: skip
    _unit_arg(s)
    s.add_argument("monitors", nargs="*", metavar="MONITOR", help="default: all")
    for name, text in (("status", "daemon status"), ("flush", "flush now (root)")):
        add(name, help=text, description=text[0].upper() + text[1:] + ".")
    add("reload", help="reload the configuration (root)", description="As SIGHUP does (root).")
    s = add("quota", help="quota usage", description="Each quota's usage in its period.")
    s.add_argument("name", nargs="?", metavar="NAME", help="one quota (default: all)")
    _unit_arg(s)
    _gateway_args(s, _GATEWAY_SUM)
    s = add("check-quota", help="monitoring plugin: exit 0/1/2/3", description=_CHECK_TEXT)
    s.add_argument("name", metavar="NAME")
    s = add("quota-extend", help="more bytes for a quota, this period only (root, admin_group)",
            description=_EXTEND_TEXT)  # fmt: skip
    s.add_argument("name", metavar="NAME")
    s.add_argument("bytes", metavar="BYTES", type=_size, help="such as 1MiB, 500MB or 1048576")
    _unit_arg(s)
    s = add("quota-reset", help="count a quota afresh, this period only (root, admin_group)",
            description=_RESET_TEXT)  # fmt: skip
    s.add_argument("name", metavar="NAME")
    _unit_arg(s)
    return p


def _size(text: str) -> int:
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least one byte")
    return size


_SHOW_TEXT = {
    period: f"Bytes per {period} and monitor (the last {n} {period}s by default)."
    for period, n in {"minute": 60, "hour": 24, "day": 7, "week": 4, "month": 12, "year": 5}.items()
}
_SHOW_TEXT["total"] = "Bytes per monitor since the first data (-t, -b and -e do not apply)."
_FLOWS_TEXT = "A monitor's flows, largest (sent + received) first, over the last 24 hours."
_HOSTS_TEXT = (
    "The hosts of a monitor with `hosts`, largest first, over the last 24 hours (widened to "
    "whole quarter hours): in = bytes to the host, out = bytes from it. With --period, the "
    "hosts of each period: the last N (-t; defaults as show-*), or those of -b .. -e."
)
_TOP_TEXT = (
    "Top clients, servers or server ports by bytes, over the last 24 hours. Over several "
    "monitors a flow counts once (the largest figure any of them has), never once per monitor. "
    "--by host ranks the hosts of one monitor with `hosts` (the only one by default) by the "
    "figures of show-hosts (in + out)."
)
_LIVE_TEXT = (
    "Bytes per second, in and out, over the last few seconds. --hosts MONITOR: per host of "
    "that monitor, largest first (in = to the host, out = from it), counted with its totals."
)
_CHECK_TEXT = "One status line with perfdata; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."
_EXTEND_TEXT = (
    "Raise a quota's limit by BYTES until its period ends (a blocked quota is lifted within a "
    "second). Root, or a member of the configured admin_group; logged and shown by quota."
)
_RESET_TEXT = (
    "Count a quota from zero again until its period ends (what was used so far is set aside). "
    "Root, or a member of the configured admin_group; logged and shown by quota."
)


def gateway_list(text: str) -> list[str]:
    """'branch-1,branch-2' or 'all' -> the names, for --gateway."""
    names = [n.strip() for n in text.split(",")]
    if not all(names) or len(names) > 256:
        raise argparse.ArgumentTypeError(f"expected NAME[,NAME...] or 'all', not {text!r}")
    return names


def _gateway_args(s: argparse.ArgumentParser, sum_help: str | None = None) -> None:
    s.add_argument("--gateway", type=gateway_list, metavar="NAME[,NAME]|all",
                   help="the fleet store's gateways (default: the daemon's own); each line "
                   "names its gateway unless --sum")  # fmt: skip
    if sum_help is not None:
        s.add_argument("--sum", action="store_true", help=sum_help)


_GATEWAY_SUM = "with --gateway: the gateways added up"


def _unit_arg(s: argparse.ArgumentParser) -> None:
    s.add_argument("-u", "--unit", choices=UNIT_CHOICES, default="auto",
                   help="unit of the figures (default: %(default)s)")  # fmt: skip


def _show_args(s: argparse.ArgumentParser, period: str) -> None:
    s.add_argument("-t", "--last", type=counted(MAX_LAST), metavar="N",
                   help=f"the last N periods, up to -e or now (at most {MAX_LAST})")  # fmt: skip
    s.add_argument("-f", "--week-start", type=week_day, metavar="DAY",
                   help="first day of the week (default: the daemon's week_start)")  # fmt: skip
    _unit_arg(s)
    s.add_argument("--split", action="store_true", help="in and out per monitor")
    s.add_argument("--sum", action="store_true",
                   help="add a [sum= ] cell: the listed monitors added up (monitors that "
                   "overlap are then counted more than once); with --gateway: a column per "
                   "monitor, the gateways added up")  # fmt: skip
    s.add_argument("-b", "--begin", type=begin_time, metavar="TIME",
                   help="first period: the one holding TIME (not with -t)")  # fmt: skip
    s.add_argument("-e", "--end", type=end_time, metavar="TIME",
                   help="end of the range (default: now); a date includes its day")  # fmt: skip
    s.add_argument("--host", metavar="ADDR",
                   help="one host's traffic (an address, an IPv6 group such as fd00:1::/64, "
                   "or 'other'), in the monitors with `hosts` that count it")  # fmt: skip
    s.add_argument("monitors", nargs="*", metavar="MONITOR", help="default: all")
    _gateway_args(s)
    s.set_defaults(period=period)


def _range_args(s: argparse.ArgumentParser, default_n: int, maximum: int, what: str) -> None:
    s.add_argument("--since", type=begin_time, metavar="TIME",
                   help="start of the range (default: 24 hours before --until)")  # fmt: skip
    s.add_argument("--until", type=end_time, metavar="TIME",
                   help="end of the range (default: now); a date includes its day")  # fmt: skip
    s.add_argument("-n", type=counted(maximum), default=default_n,
                   help=f"how many {what} (default: %(default)s, at most {maximum})")  # fmt: skip
    _unit_arg(s)


def _print(lines: Sequence[str]) -> None:
    sys.stdout.write("".join(line + "\n" for line in lines))


def _dump(result: object) -> None:
    print(json.dumps(result, indent=2, sort_keys=True))


def _check_show(a: argparse.Namespace) -> None:
    """Combinations argparse cannot refuse by itself: -b with -t; a range for show-total."""
    message = ""
    if a.period == "total" and (a.last or a.begin or a.end):
        message = "-t, -b and -e do not apply to the total"
    elif a.last is not None and a.begin is not None:
        message = "-t counts back from -e (or now): give -b and -e, or -t (with -e), not -b and -t"
    if message:
        raise UsageError("", f"trafmetuxctl {a.command}: error: {message}")


def _show(c: Client, a: argparse.Namespace) -> int:
    result = c.call(
        "report",
        period=a.period,
        last=a.last,
        begin=a.begin,
        end=a.end,
        monitors=a.monitors or None,
        week_start=a.week_start,
        host=a.host,
        **_fleet(a),
    )
    if a.json:
        _dump(result)
    else:
        add_sum = a.sum and not a.gateway  # with --gateway, --sum added the gateways up
        _print(report.report_lines(result, a.unit, a.split, add_sum))
    return EXIT_OK


def _fleet(a: argparse.Namespace) -> dict[str, Any]:
    """The request's gateways and sum arguments (none without --gateway)."""
    if not a.gateway:
        return {}
    return {"gateways": a.gateway, "sum": True if a.sum else None}


def _flows(c: Client, a: argparse.Namespace) -> int:
    result = c.call("flows", monitor=a.monitor, begin=a.since, end=a.until, limit=a.n, **_fleet(a))
    _dump(result) if a.json else _print(report.flow_lines(result, a.unit))
    return EXIT_OK


def _hosts(c: Client, a: argparse.Namespace) -> int:
    result = c.call(
        "hosts",
        monitor=a.monitor,
        begin=a.begin,
        end=a.end,
        limit=a.n,
        sort=a.sort,
        period=a.period,
        last=a.last,
        week_start=a.week_start,
        **_fleet(a),
    )
    if a.json:
        _dump(result)
    elif a.period is None:
        _print(report.host_lines(result, a.unit))
    else:
        _print(report.host_period_lines(result, a.unit))
    return EXIT_OK


def _check_hosts(a: argparse.Namespace) -> None:
    """-t and -f count periods: they need --period; -t counts back from -e, not from -b."""
    message = ""
    if a.period is None and (a.last is not None or a.week_start is not None):
        message = "-t and -f apply to periods: give --period"
    elif a.last is not None and a.begin is not None:
        message = "-t counts back from -e (or now): give -b and -e, or -t (with -e), not -b and -t"
    if message:
        raise UsageError("", f"trafmetuxctl {a.command}: error: {message}")


def _top(c: Client, a: argparse.Namespace) -> int:
    monitors = a.monitors or None
    result = c.call(
        "top", by=a.by, monitors=monitors, begin=a.since, end=a.until, limit=a.n, **_fleet(a)
    )
    _dump(result) if a.json else _print(report.top_lines(result, a.unit))
    return EXIT_OK


def _live(c: Client, a: argparse.Namespace) -> int:
    tty = sys.stdout.isatty() and not a.json
    try:
        while True:
            result = c.call("live", monitors=a.monitors or None, hosts=a.hosts, limit=a.n)
            if a.json:
                _dump(result)
            else:
                _print(["\033[H\033[J" * tty + time.strftime("%H:%M:%S")])
                lines = report.live_host_lines if a.hosts else report.live_lines
                _print(lines(result, a.unit))
            if a.once:
                return EXIT_OK
            sys.stdout.flush()
            time.sleep(a.interval)
    except KeyboardInterrupt:
        return EXIT_OK


def _plain(cmd: str) -> Callable[[Client, argparse.Namespace], int]:
    def run(c: Client, a: argparse.Namespace) -> int:
        result = c.call(cmd)
        _dump(result) if a.json else _print(_key_values(result))
        return EXIT_OK

    return run


def _key_values(result: Any, indent: str = "") -> list[str]:
    if not isinstance(result, dict):
        return [indent + json.dumps(result)]
    lines = []
    for k, v in result.items():
        if isinstance(v, dict):
            lines += [f"{indent}{k}:", *_key_values(v, indent + "  ")]
        elif isinstance(v, list) and v and all(isinstance(item, dict) for item in v):
            lines.append(f"{indent}{k}:")
            for item in v:  # one block per entry (the capture workers, say), YAML-like
                first, *rest = _key_values(item, indent + "    ")
                lines += [f"{indent}  - {first.lstrip()}", *rest]
        else:
            lines.append(f"{indent}{k}: {v if isinstance(v, str) else json.dumps(v)}")
    return lines


def _quota(c: Client, a: argparse.Namespace) -> int:
    result = c.call("quota", name=a.name, **_fleet(a))
    _dump(result) if a.json else _print(report.quota_lines(result, a.unit))
    return EXIT_OK


def _adjust(c: Client, a: argparse.Namespace) -> int:
    if a.command == "quota-extend":
        result = c.call("quota-extend", name=a.name, bytes=a.bytes)
    else:
        result = c.call("quota-reset", name=a.name)
    _dump(result) if a.json else _print(report.quota_lines({"quotas": [result["quota"]]}, a.unit))
    return EXIT_OK


def check_quota(sock: str, name: str, timeout: float, as_json: bool) -> int:
    """Monitoring plugin: one status line plus perfdata; 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""
    try:
        with Client(sock, timeout) as c:
            (q,) = c.call("quota", name=name)["quotas"]
    except UnreachableError as exc:
        return _fail(as_json, "unreachable", str(exc), 3, f"QUOTA UNKNOWN - {exc}")
    except DaemonError as exc:
        return _fail(as_json, exc.code, exc.message, 3, f"QUOTA UNKNOWN - {exc}")
    status, line = report.check_quota_line(q)
    _dump(q) if as_json else print(line)
    return status


def _fail(as_json: bool, code: str, message: str, status: int, text: str) -> int:
    """Report an error: the daemon's error object on stdout with --json, else text on stderr.

    (A monitoring plugin's UNKNOWN line goes to stdout: that is where the plugin API reads it.)
    """
    if as_json:
        _dump({"ok": False, "error": {"code": code, "message": message}})
    else:
        print(text, file=sys.stdout if text.startswith("QUOTA ") else sys.stderr)
    return status


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    **dict.fromkeys(SHOW, _show),
    "show-flows": _flows,
    "show-hosts": _hosts,
    "top": _top,
    "live": _live,
    "status": _plain("status"),
    "flush": _plain("flush"),
    "reload": _plain("reload"),
    "quota": _quota,
    "quota-extend": _adjust,
    "quota-reset": _adjust,
}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The parsed command line; UsageError when argparse or a combination check refuses it."""
    a = build_parser().parse_args(argv)
    if a.command in SHOW:
        _check_show(a)
    elif a.command == "live" and a.hosts is None and a.n is not None:
        raise UsageError("", "trafmetuxctl live: error: -n counts hosts: give --hosts")
    elif a.command == "live" and a.hosts is not None and a.monitors:
        raise UsageError("", "trafmetuxctl live: error: give MONITOR... or --hosts, not both")
    elif a.command == "show-hosts":
        _check_hosts(a)
    return a


COMPLETE_TIMEOUT = 1.0  # a shell waits on this: give up quickly
# `--complete KIND`: what the shell completion lists, and how to read it from a reply
COMPLETIONS: dict[str, tuple[str, str, str]] = {
    "monitors": ("monitors", "monitors", "name"),
    "quotas": ("quota", "quotas", "name"),
}


def complete(args: Sequence[str]) -> int:
    """`[--socket PATH] --complete monitors|quotas`: the daemon's names, one a line.

    For the shell completion scripts: no parser is built, and nothing is printed (exit 0)
    when the daemon cannot be asked, so completing never shows an error.
    """
    kind = args[-1]
    sock = os.environ.get("TRAFMETUX_SOCKET", DEFAULT_SOCKET)
    if "--socket" in args[:-2]:
        sock = args[args.index("--socket") + 1]
    if kind not in COMPLETIONS:
        return EXIT_OK
    cmd, key, field = COMPLETIONS[kind]
    try:
        with Client(sock, COMPLETE_TIMEOUT) as c:
            names = [entry[field] for entry in c.call(cmd)[key]]
    except (UnreachableError, DaemonError, KeyError, TypeError, ValueError):
        return EXIT_OK
    _print([name for name in names if isinstance(name, str)])
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, ask the daemon, print; returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[-2:-1] == ["--complete"]:  # as the completion scripts call it: the kind last
        return complete(args)
    try:
        a = _parse(args)
    except UsageError as exc:
        text = f"{exc.usage}{exc.message}".strip()
        return _fail("--json" in args, "usage", exc.message, EXIT_USAGE, text)
    if a.command == "check-quota":
        return check_quota(a.socket, a.name, a.timeout, a.json)
    try:
        with Client(a.socket, a.timeout) as c:
            return COMMANDS[a.command](c, a)
    except UnreachableError as exc:
        return _fail(a.json, "unreachable", str(exc), EXIT_UNREACHABLE, f"trafmetuxctl: {exc}")
    except DaemonError as exc:
        usage = exc.code in ("bad_argument", "not_found", "forbidden")
        text = f"trafmetuxctl: {exc.message} ({exc.code})"
        return _fail(a.json, exc.code, exc.message, EXIT_USAGE if usage else EXIT_ERROR, text)


if __name__ == "__main__":
    sys.exit(main())
