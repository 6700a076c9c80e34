#!/usr/bin/env python3
"""Lines e2e's slow messages up with what the server's threads did meanwhile (BENCHMARKS.md,
"Where e2e's slow messages fall"). Reads a trace of `phantom-bench --e2e-trace` and samples
of `threads.py` taken over the same run, cuts the run into 100 ms buckets by send time, and
prints each bucket whose slowest message took at least MIN_MS: its messages, their p50 and
max in ms, then each thread's time on a CPU and time waiting for one, in ms of the 100.
Last, the p50 and p99 of the messages sent while fjall's worker was busy (over 30 ms of CPU
in a bucket) and of the rest.

usage: episodes.py TRACE SAMPLES [MIN_MS [SECTION]]   (SECTION: which rate of the trace, 0 first)
"""
import collections, sys

trace_path, samples_path = sys.argv[1], sys.argv[2]
min_ms = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
section = int(sys.argv[4]) if len(sys.argv) > 4 else 0
BUCKET = 100_000  # µs

# The trace: the chosen section's clock, and each message's latency by bucket of send time.
lat = collections.defaultdict(list)
n, clock, start = -1, 0, 0
for line in open(trace_path):
    if line.startswith("#"):
        n += 1
        if n == section:
            parts = line.split()
            clock = int(parts[parts.index("=") + 1])
            start = int(parts[parts.index("from") + 1])
        continue
    if n != section:
        continue
    sent, got = map(int, line.split())
    if sent >= start:  # the measured window only
        lat[(clock + sent) // BUCKET].append(got - sent)

# The samples: each thread name's run and wait time, summed over its threads, by bucket.
def name_of(thread):
    return thread.rstrip("0123456789-")

prev = None
run = collections.defaultdict(collections.Counter)
wait = collections.defaultdict(collections.Counter)
for line in open(samples_path):
    parts = line.split()
    now, threads = int(parts[0]), {}
    for p in parts[1:]:
        name, rest = p.split("|")
        tid, r, w = rest.split(":")
        threads[tid] = (name_of(name), int(r), int(w))
    if prev:
        b = now // BUCKET
        for tid, (name, r, w) in threads.items():
            if tid in prev:
                run[b][name] += r - prev[tid][1]
                wait[b][name] += w - prev[tid][2]
    prev = threads

names = sorted({k for c in run.values() for k in c}, key=lambda k: -sum(c.get(k, 0) for c in run.values()))[:7]
print("bucket_s msgs p50_ms max_ms | " + " ".join(f"{k[:15]:>15}" for k in names) + "   (ms on a CPU / ms waiting, of 100)")
buckets = sorted(lat)
for b in buckets:
    v = sorted(lat[b])
    if v[-1] < min_ms * 1000:
        continue
    cells = " ".join(f"{run[b].get(k, 0) / 1e6:7.1f}/{wait[b].get(k, 0) / 1e6:<7.1f}" for k in names)
    print(f"{(b - buckets[0]) / 10:8.1f} {len(v):4d} {v[len(v) // 2] / 1000:6.1f} {v[-1] / 1000:6.1f} | {cells}")

def summary(label, bs):
    v = sorted(x for b in bs for x in lat[b])
    if v:
        print(f"{label}: {len(bs)} buckets, {len(v)} messages, p50 {v[len(v) // 2] / 1000:.2f} ms, p99 {v[int(len(v) * 0.99)] / 1000:.2f} ms")

busy = {b for b in buckets if run[b].get("fjall:worker", 0) > 30e6}
summary("fjall's worker busy", busy)
summary("the rest", [b for b in buckets if b not in busy])
