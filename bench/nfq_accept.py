"""The minimal NFQUEUE consumer: binds like trafmetuxd (same binding, same flags), accepts all.

Run inside a namespace: `python bench/nfq_accept.py QUEUE`; prints READY once bound and the
number of packets it accepted when SIGTERM ends it.
"""

from __future__ import annotations

import signal
import sys

import netfilterqueue

from trafmetuxd import nfqconfig
from trafmetuxd.spec import CaptureSpec


def main(queue: int) -> int:
    """Bind, accept everything until SIGTERM, print the count."""
    spec = CaptureSpec(queue=queue)
    count = [0]

    def accept(pkt: netfilterqueue.Packet) -> None:
        pkt.accept()
        count[0] += 1

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    nfq = netfilterqueue.NetfilterQueue()
    nfq.bind(
        queue,
        accept,
        max_len=spec.queue_maxlen,
        mode=netfilterqueue.COPY_PACKET,
        range=spec.copy_range,
        sock_len=spec.rcvbuf,
    )
    mask = nfqconfig.NFQA_CFG_F_FAIL_OPEN | nfqconfig.NFQA_CFG_F_GSO
    nfqconfig.set_queue_flags(nfq.get_fd(), queue, nfqconfig.NFQA_CFG_F_FAIL_OPEN, mask)
    print("READY", flush=True)
    try:
        nfq.run()
    except KeyboardInterrupt:
        pass
    finally:
        nfq.unbind()
    print(count[0], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
