"""A fast seeded generator of malformed packets: mutations of valid IPv4/IPv6 packets.

Mutations: truncated headers, bad IHL, zero and oversized lengths, fragments, IPv6
extension-header chains and loops, jumbo options, flipped bytes, and non-IP garbage.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

from harness import packets as p

EXT = (p.HOP_BY_HOP, p.ROUTING, p.FRAGMENT, p.DEST_OPTIONS, p.AH)


def transport(rng: random.Random) -> tuple[int, bytes]:
    """A transport protocol number and its header (+ a little payload)."""
    body = bytes(rng.randrange(0, 64))
    return rng.choice((
        (p.TCP, p.tcp(rng.randrange(65536), rng.randrange(65536), rng.randrange(256), body)),
        (p.UDP, p.udp(rng.randrange(65536), rng.randrange(65536), body)),
        (p.UDPLITE, p.udp(rng.randrange(65536), rng.randrange(65536))),
        (p.SCTP, p.sctp(rng.randrange(65536), rng.randrange(65536))),
        (p.ICMP, p.icmp(payload=body)),
        (p.GRE, p.gre(body)),
        (p.ESP, bytes(16)),
        (rng.randrange(256), body),
    ))  # fmt: skip


def ext_chain(rng: random.Random, last: int, depth: int) -> tuple[int, bytes]:
    """A chain of `depth` IPv6 extension headers ending in protocol `last`."""
    nxt, data = last, b""
    for _ in range(depth):
        kind = rng.choice(EXT)
        if kind in (p.HOP_BY_HOP, p.DEST_OPTIONS):
            opts = p.jumbo_option(rng.randrange(1 << 32)) if rng.random() < 0.2 else b""
            data = p.options_header(nxt, opts + bytes(rng.randrange(0, 12))) + data
        elif kind == p.ROUTING:
            data = p.routing_header(nxt) + data
        elif kind == p.FRAGMENT:
            data = (
                p.fragment_header(nxt, rng.choice((0, rng.randrange(8192))), rng.random() < 0.5)
                + data
            )
        else:
            data = p.ah_header(nxt) + data
        nxt = kind
    return nxt, data


def valid(rng: random.Random) -> bytes:
    """A well-formed IPv4 or IPv6 packet (NFQUEUE-style: from the IP header on)."""
    proto, body = transport(rng)
    if rng.random() < 0.5:
        options = bytes(4 * rng.randrange(0, 11))
        frag = rng.choice((0, 0, rng.randrange(1, 8192)))
        return p.ipv4(
            proto, body, options=options, frag_offset=frag, more_fragments=rng.random() < 0.3
        )
    first, chain = ext_chain(rng, proto, rng.choice((0, 0, 1, 2, 3, 8, 9, 20)))
    return p.ipv6(first, chain + body)


def loop_chain(rng: random.Random) -> bytes:
    """IPv6 whose extension headers name themselves as next header, over and over."""
    kind = rng.choice((p.HOP_BY_HOP, p.DEST_OPTIONS, p.ROUTING))
    unit = p.routing_header(kind) if kind == p.ROUTING else p.options_header(kind)
    return p.ipv6(kind, unit * rng.randrange(1, 200))


def mutate(rng: random.Random, buf: bytes) -> bytes:
    """One or a few random damages to a packet."""
    data = bytearray(buf)
    for _ in range(rng.randrange(1, 4)):
        what = rng.randrange(9)
        if what == 0 and data:
            del data[rng.randrange(len(data) + 1) :]  # truncated anywhere, headers included
        elif what == 1 and data:
            data[0] = (data[0] & 0xF0) | rng.randrange(16)  # bad IHL (or v6 traffic class)
        elif what == 2 and len(data) >= 6:
            off = 2 if data[0] >> 4 == 4 else 4  # total / payload length: 0, tiny, huge
            struct.pack_into(
                "!H", data, off, rng.choice((0, 1, 19, 20, 39, 40, 0xFFFF, rng.randrange(65536)))
            )
        elif what == 3 and data:
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif what == 4 and data:
            data[0] = (rng.randrange(16) << 4) | (data[0] & 0x0F)  # bad version: non-IP
        elif what == 5 and len(data) >= 8 and data[0] >> 4 == 4:
            struct.pack_into("!H", data, 6, rng.randrange(65536))  # random fragment bits
        elif what == 6 and len(data) >= 7 and data[0] >> 4 == 6:
            data[6] = rng.choice(EXT)  # a next header that does not match what follows
        elif what == 7:
            data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))  # trailer
        else:
            data = data[: rng.choice((0, 1, 19, 20, 39, 40, 41, 128))]  # NFQUEUE copy_range cuts
    return bytes(data)


def packets(seed: int, count: int) -> Iterator[bytes]:
    """`count` packets: a fifth valid, most mutated, some loops and some pure garbage."""
    rng = random.Random(seed)
    for _ in range(count):
        roll = rng.random()
        if roll < 0.2:
            yield valid(rng)
        elif roll < 0.8:
            yield mutate(rng, valid(rng))
        elif roll < 0.9:
            yield mutate(rng, loop_chain(rng)) if rng.random() < 0.5 else loop_chain(rng)
        else:
            yield rng.randbytes(rng.randrange(0, 200))
