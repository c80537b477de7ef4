"""Installs and removes the queue rules (iptables/ip6tables, mangle) and reads their counters."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

from trafmetuxd.spec import DIR_IN, DIR_OUT, HOOKS_FORWARD, HOOKS_PREROUTING, CaptureSpec

TOOLS = ("iptables", "ip6tables")
TABLE = "mangle"
QUEUE = "NFQUEUE"  # a plan's target: the queue (the target arguments come from the spec)
BUILTIN = frozenset(("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"))


class ChainPlan(NamedTuple):
    """One of our chains: who jumps to it, one rule per interface and option, what it counts."""

    name: str
    parent: str  # the chain that jumps to it: a built-in hook or another of ours
    options: tuple[str, ...]  # interface options of its rules, "-i" and/or "-o"
    target: str  # QUEUE, or RETURN for a chain whose rules only count
    counts: int  # the direction its rules' counters count (0: none)


_IN, _OUT = "TRAFMETUX-IN", "TRAFMETUX-OUT"
_FWD, _FWD_IN, _FWD_OUT = "TRAFMETUX-FWD", "TRAFMETUX-FWD-IN", "TRAFMETUX-FWD-OUT"
# Every packet is queued once. "prerouting": arriving packets in, leaving ones out (a forwarded
# packet twice). "forward": the gateway's own packets at INPUT/OUTPUT; a forwarded packet once,
# at FORWARD (after de-NAT, before SNAT), where two counting chains count it in on its input
# and out on its output interface, as the meter does (nfbatch), so the audit still compares.
# Chains are listed children first: a parent's refill jumps to them before its own rules.
LAYOUTS: dict[str, tuple[ChainPlan, ...]] = {
    HOOKS_PREROUTING: (
        ChainPlan(_IN, "PREROUTING", ("-i",), QUEUE, DIR_IN),
        ChainPlan(_OUT, "POSTROUTING", ("-o",), QUEUE, DIR_OUT),
    ),
    HOOKS_FORWARD: (
        ChainPlan(_IN, "INPUT", ("-i",), QUEUE, DIR_IN),
        ChainPlan(_FWD_IN, _FWD, ("-i",), "RETURN", DIR_IN),
        ChainPlan(_FWD_OUT, _FWD, ("-o",), "RETURN", DIR_OUT),
        ChainPlan(_FWD, "FORWARD", ("-i", "-o"), QUEUE, 0),
        ChainPlan(_OUT, "OUTPUT", ("-o",), QUEUE, DIR_OUT),
    ),
}
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

    @property
    def plans(self) -> tuple[ChainPlan, ...]:
        """Our chains for the configured hooks."""
        return LAYOUTS[self._spec.hooks]

    def install(self) -> None:
        """Create or refill our chains and keep exactly one jump to each (idempotent).

        What another layout left (a restart with other hooks after kill -9) goes first: a jump
        left in PREROUTING next to one in INPUT would queue a packet twice. One listing per
        tool tells what is there, so a start runs as few commands as it can.
        """
        plans = self.plans
        for tool in TOOLS:
            table = parse_rules(_run(tool, "-S"))
            _clear(tool, table, keep=plans)
            for plan in plans:
                if plan.name not in table.chains:
                    _run(tool, "-N", plan.name)
            for plan in plans:
                self._fill(tool, plan)
            for plan in plans:
                if plan.parent in BUILTIN:
                    _single_jump(tool, table, plan.parent, plan.name)

    def _fill(self, tool: str, plan: ChainPlan) -> None:
        """Flush and refill one chain: jumps to its child chains first, then its own rules."""
        _run(tool, "-F", plan.name)  # a surviving chain (restart after kill -9) is not doubled
        for child in self.plans:
            if child.parent == plan.name:
                _run(tool, "-A", plan.name, "-j", child.name)
        for option in plan.options:
            for match in interface_matches(self._spec, option):
                _run(tool, "-A", plan.name, *match, *self._target(plan))

    def remove(self) -> None:
        """Delete the jumps and our chains, whatever hooks put them there (idempotent)."""
        for tool in TOOLS:
            _clear(tool, parse_rules(_run(tool, "-S")), keep=())

    def counters(self) -> dict[int, tuple[int, int]]:
        """(packets, bytes) the queue rules saw, IPv4 + IPv6, per direction.

        With the forward hooks a forwarded packet is counted in and out by the counting chains,
        each when its interface is metered, as the meter counts it.
        """
        totals = {DIR_IN: (0, 0), DIR_OUT: (0, 0)}
        for tool in TOOLS:
            per_chain = parse_listing(_run(tool, "-L", "-v", "-x", "-n"))
            for plan in self.plans:
                if plan.counts:
                    packets, nbytes = per_chain.get(plan.name, (0, 0))
                    old_packets, old_bytes = totals[plan.counts]
                    totals[plan.counts] = (old_packets + packets, old_bytes + nbytes)
        return totals

    def _target(self, plan: ChainPlan) -> list[str]:
        """The arguments of a plan's rules' target."""
        return self.target() if plan.target == QUEUE else ["-j", plan.target]

    def jump_count(self, tool: str, hook: str, chain: str) -> int:
        """How many rules of `hook` jump to `chain`."""
        return parse_rules(_run(tool, "-S", hook)).jumps.get((hook, chain), 0)


class Table(NamedTuple):
    """What `-S` shows of the mangle table: its user chains and its plain jumps, counted."""

    chains: frozenset[str]
    jumps: dict[tuple[str, str], int]  # (chain, target chain) -> rules "-A chain -j target"


def parse_rules(text: str) -> Table:
    """The chains and plain jumps of `iptables -S` output."""
    chains = set()
    jumps: dict[tuple[str, str], int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "-N":
            chains.add(fields[1])
        elif len(fields) == 4 and fields[0] == "-A" and fields[2] == "-j":
            key = (fields[1], fields[3])
            jumps[key] = jumps.get(key, 0) + 1
    return Table(frozenset(chains), jumps)


def parse_listing(text: str) -> dict[str, tuple[int, int]]:
    """Sum the counting rules' counters (NFQUEUE, and RETURN) per chain from `-L -v -x -n`."""
    sums: dict[str, tuple[int, int]] = {}
    chain = ""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "Chain":
            chain = fields[1]
        elif len(fields) >= 3 and fields[2] in _COUNTING and fields[0].isdigit():
            packets, nbytes = sums.get(chain, (0, 0))
            sums[chain] = (packets + int(fields[0]), nbytes + int(fields[1]))
    return sums


_COUNTING = frozenset((QUEUE, "RETURN"))
_ALL_PLANS = LAYOUTS[HOOKS_PREROUTING] + LAYOUTS[HOOKS_FORWARD]


_OURS = tuple(dict.fromkeys(plan.name for plan in _ALL_PLANS))


def _clear(tool: str, table: Table, keep: tuple[ChainPlan, ...]) -> None:
    """Remove every jump and chain of ours that `keep` does not have (all with keep=())."""
    kept_jumps = {(plan.parent, plan.name) for plan in keep}
    for (hook, chain), count in table.jumps.items():
        if hook in BUILTIN and chain in _OURS and (hook, chain) not in kept_jumps:
            _drop_jumps(tool, hook, chain, count)
    kept = {plan.name for plan in keep}
    stale = [name for name in _OURS if name in table.chains and name not in kept]
    for name in stale:  # all flushed first: one may still jump to another
        _run(tool, "-F", name)
    for name in stale:
        _run(tool, "-X", name)


def _single_jump(tool: str, table: Table, hook: str, chain: str) -> None:
    """Exactly one jump, appended so earlier mangle rules (marks) still apply first."""
    count = table.jumps.get((hook, chain), 0)
    if count == 1:
        return
    _drop_jumps(tool, hook, chain, count)
    _run(tool, "-A", hook, "-j", chain)


def _drop_jumps(tool: str, hook: str, chain: str, count: int) -> None:
    """Delete the `count` plain jumps from a built-in chain to one of ours."""
    for _ in range(min(count, _MAX_JUMPS)):
        if _call(tool, "-D", hook, "-j", chain).returncode != 0:
            return


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
