"""The front's read-only HTTP/1.1 server: /metrics, /api/v1/<command> and the dashboard.

GET (and HEAD) only, one request per connection, the request head bounded in size and time,
connections bounded in number, optional basic auth against a bcrypt hash. Every answer comes
from the daemon over the same link and pacing as the control socket's requests (all HTTP
clients share one turn in its rounds), so nothing sent here can crowd out a socket user or
reach the packet path.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import bcrypt

from trafmetuxd import dashboard, protocol
from trafmetuxd.exposition import Exposition
from trafmetuxd.logs import RateLimitedLog
from trafmetuxd.protocol import ProtocolError

log = logging.getLogger("trafmetuxd.web")

MAX_HEAD = 8192  # bytes of request line and headers
HEAD_TIMEOUT = 5.0  # seconds a client has to send its whole request head
WRITE_TIMEOUT = 10.0  # seconds a response may wait for a client that does not read
METRICS_TTL = 1.0  # seconds one scrape's figures serve every scraper
AUTH_TTL = 300.0  # seconds a checked Authorization header is trusted again without bcrypt
HTTP_UID = -1  # the rounds' "user" every HTTP request takes its turn as
API_COMMANDS = ("status", "monitors", "report", "flows", "top", "quota", "live")
REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 503: "Service Unavailable",
}  # fmt: skip
ERROR_STATUS = {
    protocol.NOT_FOUND: 404, protocol.UNKNOWN_COMMAND: 404, protocol.UNAVAILABLE: 503,
    protocol.INTERNAL: 500, protocol.FORBIDDEN: 403,
}  # fmt: skip
REASONS[403] = "Forbidden"

# A request line to the daemon -> its reply line (the front's Forwarder.call).
Call = Callable[[bytes], Awaitable[bytes]]


class HttpError(Exception):
    """A request answered with an error status and a one-line message."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass(frozen=True, slots=True)
class Response:
    """What goes back: status, content type, body and extra headers."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Head:
    """A parsed request head."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]


def parse_head(raw: bytes) -> Head:
    """The request line and headers, or HttpError 400 naming what is wrong."""
    try:
        text = raw.decode("iso-8859-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HttpError(400, "undecodable request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise HttpError(400, f"malformed request line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, f"malformed header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
        raise HttpError(400, "a request body is not accepted")
    url = urlsplit(parts[1])
    return Head(parts[0], unquote(url.path), parse_qsl(url.query), headers)


def api_request(command: str, query: list[tuple[str, str]]) -> protocol.Request:
    """/api/v1/<command>?k=v... as the socket's request, validated by the same protocol code."""
    if command not in API_COMMANDS:
        raise ProtocolError(protocol.UNKNOWN_COMMAND, f"no such read-only command {command!r}")
    checks = protocol.COMMANDS[command].args
    args: dict[str, Any] = {}
    for name, value in query:
        if name == "monitors":
            args.setdefault(name, []).extend(v for v in value.split(",") if v)
        elif name not in checks:
            args[name] = value  # decode_request names it as unknown
        else:
            args[name] = _typed(value)
    return protocol.decode_request(protocol.encode_request(command, **args))


def _typed(value: str) -> object:
    """A query value as JSON would have it: integers, true/false, else the text."""
    if value in ("true", "false"):
        return value == "true"
    with contextlib.suppress(ValueError):
        return int(value)
    return value


def _json_response(status: int, obj: object) -> Response:
    body = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    return Response(status, "application/json", body)


class Auth:
    """Basic auth against a bcrypt hash; a checked header is trusted for AUTH_TTL."""

    def __init__(self, user: str, digest: str) -> None:
        self.user = user
        self.digest = digest.encode()
        self.good: dict[str, float] = {}
        self.lock = asyncio.Lock()  # one bcrypt at a time: guessing costs the guesser

    async def check(self, header: str | None) -> None:
        """Return when the header carries the password, else HttpError 401."""
        if not self.digest:
            return
        now = time.monotonic()
        if header is not None and self.good.get(header, 0.0) > now:
            return
        if header is not None and await self._verify(header):
            if len(self.good) > 64:
                self.good.clear()
            self.good[header] = now + AUTH_TTL
            return
        challenge = {"WWW-Authenticate": 'Basic realm="trafmetux", charset="UTF-8"'}
        raise HttpError(401, "authentication required", challenge)

    async def _verify(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep or not hmac.compare_digest(user.encode(), self.user.encode()):
            return False
        async with self.lock:
            return await asyncio.to_thread(bcrypt.checkpw, password.encode(), self.digest)


class WebServer:
    """Serves the HTTP listeners the daemon bound and passed to the front."""

    def __init__(self, call: Call, max_clients: int, auth: Auth) -> None:
        self.call = call
        self.max_clients = max_clients
        self.auth = auth
        self.clients = 0
        self.refused = 0
        self.exposition = Exposition()
        self._scrape: tuple[float, asyncio.Future[Mapping[str, Any] | None]] | None = None
        self._servers: list[asyncio.Server] = []
        self._log = RateLimitedLog(log)
        self.routes: dict[str, Callable[[Head], Awaitable[Response]]] = {
            "/metrics": self.metrics,
            "/": self.dashboard,
        }

    async def start(self, listeners: list[socket.socket]) -> None:
        """Accept on every listener."""
        for sock in listeners:
            server = await asyncio.start_server(self._client, sock=sock, limit=MAX_HEAD)
            self._servers.append(server)

    async def close(self) -> None:
        """Stop accepting."""
        for server in self._servers:
            server.close()
        self._servers.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients += 1
        try:
            if self.clients > self.max_clients:
                self.refused += 1
                await self._send(writer, _error(HttpError(503, "too many connections")), False)
                return
            head_only = False
            try:
                head = await self._read_head(reader)
                head_only = head.method == "HEAD"
                response = await self.respond(head)
            except HttpError as exc:
                response = _error(exc)
            await self._send(writer, response, head_only)
        except (ConnectionError, TimeoutError):
            pass
        except Exception as exc:
            self._log.error("HTTP connection failed: %s: %s", type(exc).__name__, exc)
        finally:
            self.clients -= 1
            writer.close()

    async def _read_head(self, reader: asyncio.StreamReader) -> Head:
        try:
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except TimeoutError:
            raise HttpError(408, f"request head not received within {HEAD_TIMEOUT:g} s") from None
        except asyncio.LimitOverrunError:
            raise HttpError(431, f"request head larger than {MAX_HEAD} bytes") from None
        except asyncio.IncompleteReadError:
            raise ConnectionResetError from None
        return parse_head(raw[:-4])

    async def respond(self, head: Head) -> Response:
        """The response to one parsed request."""
        if head.method not in ("GET", "HEAD"):
            raise HttpError(405, f"method {head.method[:16]} not allowed: read-only",
                            {"Allow": "GET, HEAD"})  # fmt: skip
        await self.auth.check(head.headers.get("authorization"))
        if head.path.startswith("/api/v1/"):
            return await self.api(head.path.removeprefix("/api/v1/"), head.query)
        route = self.routes.get(head.path)
        if route is None:
            raise HttpError(404, f"no such page {head.path[:80]!r}")
        return await route(head)

    async def ask(self, req: protocol.Request) -> protocol.Reply:
        """The daemon's decoded reply to one validated request."""
        line = protocol.encode_request(req.cmd, **req.args)
        return protocol.decode_reply(await self.call(line))

    async def api(self, command: str, query: list[tuple[str, str]]) -> Response:
        """/api/v1/<command>: the socket's JSON reply."""
        try:
            reply = await self.ask(api_request(command, query))
        except ProtocolError as exc:
            reply = protocol.Reply(False, None, exc.code, exc.message)
        if reply.ok:
            return _json_response(200, {"ok": True, "result": reply.result})
        error = {"code": reply.code, "message": reply.message}
        return _json_response(ERROR_STATUS.get(reply.code, 400), {"ok": False, "error": error})

    async def figures(self) -> Mapping[str, Any] | None:
        """The daemon's metrics figures, fetched at most once per METRICS_TTL for everyone."""
        now = time.monotonic()
        if self._scrape is None or now - self._scrape[0] >= METRICS_TTL:
            self._scrape = (now, asyncio.ensure_future(self._fetch_figures()))
        return await asyncio.shield(self._scrape[1])

    async def _fetch_figures(self) -> Mapping[str, Any] | None:
        reply = await self.ask(protocol.Request("metrics", {}))
        return reply.result if reply.ok and isinstance(reply.result, dict) else None

    async def metrics(self, head: Head) -> Response:
        """/metrics in the format the scraper accepts."""
        body, content_type = self.exposition.render(
            await self.figures(), head.headers.get("accept", "")
        )
        return Response(200, content_type, body)

    async def dashboard(self, head: Head) -> Response:
        """The dashboard page, drawn here from the daemon's report, quota and flow answers."""
        page = await dashboard.render(self.ask)
        return Response(200, "text/html; charset=utf-8", page.encode())

    async def _send(
        self, writer: asyncio.StreamWriter, response: Response, head_only: bool
    ) -> None:
        lines = [
            f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Error')}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            "Connection: close",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
            *(f"{k}: {v}" for k, v in response.headers.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(response.body)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)


def _error(exc: HttpError) -> Response:
    body = f"{exc.status} {REASONS.get(exc.status, 'Error')}: {exc.message}\n".encode()
    return Response(exc.status, "text/plain; charset=utf-8", body, exc.headers)
