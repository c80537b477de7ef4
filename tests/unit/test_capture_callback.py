"""The per-packet path of Capture with stand-in packets: verdict first, never an exception."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import pytest

from trafmetuxd.capture import Capture
from trafmetuxd.spec import DIR_IN, DIR_OUT, CaptureSpec


@dataclass
class FakePacket:
    """What the binding's Packet offers the callback."""

    hook: int
    indev: int = 0
    outdev: int = 0
    payload: bytes = b"\x45" + bytes(19)
    events: list[str] = field(default_factory=list)

    def accept(self) -> None:
        self.events.append("accept")

    def get_payload(self) -> bytes:
        self.events.append("payload")
        return self.payload


class Recorder:
    """A meter feed that records calls, and can fail."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[float, bytes, int, str]] = []
        self.fail = fail

    def __call__(self, ts: float, buf: bytes, direction: int, iface: str) -> None:
        self.calls.append((ts, buf, direction, iface))
        if self.fail:
            raise ValueError("meter bug")


def loopback_index() -> int:
    """The ifindex of lo on this machine."""
    return socket.if_nametoindex("lo")


def test_the_verdict_goes_out_before_the_meter_reads_the_packet() -> None:
    feed = Recorder()
    capture = Capture(CaptureSpec(), feed, clock=lambda: 123.5)
    pkt = FakePacket(hook=0, indev=loopback_index())
    capture._on_packet(pkt)  # type: ignore[arg-type]
    assert pkt.events == ["accept", "payload"]
    assert feed.calls == [(123.5, pkt.payload, DIR_IN, "lo")]
    assert capture.stats.packets == 1


@pytest.mark.parametrize(
    ("hook", "direction"), [(0, DIR_IN), (1, DIR_IN), (2, DIR_OUT), (3, DIR_OUT), (4, DIR_OUT)]
)
def test_direction_and_interface_follow_the_hook(hook: int, direction: int) -> None:
    feed = Recorder()
    capture = Capture(CaptureSpec(), feed)
    lo = loopback_index()
    pkt = FakePacket(hook=hook, indev=lo if direction == DIR_IN else 0, outdev=lo)
    capture._on_packet(pkt)  # type: ignore[arg-type]
    assert feed.calls[0][2:] == (direction, "lo")


def test_a_failing_meter_is_counted_not_raised() -> None:
    capture = Capture(CaptureSpec(), Recorder(fail=True))
    for _ in range(3):
        pkt = FakePacket(hook=4, outdev=loopback_index())
        capture._on_packet(pkt)  # type: ignore[arg-type]
        assert pkt.events[0] == "accept"
    assert (capture.stats.packets, capture.stats.errors) == (3, 3)
    assert capture.stats.last_error == "ValueError: meter bug"


def test_an_interface_that_vanished_gets_a_stable_placeholder() -> None:
    feed = Recorder()
    capture = Capture(CaptureSpec(), feed)
    gone = max(index for index, _ in socket.if_nameindex()) + 1000
    capture._on_packet(FakePacket(hook=0, indev=gone))  # type: ignore[arg-type]
    assert feed.calls[0][3] == f"if{gone}"
    assert capture.stats.errors == 0
