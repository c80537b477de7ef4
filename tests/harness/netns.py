"""Two network namespaces joined by a veth pair, with independent nft counters; always torn down.

Everything here happens inside namespaces this module creates: no rule and no address ever
touches the namespace the tests run in.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
HERE = Path(__file__).resolve().parent

_NUMBERS = itertools.count()
MB = 1 << 20

# Named nft counters on each side's prerouting, where packets are what the veth carried.
# "icmp6_echo" leaves out neighbour discovery and MLD, which the kernel sends on its own.
COUNTER_MATCHES = {
    "ip_all": "meta nfproto ipv4",
    "ip_tcp": "meta nfproto ipv4 meta l4proto tcp",
    "ip_udp": "meta nfproto ipv4 meta l4proto udp",
    "ip_icmp": "meta nfproto ipv4 meta l4proto icmp",
    "ip6_all": "meta nfproto ipv6",
    "ip6_tcp": "meta nfproto ipv6 meta l4proto tcp",
    "ip6_udp": "meta nfproto ipv6 meta l4proto udp",
    "ip6_icmp6_echo": "icmpv6 type { echo-request, echo-reply }",
}

# Quiet namespaces: no router solicitations, no duplicate address detection, so that nothing
# but the test's own traffic crosses the veth after the first second.
_SYSCTLS = (
    "net.ipv6.conf.all.accept_ra=0",
    "net.ipv6.conf.default.accept_ra=0",
    "net.ipv6.conf.all.router_solicitations=0",
    "net.ipv6.conf.default.router_solicitations=0",
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
    "net.ipv6.conf.default.dad_transmits=0",
    # MLD reports for the groups a new address joins are repeated after a random delay of up
    # to this many ms: keep them within the set-up so none lands in a test's counts.
    "net.ipv6.conf.all.mldv1_unsolicited_report_interval=1",
    "net.ipv6.conf.default.mldv1_unsolicited_report_interval=1",
    "net.ipv6.conf.all.mldv2_unsolicited_report_interval=1",
    "net.ipv6.conf.default.mldv2_unsolicited_report_interval=1",
)


class Namespace:
    """One network namespace: run commands in it, start processes, kill them by PID."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.procs: list[subprocess.Popen[str]] = []

    def argv(self, cmd: Sequence[str]) -> list[str]:
        """The command line that runs `cmd` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(
        self, cmd: Sequence[str], *, check: bool = True, timeout: float = 60.0, input: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion (bounded in time); raise with its output when it fails."""
        result = subprocess.run(
            self.argv(cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"in {self.name}: {' '.join(cmd)} -> {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def popen(self, cmd: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        """Start a process in the namespace; it is killed at teardown if still running."""
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        proc = subprocess.Popen(self.argv(cmd), **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc  # type: ignore[no-any-return]

    def python(self, *args: str) -> list[str]:
        """Command line of the project's Python running one of the e2e helper scripts."""
        return [PYTHON, *args]

    def kill_all(self) -> None:
        """SIGKILL every process this namespace started that is still alive, and reap it."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=5)
        self.procs.clear()

    def nft_counters(self) -> dict[str, tuple[int, int]]:
        """name -> (packets, bytes) of the harness's nft counters in this namespace."""
        out = self.run(["nft", "-j", "list", "counters", "table", "inet", "tmx"]).stdout
        counters = {}
        for item in json.loads(out)["nftables"]:
            counter = item.get("counter")
            if counter is not None:
                counters[counter["name"]] = (counter["packets"], counter["bytes"])
        return counters

    def reset_counters(self) -> None:
        """Zero the harness's nft counters."""
        self.run(["nft", "reset", "counters", "table", "inet", "tmx"])

    def mac(self, dev: str) -> str:
        """The link-layer address of an interface in this namespace."""
        info = json.loads(self.run(["ip", "-j", "link", "show", "dev", dev]).stdout)
        return str(info[0]["address"])

    def iptables_save(self) -> str:
        """The mangle table of both families as iptables-save prints them."""
        v4 = self.run(["iptables-save", "-t", "mangle"]).stdout
        v6 = self.run(["ip6tables-save", "-t", "mangle"]).stdout
        return v4 + v6


class Pair:
    """Namespaces a and b joined by veth-a <-> veth-b, IPv4 10.231.0.0/24, IPv6 fd00:231::/64."""

    a_if = "veth-a"
    b_if = "veth-b"
    a4 = "10.231.0.1"
    b4 = "10.231.0.2"
    a6 = "fd00:231::1"
    b6 = "fd00:231::2"

    def __init__(self, prefix: str) -> None:
        self.a = Namespace(prefix + "-a")
        self.b = Namespace(prefix + "-b")

    def setup(self) -> None:
        """Create the namespaces, the link, the addresses and the counters."""
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "add", ns.name], check=True, timeout=30)
            for setting in _SYSCTLS:
                ns.run(["sysctl", "-q", "-w", setting])
            ns.run(["ip", "link", "set", "lo", "up"])
        link = f"ip link add {self.a_if} type veth peer name {self.b_if} netns {self.b.name}"
        self.a.run(link.split())
        for ns, dev, v4, v6 in (
            (self.a, self.a_if, self.a4, self.a6),
            (self.b, self.b_if, self.b4, self.b6),
        ):
            ns.run(["ip", "addr", "add", f"{v4}/24", "dev", dev])
            ns.run(["ip", "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad"])
            ns.run(["nft", "-f", "-"], input=nft_ruleset(dev))
        self.offloads(gro=False, gso=False, tso=False)
        for ns, dev in ((self.a, self.a_if), (self.b, self.b_if)):
            ns.run(["ip", "link", "set", dev, "up"])
        self.pin_neighbours()
        self.wait_reachable()

    def pin_neighbours(self) -> None:
        """Permanent neighbour entries: no NUD probe or solicitation ever joins the counts."""
        mac_a = self.a.mac(self.a_if)
        mac_b = self.b.mac(self.b_if)
        for ns, dev, mac, peers in (
            (self.a, self.a_if, mac_b, (self.b4, self.b6)),
            (self.b, self.b_if, mac_a, (self.a4, self.a6)),
        ):
            for peer in peers:
                neigh = ["ip", "neigh", "replace", peer, "lladdr", mac, "dev", dev]
                ns.run([*neigh, "nud", "permanent"])

    def offloads(self, *, gro: bool, gso: bool, tso: bool) -> None:
        """Set GRO/GSO/TSO on both ends (off: every skb on the veth is one wire packet)."""
        flags = ["gro", _onoff(gro), "gso", _onoff(gso), "tso", _onoff(tso)]
        for ns, dev in ((self.a, self.a_if), (self.b, self.b_if)):
            ns.run(["ethtool", "-K", dev, *flags])

    def wait_reachable(self, timeout: float = 10.0) -> None:
        """Until both families answer across the link (the first packets resolve neighbours)."""
        deadline = time.monotonic() + timeout
        for addr in (self.b4, self.b6):
            while True:
                result = self.a.run(
                    self.a.python(str(HERE / "traffic.py"), "ping", addr, "1"), check=False
                )
                if result.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{addr} not reachable: {result.stderr}")
                time.sleep(0.2)

    def settle(self, quiet: float = 0.5, timeout: float = 15.0) -> None:
        """Wait until no packet at all crosses the link for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        last = (self.a.nft_counters(), self.b.nft_counters())
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = (self.a.nft_counters(), self.b.nft_counters())
            if now != last:
                last, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet:
                return
        raise RuntimeError("the link never went quiet")

    def teardown(self) -> None:
        """Kill started processes, delete both namespaces (the veth goes with them)."""
        for ns in (self.a, self.b):
            ns.kill_all()
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=30)


def nft_ruleset(dev: str) -> str:
    """A table counting packets arriving on `dev` before anything else in prerouting sees them."""
    counters = "".join(f"  counter {name} {{}}\n" for name in COUNTER_MATCHES)
    rules = "".join(
        f'    iifname "{dev}" {match} counter name "{name}"\n'
        for name, match in COUNTER_MATCHES.items()
    )
    return (
        "table inet tmx {\n"
        f"{counters}"
        "  chain pre {\n"
        "    type filter hook prerouting priority -400; policy accept;\n"
        f"{rules}"
        "  }\n"
        "}\n"
    )


def _onoff(flag: bool) -> str:
    """ethtool's spelling of a boolean."""
    return "on" if flag else "off"


@contextlib.contextmanager
def veth_pair() -> Iterator[Pair]:
    """A fresh pair of namespaces with unique names, torn down on every path."""
    pair = Pair(f"tmx-{os.getpid()}-{next(_NUMBERS)}")
    try:
        pair.setup()
        yield pair
    finally:
        pair.teardown()


class Probe:
    """A helper script running in a namespace that prints READY, answers MARK with JSON."""

    def __init__(self, ns: Namespace, *args: str, ready_timeout: float = 20.0) -> None:
        self.ns = ns
        self.proc = ns.popen(
            ns.python(str(HERE / "probe_capture.py"), *args), stdin=subprocess.PIPE, cwd=ROOT
        )
        line = _readline(self.proc, ready_timeout)
        if line.strip() != "READY":
            self.proc.kill()
            _out, err = self.proc.communicate(timeout=5)
            raise RuntimeError(f"probe did not start: {line!r}\n{err}")

    @property
    def pid(self) -> int:
        """The probe's PID (the Python process itself: ip netns exec execs it)."""
        return self.proc.pid

    def mark(self, timeout: float = 20.0) -> dict[str, object]:
        """What the probe metered so far, with its rule counters."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("MARK\n")
        self.proc.stdin.flush()
        return json.loads(_readline(self.proc, timeout))  # type: ignore[no-any-return]

    def stop(self, timeout: float = 20.0) -> dict[str, object]:
        """SIGTERM: rules removed, queue closed; the final counts."""
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise RuntimeError(f"probe exited {self.proc.returncode}: {err}")
        return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]

    def kill9(self) -> None:
        """SIGKILL, as a crash would."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.communicate(timeout=10)


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    """One stdout line, or RuntimeError after `timeout` seconds (never blocks forever)."""

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise RuntimeError(f"no output within {timeout}s from {proc.args}")
    return proc.stdout.readline()


def start_sink(ns: Namespace, *args: str) -> subprocess.Popen[str]:
    """Start a traffic sink and wait until it listens."""
    proc = ns.popen(ns.python(str(HERE / "traffic.py"), *args))
    line = _readline(proc, 20.0)
    if line.strip() != "LISTENING":
        raise RuntimeError(f"sink did not start: {line!r}")
    return proc


def traffic(ns: Namespace, *args: str, timeout: float = 60.0) -> str:
    """Run a traffic generator to completion; its output."""
    return ns.run(ns.python(str(HERE / "traffic.py"), *args), timeout=timeout).stdout


def sink_result(proc: subprocess.Popen[str], timeout: float = 60.0) -> int:
    """The number a sink printed when done."""
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"sink failed: {err}")
    return int(out.split()[-1])


def mixed_traffic(pair: Pair, tcp_bytes: int) -> None:
    """ICMP both families, UDP both ways, TCP both ways over IPv4 and IPv6; all must complete."""
    a, b = pair.a, pair.b
    assert traffic(a, "ping", pair.b4, "20").split() == ["20"]
    assert traffic(b, "ping", pair.a6, "20").split() == ["20"]
    for sender, receiver, addr, port in (
        (a, b, pair.b4, 5001),
        (b, a, pair.a4, 5002),
        (a, b, pair.b6, 5003),
        (b, a, pair.a6, 5004),
    ):
        sink = start_sink(receiver, "udp-sink", str(port), "50", "10")
        traffic(sender, "udp-send", addr, str(port), "50", "700", "2000")
        assert sink_result(sink) == 50
    for sender, receiver, addr, port in (
        (a, b, pair.b4, 6001),
        (b, a, pair.a4, 6002),
        (a, b, pair.b6, 6003),
        (b, a, pair.a6, 6004),
    ):
        sink = start_sink(receiver, "tcp-sink", str(port), "60")
        traffic(sender, "tcp-send", addr, str(port), str(tcp_bytes), timeout=90)
        assert sink_result(sink) == tcp_bytes
