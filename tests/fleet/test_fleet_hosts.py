"""Per-host reports across the fleet store: one host's history, hosts per period, top hosts.

Two real daemons replay different captures of the same office network as gateways "east" and
"west" and stay up (--serve); a third runs reporting only as "central". Host 192.168.190.11
is behind both gateways, so summing the gateways adds its figures. Every figure is compared
with the captures' per-host sums computed here, to the byte.
"""

from __future__ import annotations

import grp
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.all import IP, TCP, UDP, Ether, Raw, wrpcap

from harness.netns import PYTHON, ROOT
from harness.postgres import Postgres
from trafmetuxctl.client import Client, UnreachableError

T0 = 1_699_999_200  # a whole UTC hour
HOURS = 3
HOSTS = {"east": ("192.168.190.10", "192.168.190.11"), "west": ("192.168.190.11", "192.168.190.12")}
SHARED = "192.168.190.11"
STEPS = HOURS * 12  # one every five minutes
# per gateway, per host, per UTC hour: [in bytes, in packets, out bytes, out packets]
Figures = dict[str, dict[str, list[list[int]]]]


def hourly(steps: list[list[int]]) -> list[list[int]]:
    """Five-minute figures added up per hour."""
    return [
        [sum(row[i] for row in steps[h * 12 : (h + 1) * 12]) for i in range(4)]
        for h in range(HOURS)
    ]


def capture(path: Path, gateway: str) -> dict[str, list[list[int]]]:
    """Every five minutes for three hours, each host downloads and asks DNS; its sums.

    The sums per host per five minutes (the packets at minute 5 * step, seconds 7 and 8).
    """
    frames, sums = [], {}
    seed = 1 if gateway == "east" else 2
    for step in range(STEPS):
        t = T0 + step * 300 + 7
        for index, host in enumerate(HOSTS[gateway]):
            size = 100 * seed + 37 * index + 11 * step
            down = IP(src="203.0.113.9", dst=host) / TCP(sport=443, dport=41000 + index)
            up = IP(src=host, dst="198.51.100.53") / UDP(sport=5000 + step, dport=53)
            down, up = down / Raw(b"d" * size), up / Raw(b"q" * (seed + index))
            acc = sums.setdefault(host, [[0, 0, 0, 0] for _ in range(STEPS)])[step]
            for pkt, offset, col in ((down, 0, 0), (up, 1, 2)):
                frame = Ether() / pkt
                frame.time = t + offset
                frames.append(frame)
                acc[col] += len(bytes(pkt))
                acc[col + 1] += 1
    wrpcap(str(path), frames)
    return sums


def config(tmp: Path, name: str, url: str, capture_enabled: bool) -> Path:
    group = grp.getgrgid(os.getgid()).gr_name
    path = tmp / f"{name}.toml"
    path.write_text(
        f'state_dir = "{tmp / name}"\nsocket = "{tmp / name}.sock"\nsocket_group = "{group}"\n'
        'timezone = "UTC"\nflush_interval = "60s"\nlocal_networks = ["192.168.190.0/24"]\n'
        f'[store]\nurl = "{url}"\ngateway = "{name}"\n'
        f"[capture]\nenabled = {'true' if capture_enabled else 'false'}\n"
        '[[monitor]]\nname = "all"\n'
        '[[monitor]]\nname = "lan"\nhosts = ["192.168.190.0/24"]\n'
    )
    return path


def answering(sock: Path, proc: subprocess.Popen[bytes], log: Path) -> Client:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"trafmetuxd exited {proc.returncode}: {log.read_text()}")
        client = Client(str(sock), timeout=20)
        try:
            client.call("status")
            return client
        except UnreachableError:
            client.close()
            time.sleep(0.2)
    raise AssertionError(f"{sock} never answered: {log.read_text()}")


@pytest.fixture(scope="module")
def fleet(
    pg_server: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Client], Figures, Figures]]:
    """east and west replaying their captures and serving; central reporting only."""
    pg_url = pg_server.new_database()
    tmp_path = tmp_path_factory.mktemp("fleet-hosts")
    procs: list[subprocess.Popen[bytes]] = []
    clients: dict[str, Client] = {}
    figures: Figures = {}
    steps: Figures = {}  # per five minutes
    try:
        for name in ("east", "west", "central"):
            replaying = name != "central"
            argv = [PYTHON, "-m", "trafmetuxd", "--config"]
            argv.append(str(config(tmp_path, name, pg_url, capture_enabled=replaying)))
            if replaying:
                steps[name] = capture(tmp_path / f"{name}.pcap", name)
                figures[name] = {h: hourly(rows) for h, rows in steps[name].items()}
                argv += ["--replay", str(tmp_path / f"{name}.pcap"), "--serve"]
            log = tmp_path / f"{name}.log"
            with log.open("wb") as out:
                procs.append(subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=out))
            clients[name] = answering(tmp_path / f"{name}.sock", procs[-1], log)
        yield clients, figures, steps
    finally:
        for client in clients.values():
            client.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def summed(figures: Figures, host: str) -> list[list[int]]:
    """A host's figures per hour, both gateways added up."""
    out = [[0, 0, 0, 0] for _ in range(HOURS)]
    for per_host in figures.values():
        for hour, row in enumerate(per_host.get(host, [[0, 0, 0, 0]] * HOURS)):
            out[hour] = [a + b for a, b in zip(out[hour], row, strict=True)]
    return out


def in_out(rows: list[list[int]]) -> list[list[int]]:
    return [[row[0], row[2]] for row in rows]


HOURLY = {"period": "hour", "begin": T0, "end": T0 + HOURS * 3600}


def history(client: Client, host: str, **args: object) -> dict[str, list[list[int]]]:
    """The host's report per hour: column -> [in, out] per hour."""
    result = client.call("report", host=host, monitors=["lan"], **HOURLY, **args)
    assert [row["begin"] for row in result["rows"]] == [T0 + h * 3600 for h in range(HOURS)]
    return {c: [row["values"][c] for row in result["rows"]] for c in result["monitors"]}


def test_a_hosts_history_on_each_gateway_and_summed_equals_the_captures(
    fleet: tuple[dict[str, Client], Figures, Figures],
) -> None:
    clients, figures, steps = fleet
    east, central = clients["east"], clients["central"]
    assert history(east, SHARED) == {"lan": in_out(figures["east"][SHARED])}  # its own
    for host in ("192.168.190.10", SHARED, "192.168.190.12"):
        named = history(central, host, gateways=["all"])
        assert named == {
            f"{gw}/lan": in_out(figures[gw].get(host, [[0, 0, 0, 0]] * HOURS))
            for gw in ("east", "west")
        }
        for client in (east, central):
            assert history(client, host, gateways=["all"], sum=True) == {
                "lan": in_out(summed(figures, host))
            }
    assert history(central, SHARED, gateways=["west"], sum=True) == {
        "lan": in_out(figures["west"][SHARED])
    }
    # the total, and the minutes of the first quarter hour (the minute tables)
    total = central.call("report", period="total", host=SHARED, monitors=["lan"],
                         gateways=["all"], sum=True)  # fmt: skip
    both = summed(figures, SHARED)
    assert total["rows"][0]["values"] == {"lan": [sum(r[0] for r in both), sum(r[2] for r in both)]}

    # the minutes of the first quarter hour (the minute tables): steps 0, 1 and 2
    def minute(gw: str, m: int) -> list[int]:
        row = steps[gw][SHARED][m // 5] if m % 5 == 0 else [0, 0, 0, 0]
        return [row[0], row[2]]

    span = {"period": "minute", "begin": T0, "end": T0 + 900, "host": SHARED}
    minutes = central.call("report", monitors=["lan"], gateways=["all"], **span)
    assert [row["values"] for row in minutes["rows"]] == [
        {f"{gw}/lan": minute(gw, m) for gw in HOSTS} for m in range(15)
    ]
    minutes = central.call("report", monitors=["lan"], gateways=["all"], sum=True, **span)
    assert [row["values"]["lan"] for row in minutes["rows"]] == [
        [a + b for a, b in zip(minute("east", m), minute("west", m), strict=True)]
        for m in range(15)
    ]


def per_period(client: Client, **args: object) -> list[dict[tuple[str | None, str], list[int]]]:
    """Each hour's host lines: (gateway or None, host) -> [in, in packets, out, out packets]."""
    result = client.call("hosts", monitor="lan", limit=100, **HOURLY, **args)
    assert len(result["periods"]) == HOURS
    out = []
    for period in result["periods"]:
        lines = {
            (h.get("gateway"), h["host"]): [h["in"], h["in_packets"], h["out"], h["out_packets"]]
            for h in period["hosts"]
        }
        assert period["count"] == len(lines) == len(period["hosts"])
        out.append(lines)
    return out


def test_hosts_per_period_on_each_gateway_and_summed_equal_the_captures(
    fleet: tuple[dict[str, Client], Figures, Figures],
) -> None:
    clients, figures, _steps = fleet
    central, west = clients["central"], clients["west"]
    named = per_period(central, gateways=["all"])
    assert named == [
        {
            (gw, host): rows[hour]
            for gw, per_host in figures.items()
            for host, rows in per_host.items()
        }
        for hour in range(HOURS)
    ]
    hosts = {h for per_host in figures.values() for h in per_host}
    expected_sum = [{(None, h): summed(figures, h)[hour] for h in hosts} for hour in range(HOURS)]
    assert per_period(central, gateways=["all"], sum=True) == expected_sum
    assert per_period(west, gateways=["east", "west"], sum=True) == expected_sum
    assert per_period(west) == [
        {(None, h): rows[hour] for h, rows in figures["west"].items()} for hour in range(HOURS)
    ]


def test_top_hosts_on_each_gateway_and_summed_equal_the_captures(
    fleet: tuple[dict[str, Client], Figures, Figures],
) -> None:
    clients, figures, _steps = fleet
    central = clients["central"]
    window = {"begin": T0, "end": T0 + HOURS * 3600}

    def total(rows: list[list[int]]) -> int:
        return sum(r[0] + r[2] for r in rows)

    top = central.call("top", by="host", monitors=["lan"], gateways=["all"], limit=10, **window)
    assert top["entries"] == sorted(
        (
            {"key": host, "bytes": total(rows), "gateway": gw}
            for gw, per_host in figures.items()
            for host, rows in per_host.items()
        ),
        key=lambda e: (-e["bytes"], e["key"], e["gateway"]),
    )
    top = central.call(
        "top", by="host", monitors=["lan"], gateways=["all"], sum=True, limit=2, **window
    )
    hosts = {h for per_host in figures.values() for h in per_host}
    ranked = sorted(((total(summed(figures, h)), h) for h in hosts), key=lambda e: (-e[0], e[1]))
    assert top["entries"] == [{"key": h, "bytes": b} for b, h in ranked[:2]]
    assert top["entries"][0]["key"] == SHARED  # behind both gateways: the largest summed
