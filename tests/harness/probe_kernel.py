"""Runs QueueRules inside a namespace: install | remove | counters, for a queue and interfaces.

probe_kernel.py ACTION QUEUE [IFACE...] [--hooks prerouting|forward]
prints the counters as JSON for "counters"
"""

from __future__ import annotations

import argparse
import json
import sys

from trafmetuxd.kernel import QueueRules
from trafmetuxd.spec import HOOKS, HOOKS_PREROUTING, CaptureSpec


def main(argv: list[str]) -> None:
    """Apply one action with a spec built from the arguments."""
    parser = argparse.ArgumentParser(prog="probe_kernel.py")
    parser.add_argument("action", choices=("install", "remove", "counters"))
    parser.add_argument("queue", type=int)
    parser.add_argument("interfaces", nargs="*")
    parser.add_argument("--hooks", choices=HOOKS, default=HOOKS_PREROUTING)
    args = parser.parse_args(argv)
    spec = CaptureSpec(queue=args.queue, interfaces=tuple(args.interfaces), hooks=args.hooks)
    rules = QueueRules(spec)
    if args.action == "install":
        rules.install()
    elif args.action == "remove":
        rules.remove()
    else:
        print(json.dumps({str(k): v for k, v in rules.counters().items()}))


if __name__ == "__main__":
    main(sys.argv[1:])
