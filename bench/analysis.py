"""What the figures mean: what was done, causes of missed targets, what is left (for the page).

Profiles and prototype timings quoted here were taken on the machine of the page with
cProfile, tracemalloc, `python -X importtime` and throw-away prototypes timed over the
benchmark's packets.
"""

from __future__ import annotations

PIPELINE = """\
**What was done.** (1) A per-flow verdict cache in `Meter.feed`: for plain IPv4 (IHL 5, not a
fragment) and IPv6 without extension headers, the key is the raw protocol, address and port
bytes plus direction and interface; a hit skips parsing and classification and only reads the
IP length (and the TCP flags where the SYN rule can decide the client). Everything else takes
the full path. A hypothesis test proves the cached meter equal to the uncached one. (2) The
flow key and client side are worked out once per flow and the key tuple is shared by every
monitor's collector. (3) packet, rules, collector and meter are compiled with mypyc at install
(`TRAFMETUX_PURE=1 make install` keeps plain Python). Together, from 4,986 to about 1,500
ns/packet with 20 monitors and from 2,081 to about 560 ns with 1 (the table above has this
run's figures; pure Python after (1) and (2): ~2,000 and ~900).

**Why it still misses.** With 20 monitors a packet matches 3.1 of them on average; each match
is a dict lookup of the shared key and an update of its counters, ~400 ns each, mostly cache
misses on the collectors' dicts, which compiling does not remove. With 1 monitor the target is
~10% away. Next steps, not done: counters in per-collector arrays (fewer objects to touch and
to free), and batching several packets per call into the compiled core.
"""

E2E = """**Why c/b misses.** The accept-only consumer (the binding's own loop) is the ceiling;
trafmetuxd adds the pipeline and the Python callback per packet on top (compare the CPU
seconds per million packets), so it verdicts about 60% as many packets (28% before the
pipeline work). Nothing is dropped: with fail-open the kernel accepts what the queue cannot
hold, so the network never waits, but those packets are not metered (the fail-open column;
`status` shows the same gap in its audit). Below saturation the meter equals the kernel rule
counters to the byte.

**What is left.** `--queue-balance` over N queues with one daemon process each would scale with
cores (not measurable on this 2-core machine, where the generator and the kernel's receive
path take one core): each process keeps its own collectors; minute and quarter totals merge
exactly because every flush is an upsert-add into the same rows.
"""

REPORTS = """\
**What was done.** Each period is one `SUM` over a primary-key range instead of every quarter
row read into Python; schema version 2 adds UTC hour and day rollups written in the same
transaction as minutes and quarters, so a local period is summed from whole UTC days in its
middle, whole hours next to them and quarters only at its uneven edges (exact in every zone,
+05:30 and Lord Howe included); the report reader keeps one read-only connection and a cache
of period sums cleared whenever `PRAGMA data_version` says the store changed. Cold means a
flush committed just before the request (the cache is empty); warm means it did not.

**The front process.** Requests now reach the daemon through the socket's front process
(docs/protocol.md), which keeps the socket's abusers off the packet path. Against the commit
before it, in the same session on the same machine (two runs each), median warm latency went
from 0.5-1.3 to 1.5-1.6 ms for check-quota, from 2.0-2.1 to 3.6 ms for show-monthly and from
3.7-4.0 to 4.2-4.6 ms for show-daily; show-hourly did not move (3.9-4.3 before, 3.8-4.1
after). Most of the extra time is the front's niceness: with the front at nice 0,
check-quota and show-monthly were 1.1 and 2.3 ms. It stays niced, because under CPU
contention the meter comes first.
"""

STALL = """**What was done.** The packet path no longer shares a process with anything: each
queue has a capture worker process that only reads its queue in batches, accepts every batch
with one verdict before metering it, and counts. Flushes (merge, SQLite transaction, flow
logs) and report queries run in the main process; the control socket's clients are served by
the front process. A worker ships what it counted when the main process asks (every second,
before a flush, before a report), in pieces of at most 4,096 positions so that encoding one
costs it a millisecond or two between batches; the main process runs at a lower priority
(nice +5) than its workers, so under CPU contention the packet path comes first."""

MEMORY = """\
**Why it misses.** After the work above (shared key tuples across monitors) a position costs
about 134 bytes (its dict slot and a 3-int list), so 20 x 65,536 positions are ~170 MiB on
their own, plus the interpreter and the verdict cache (about 350 bytes per cached flow; the
benchmark feeds a new flow with every packet, so the cache is full: ~22 MiB). With the flush
collectors full as well (a slow or failing write) the positions exist twice.

**What is left.** Counters in per-collector `array('q')` columns indexed by a slot number kept
in the dict would save ~70 bytes per position (~90 MiB here), but need the flows dict built
from the arrays in the flush thread; a smaller verdict-cache entry (nested per-interface dicts)
would save part of its 22 MiB.

**Not in these figures.** They are the meter's own interpreter. A running daemon has a second
process, the control socket's front: 22.8 MiB RSS when idle and 70.5 MiB at the peak of the
500-client socket abuse test (docs/reliability.md), where the daemon itself grew 0.4 MiB.
"""

CTL = """**What was done.** The client imports neither `typing`, `socket.py` (it uses `_socket`)
nor `shutil` (argparse's help formatter is given the terminal width); it is measured as
installed, with its bytecode cached. What remains is the interpreter with this venv's site
(including the editable-install finder), `argparse` and `json`, then the request. The request
now also passes through the socket's front process: against the commit before it, on the
same machine, the ratio was 2.00 and 2.00 before and 2.00-2.12 in five runs after.
"""

ANALYSIS: dict[str, str] = {
    "pipeline": PIPELINE,
    "e2e": E2E,
    "reports": REPORTS,
    "stall": STALL,
    "memory": MEMORY,
    "ctl": CTL,
}
