"""trafmetuxctl: reports, flows, live rates and quota checks from the daemon's socket.

Imports only the stdlib and trafmetuxd.protocol (through client.py) so it starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial

from trafmetuxctl import report
from trafmetuxctl.client import DEFAULT_SOCKET, Client, DaemonError, UnreachableError
from trafmetuxctl.units import UNIT_CHOICES

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
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?)?$")


def week_day(text: str) -> int:
    """'monday'..'sunday' or 'mon'..'sun' -> 0..6."""
    t = text.lower()
    for i, name in enumerate(DAYS):
        if t == name or t == name[:3]:
            return i
    raise argparse.ArgumentTypeError(f"not a day of the week: {text!r}")


def local_time(text: str) -> str:
    """Check 'YYYY-MM-DD' or 'YYYY-MM-DD HH:MM' (the daemon reads it in its zone)."""
    if not _TIME_RE.match(text):
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD or 'YYYY-MM-DD HH:MM': {text!r}")
    return text


def positive(text: str) -> int:
    """A positive integer argument."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer: {text!r}")
    return n


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
    p = argparse.ArgumentParser(
        prog="trafmetuxctl", description=__doc__.splitlines()[0], formatter_class=Formatter
    )
    p.add_argument(
        "--socket",
        default=os.environ.get("TRAFMETUX_SOCKET", DEFAULT_SOCKET),
        help="daemon socket (default: $TRAFMETUX_SOCKET or %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the reply's result as JSON")
    p.add_argument("--timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = partial(sub.add_parser, formatter_class=Formatter)
    for name, period in SHOW.items():
        s = add(name, help=f"traffic per {period}")
        s.add_argument("-t", "--last", type=positive, help="number of periods")
        s.add_argument("-f", "--week-start", type=week_day, help="first day of the week")
        s.add_argument("-u", "--unit", choices=UNIT_CHOICES, default="auto")
        s.add_argument("--split", action="store_true", help="in and out per monitor")
        s.add_argument("-b", "--begin", type=local_time, help="first period (local time)")
        s.add_argument("-e", "--end", type=local_time, help="end of the range (local time)")
        s.add_argument("monitors", nargs="*", metavar="MONITOR", help="default: all")
        s.set_defaults(period=period)
    s = add("show-flows", help="a monitor's flows, largest first")
    s.add_argument("monitor", metavar="MONITOR")
    _range_args(s, default_n=20)
    s = add("top", help="top clients, servers or ports")
    s.add_argument("--by", choices=("client", "server", "port"), default="client")
    s.add_argument("monitors", nargs="*", metavar="MONITOR", help="default: all")
    _range_args(s, default_n=10)
    s = add("live", help="current rates per monitor")
    s.add_argument("--once", action="store_true", help="one sample, then exit")
    s.add_argument("-i", "--interval", type=float, default=1.0)
    s.add_argument("-u", "--unit", choices=UNIT_CHOICES, default="auto")
    s.add_argument("monitors", nargs="*", metavar="MONITOR")
    for name, text in (("status", "daemon status"), ("flush", "flush now (root)")):
        add(name, help=text)
    add("reload", help="reload the configuration (root)")
    s = add("quota", help="quota usage")
    s.add_argument("name", nargs="?", metavar="NAME")
    s.add_argument("-u", "--unit", choices=UNIT_CHOICES, default="auto")
    s = add("check-quota", help="monitoring plugin: exit 0/1/2/3")
    s.add_argument("name", metavar="NAME")
    return p


def _range_args(s: argparse.ArgumentParser, default_n: int) -> None:
    s.add_argument("--since", type=local_time, help="local time (default: 24 hours ago)")
    s.add_argument("--until", type=local_time, help="local time (default: now)")
    s.add_argument("-n", type=positive, default=default_n, help="how many (default %(default)s)")
    s.add_argument("-u", "--unit", choices=UNIT_CHOICES, default="auto")


def _print(lines: Sequence[str]) -> None:
    sys.stdout.write("".join(line + "\n" for line in lines))


def _dump(result: object) -> None:
    print(json.dumps(result, indent=2, sort_keys=True))


def _show(c: Client, a: argparse.Namespace) -> int:
    result = c.call(
        "report",
        period=a.period,
        last=a.last,
        begin=a.begin,
        end=a.end,
        monitors=a.monitors or None,
        week_start=a.week_start,
    )
    if a.json:
        _dump(result)
    else:
        _print(report.report_lines(result, a.unit, a.split))
    return EXIT_OK


def _flows(c: Client, a: argparse.Namespace) -> int:
    result = c.call("flows", monitor=a.monitor, begin=a.since, end=a.until, limit=a.n)
    _dump(result) if a.json else _print(report.flow_lines(result, a.unit))
    return EXIT_OK


def _top(c: Client, a: argparse.Namespace) -> int:
    monitors = a.monitors or None
    result = c.call("top", by=a.by, monitors=monitors, begin=a.since, end=a.until, limit=a.n)
    _dump(result) if a.json else _print(report.top_lines(result, a.unit))
    return EXIT_OK


def _live(c: Client, a: argparse.Namespace) -> int:
    tty = sys.stdout.isatty() and not a.json
    try:
        while True:
            result = c.call("live", monitors=a.monitors or None)
            if a.json:
                _dump(result)
            else:
                _print(["\033[H\033[J" * tty + time.strftime("%H:%M:%S")])
                _print(report.live_lines(result, a.unit))
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
        else:
            lines.append(f"{indent}{k}: {v if isinstance(v, str) else json.dumps(v)}")
    return lines


def _quota(c: Client, a: argparse.Namespace) -> int:
    result = c.call("quota", name=a.name)
    _dump(result) if a.json else _print(report.quota_lines(result, a.unit))
    return EXIT_OK


def check_quota(sock: str, name: str, timeout: float, as_json: bool) -> int:
    """Monitoring plugin: one status line plus perfdata; 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""
    try:
        with Client(sock, timeout) as c:
            (q,) = c.call("quota", name=name)["quotas"]
    except (UnreachableError, DaemonError) as exc:
        print(f"QUOTA UNKNOWN - {exc}")
        return 3
    status, line = report.check_quota_line(q)
    _dump(q) if as_json else print(line)
    return status


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    **dict.fromkeys(SHOW, _show),
    "show-flows": _flows,
    "top": _top,
    "live": _live,
    "status": _plain("status"),
    "flush": _plain("flush"),
    "reload": _plain("reload"),
    "quota": _quota,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, ask the daemon, print; returns the exit status."""
    a = build_parser().parse_args(argv)
    if a.command == "check-quota":
        return check_quota(a.socket, a.name, a.timeout, a.json)
    try:
        with Client(a.socket, a.timeout) as c:
            return COMMANDS[a.command](c, a)
    except UnreachableError as exc:
        print(f"trafmetuxctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except DaemonError as exc:
        print(f"trafmetuxctl: {exc.message} ({exc.code})", file=sys.stderr)
        usage = exc.code in ("bad_argument", "not_found", "forbidden")
        return EXIT_USAGE if usage else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
