"""The real trafmetuxd in namespace a of a Pair: config, notifications, requests, the store.

One launcher for every kernel-side suite: the e2e tests start it once or twice, the reliability
tests (harness/live.py) restart it on the same state directory any number of times.
It logs to a file, so a long run never blocks on a full stderr pipe.
"""

from __future__ import annotations

import grp
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from trafmetuxctl.client import connect_socket

from .netns import PYTHON, ROOT, Pair

MONITORS = """
[[monitor]]
name = "all"

[[monitor]]
name = "v4"
rules = [{ family = "ipv4" }]

[[monitor]]
name = "tcp6"
rules = [{ family = "ipv6", protocol = "tcp" }]

[[monitor]]
name = "udp"
rules = [{ protocol = "udp" }]

[[monitor]]
name = "icmp"
rules = [{ protocol = "icmp" }]
"""

# Each monitor's expected totals as sums of the harness's nft counters.
NFT_SUMS = {
    "all": ("ip_all", "ip6_all"),
    "v4": ("ip_all",),
    "tcp6": ("ip6_tcp",),
    "udp": ("ip_udp", "ip6_udp"),
    "icmp": ("ip_icmp",),
}
Counters = dict[str, tuple[int, int]]
Totals = tuple[int, int, int, int]  # in packets, in bytes, out packets, out bytes


def expected(monitor: str, a: Counters, b: Counters) -> Totals:
    """A monitor's totals from the nft counters: a's prerouting is in, b's is out."""
    names = NFT_SUMS[monitor]
    return (
        sum(a[n][0] for n in names),
        sum(a[n][1] for n in names),
        sum(b[n][0] for n in names),
        sum(b[n][1] for n in names),
    )


def fresh_counters(pair: Pair) -> None:
    """Quiet link, zeroed counters: from here on both sides count the same packets."""
    pair.settle()
    pair.a.reset_counters()
    pair.b.reset_counters()


class Daemon:
    """One state directory and config; any number of daemon lives on it."""

    monitors = MONITORS  # the configuration's monitors when none are given

    def __init__(
        self,
        pair: Pair,
        tmp: Path,
        monitors: str | None = None,
        flush_interval: str = "1s",
        state_dir: Path | None = None,
        top: str = "",
        capture: Mapping[str, str] | None = None,
        socket_group: str = "",
    ) -> None:
        self.pair = pair
        self.tmp = tmp
        self.state_dir = state_dir or tmp / "state"
        self.sock_path = tmp / "trafmetuxd.sock"
        self.config = tmp / "trafmetux.toml"
        self.log_path = tmp / "trafmetuxd.log"
        self.flush_interval = flush_interval
        self.top = top
        self.capture = dict(capture or {})
        self.socket_group = socket_group or grp.getgrgid(os.getgid()).gr_name
        self.write_config(self.monitors if monitors is None else monitors)
        self.proc: subprocess.Popen[str] | None = None
        self.notify: socket.socket | None = None
        self.messages: list[str] = []
        self._seen = 0  # messages before this index were matched or passed over by expect()
        self._arrived = threading.Condition()
        self._listening: tuple[threading.Thread, threading.Event] | None = None
        self.lives = 0

    @property
    def database(self) -> Path:
        """The daemon's SQLite file."""
        return self.state_dir / "trafmetux.sqlite3"

    def write_config(self, monitors: str) -> None:
        """The test configuration: everything below tmp."""
        extra = "".join(f"{key} = {value}\n" for key, value in self.capture.items())
        self.config.write_text(
            f'state_dir = "{self.state_dir}"\n'
            f'socket = "{self.sock_path}"\n'
            f'socket_group = "{self.socket_group}"\n'
            'timezone = "UTC"\n'
            f'flush_interval = "{self.flush_interval}"\n'
            f"{self.top}"
            "[capture]\n"
            f'interfaces = ["{self.pair.a_if}"]\n'
            f"{extra}{monitors}"
        )

    def start(self, argv_prefix: tuple[str, ...] = (), ready: bool = True) -> Self:
        """Start a new life of the daemon; wait for READY=1 unless told not to."""
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = self.tmp / f"notify-{time.monotonic_ns()}"
        self.notify.bind(str(notify_path))
        os.chmod(notify_path, 0o666)  # a daemon started as another user can still notify
        self.messages = []
        self._seen = 0
        self._listen(self.notify)
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        argv = [*argv_prefix, PYTHON, "-m", "trafmetuxd", "--config", str(self.config)]
        with self.log_path.open("a") as log:
            self.proc = self.pair.a.popen(
                argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log
            )
        self.lives += 1
        if ready:
            self.expect("READY=1", 30.0)
        return self

    def _listen(self, sock: socket.socket) -> None:
        """Read notifications as they come, as systemd does, so the daemon never waits on us."""
        stop = threading.Event()

        def run() -> None:
            sock.settimeout(0.1)
            while not stop.is_set():
                try:
                    got = sock.recv(4096).decode()
                except TimeoutError:
                    continue
                except OSError:
                    return
                with self._arrived:
                    self.messages.append(got)
                    self._arrived.notify_all()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._listening = (thread, stop)

    def expect(self, message: str, timeout: float = 10.0) -> str:
        """Wait for the next notification starting with `message`; every message is kept."""
        assert self.proc is not None and self.notify is not None
        deadline = time.monotonic() + timeout
        with self._arrived:
            while (left := deadline - time.monotonic()) > 0:
                for index in range(self._seen, len(self.messages)):
                    if self.messages[index].startswith(message):
                        self._seen = index + 1
                        return self.messages[index]
                self._seen = len(self.messages)
                if self.proc.poll() is not None:
                    raise RuntimeError(f"trafmetuxd exited {self.proc.returncode}: {self.log()}")
                self._arrived.wait(min(left, 0.5))
        raise RuntimeError(f"no {message} within {timeout}s; got {self.messages}")

    def log(self) -> str:
        """Everything every life of the daemon logged."""
        return self.log_path.read_text() if self.log_path.exists() else ""

    def reload(self, monitors: str) -> str:
        """Rewrite the monitors, SIGHUP, wait for RELOADING then READY; the next STATUS."""
        self.write_config(monitors)
        self.signal(signal.SIGHUP)
        self.expect("RELOADING=1")
        self.expect("READY=1")
        return self.expect("STATUS=")

    def signal(self, sig: int) -> None:
        """Send a signal to the running daemon."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill9(self) -> None:
        """SIGKILL, as a crash or a power cut would."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._close_notify()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit status."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def stop(self, timeout: float = 15.0) -> float:
        """SIGTERM; the seconds it took to exit (asserting exit status 0)."""
        start = time.monotonic()
        status = self.terminate(timeout)
        elapsed = time.monotonic() - start
        assert status == 0, self.log()
        return elapsed

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the daemon to exit on its own, keeping its last notifications; the status."""
        assert self.proc is not None
        try:
            status = self.proc.wait(timeout=timeout)
            self._drain()
            return status
        finally:
            self._close_notify()

    def _drain(self) -> None:
        # The daemon has exited: whatever it sent last (STOPPING=1) is already queued.
        if self.notify is None:
            return
        self._stop_listening()
        self.notify.setblocking(False)
        while True:
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except BlockingIOError:
                return

    def _stop_listening(self) -> None:
        if self._listening is not None:
            thread, stop = self._listening
            stop.set()
            thread.join(timeout=5)
            self._listening = None

    def _close_notify(self) -> None:
        self._stop_listening()
        if self.notify is not None:
            self.notify.close()
            self.notify = None

    def totals_after_stop(self) -> tuple[Counters, Counters, dict[str, Totals]]:
        """SIGTERM (exit status 0), then both sides' nft counters and the stored totals."""
        assert self.terminate() == 0, self.log()
        return self.pair.a.nft_counters(), self.pair.b.nft_counters(), self.stored()

    def request(self, cmd: str, timeout: float = 10.0, **args: object) -> dict[str, object]:
        """One request on the control socket; the whole reply."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            connect_socket(sock, str(self.sock_path), timeout)  # as trafmetuxctl does
            sock.sendall(json.dumps({"v": 1, "cmd": cmd, **args}).encode() + b"\n")
            return json.loads(sock.makefile().readline())  # type: ignore[no-any-return]

    def status(self) -> dict[str, object]:
        """The status command's result."""
        reply = self.request("status")
        assert reply["ok"], reply
        return reply["result"]  # type: ignore[return-value]

    def worker_pids(self) -> list[int]:
        """The capture workers' process ids (one per queue), from the status command."""
        entries = self.status()["capture"]["workers"]  # type: ignore[index]
        return [int(entry["pid"]) for entry in entries]  # type: ignore[union-attr]

    def stored(self) -> dict[str, Totals]:
        """Per monitor: (in packets, in bytes, out packets, out bytes) summed over minutes."""
        db = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT name, sum(in_packets), sum(in_bytes), sum(out_packets), sum(out_bytes)"
                " FROM minute_totals JOIN monitor ON monitor.id = minute_totals.monitor"
                " GROUP BY name"
            ).fetchall()
        finally:
            db.close()
        return {name: tuple(values) for name, *values in rows}  # type: ignore[misc]
