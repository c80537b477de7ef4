"""What the figures mean: what was done, causes of missed targets, what is left (for the page).

Profiles and prototype timings quoted here were taken on the machine of the page with
cProfile, tracemalloc, `python -X importtime` and throw-away prototypes timed over the
benchmark's packets.
"""

from __future__ import annotations

PIPELINE = """\
**What was done.** (1) A per-flow verdict cache in `Meter.feed`: for plain IPv4 (IHL 5, not a
fragment) and IPv6 without extension headers, the key is the raw protocol, address and port
bytes plus direction and interface; a hit skips parsing and classification. (2) Each cached
flow keeps a slot per matching collector: the position its first packet found or made (valid
until the collector swaps; one found under the reverse key only until a new position is made),
and each collector remembers its current minute's totals row, so a hit does no dict lookup per
monitor. (3) packet, rules, collector, meter and nfbatch are compiled with mypyc. A hypothesis
test proves the cached meter equal to the uncached one (it found both slot edge cases while (2)
was built). Instruction counts (callgrind, 50,000 packets, 20 monitors, deterministic): 12,788
instructions per packet before (2), 9,626 after, with per-host counting merged as well.

**Why it still misses.** This machine's wall-clock figures move by 30% and more from run to
run (a shared VM: the same build measured 1.1 to 1.8 us per packet with 20 monitors within
minutes), so the table is one sample. With 20 monitors a packet matches 3.1 of them; each match
still updates two Python lists of boxed ints (its totals row and its position), and the cache
lookup builds a bytes slice and a 4-tuple key per packet. Next steps, not done: counters in
per-collector arrays, and a cache key without a per-packet tuple.

**The worker's batch entry** (`batch_20_monitors`): the same packets framed as the kernel's
netlink messages, 64 per call into `nfbatch.feed_batch`; it adds the message walk and a
payload copy per packet to `feed_20_monitors`.

**Replay.** Replay now reads the capture with its own reader (struct over a memory map, no
scapy object per frame) and takes the same cached path as live packets (each address pair's
direction is worked out once). The naive loop it is compared with does one dict update per
packet and no metering at all; replay classifies every packet into 20 monitors and records its
flows, which is most of its time (compare `feed_20_monitors`). Before this work a 500,000-packet
capture replayed at about 40,000 packets/s.
"""

E2E = """**What was done.** The packet path is a capture worker process per queue that reads its
queue with `recvmmsg` (up to 64 messages a call), accepts the whole batch with one
`NFQNL_MSG_VERDICT_BATCH` before metering it, and meters it in one call into the compiled core.
The accept-only consumer (b) makes a `recv`, a Python callback and a verdict `sendmsg` per
packet; trafmetuxd (c) now meters more packets per second than it accepts, with less CPU per
packet, counting every trafmetuxd process (workers, main process and front). Below saturation
the meter equals the kernel's rule counters to the byte; nothing is dropped at any rate.

**Several queues.** Run d: two queues, two workers, trafgen sending from both CPUs; the table
gives each worker's rate and CPU per packet, which stays that of one worker: the workers share
nothing but the main process, which they reach once a second. On this 2-core machine the
generator and the kernel's receive path take the cores the workers would need, so the total
cannot double here. What scaling to 4, 8 or 16 queues needs, reasoned: each queue is served by
its own process, so metering scales with the cores the kernel spreads packets over
(`--queue-cpu-fanout` follows the receiving CPU, so the NIC's receive-side scaling decides the
spread). The main process's cost grows with the number of shipments (one per worker per second
plus one per report), each merged in a few milliseconds for tens of thousands of positions: 16
workers at 1 ship/s is far below one core. The flush merges every worker's counts into the
same flush collectors, so totals stay exact whatever the queue count.
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
(nice +10) than its workers, so under CPU contention the packet path comes first. Every
report is bounded (at most 20,000 periods and 50,000 figures), so the heaviest one accepted
takes about 2 s of the main process.

**No ping is lost** while the heaviest reports run, in every run. **The RTT target is at the
mercy of this machine.** The quiet baseline alone has maxima of 35 to 48 ms (a shared VM whose
two vCPUs are also scheduled for other tenants), and on 2 cores the background load, the
worker, four report clients, the main process and the front compete for the CPU. Over three
runs of this benchmark the loaded maximum exceeded the quiet one by 4.1 ms (met, main process
at nice +5), 39.9 ms (nice +5), and 8.9 ms (nice +10, this page); the loaded p99 went from
60 ms at nice +5 to 29 ms at nice +10 in back-to-back runs. Giving the workers a realtime
priority (CAP_SYS_NICE, which the unit does not grant) is the step left.
"""

MEMORY = """\
**Why it misses.** A flow position costs about 170-190 bytes in the worker (its dict slot,
a 3-int list, the ints themselves, and its share of the verdict cache's slots) and about 150 in
the main process's flush collectors; 20 x 65,536 positions are ~230 MiB in either. The packet
path now has a process of its own, and each of the three processes carries its own interpreter
(18, 38 and 28 MiB after imports), so the sum over processes is larger than the single process
of before, even though the worker's realtime collectors are emptied every second (a shipment),
so they reach 65,536 positions per monitor only under a flood of new flows. The verdict cache's
slots are bounded (2^18), which keeps a cache of new flows from holding millions of them.

**What is left.** Counters in per-collector `array('q')` columns indexed by a slot number in the
dict would save ~70 bytes per position in both processes; shipping positions as packed arrays
instead of dicts would let the main process keep them packed until the write.
"""

CTL = """**What was done.** The client imports neither `typing`, `socket.py` (it uses `_socket`)
nor `shutil` (argparse's help formatter is given the terminal width); it is measured as
installed, with its bytecode cached. What remains is the interpreter with this venv's site
(including the editable-install finder), `argparse` and `json`, then the request. The request
now also passes through the socket's front process: against the commit before it, on the
same machine, the ratio was 2.00 and 2.00 before and 2.00-2.12 in five runs after.
"""

SCRAPE = """\
**What it shows.** The scrapers' requests reach the front, which asks the main process for the
figures at most once a second whoever asks (one answer serves every scrape within 1 s), and the
main process reads them with the flush lock held like a report. The capture worker shares
nothing with either, so both phases meter every byte the kernel's counter saw on the wire, and
the flushes keep their 1 s rhythm with or without the scrapers. The metered rate per second
differs only by how long each phase took to start and settle (the same packets were sent).
The longest scrape answer includes the one that waits for the main process's figures.
"""
FLEET = """The run above shared the machine's 2 cores with a full `make test`, so the tails
are noisy (a warm read's median is about 1 ms, its worst 34 ms: a read of a dictionary waiting
for a core). A PostgreSQL flush costs about 1.7 times a SQLite one (the same rows; the flow rows
go by COPY, the totals by pipelined upserts) and stays far inside a flush interval and the
watchdog's 30 s. Reports: the reader caches the period sums until any write transaction commits
(docs/store.md), so a report asked again meets the 50 ms target: the monthly report over all ten
gateways, which re-added 146,000 day rows on every request, is answered in about 1 ms. The
first report after a write (in a live fleet, after any gateway's flush) still reads the
rollups: hourly and daily are inside the target at the median (p99 37 to 45 ms, one daily
outlier of 107 ms), the monthly report misses it (median 64 ms for one gateway, 103 ms for
all ten; p99 139 and 116 ms). Month rollups would bring that read down for UTC calendars
only (a local month holds no whole UTC month); a zone with a half-hour offset (Asia/Kolkata)
reads the quarter edges of every day and is slower."""
ENFORCE = """**What it shows.** Without a quota that blocks or marks, the worker's batch path is
the one before enforcement: the only addition is one test of `Capture.judge` per batch of up
to 64 packets, and the ratio stays within 1.02 (1.011 to 1.016 in four runs on a quiet
machine, load below 1; 0.99 and 1.00 earlier under a load of 4 to 6). With one, every packet
is judged before the batch verdict: one walk over its netlink attributes, a flow-cache lookup
and a decision-cache lookup, plus the single verdicts when over the limit; about 1.8 times the
plain path (1.5 under the earlier load, where the plain path itself was slower), paid only
while such a quota exists. Reading the packet id and mark in the same attribute walk as the
rest took the enforcing ratio from 1.85-1.86 to 1.77-1.78 in back-to-back runs.
"""

ANALYSIS: dict[str, str] = {
    "pipeline": PIPELINE,
    "e2e": E2E,
    "reports": REPORTS,
    "stall": STALL,
    "memory": MEMORY,
    "ctl": CTL,
    "scrape": SCRAPE,
    "fleet": FLEET,
    "enforce": ENFORCE,
}
