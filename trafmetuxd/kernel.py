"""Installs and removes the queue rules (iptables/ip6tables, mangle) and reads their counters."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

from trafmetuxd.spec import DIR_IN, DIR_OUT, CaptureSpec

TOOLS = ("iptables", "ip6tables")
TABLE = "mangle"
# (direction, our chain, the built-in chain that jumps to it, the interface option)
CHAINS = (
    (DIR_IN, "TRAFMETUX-IN", "PREROUTING", "-i"),
    (DIR_OUT, "TRAFMETUX-OUT", "POSTROUTING", "-o"),
)
PROC_QUEUE = Path("/proc/net/netfilter/nfnetlink_queue")
PROC_NETLINK = Path("/proc/net/netlink")
_TIMEOUT = 30.0
_MAX_JUMPS = 64  # bound on the removal loop; far above any plausible duplicate count


class KernelError(Exception):
    """A rule command failed; the message carries the command and its error output."""


class QueueStats(NamedTuple):
    """One line of /proc/net/netfilter/nfnetlink_queue."""

    queue: int
    portid: int  # netlink port of the bound consumer
    waiting: int  # packets queued, waiting for a verdict
    copy_mode: int
    copy_range: int
    queue_dropped: int  # dropped because the queue was full (fail-open off)
    user_dropped: int  # dropped because the netlink socket buffer was full
    id_sequence: int  # last packet id handed out


def queue_table(path: Path = PROC_QUEUE) -> dict[int, QueueStats]:
    """The kernel's counters of every bound queue (none when the module is not loaded)."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[0].isdigit():
            try:
                stats = QueueStats(*(int(f) for f in fields[:8]))
            except ValueError:
                continue
            out[stats.queue] = stats
    return out


def netlink_backlog(path: Path = PROC_NETLINK) -> dict[int, int]:
    """Bytes waiting to be read in each netfilter netlink socket, by its port id.

    /proc/net/netlink is readable by every user, unlike the queue table (root only, 0440): an
    unprivileged daemon still sees whether a worker's socket holds packets it has not read.
    """
    try:
        text = path.read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines()[1:]:
        fields = line.split()  # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
        if len(fields) >= 5 and fields[1] == "12" and fields[2].isdigit() and fields[4].isdigit():
            out[int(fields[2])] = int(fields[4])
    return out


def queue_stats(queue: int, path: Path = PROC_QUEUE) -> QueueStats | None:
    """The kernel's counters for a bound queue; None when it is not bound (or no module)."""
    return queue_table(path).get(queue)


def interface_matches(spec: CaptureSpec, option: str) -> list[list[str]]:
    """One match per configured interface ('*' globs become iptables '+'), else all but lo.

    lo is never metered: '*' means every interface but lo, and another glob that would match
    lo (such as 'l*') is refused (the configuration refuses it first).
    """
    names = [name for name in spec.interfaces if name != "lo"]
    if not names or "*" in names:
        return [["!", option, "lo"]]
    looping = [name for name in names if fnmatch.fnmatchcase("lo", name)]
    if looping:
        raise KernelError(f"interface glob {looping[0]!r} matches lo, which is never metered")
    return [[option, name[:-1] + "+" if name.endswith("*") else name] for name in names]


class QueueRules:
    """The mangle chains that send the metered interfaces' packets to the queue."""

    def __init__(self, spec: CaptureSpec, strict: bool = False) -> None:
        self._spec = spec
        self.strict = strict  # a quota has strict = true: no bypass

    def target(self) -> list[str]:
        """NFQUEUE with bypass: with no consumer bound the kernel accepts instead of dropping.

        Several queues share the packets by CPU (--queue-cpu-fanout): each CPU's packets go to
        one queue, so a flow stays on one worker as long as its packets arrive on one CPU.
        Strict (a quota asked for it): without --queue-bypass, so that no daemon means no
        traffic on the metered interfaces rather than unenforced traffic.
        """
        first, count = self._spec.queue, self._spec.queues
        bypass = [] if self.strict else ["--queue-bypass"]
        if count <= 1:
            return ["-j", "NFQUEUE", "--queue-num", str(first), *bypass]
        balance = f"{first}:{first + count - 1}"
        return ["-j", "NFQUEUE", "--queue-balance", balance, "--queue-cpu-fanout", *bypass]

    def install(self) -> None:
        """Create or refill our chains and keep exactly one jump to each (idempotent)."""
        for tool in TOOLS:
            for _direction, chain, hook, option in CHAINS:
                if not self._chain_exists(tool, chain):
                    _run(tool, "-N", chain)
                # Refilling a surviving chain (restart after kill -9) never duplicates rules.
                _run(tool, "-F", chain)
                for match in interface_matches(self._spec, option):
                    _run(tool, "-A", chain, *match, *self.target())
                self._single_jump(tool, hook, chain)

    def remove(self) -> None:
        """Delete the jumps and our chains (idempotent)."""
        for tool in TOOLS:
            for _direction, chain, hook, _option in CHAINS:
                for _ in range(_MAX_JUMPS):
                    if _call(tool, "-D", hook, "-j", chain).returncode != 0:
                        break
                if self._chain_exists(tool, chain):
                    _run(tool, "-F", chain)
                    _run(tool, "-X", chain)

    def counters(self) -> dict[int, tuple[int, int]]:
        """(packets, bytes) the NFQUEUE rules saw, IPv4 + IPv6, per direction."""
        totals = {direction: (0, 0) for direction, *_ in CHAINS}
        for tool in TOOLS:
            listing = _run(tool, "-L", "-v", "-x", "-n")
            per_chain = parse_listing(listing)
            for direction, chain, _hook, _option in CHAINS:
                packets, nbytes = per_chain.get(chain, (0, 0))
                old_packets, old_bytes = totals[direction]
                totals[direction] = (old_packets + packets, old_bytes + nbytes)
        return totals

    def jump_count(self, tool: str, hook: str, chain: str) -> int:
        """How many rules of `hook` jump to `chain`."""
        wanted = f"-A {hook} -j {chain}"
        return sum(1 for line in _run(tool, "-S", hook).splitlines() if line.strip() == wanted)

    def _single_jump(self, tool: str, hook: str, chain: str) -> None:
        """Exactly one jump, appended so earlier mangle rules (marks) still apply first."""
        if self.jump_count(tool, hook, chain) == 1:
            return
        for _ in range(_MAX_JUMPS):
            if _call(tool, "-D", hook, "-j", chain).returncode != 0:
                break
        _run(tool, "-A", hook, "-j", chain)

    @staticmethod
    def _chain_exists(tool: str, chain: str) -> bool:
        """True when our chain is present in the mangle table."""
        return _call(tool, "-S", chain).returncode == 0


def parse_listing(text: str) -> dict[str, tuple[int, int]]:
    """Sum the NFQUEUE rules' counters per chain from `-L -v -x -n` output."""
    sums: dict[str, tuple[int, int]] = {}
    chain = ""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "Chain":
            chain = fields[1]
        elif len(fields) >= 3 and fields[2] == "NFQUEUE" and fields[0].isdigit():
            packets, nbytes = sums.get(chain, (0, 0))
            sums[chain] = (packets + int(fields[0]), nbytes + int(fields[1]))
    return sums


def _argv(tool: str, args: tuple[str, ...]) -> list[str]:
    """Full command line: the tool found on PATH, waiting for the xtables lock, mangle table."""
    path = shutil.which(tool)
    if path is None:
        raise KernelError(f"{tool} not found on PATH: install the iptables package")
    return [path, "-w", "-t", TABLE, *args]


def _call(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one rule command and return its result, whatever the exit status."""
    argv = _argv(tool, args)
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelError(f"{' '.join(argv)}: {exc}") from exc


def _run(tool: str, *args: str) -> str:
    """Run one rule command; KernelError with its stderr unless it succeeds."""
    result = _call(tool, *args)
    if result.returncode != 0:
        detail = result.stderr.strip() or f"exit status {result.returncode}"
        raise KernelError(f"{tool} -t {TABLE} {' '.join(args)}: {detail}")
    return result.stdout
