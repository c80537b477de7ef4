"""Runs QueueRules inside a namespace: install | remove | counters, for a queue and interfaces.

probe_kernel.py ACTION QUEUE [IFACE...]   prints the counters as JSON for "counters"
"""

from __future__ import annotations

import json
import sys

from trafmetuxd.kernel import QueueRules
from trafmetuxd.spec import CaptureSpec


def main(argv: list[str]) -> None:
    """Apply one action with a spec built from the arguments."""
    action, queue, interfaces = argv[0], int(argv[1]), tuple(argv[2:])
    rules = QueueRules(CaptureSpec(queue=queue, interfaces=interfaces))
    if action == "install":
        rules.install()
    elif action == "remove":
        rules.remove()
    elif action == "counters":
        print(json.dumps({str(k): v for k, v in rules.counters().items()}))
    else:
        raise SystemExit(f"unknown action {action}")


if __name__ == "__main__":
    main(sys.argv[1:])
