"""nfnetlink_queue messages byte for byte, and the ACK wait on a real socket pair."""

from __future__ import annotations

import errno
import socket
import struct
import time

import pytest

from trafmetuxd import nfqconfig


def test_fail_open_config_message_layout() -> None:
    msg = nfqconfig.config_flags_message(queue=7, flags=1, mask=1 | 4, seq=99)
    # nlmsghdr: length 36 = 16 header + 4 nfgenmsg + 2 attributes of 8; type 0x0302
    # (NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_CONFIG); flags REQUEST|ACK; seq 99; port 0.
    assert msg[:16] == struct.pack("=IHHII", 36, 0x0302, 0x1 | 0x4, 99, 0)
    assert msg[16:20] == bytes([0, 0, 0, 7])  # AF_UNSPEC, version 0, queue 7 big-endian
    assert msg[20:28] == struct.pack("=HH", 8, 4) + bytes([0, 0, 0, 5])  # NFQA_CFG_MASK
    assert msg[28:36] == struct.pack("=HH", 8, 5) + bytes([0, 0, 0, 1])  # NFQA_CFG_FLAGS
    assert len(msg) == 36


def test_verdict_message_accepts_the_packet_id() -> None:
    msg = nfqconfig.accept_message(queue=1, packet_id=0x01020304, seq=5)
    assert struct.unpack_from("=IHH", msg) == (32, 0x0301, 0x1)
    # NFQA_VERDICT_HDR: verdict NF_ACCEPT (1), then the id, both big-endian.
    assert msg[20:] == struct.pack("=HH", 12, 2) + bytes([0, 0, 0, 1, 1, 2, 3, 4])


def packet_message(packet_id: int, seq: int = 0) -> bytes:
    """A kernel NFQNL_MSG_PACKET with just its packet header attribute (padded)."""
    hdr = struct.pack("!IHB", packet_id, 0x0800, 0)  # 7 bytes: id, hw protocol, hook
    attr = struct.pack("=HH", 4 + len(hdr), 1) + hdr + b"\0"
    body = bytes([2, 0, 0, 0]) + attr
    return struct.pack("=IHHII", 16 + len(body), 0x0300, 0, seq, 0) + body


def ack(seq: int, error: int) -> bytes:
    """An NLMSG_ERROR carrying -error (0: a plain ACK) and a copy of a request header."""
    body = struct.pack("=i", -error) + struct.pack("=IHHII", 36, 0x0302, 5, seq, 0)
    return struct.pack("=IHHII", 16 + len(body), 2, 0, seq, 0) + body


def test_messages_split_and_packet_ids_found() -> None:
    data = packet_message(41) + ack(3, 0)
    first, second = nfqconfig.parse_messages(data)
    assert nfqconfig.packet_id(first) == 41
    assert (second.type, second.seq, nfqconfig.ack_errno(second)) == (2, 3, 0)
    assert list(nfqconfig.parse_messages(data[:-3])) == [first]  # truncated tail ignored


def test_packets_queued_before_the_ack_are_accepted_then_the_ack_ends_the_wait() -> None:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, kernel:
        seq = nfqconfig._SEQ_BASE | 3
        kernel.send(packet_message(10))
        kernel.send(ack(seq - 1, 0))  # someone else's ACK: not ours
        kernel.send(packet_message(11) + ack(seq, 0))
        accepted = nfqconfig._await_ack(ours, 3, seq, deadline=time.monotonic() + 5)
        assert accepted == 2
        verdicts = [kernel.recv(100) for _ in range(2)]
        assert [v[-4:] for v in verdicts] == [struct.pack("!I", 10), struct.pack("!I", 11)]


def test_a_refusal_carries_the_kernel_errno() -> None:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, kernel:
        seq = nfqconfig._SEQ_BASE
        kernel.send(ack(seq, errno.EPERM))
        with pytest.raises(PermissionError):
            nfqconfig._await_ack(ours, 0, seq, deadline=time.monotonic() + 5)


def test_no_ack_times_out() -> None:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, kernel, pytest.raises(TimeoutError):
        nfqconfig._await_ack(ours, 0, 1, deadline=time.monotonic() + 0.2)
