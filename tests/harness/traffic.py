"""Bounded traffic generators and sinks for the e2e tests (run inside a namespace).

traffic.py tcp-sink PORT [SECONDS]        prints LISTENING, then the bytes received
traffic.py tcp-send ADDR PORT NBYTES      exits 0 once every byte was sent and closed
traffic.py udp-sink PORT COUNT [SECONDS]  prints LISTENING, then datagrams received
traffic.py udp-send ADDR PORT COUNT SIZE [PPS]
traffic.py tcp-source PORT NBYTES [SECONDS]  prints LISTENING, sends NBYTES to one client
traffic.py tcp-fetch ADDR PORT            connects, reads to EOF, prints the bytes received
traffic.py udp-source PORT COUNT SIZE [SECONDS]  prints LISTENING, answers one request with COUNT
traffic.py udp-fetch ADDR PORT COUNT [SECONDS]   one request, prints the datagrams received
traffic.py udp-spray ADDR PORT COUNT SIZE PPS FIRST_SRC  IPv4 raw: one datagram per source address
traffic.py ping ADDR COUNT [SIZE]         ICMP/ICMPv6 echo; exit 0 when all answered
traffic.py ping-every ADDR COUNT INTERVAL paced echo requests; JSON of answers and round trips
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import time

_SO_RCVBUFFORCE = 33  # Linux; not exported by the socket module


def _family(addr: str) -> int:
    """AF_INET6 for an address with a colon."""
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def tcp_sink(port: int, seconds: float = 60.0) -> None:
    """Accept one connection on both families, read to EOF, print the byte count."""
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", port))
    srv.listen(1)
    srv.settimeout(seconds)
    print("LISTENING", flush=True)
    conn, _ = srv.accept()
    conn.settimeout(seconds)
    total = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        total += len(chunk)
    conn.close()
    srv.close()
    print(total, flush=True)


def tcp_send(addr: str, port: int, nbytes: int) -> None:
    """Send nbytes of zeros and close cleanly."""
    sock = socket.create_connection((addr, port), timeout=30)
    block = bytes(1 << 16)
    left = nbytes
    while left > 0:
        sent = sock.send(block[: min(left, len(block))])
        left -= sent
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)  # wait for the peer's close: every byte was acknowledged
    sock.close()


def udp_sink(port: int, count: int, seconds: float = 30.0) -> None:
    """Receive until `count` datagrams or `seconds` pass; print how many came."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    # Room for a whole burst: a loss here must never pass for a loss in the meter.
    sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 16 << 20)
    sock.bind(("::", port))
    print("LISTENING", flush=True)
    deadline = time.monotonic() + seconds
    got = 0
    while got < count and (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            sock.recv(65536)
        except TimeoutError:
            break
        got += 1
    sock.close()
    print(got, flush=True)


def udp_send(addr: str, port: int, count: int, size: int, pps: float = 0.0) -> None:
    """Send `count` datagrams of `size` payload bytes, paced at pps when given."""
    sock = socket.socket(_family(addr), socket.SOCK_DGRAM)
    payload = bytes(size)
    gap = 1.0 / pps if pps else 0.0
    due = time.monotonic()
    for _ in range(count):
        sock.sendto(payload, (addr, port))
        if gap:
            # Paced by a schedule, not a sleep per datagram (a sleep costs more than 1/pps at
            # high rates). After a stall (SIGSTOP) the schedule restarts: no catch-up burst.
            due += gap
            ahead = due - time.monotonic()
            if ahead > 0.001:
                time.sleep(ahead)
            elif ahead < -0.1:
                due = time.monotonic()
    sock.close()


def tcp_source(port: int, nbytes: int, seconds: float = 60.0) -> None:
    """Accept one connection, send nbytes of zeros, wait for the client's close; print nbytes."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(1)
    srv.settimeout(seconds)
    print("LISTENING", flush=True)
    conn, _ = srv.accept()
    conn.settimeout(seconds)
    conn.sendall(bytes(nbytes))
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)  # the client's close: every byte was acknowledged
    conn.close()
    srv.close()
    print(nbytes, flush=True)


def tcp_fetch(addr: str, port: int, seconds: float = 60.0) -> None:
    """Connect, read to EOF, print the bytes received."""
    sock = socket.create_connection((addr, port), timeout=seconds)
    total = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        total += len(chunk)
    sock.close()
    print(total, flush=True)


def udp_source(port: int, count: int, size: int, seconds: float = 30.0) -> None:
    """Wait for one request, answer its sender with `count` datagrams of `size` bytes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(seconds)
    print("LISTENING", flush=True)
    _request, peer = sock.recvfrom(2048)
    payload = bytes(size)
    for _ in range(count):
        sock.sendto(payload, peer)
        time.sleep(0.0005)  # a burst never outruns the receiver's queue
    sock.close()
    print(count, flush=True)


def udp_fetch(addr: str, port: int, count: int, seconds: float = 30.0) -> None:
    """Send one request datagram, receive until `count` datagrams or `seconds`; print how many."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 16 << 20)
    sock.sendto(b"?", (addr, port))
    deadline = time.monotonic() + seconds
    got = 0
    while got < count and (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            sock.recv(65536)
        except TimeoutError:
            break
        got += 1
    sock.close()
    print(got, flush=True)


def udp_spray(addr: str, port: int, count: int, size: int, pps: float, first: str) -> None:
    """One UDP datagram from each of `count` consecutive IPv4 source addresses from `first`.

    A raw socket with our own IP header (IP_HDRINCL): the sources need not be ours. UDP
    checksum 0 (none, allowed over IPv4); paced at pps.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    dst = socket.inet_aton(addr)
    base = int.from_bytes(socket.inet_aton(first), "big")
    payload = bytes(size)
    length = 28 + size
    udp = struct.pack("!HHHH", 40000, port, 8 + size, 0) + payload
    gap = 1.0 / pps
    due = time.monotonic()
    for i in range(count):
        src = (base + i).to_bytes(4, "big")
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, length, i & 0xFFFF, 0, 64, 17, 0, src, dst)
        header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
        sock.sendto(header + udp, (addr, 0))
        due += gap
        if (ahead := due - time.monotonic()) > 0.001:
            time.sleep(ahead)
    sock.close()
    print(count, flush=True)


def _checksum(data: bytes) -> int:
    """The Internet checksum (ICMPv4; the kernel fills ICMPv6's)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(addr: str, count: int, size: int = 56) -> None:
    """Echo requests one at a time; exit status 1 unless every one is answered."""
    v6 = ":" in addr
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    sock = socket.socket(_family(addr), socket.SOCK_RAW, proto)
    sock.settimeout(1.0)
    ident = os.getpid() & 0xFFFF
    answered = 0
    for seq in range(count):
        kind = 128 if v6 else 8
        body = struct.pack("!HH", ident, seq) + bytes(size)
        header = struct.pack("!BBH", kind, 0, 0)
        csum = 0 if v6 else _checksum(header + body)
        sock.sendto(struct.pack("!BBH", kind, 0, csum) + body, (addr, 0))
        answered += _await_reply(sock, v6, ident, seq)
    sock.close()
    print(answered, flush=True)
    sys.exit(0 if answered == count else 1)


def ping_every(addr: str, count: int, interval: float) -> None:
    """One echo request every `interval` s regardless of replies; JSON with each one's fate.

    Prints {"sent", "answered", "rtt_ms": [...], "longest_gap": consecutive unanswered}.
    A reply later than 2 s counts as lost.
    """
    v6 = ":" in addr
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    sock = socket.socket(_family(addr), socket.SOCK_RAW, proto)
    sock.setblocking(False)
    ident = os.getpid() & 0xFFFF
    sent_at: dict[int, float] = {}
    rtt: dict[int, float] = {}
    start = time.monotonic()
    for seq in range(count):
        while (left := start + seq * interval - time.monotonic()) > 0:
            _collect(sock, v6, ident, sent_at, rtt, left)
        kind = 128 if v6 else 8
        body = struct.pack("!HH", ident, seq) + bytes(56)
        csum = 0 if v6 else _checksum(struct.pack("!BBH", kind, 0, 0) + body)
        sent_at[seq] = time.monotonic()
        sock.sendto(struct.pack("!BBH", kind, 0, csum) + body, (addr, 0))
    end = time.monotonic() + 2.0
    while len(rtt) < count and (left := end - time.monotonic()) > 0:
        _collect(sock, v6, ident, sent_at, rtt, left)
    sock.close()
    longest = run = 0
    for seq in range(count):
        run = 0 if rtt.get(seq, 9e9) <= 2000.0 else run + 1
        longest = max(longest, run)
    answered = [rtt[s] for s in sorted(rtt) if rtt[s] <= 2000.0]
    print(json.dumps({"sent": count, "answered": len(answered), "rtt_ms": answered,
                      "longest_gap": longest}), flush=True)  # fmt: skip


def _collect(
    sock: socket.socket,
    v6: bool,
    ident: int,
    sent_at: dict[int, float],
    rtt: dict[int, float],
    wait: float,
) -> None:
    """Note the round-trip time of every echo reply arriving within `wait` seconds."""
    ready, _, _ = select.select([sock], [], [], max(0.0, wait))
    while ready:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        now = time.monotonic()
        icmp = data if v6 else data[(data[0] & 0x0F) * 4 :]
        kind, _code, _csum, rid, rseq = struct.unpack_from("!BBHHH", icmp)
        if kind == (129 if v6 else 0) and rid == ident and rseq in sent_at:
            rtt.setdefault(rseq, (now - sent_at[rseq]) * 1000.0)


def _await_reply(sock: socket.socket, v6: bool, ident: int, seq: int) -> int:
    """1 when the matching echo reply arrives within the socket timeout."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return 0
        icmp = data if v6 else data[(data[0] & 0x0F) * 4 :]
        kind, _code, _csum, rid, rseq = struct.unpack_from("!BBHHH", icmp)
        if kind == (129 if v6 else 0) and rid == ident and rseq == seq:
            return 1
    return 0


def main(argv: list[str]) -> None:
    """Dispatch a subcommand."""
    cmd, args = argv[0], argv[1:]
    if cmd == "tcp-sink":
        tcp_sink(int(args[0]), *(float(a) for a in args[1:]))
    elif cmd == "tcp-send":
        tcp_send(args[0], int(args[1]), int(args[2]))
    elif cmd == "udp-sink":
        udp_sink(int(args[0]), int(args[1]), *(float(a) for a in args[2:]))
    elif cmd == "udp-send":
        udp_send(args[0], int(args[1]), int(args[2]), int(args[3]), *(float(a) for a in args[4:]))
    elif cmd == "tcp-source":
        tcp_source(int(args[0]), int(args[1]), *(float(a) for a in args[2:]))
    elif cmd == "tcp-fetch":
        tcp_fetch(args[0], int(args[1]))
    elif cmd == "udp-source":
        udp_source(int(args[0]), int(args[1]), int(args[2]), *(float(a) for a in args[3:]))
    elif cmd == "udp-fetch":
        udp_fetch(args[0], int(args[1]), int(args[2]), *(float(a) for a in args[3:]))
    elif cmd == "udp-spray":
        udp_spray(args[0], int(args[1]), int(args[2]), int(args[3]), float(args[4]), args[5])
    elif cmd == "ping":
        ping(args[0], int(args[1]), *(int(a) for a in args[2:]))
    elif cmd == "ping-every":
        ping_every(args[0], int(args[1]), float(args[2]))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
