"""Control socket protocol: one JSON object per line each way. Stdlib only, shared with the client.

Request:  {"v": 1, "cmd": "report", "period": "day", "last": 7, "monitors": ["input"]}
Reply:    {"ok": true, "result": ...}
          {"ok": false, "error": {"code": "bad_argument", "message": "..."}}
"""

from __future__ import annotations

import json
import re
from collections import namedtuple
from collections.abc import Callable, Mapping

# `typing` costs ~2 ms of every trafmetuxctl start, so only mypy reads it here: the tuples
# below are built at run time by collections.namedtuple, exactly as typing.NamedTuple does.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple

VERSION = 1
MAX_LINE = 64 * 1024  # bytes per request line, newline not counted
MAX_DEPTH = 32  # nesting of arrays and objects in a request (a real one nests 2 deep)
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')  # a JSON string: its brackets do not nest
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")

# Stable error codes: clients and scripts may switch on them.
BAD_JSON = "bad_json"
BAD_REQUEST = "bad_request"
UNKNOWN_COMMAND = "unknown_command"
BAD_ARGUMENT = "bad_argument"
TOO_LARGE = "too_large"
FORBIDDEN = "forbidden"
NOT_FOUND = "not_found"
UNAVAILABLE = "unavailable"
INTERNAL = "internal"

READ = "read"
ADMIN = "admin"
# root, or a member of the configured admin_group: decided by the daemon from the peer's
# credentials, which the front forwards with the request (the front lets socket-group members by)
OPERATE = "operate"
PEER = "peer"  # the argument under which the daemon hands an OPERATE handler its peer

PERIODS = ("minute", "hour", "day", "week", "month", "year", "total")
TOP_KEYS = ("client", "server", "port", "host")


class ProtocolError(Exception):
    """A request that cannot be served; carries a stable error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


if TYPE_CHECKING:

    class Command(NamedTuple):
        """What a command accepts and who may run it."""

        permission: str
        args: Mapping[str, Check] = {}  # shared default, never mutated
        required: tuple[str, ...] = ()

    class _RequestFields(NamedTuple):
        cmd: str
        args: dict[str, Any]

    class Reply(NamedTuple):
        """A decoded reply as the client sees it."""

        ok: bool
        result: Any = None
        code: str = ""
        message: str = ""

else:
    Command = namedtuple("Command", ("permission", "args", "required"), defaults=({}, ()))
    _RequestFields = namedtuple("Request", ("cmd", "args"))
    Reply = namedtuple("Reply", ("ok", "result", "code", "message"), defaults=(None, "", ""))


class Check:
    """An argument's test and, for its error message, what it expects."""

    __slots__ = ("expected", "test")

    def __init__(self, test: Callable[[Any], bool], expected: str) -> None:
        self.test = test
        self.expected = expected

    def __call__(self, value: Any) -> bool:
        """True when value is acceptable."""
        return self.test(value)


def _is_int(lo: int, hi: int) -> Check:
    return Check(lambda v: type(v) is int and lo <= v <= hi, f"an integer {lo}..{hi}")


def _is_text(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 256


_is_str = Check(_is_text, "a string of 1..256 characters")
# local time text ("YYYY-MM[-DD[ HH:MM[:SS]]]") or unix seconds
_is_time = Check(
    lambda v: _is_text(v) or (type(v) in (int, float) and 0 <= v < 2**40),
    "unix seconds or local time text such as '2026-10-25' or '2026-10-25 14:00'",
)
_is_names = Check(
    lambda v: isinstance(v, list) and len(v) <= 256 and all(_is_text(x) for x in v),
    "a list of at most 256 names",
)


def _one_of(*choices: str) -> Check:
    return Check(lambda v: v in choices, "one of " + ", ".join(choices))


_is_bool = Check(lambda v: type(v) is bool, "true or false")


_RANGE = {"begin": _is_time, "end": _is_time}
# the fleet store's gateways to read (["all"]: every one) and whether to sum them
_FLEET = {"gateways": _is_names, "sum": _is_bool}
HOST_SORTS = ("total", "in", "out")  # what the hosts command ranks by, largest first
HOST_PERIODS = ("hour", "day", "week", "month", "year")  # the hosts command's periods
COMMANDS: Mapping[str, Command] = {
    "status": Command(READ),
    "monitors": Command(READ),
    "report": Command(
        READ,
        {
            "period": _one_of(*PERIODS),
            "last": _is_int(1, 100_000),
            "monitors": _is_names,
            "week_start": _is_int(0, 6),
            "split": _is_bool,
            "host": _is_str,
            **_RANGE,
            **_FLEET,
        },
        required=("period",),
    ),
    "flows": Command(
        READ,
        {"monitor": _is_str, "limit": _is_int(1, 100_000), **_RANGE, **_FLEET},
        ("monitor",),
    ),
    "top": Command(
        READ,
        {
            "by": _one_of(*TOP_KEYS),
            "monitors": _is_names,
            "limit": _is_int(1, 10_000),
            **_RANGE,
            **_FLEET,
        },
    ),
    "hosts": Command(
        READ,
        {
            "monitor": _is_str,
            "limit": _is_int(1, 100_000),
            "sort": _one_of(*HOST_SORTS),
            "period": _one_of(*HOST_PERIODS),
            "last": _is_int(1, 100_000),
            "week_start": _is_int(0, 6),
            **_RANGE,
            **_FLEET,
        },
        ("monitor",),
    ),
    "live": Command(READ, {"monitors": _is_names, "hosts": _is_str, "limit": _is_int(1, 100_000)}),
    "quota": Command(READ, {"name": _is_str, **_FLEET}),
    "quota-extend": Command(
        OPERATE, {"name": _is_str, "bytes": _is_int(1, 2**53)}, ("name", "bytes")
    ),
    "quota-reset": Command(OPERATE, {"name": _is_str}, ("name",)),
    "metrics": Command(READ),
    "flush": Command(ADMIN),
    "reload": Command(ADMIN),
}


class Request(_RequestFields):
    """A validated request: a known command and its checked arguments."""

    __slots__ = ()

    @property
    def permission(self) -> str:
        """READ, OPERATE or ADMIN."""
        return COMMANDS[self.cmd].permission


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _loads_object(line: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(BAD_JSON, f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_REQUEST, "expected a JSON object")
    return obj


def too_deep(line: bytes) -> bool:
    """True when the arrays and objects of a JSON text nest deeper than MAX_DEPTH (unparsed)."""
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return False  # the usual case, at C speed
    depth = 0
    for byte in _STRING.sub(b"", line).translate(None, _NOT_BRACKETS):
        depth += 1 if byte in b"[{" else -1
        if depth > MAX_DEPTH:
            return True
    return False


def encode_request(cmd: str, **args: Any) -> bytes:
    """One request line; arguments whose value is None are left out."""
    return _dumps({"v": VERSION, "cmd": cmd, **{k: v for k, v in args.items() if v is not None}})


def decode_request(line: bytes) -> Request:
    """Parse and validate one request line or raise ProtocolError."""
    if len(line.rstrip(b"\n")) > MAX_LINE:
        raise ProtocolError(TOO_LARGE, f"line longer than {MAX_LINE} bytes")
    # json recurses once per level: 3,000 '[' would raise RecursionError instead of an answer
    if too_deep(line):
        raise ProtocolError(BAD_JSON, f"arrays and objects nested deeper than {MAX_DEPTH}")
    obj = _loads_object(line)
    if obj.pop("v", VERSION) != VERSION:
        raise ProtocolError(BAD_REQUEST, f"unsupported protocol version (this is {VERSION})")
    cmd = obj.pop("cmd", None)
    if not isinstance(cmd, str):
        raise ProtocolError(BAD_REQUEST, "missing 'cmd'")
    spec = COMMANDS.get(cmd)
    if spec is None:
        raise ProtocolError(UNKNOWN_COMMAND, f"unknown command {cmd[:64]!r}")
    for name, value in obj.items():
        check = spec.args.get(name)
        if check is None:
            raise ProtocolError(BAD_ARGUMENT, f"{cmd}: unknown argument {name[:64]!r}")
        if not check(value):
            message = f"{cmd}: bad value for {name!r}: expected {check.expected}"
            raise ProtocolError(BAD_ARGUMENT, message)
    missing = [name for name in spec.required if name not in obj]
    if missing:
        raise ProtocolError(BAD_ARGUMENT, f"{cmd}: missing argument {missing[0]!r}")
    return Request(cmd, obj)


def encode_reply_ok(result: object) -> bytes:
    """A success reply line."""
    return _dumps({"ok": True, "result": result})


def encode_reply_err(code: str, message: str) -> bytes:
    """An error reply line with a stable code."""
    return _dumps({"ok": False, "error": {"code": code, "message": message}})


def decode_reply(line: bytes) -> Reply:
    """Parse one reply line (client side) or raise ProtocolError."""
    obj = _loads_object(line)
    if obj.get("ok") is True:
        return Reply(True, obj.get("result"))
    err = obj.get("error")
    if not isinstance(err, dict):
        raise ProtocolError(BAD_REQUEST, "malformed reply")
    return Reply(False, None, str(err.get("code", INTERNAL)), str(err.get("message", "")))
