"""The front's HTTP listener against a real daemon serving a replayed capture."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.all import IP, TCP, UDP, Ether, Raw, wrpcap

from trafmetuxd import config, protocol

LOCAL = "192.168.190"
REMOTE = "203.0.113.9"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_capture(path: Path, start: float, count: int, size: int) -> int:
    """count downloads of size bytes and count small requests, 30 s apart; their IP bytes."""
    frames = []
    for i in range(count):
        up = Ether() / IP(src=f"{LOCAL}.5", dst=REMOTE) / TCP(sport=40000, dport=443) / Raw(b"q")
        down = Ether() / IP(src=REMOTE, dst=f"{LOCAL}.5") / UDP(sport=53, dport=40001)
        down = down / Raw(b"d" * (size + i))
        up.time, down.time = start + 30 * i, start + 30 * i + 1
        frames += [up, down]
    wrpcap(str(path), frames)
    return sum(len(f[IP]) for f in frames)


class Daemon:
    """trafmetuxd --replay CAPTURE --serve, with an HTTP listener."""

    def __init__(self, root: Path, extra: str = "", monitors: str = "") -> None:
        self.root = root
        self.port = free_port()
        self.sock = root / "trafmetuxd.sock"
        self.conf = root / "t.toml"
        self.conf.write_text(
            f'state_dir = "{root}/state"\nsocket = "{self.sock}"\nsocket_group = "root"\n'
            f'timezone = "Europe/Paris"\nlocal_networks = ["{LOCAL}.0/24"]\n'
            f'flush_interval = "60s"\n[http]\nlisten = ["127.0.0.1:{self.port}"]\n{extra}\n'
            '[[monitor]]\nname = "input"\nrules = [{ direction = "in" }]\n'
            '[[monitor]]\nname = "output"\nrules = [{ direction = "out" }]\n'
            '[[quota]]\nname = "mobile"\nmonitors = ["input", "output"]\nlimit = "1GiB"\n'
            + monitors
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, capture: Path) -> None:
        """Replay the capture and serve; return once HTTP answers."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trafmetuxd", "--config", str(self.conf),
             "--replay", str(capture), "--serve"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.5):
                    return
            except OSError:
                assert time.monotonic() < deadline, "the HTTP listener never came up"
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of one GET."""
        req = urllib.request.Request(self.url(path), headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def ask(self, cmd: str, **args: object) -> object:
        """One request over the control socket; its result."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(20)
            s.connect(str(self.sock))
            s.sendall(protocol.encode_request(cmd, **args))
            reply = protocol.decode_reply(s.makefile("rb").readline())
        assert reply.ok, reply
        return reply.result


@pytest.fixture
def root() -> Iterator[Path]:
    """A temp dir the front's unprivileged user may traverse."""
    d = Path(tempfile.mkdtemp(prefix="trafmetux-http-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def served(root: Path) -> Iterator[tuple[Daemon, int]]:
    """A daemon serving a replay of the last two hours; the capture's IP bytes."""
    daemon = Daemon(root)
    capture = root / "a.pcap"
    total = make_capture(capture, time.time() - 7200, 40, 1200)
    daemon.start(capture)
    try:
        yield daemon, total
    finally:
        daemon.stop()


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, parsed by prometheus_client's own parser."""
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def counter(parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
            monitor: str, direction: str) -> float:  # fmt: skip
    return parsed[(name, (("direction", direction), ("monitor", monitor)))]


def socket_totals(daemon: Daemon) -> dict[str, list[int]]:
    """The socket's all-time report: monitor -> [in, out] bytes."""
    result = daemon.ask("report", period="total")
    assert isinstance(result, dict)
    return result["rows"][0]["values"]  # type: ignore[no-any-return]


def test_metrics_counters_equal_the_sockets_totals_after_a_replay(
    served: tuple[Daemon, int],
) -> None:
    daemon, total = served
    status, headers, body = daemon.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    parsed = samples(body)
    totals = socket_totals(daemon)
    assert counter(parsed, "trafmetux_bytes_total", "input", "in") == totals["input"][0] > 0
    assert counter(parsed, "trafmetux_bytes_total", "output", "out") == totals["output"][1] > 0
    assert totals["input"][0] + totals["output"][1] == total  # and the capture's own sum
    assert counter(parsed, "trafmetux_packets_total", "input", "in") == 40
    assert parsed[("trafmetux_up", ())] == 1
    quota = daemon.ask("quota")
    assert isinstance(quota, dict)
    used = quota["quotas"][0]["used"]
    assert parsed[("trafmetux_quota_used_bytes", (("quota", "mobile"),))] == used
    assert parsed[("trafmetux_quota_limit_bytes", (("quota", "mobile"),))] == 2**30
    om = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    status, headers, body = daemon.get("/metrics", {"Accept": om})
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_metrics_counters_never_go_back_across_a_restart(root: Path) -> None:
    daemon = Daemon(root)
    first, second = root / "a.pcap", root / "b.pcap"
    total_a = make_capture(first, time.time() - 7200, 20, 900)
    total_b = make_capture(second, time.time() - 3600, 10, 500)
    daemon.start(first)
    try:
        before = samples(daemon.get("/metrics")[2])
    finally:
        daemon.stop()
    daemon.start(second)
    try:
        after = samples(daemon.get("/metrics")[2])
    finally:
        daemon.stop()
    for monitor, direction in (("input", "in"), ("output", "out")):
        was = counter(before, "trafmetux_bytes_total", monitor, direction)
        now = counter(after, "trafmetux_bytes_total", monitor, direction)
        assert now > was > 0
    got = sum(counter(after, "trafmetux_bytes_total", m, d) for m, d in
              (("input", "in"), ("output", "out")))  # fmt: skip
    assert got == total_a + total_b


def make_host_capture(path: Path, start: float, sizes: dict[int, int]) -> None:
    """Per local host (last octet): 3 downloads of its size and 2 small requests, 20 s apart."""
    frames = []
    for n, (octet, size) in enumerate(sizes.items()):
        host = f"{LOCAL}.{octet}"
        for i in range(3):
            down = Ether() / IP(src=REMOTE, dst=host) / UDP(sport=53, dport=4000 + i)
            frames.append(down / Raw(b"d" * size))
            frames[-1].time = start + 20 * (3 * n + i)
        for i in range(2):
            up = Ether() / IP(src=host, dst=REMOTE) / TCP(sport=40000 + i, dport=443) / Raw(b"q")
            frames.append(up)
            frames[-1].time = start + 20 * (3 * n + i) + 1
    frames.sort(key=lambda f: float(f.time))
    wrpcap(str(path), frames)


LAN = '[[monitor]]\nname = "lan"\nhosts = ["192.168.190.0/24"]\n'


def host_series(parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float],
                monitor: str) -> dict[str, list[int]]:  # fmt: skip
    """host -> [in_bytes, in_packets, out_bytes, out_packets] of a monitor's host counters."""
    out: dict[str, list[int]] = {}
    index = {("bytes", "in"): 0, ("packets", "in"): 1, ("bytes", "out"): 2, ("packets", "out"): 3}
    for (name, labels), value in parsed.items():
        kind = name.removeprefix("trafmetux_host_").removesuffix("_total")
        found = dict(labels)
        if name.startswith("trafmetux_host_") and found["monitor"] == monitor:
            row = out.setdefault(found["host"], [0, 0, 0, 0])
            row[index[(kind, found["direction"])]] = int(value)
    return out


def socket_hosts(daemon: Daemon, since: float) -> dict[str, list[int]]:
    """The socket's hosts of monitor lan since then: host -> [in, in_packets, out, out_packets]."""
    result = daemon.ask("hosts", monitor="lan", begin=int(since), limit=1000)
    assert isinstance(result, dict)
    keys = ("in", "in_packets", "out", "out_packets")
    return {h["host"]: [h[k] for k in keys] for h in result["hosts"]}


def test_host_counters_equal_the_sockets_hosts_within_the_cardinality_cap(root: Path) -> None:
    daemon = Daemon(root, "max_host_series = 3", LAN)
    first, second = root / "a.pcap", root / "b.pcap"
    since = time.time() - 3 * 86400
    sizes = {10: 1400, 11: 1200, 12: 1000, 13: 800, 14: 600, 15: 400}
    make_host_capture(first, time.time() - 7200, sizes)
    make_host_capture(second, time.time() - 3600, {k: v // 2 for k, v in sizes.items()})
    daemon.start(first)
    try:
        before = host_series(samples(daemon.get("/metrics")[2]), "lan")
        by_socket = socket_hosts(daemon, since)
    finally:
        daemon.stop()
    assert len(by_socket) == 6 and sorted(before) == [f"{LOCAL}.{n}" for n in (10, 11, 12)] + [
        "other"
    ]
    for host in (f"{LOCAL}.{n}" for n in (10, 11, 12)):  # the 3 largest, to the byte
        assert before[host] == by_socket[host]
    rest = [by_socket[f"{LOCAL}.{n}"] for n in (13, 14, 15)]
    assert before["other"] == [sum(col) for col in zip(*rest, strict=True)]
    assert before["other"][0] == 3 * (800 + 600 + 400) + 3 * 3 * (20 + 8)  # IP + UDP headers
    daemon.start(second)  # a restart with more traffic: no counter goes back
    try:
        after = host_series(samples(daemon.get("/metrics")[2]), "lan")
        by_socket = socket_hosts(daemon, since)
    finally:
        daemon.stop()
    assert sorted(after) == sorted(before)
    for host, row in before.items():
        assert all(now > was for now, was in zip(after[host], row, strict=True)), host
    for i in range(4):  # every byte and packet of the socket's hosts, folded or not
        assert sum(r[i] for r in after.values()) == sum(r[i] for r in by_socket.values())


def test_api_returns_the_sockets_json_and_validates_like_it(served: tuple[Daemon, int]) -> None:
    daemon, _ = served
    status, _, body = daemon.get("/api/v1/report?period=hour&last=3&monitors=input")
    assert status == 200
    via_socket = daemon.ask("report", period="hour", last=3, monitors=["input"])
    assert json.loads(body)["result"] == via_socket
    status, _, body = daemon.get("/api/v1/report?period=fortnight")
    assert status == 400 and json.loads(body)["error"]["code"] == "bad_argument"
    assert "'period'" in json.loads(body)["error"]["message"]
    status, _, body = daemon.get("/api/v1/flows?monitor=nosuch")
    assert status == 404 and "nosuch" in json.loads(body)["error"]["message"]
    assert daemon.get("/api/v1/reload")[0] == 404  # admin commands are not served over HTTP
    assert daemon.get("/nothing-here")[0] == 404
    assert json.loads(daemon.get("/api/v1/monitors")[2])["result"] == daemon.ask("monitors")


def raw_http(port: int, data: bytes, timeout: float = 15.0) -> bytes:
    """Send raw bytes, read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_http_abuse_is_answered_with_errors_and_leaves_the_counts_alone(
    served: tuple[Daemon, int],
) -> None:
    daemon, _ = served
    before = samples(daemon.get("/metrics")[2])
    head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
    assert raw_http(daemon.port, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert raw_http(daemon.port, b"DELETE / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert raw_http(daemon.port, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    huge = head + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n"
    assert raw_http(daemon.port, huge).startswith(b"HTTP/1.1 431")
    body = head + b"Content-Length: 5\r\n\r\nhello"
    assert raw_http(daemon.port, body).startswith(b"HTTP/1.1 400")
    # slow clients: 20 connections that never finish their head hold no one else up
    slow = [socket.create_connection(("127.0.0.1", daemon.port), 15) for _ in range(20)]
    try:
        for s in slow:
            s.sendall(b"GET /metr")
        started = time.monotonic()
        assert daemon.get("/api/v1/status")[0] == 200
        assert time.monotonic() - started < 5.0
        for s in slow:  # each is told it took too long, then closed
            assert s.makefile("rb").read().startswith(b"HTTP/1.1 408")
    finally:
        for s in slow:
            s.close()
    # many requests: every one answered
    codes = [daemon.get("/metrics")[0] for _ in range(300)]
    assert codes == [200] * 300
    after = samples(daemon.get("/metrics")[2])
    for monitor, direction in (("input", "in"), ("output", "out")):
        for name in ("trafmetux_bytes_total", "trafmetux_packets_total"):
            assert counter(after, name, monitor, direction) == counter(
                before, name, monitor, direction
            )
    assert after[("trafmetux_flush_failures", ())] == 0


def test_basic_auth_refuses_without_the_password(root: Path) -> None:
    digest = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    daemon = Daemon(root, f'user = "prom"\npassword_hash = "{digest}"')
    capture = root / "a.pcap"
    make_capture(capture, time.time() - 600, 2, 100)
    daemon.start(capture)
    try:
        status, headers, _ = daemon.get("/metrics")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")

        def basic(user: str, password: str) -> dict[str, str]:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            return {"Authorization": f"Basic {token}"}

        assert daemon.get("/metrics", basic("prom", "wrong"))[0] == 401
        assert daemon.get("/metrics", basic("other", "s3cret"))[0] == 401
        assert daemon.get("/api/v1/status", basic("prom", "s3cret"))[0] == 200
        assert daemon.get("/metrics", basic("prom", "s3cret"))[0] == 200
    finally:
        daemon.stop()


def test_http_listens_on_loopback_only_unless_allow_remote(tmp_path: Path) -> None:
    text = '[http]\nlisten = ["0.0.0.0:9731", "127.0.0.1:9731", "[::1]:9731"]\n'
    with pytest.raises(config.ConfigError) as err:
        config.parse(text, tmp_path / "t.toml")
    assert err.value.problems == [
        f"{tmp_path / 't.toml'}: http.listen[0] = '0.0.0.0:9731': not a loopback address: set "
        "http.allow_remote = true to listen there"
    ]
    cfg = config.parse(text + "allow_remote = true\n", tmp_path / "t.toml")
    assert cfg.http.listen == (("0.0.0.0", 9731), ("127.0.0.1", 9731), ("::1", 9731))
    assert config.parse("", tmp_path / "t.toml").http.listen == ()  # off when absent
    example = config.load(Path(__file__).parents[2] / "config.example.toml")
    assert example.http.listen == (("127.0.0.1", 9731),)


def test_password_file_is_read_and_a_bad_one_named(tmp_path: Path) -> None:
    digest = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    good = tmp_path / "hash"
    good.write_text(digest + "\n")
    cfg = config.parse(f'[http]\npassword_file = "{good}"\n', tmp_path / "t.toml")
    assert cfg.http.password_hash == digest
    bad = tmp_path / "bad"
    bad.write_text("plaintext\n")
    with pytest.raises(config.ConfigError) as err:
        config.parse(f'[http]\npassword_file = "{bad}"\n', tmp_path / "t.toml")
    assert "http.password_file" in str(err.value) and "bcrypt" in str(err.value)


def test_dashboard_in_headless_chromium_shows_the_replays_figures(
    served: tuple[Daemon, int], tmp_path: Path
) -> None:
    daemon, _ = served
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed (make install installs it)"
    args = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]  # fmt: skip
    dom = subprocess.run(
        [*args, "--dump-dom", daemon.url("/")], capture_output=True, timeout=120, check=True
    ).stdout.decode()
    report = daemon.ask("report", period="day", last=31)
    assert isinstance(report, dict)
    for monitor, index, cls in (("input", 0, "in"), ("output", 1, "out")):
        chart = dom.split(f'data-monitor="{monitor}" data-period="day"')[1].split("</svg>")[0]
        drawn = [
            int(part.split('data-bytes="')[1].split('"')[0])
            for part in chart.split(f'<rect class="{cls}"')[1:]
        ]
        assert drawn == [row["values"][monitor][index] for row in report["rows"]]
        assert sum(drawn) > 0
    assert 'data-quota="mobile"' in dom and "Times in Europe/Paris" in dom
    shot = tmp_path / "dashboard.png"
    subprocess.run(
        [*args, f"--screenshot={shot}", "--window-size=800,1400", daemon.url("/")],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert shot.stat().st_size > 10_000


def test_hash_password_prints_a_hash_the_listener_accepts() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trafmetuxd", "--hash-password"],
        input=b"letmein\n", capture_output=True, timeout=60, check=True,
    ).stdout.decode().strip()  # fmt: skip
    assert bcrypt.checkpw(b"letmein", out.encode())
    assert config.parse(f'[http]\npassword_hash = "{out}"\n', Path("t.toml")).http.password_hash
