"""What the figures mean: causes of missed targets, profiles and proposed fixes (for the page).

Profiles and prototype timings quoted here were taken on the machine of the page with
cProfile, `python -X importtime` and throw-away prototypes timed over the benchmark's packets.
"""

from __future__ import annotations

PIPELINE = """\
**Why it misses.** On this CPU a bare Python call costs ~50 ns and `parse()` alone ~700 ns
(~1.4 M packets/s): the 1-monitor target (2 M packets/s = 500 ns per packet for everything) is
below what parsing alone costs in CPython here. A cProfile of `Meter.feed` with 20 monitors
(100,000 packets): `Classifier.match` ~55% of the time (its rule checks through helper calls),
`RealtimeCollector.add` ~35% (a packet matches 3.1 of the 20 monitors on average, each builds
its own flow key), `parse` ~15%.

**Proposals** (measured with a prototype over the same packets, not merged):
1. A per-flow verdict cache in `Meter.feed`: key = (direction, iface, protocol, the raw
   address+port bytes of the header) -> (monitor indices, parsed header), for plain IPv4
   (IHL 5, not a fragment) and IPv6 without extension headers; everything else takes today's
   path. Bounded, cleared on reconfigure; correct because the key holds every field a rule
   reads. Prototype, lookup + totals (without flow positions): 577 ns/packet with 1 monitor,
   884 ns/packet with 20 (today 1,800-2,000 and 4,700-5,400). With the flow positions
   (one dict lookup per matched monitor) about 1.3 us with 20 monitors: ~4x, still short of
   1 us.
2. Compute the flow key and client side once per packet instead of once per matched monitor.
3. Compile the pure core (packet, rules, collector, meter) with mypyc (it ships with mypy, the
   modules are already strictly typed): the only way seen to approach 2 M packets/s on this
   CPU; not measured yet. Otherwise the targets should be restated for this class of CPU.
"""

E2E = """**Why c/b misses.** The accept-only consumer (the binding's own C loop) is the ceiling;
trafmetuxd spends the pipeline's 5 us per packet on top of the binding's ~2.5 us (compare the
CPU seconds per million packets), so it verdicts about a third as many packets. Nothing is
dropped: with fail-open the kernel accepts what the queue cannot hold, so the network never
waits, but those packets are not metered (the fail-open column; `status` shows the same gap
in its audit). Below saturation the meter equals the kernel rule counters to the byte.

**Proposals.** The pipeline speed-ups above translate directly. `--queue-balance` over N
queues with one daemon process each would scale with cores (not measurable on this 2-core
machine, where trafgen and the kernel's receive path take one core): each process keeps its
own collectors; minute/quarter totals merge exactly because every flush is an upsert-add into
the same rows, flows stay per-flush rows; needs one flush row per process and a busy timeout
for concurrent writers (or one writer process fed the snapshots).
"""

REPORTS = """\
**Why daily and monthly miss.** `query.bucket_sums` reads every quarter row of the range into
Python and bisects each: 24 months x 20 monitors is ~1.4 M rows, 60 days ~115,000. Measured on
the same store: summing in SQL, one `SUM` per bucket over the primary-key range, gives the
same sums in 114 ms (month, was 801 ms) and 14 ms (day, was 70 ms): enough for daily, not for
monthly. Monthly needs a coarser source: sums of closed periods cached in the daemon (history
before the last flush does not change; a flush or replay invalidates only the buckets holding
the minutes it wrote, retention clears all). A stored hour rollup would not do for zones with
half-hour offsets; quarters are the coarsest zone-safe unit.
"""

FLUSH = """**Why it misses.** Two causes. (1) `Flusher.absorb` merges the swapped snapshots into the
flush collectors on the loop thread: measured alone, 20 x 2,000 positions take the time shown
above as the loop-thread part, all of it a stall. (2) The write runs in a worker thread but
holds the GIL while it builds rows (address text through `ipaddress`, tuples); the loop
thread then waits up to the 5 ms switch interval for each hand-back.

**Proposals.** (a) When a flush collector is empty (the usual case: the last write
committed), adopt the snapshot's dicts instead of merging (O(1) per monitor); otherwise merge
in the worker thread under the flush lock (snapshots are immutable after the swap). (b)
`sys.setswitchinterval(0.001)` in the daemon bounds each GIL hand-back at 1 ms. (c) Build the
flow rows with `socket.inet_ntop` on packed addresses instead of `ipaddress` objects.
"""

MEMORY = """\
**Why it misses.** About 240 bytes per position: a 6-tuple key (~100 bytes), a 3-int list
(~90 bytes with its ints) and the dict slot. A packet matching 20 monitors builds 20 equal key
tuples. With the flush collectors full as well (a slow or failing write) the memory doubles.

**Proposals** (estimates, not measured): share one key tuple per distinct flow across monitors
(an intern dict in the meter, cleared at swap): ~100 bytes less per position; counters in one
`array('Q')` per collector indexed by a slot number kept in the dict: ~60 bytes less; and let
the flush collector adopt the snapshot instead of copying it (see Flush). Together about
80-100 bytes per position, ~110-130 MiB realtime.
"""

CTL = """**Where the time goes** (`python -X importtime`): the interpreter with this venv's site
(~18 ms, 9 ms of it the editable-install finder `pip install -e` adds; a regular install has
none), ~14 ms importing the client (`typing` 2 ms, `socket` 2.5 ms, `trafmetuxd.protocol`
1.8 ms, `argparse`, `json`), then the request. The target is judged against the venv
interpreter; against the python3 on PATH (with its own site-packages) the ratio is lower.

**Proposals.** Drop `typing` from the client's import path (annotations only, under
`TYPE_CHECKING`), import `argparse`/`json` pieces lazily where possible, and make the daily
report cheaper on the server (see Reports).
"""

ANALYSIS: dict[str, str] = {
    "pipeline": PIPELINE,
    "e2e": E2E,
    "reports": REPORTS,
    "flush": FLUSH,
    "memory": MEMORY,
    "ctl": CTL,
}
