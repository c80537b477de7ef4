"""Benchmark 2: end to end through NFQUEUE in two namespaces joined by a veth pair.

trafgen in namespace a sends an IMIX/protocol mix to namespace b, where nft counts what
arrives (prerouting, before the queue) and what is delivered (input, after it, then dropped so
no reply traffic mixes in). Runs: (a) no queue rule, (b) the minimal accept-only consumer with
the same binding and flags, (c) trafmetuxd itself, then (c) again below saturation for the
accuracy check against the kernel's own rule counters. Everything is torn down on every path.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import PYTHON, ROOT, VENV_BIN, Result, target, tree_cpu_seconds
from bench.e2e_traffic import monitors_toml, trafgen_config
from bench.mix import twenty_monitors
from bench.served import wait_ready
from tests.harness import prereq
from tests.harness.netns import Namespace, Pair, veth_pair
from trafmetuxctl.client import Client
from trafmetuxd.kernel import parse_listing

FULL = {"warmup": 1.0, "window": 8.0, "low_pps": 5000, "low_window": 4.0}
SMOKE = {"warmup": 0.3, "window": 1.0, "low_pps": 500, "low_window": 1.0}
TOOLS = ("ip", "iptables", "ip6tables", "nft", "ethtool", "trafgen", "taskset")
QUEUE = 0
GENERATOR_CPU, CONSUMER_CPU = "0", "1"
PROC_QUEUE = "/proc/net/netfilter/nfnetlink_queue"

BENCH_NFT = """table inet tmxbench {
  counter arrived {}
  counter delivered {}
  chain pre {
    type filter hook prerouting priority -300; policy accept;
    iifname "veth-b" meta nfproto { ipv4, ipv6 } counter name "arrived"
  }
  chain deliver {
    type filter hook input priority 0; policy accept;
    iifname "veth-b" meta nfproto { ipv4, ipv6 } counter name "delivered" drop
  }
}
"""


def missing_requirements() -> str:
    """Why this benchmark cannot run here, or ''."""
    return prereq.missing_requirements(
        "the end-to-end benchmark needs",
        TOOLS,
        hint="(apt-get install netsniff-ng)",
        netfilter=False,
    )


class Snapshot:
    """Kernel counters in namespace b at one instant (the consumer's whole process tree's CPU)."""

    def __init__(self, ns: Namespace, pid: int | None, queues: int = 1) -> None:
        # One command reads both, so the two counters are as close in time as they can be.
        script = f"nft -j list counters table inet tmxbench; echo; cat {PROC_QUEUE}"
        out = ns.run(["sh", "-c", script]).stdout
        counters, _, queues_text = out.partition("\n")
        self.time = time.monotonic()
        found = {
            c["counter"]["name"]: c["counter"]
            for c in json.loads(counters)["nftables"]
            if "counter" in c
        }
        self.arrived = found["arrived"]["packets"]
        self.arrived_bytes = found["arrived"]["bytes"]
        self.delivered = found["delivered"]["packets"]
        self.per_queue = _queue_sequences(queues_text, queues)
        self.queued = sum(self.per_queue.values())
        self.cpu = tree_cpu_seconds(pid) if pid else 0.0


def _queue_sequences(text: str, queues: int) -> dict[int, int]:
    """Packets the kernel handed to each bound queue so far (id_sequence), 0 when unbound."""
    wanted = {str(q): q for q in range(QUEUE, QUEUE + queues)}
    out = dict.fromkeys(wanted.values(), 0)
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[0] in wanted:
            out[wanted[fields[0]]] = int(fields[7])
    return out


def _rates(before: Snapshot, after: Snapshot) -> dict[str, float]:
    seconds = after.time - before.time
    queued = after.queued - before.queued
    cpu = after.cpu - before.cpu
    return {
        "seconds": round(seconds, 2),
        "arrived_pps": round((after.arrived - before.arrived) / seconds),
        "delivered_pps": round((after.delivered - before.delivered) / seconds),
        "queued_pps": round(queued / seconds),
        # Accepted by fail-open because the consumer fell behind: delivered, not metered.
        "unqueued": (after.arrived - before.arrived) - queued if after.queued else 0,
        "cpu_seconds": round(cpu, 3),
        "cpu_s_per_million": round(cpu / queued * 1e6, 3) if queued and after.cpu else 0.0,
    }


def _generator(pair: Pair, conf: Path, rate: int | None, cpus: int = 1) -> subprocess.Popen[str]:
    pin = ["taskset", "-c", GENERATOR_CPU] if cpus == 1 else []
    argv = [*pin, "trafgen", "--dev", pair.a_if, "--conf", str(conf)]
    argv += ["--cpus", str(cpus), "--no-sock-mem", "--notouch-irq", "--no-cpu-stats"]
    if rate:
        argv += ["-b", f"{rate}pps"]
    # trafgen forks its sender: a session of its own lets _stop signal the whole group.
    return pair.a.popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )


def _stop(proc: subprocess.Popen[str], timeout: float = 10.0, group: bool = True) -> None:
    """SIGINT (SIGTERM for a single process), then SIGKILL after `timeout`; always reaped."""
    first = signal.SIGINT if group else signal.SIGTERM
    for sig in (first, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, sig)
            elif proc.poll() is None:
                os.kill(proc.pid, sig)
        try:
            proc.communicate(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def _window(
    pair: Pair,
    conf: Path,
    pid: int | None,
    size: dict[str, float],
    rate: int | None = None,
    queues: int = 1,
    workers: dict[int, int] | None = None,
) -> dict[str, Any]:
    """Run the generator; rates over the window after the warm-up, drops over the whole run.

    With several queues the generator sends from every CPU (the kernel then spreads the packets
    over the queues by CPU); `workers` (queue -> pid) adds each worker's rate and CPU.
    """
    start = Snapshot(pair.b, pid, queues)
    gen = _generator(pair, conf, rate, cpus=1 if queues == 1 else os.cpu_count() or 1)
    try:
        time.sleep(size["warmup"])
        if gen.poll() is not None:
            raise RuntimeError(f"trafgen exited: {gen.stderr.read() if gen.stderr else ''}")
        before = Snapshot(pair.b, pid, queues)
        cpu0 = {q: tree_cpu_seconds(w) for q, w in (workers or {}).items()}
        time.sleep(size["low_window"] if rate else size["window"])
        after = Snapshot(pair.b, pid, queues)
        cpu1 = {q: tree_cpu_seconds(w) for q, w in (workers or {}).items()}
    finally:
        _stop(gen)
    _drain(pair.b)
    end = Snapshot(pair.b, pid, queues)
    rates: dict[str, Any] = dict(_rates(before, after))
    if workers:
        rates["per_worker"] = _per_worker(before, after, cpu0, cpu1)
    # Arrived but never delivered, over the whole run once the queue is empty (should be 0).
    rates["dropped"] = (end.arrived - start.arrived) - (end.delivered - start.delivered)
    rates["packets_sent"] = end.arrived - start.arrived
    return rates


def _per_worker(
    before: Snapshot, after: Snapshot, cpu0: dict[int, float], cpu1: dict[int, float]
) -> dict[str, dict[str, float]]:
    """Each queue's metered rate and its worker's CPU seconds per million packets."""
    seconds = after.time - before.time
    out = {}
    for queue in cpu0:
        queued = after.per_queue[queue] - before.per_queue[queue]
        cpu = cpu1[queue] - cpu0[queue]
        out[str(queue)] = {
            "queued_pps": round(queued / seconds),
            "cpu_seconds": round(cpu, 3),
            "cpu_s_per_million": round(cpu / queued * 1e6, 3) if queued else 0.0,
        }
    return out


def _queue_rules(ns: Namespace, action: str) -> None:
    for tool in ("iptables", "ip6tables"):
        rule = ["-t", "mangle", action, "PREROUTING", "-i", "veth-b", "-j", "NFQUEUE"]
        ns.run([tool, "-w", *rule, "--queue-num", str(QUEUE), "--queue-bypass"])


def _minimal_consumer(pair: Pair, conf: Path, size: dict[str, float]) -> dict[str, float]:
    argv = [
        "taskset",
        "-c",
        CONSUMER_CPU,
        PYTHON,
        str(ROOT / "bench" / "nfq_accept.py"),
        str(QUEUE),
    ]
    proc = pair.b.popen(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "READY":
        raise RuntimeError(
            f"the minimal consumer did not start: {proc.stderr.read() if proc.stderr else ''}"
        )
    _queue_rules(pair.b, "-A")
    try:
        return _window(pair, conf, proc.pid, size)
    finally:
        _queue_rules(pair.b, "-D")
        _stop(proc, group=False)


def _daemon_config(directory: Path, queues: int = 1) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = (
        f'state_dir = "{directory}"\nsocket = "{directory / "tmx.sock"}"\n'
        'socket_group = "root"\ntimezone = "UTC"\n\n'
        f'[capture]\nqueue = 0\nqueues = {queues}\ninterfaces = ["veth-b"]\n\n'
        f'{monitors_toml(twenty_monitors())}\n[[monitor]]\nname = "all"\nrules = []\n'
    )
    path = directory / "trafmetux.toml"
    path.write_text(text)
    return path


def _kernel_counters(ns: Namespace) -> tuple[int, int]:
    """(packets, bytes) the daemon's NFQUEUE rules counted, both families, from iptables -L."""
    packets = nbytes = 0
    for tool in ("iptables", "ip6tables"):
        listing = ns.run([tool, "-w", "-t", "mangle", "-L", "-v", "-x", "-n"]).stdout
        for chain_packets, chain_bytes in parse_listing(listing).values():
            packets += chain_packets
            nbytes += chain_bytes
    return packets, nbytes


def _metered(sock: Path) -> dict[str, Any]:
    with Client(str(sock), 30.0) as client:
        status = client.call("status")
        report = client.call("report", period="hour", last=2, monitors=["all"])
    return {"meter": status["meter"], "capture": status.get("capture"), "report": report}


def _drain(ns: Namespace, timeout: float = 10.0) -> None:
    """Until the queue holds no packet waiting for a verdict."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = ns.run(["cat", "/proc/net/netfilter/nfnetlink_queue"], check=False).stdout
        waiting = [int(f.split()[2]) for f in text.splitlines() if f.split()[:1] == [str(QUEUE)]]
        if not waiting or waiting[0] == 0:
            return
        time.sleep(0.1)


def _daemon_runs(pair: Pair, conf: Path, directory: Path, size: dict[str, float]) -> dict[str, Any]:
    """(c) at saturation, then below it with the accuracy check; the daemon stopped after."""
    config = _daemon_config(directory)
    argv = ["taskset", "-c", CONSUMER_CPU, str(VENV_BIN / "trafmetuxd"), "--config", str(config)]
    proc = pair.b.popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sock = directory / "tmx.sock"
    try:
        wait_ready(sock, proc, 30.0)  # type: ignore[arg-type]
        saturated = _window(pair, conf, proc.pid, size)
        saturated["metered_pps"] = saturated["queued_pps"]
        time.sleep(0.5)
        kernel0, meter0 = _kernel_counters(pair.b), _metered(sock)
        below = _window(pair, conf, proc.pid, size, rate=int(size["low_pps"]))
        time.sleep(0.5)
        kernel1, meter1 = _kernel_counters(pair.b), _metered(sock)
    finally:
        _stop(proc, timeout=30.0, group=False)
    return {
        "saturated": saturated,
        "below": below,
        "accuracy": _accuracy(kernel0, meter0, kernel1, meter1),
    }


def _two_queues(pair: Pair, conf: Path, directory: Path, size: dict[str, float]) -> dict[str, Any]:
    """(d) two queues, one worker each, fed from both CPUs: the rate and CPU of each worker."""
    config = _daemon_config(directory / "two", queues=2)
    argv = [str(VENV_BIN / "trafmetuxd"), "--config", str(config)]
    proc = pair.b.popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sock = directory / "two" / "tmx.sock"
    try:
        wait_ready(sock, proc, 30.0)  # type: ignore[arg-type]
        with Client(str(sock), 30.0) as client:
            entries = client.call("status")["capture"]["workers"]
        workers = {int(w["queue"]): int(w["pid"]) for w in entries}
        return _window(pair, conf, proc.pid, size, queues=2, workers=workers)
    finally:
        _stop(proc, timeout=30.0, group=False)


def _report_bytes(report: dict[str, Any]) -> int:
    """In + out bytes of every row of the `all` monitor's report."""
    return sum(sum(row["values"]["all"]) for row in report["rows"])


def _accuracy(
    kernel0: tuple[int, int],
    meter0: dict[str, Any],
    kernel1: tuple[int, int],
    meter1: dict[str, Any],
) -> dict[str, int]:
    """Kernel rule counters versus the meter over the below-saturation run (deltas)."""
    m0, m1 = meter0["meter"], meter1["meter"]
    metered_bytes = (m1["in_bytes"] + m1["out_bytes"]) - (m0["in_bytes"] + m0["out_bytes"])
    metered_packets = (m1["in_packets"] + m1["out_packets"]) - (
        m0["in_packets"] + m0["out_packets"]
    )
    return {
        "kernel_packets": kernel1[0] - kernel0[0],
        "kernel_bytes": kernel1[1] - kernel0[1],
        "metered_packets": metered_packets,
        "metered_bytes": metered_bytes,
        "monitor_all_bytes": _report_bytes(meter1["report"]) - _report_bytes(meter0["report"]),
        "malformed": m1["malformed"] - m0["malformed"],
        "errors": m1["errors"] - m0["errors"],
    }


def _link_macs(pair: Pair) -> tuple[str, str]:
    """(b's MAC, a's MAC) of the veth ends."""
    macs = []
    for ns, dev in ((pair.b, pair.b_if), (pair.a, pair.a_if)):
        info = json.loads(ns.run(["ip", "-j", "link", "show", dev]).stdout)
        macs.append(info[0]["address"])
    return macs[0], macs[1]


def _measure(pair: Pair, directory: Path, size: dict[str, float]) -> dict[str, Any]:
    dst_mac, src_mac = _link_macs(pair)
    conf = directory / "imix.trafgen"
    conf.write_text(trafgen_config(dst_mac, src_mac, pair.b4, pair.b6))
    pair.b.run(["nft", "-f", "-"], input=BENCH_NFT)
    runs: dict[str, Any] = {"a_no_queue": _window(pair, conf, None, size)}
    runs["b_minimal_consumer"] = _minimal_consumer(pair, conf, size)
    runs.update(
        {f"c_trafmetuxd_{k}": v for k, v in _daemon_runs(pair, conf, directory, size).items()}
    )
    if (os.cpu_count() or 1) >= 2:
        runs["d_trafmetuxd_two_queues"] = _two_queues(pair, conf, directory, size)
    return runs


def run(scale: str = "full") -> Result:
    """The three runs in one fresh pair of namespaces; skipped with the reason when impossible."""
    size = FULL if scale == "full" else SMOKE
    reason = missing_requirements()
    if reason:
        return {"skipped": reason, "targets": []}
    with tempfile.TemporaryDirectory(prefix="tmx-bench-e2e-") as tmp, veth_pair() as pair:
        pair.settle()
        runs = _measure(pair, Path(tmp), size)
    return {"params": size, "runs": runs, "targets": _targets(runs)}


def _targets(runs: dict[str, Any]) -> list[dict[str, object]]:
    ceiling = runs["b_minimal_consumer"]["queued_pps"]
    metered = runs["c_trafmetuxd_saturated"]["queued_pps"]
    cpu_b = runs["b_minimal_consumer"]["cpu_s_per_million"]
    cpu_c = runs["c_trafmetuxd_saturated"]["cpu_s_per_million"]
    accuracy = runs["c_trafmetuxd_accuracy"]
    drops = runs["c_trafmetuxd_saturated"]["dropped"] + runs["c_trafmetuxd_below"]["dropped"]
    return [
        target(
            "c/b at saturation", round(metered / ceiling, 3) if ceiling else 0.0, ">=", 1.0, "x"
        ),
        target(
            "CPU per packet, c/b (every trafmetuxd process)",
            round(cpu_c / cpu_b, 3) if cpu_b else 0.0,
            "<=",
            1.0,
            "x",
        ),
        target("packets dropped with the meter", drops, "<=", 0, "packets"),
        target(
            "unmetered bytes below saturation (kernel - metered)",
            abs(accuracy["kernel_bytes"] - accuracy["metered_bytes"]),
            "<=",
            0,
            "bytes",
        ),
    ]
