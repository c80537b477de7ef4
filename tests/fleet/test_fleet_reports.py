"""Two gateways write one PostgreSQL store; reports read each, all of them, or their sum.

Two real daemons replay different captures as gateways "east" and "west" and stay up
(--serve); a third runs reporting only ([capture] enabled = false) as "central". Every figure
is compared with the captures' totals computed here, to the byte.
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
from trafmetuxctl.client import Client, DaemonError, UnreachableError

T0 = 1_700_000_400.0  # a quarter-hour boundary
LOCAL = "192.168.190.0/24"


def capture(path: Path, seed: int) -> dict[str, tuple[int, int]]:
    """A capture of downloads and DNS over six minutes; each monitor's (in, out) bytes."""
    frames, sums = [], {"all": [0, 0], "input": [0, 0], "output": [0, 0], "dns": [0, 0]}
    host = f"192.168.190.{10 + seed}"
    for i in range(40 * seed):
        ts = T0 + i * 9.0
        down = IP(src="203.0.113.9", dst=host) / TCP(sport=443, dport=40000 + seed)
        down = down / Raw(b"d" * (100 + 13 * i % 1300))
        up = IP(src=host, dst="198.51.100.53") / UDP(sport=5000 + i, dport=53) / Raw(b"q" * seed)
        for pkt, col, names in ((down, 0, ("all", "input")), (up, 1, ("all", "output", "dns"))):
            frame = Ether() / pkt
            frame.time = ts
            frames.append(frame)
            for name in names:
                sums[name][col] += len(bytes(pkt))
    wrpcap(str(path), frames)
    return {name: (v[0], v[1]) for name, v in sums.items()}


def config(tmp: Path, name: str, url: str, capture_enabled: bool = True) -> Path:
    group = grp.getgrgid(os.getgid()).gr_name
    path = tmp / f"{name}.toml"
    path.write_text(
        f'state_dir = "{tmp / name}"\nsocket = "{tmp / name}.sock"\nsocket_group = "{group}"\n'
        f'timezone = "UTC"\nflush_interval = "60s"\nlocal_networks = ["{LOCAL}"]\n'
        f'[store]\nurl = "{url}"\ngateway = "{name}"\n'
        f"[capture]\nenabled = {'true' if capture_enabled else 'false'}\n"
        '[[monitor]]\nname = "all"\n'
        '[[monitor]]\nname = "input"\nrules = [{ direction = "in" }]\n'
        '[[monitor]]\nname = "output"\nrules = [{ direction = "out" }]\n'
        '[[monitor]]\nname = "dns"\nrules = [{ protocol = "udp", port = 53 }]\n'
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
) -> Iterator[dict[str, object]]:
    """east and west replaying their captures and serving; central reporting only."""
    pg_url = pg_server.new_database()
    tmp_path = tmp_path_factory.mktemp("fleet")
    procs: list[subprocess.Popen[bytes]] = []
    clients: dict[str, Client] = {}
    totals = {}
    try:
        for seed, name in ((1, "east"), (2, "west"), (0, "central")):
            argv = [PYTHON, "-m", "trafmetuxd", "--config"]
            argv.append(str(config(tmp_path, name, pg_url, capture_enabled=bool(seed))))
            if seed:
                totals[name] = capture(tmp_path / f"{name}.pcap", seed)
                argv += ["--replay", str(tmp_path / f"{name}.pcap"), "--serve"]
            log = tmp_path / f"{name}.log"
            with log.open("wb") as out:
                procs.append(subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=out))
            clients[name] = answering(tmp_path / f"{name}.sock", procs[-1], log)
        yield {"clients": clients, "totals": totals}
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


def total_values(client: Client, **args: object) -> dict[str, tuple[int, int]]:
    result = client.call("report", period="total", **args)
    (row,) = result["rows"]
    return {name: (v[0], v[1]) for name, v in row["values"].items()}


def test_each_gateway_and_all_of_them_equal_the_captures_to_the_byte(
    fleet: dict[str, object],
) -> None:
    clients: dict[str, Client] = fleet["clients"]  # type: ignore[assignment]
    totals: dict[str, dict[str, tuple[int, int]]] = fleet["totals"]  # type: ignore[assignment]
    east, west, central = clients["east"], clients["west"], clients["central"]
    assert total_values(east) == totals["east"]  # by default: the daemon's own gateway
    assert total_values(west) == totals["west"]
    named = {f"{gw}/{m}": v for gw in ("east", "west") for m, v in totals[gw].items()}
    for client in (east, west, central):
        assert total_values(client, gateways=["all"]) == named
        summed = total_values(client, gateways=["all"], sum=True)
        assert summed == {
            m: (totals["east"][m][0] + totals["west"][m][0],
                totals["east"][m][1] + totals["west"][m][1])
            for m in totals["east"]
        }  # fmt: skip
    assert total_values(central, gateways=["west"]) == {
        f"west/{m}": v for m, v in totals["west"].items()
    }
    assert total_values(central, gateways=["west"], sum=True) == totals["west"]


def test_flows_top_hosts_and_quota_name_each_gateway_or_sum_them(
    fleet: dict[str, object],
) -> None:
    clients: dict[str, Client] = fleet["clients"]  # type: ignore[assignment]
    totals: dict[str, dict[str, tuple[int, int]]] = fleet["totals"]  # type: ignore[assignment]
    central = clients["central"]
    window = {"begin": int(T0) - 60, "end": int(T0) + 3600}
    flows = central.call("flows", monitor="dns", gateways=["all"], limit=10000, **window)
    per_gateway: dict[str, int] = {}
    for flow in flows["flows"]:
        per_gateway[flow["gateway"]] = per_gateway.get(flow["gateway"], 0) + flow["sent"]
    assert per_gateway == {gw: totals[gw]["dns"][1] for gw in ("east", "west")}
    top = central.call("top", monitors=["dns"], by="server", gateways=["all"], sum=True, **window)
    assert top["entries"] == [
        {"key": "198.51.100.53", "bytes": totals["east"]["dns"][1] + totals["west"]["dns"][1]}
    ]
    top = central.call("top", monitors=["dns"], by="server", gateways=["all"], **window)
    assert {(e["gateway"], e["bytes"]) for e in top["entries"]} == {
        ("east", totals["east"]["dns"][1]),
        ("west", totals["west"]["dns"][1]),
    }


def test_an_unknown_gateway_is_named_in_the_error(fleet: dict[str, object]) -> None:
    clients: dict[str, Client] = fleet["clients"]  # type: ignore[assignment]
    with pytest.raises(DaemonError) as caught:
        clients["central"].call("report", period="total", gateways=["north"])
    assert caught.value.code == "not_found"
    assert "north" in caught.value.message and "east, west" in caught.value.message


def test_reporting_only_mode_binds_no_queue(fleet: dict[str, object]) -> None:
    clients: dict[str, Client] = fleet["clients"]  # type: ignore[assignment]
    status = clients["central"].call("status")
    assert status["capture"] is None
    assert status["store"]["kind"] == "postgresql" and status["store"]["connected"]
    assert status["store"]["pending_flushes"] == 0
