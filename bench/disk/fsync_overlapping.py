#!/usr/bin/env python3
"""Whether fsyncs overlap on this disk (BENCHMARKS.md, nineteenth session): K threads, each
appending 4 KiB (in turn) then fdatasync'ing, for SECONDS, on a 256 MiB file laid out as
`layout.py` makes it. Prints fsyncs per second in all and the p50 / p90 / p99 of one.

usage: fsync_overlapping.py DIR K sparse|fallocated|written [SECONDS]
"""
import os, sys, threading, time

from layout import open_laid_out

if len(sys.argv) < 4:
    sys.exit(__doc__)
d, k, layout = sys.argv[1], int(sys.argv[2]), sys.argv[3]
seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 8.0
path = os.path.join(d, "fsync_overlapping")
fd = open_laid_out(path, layout, 256 << 20)
lock, at, times = threading.Lock(), [0], []
end = time.time() + seconds


def run():
    mine = []
    while time.time() < end:
        with lock:
            offset = at[0]
            at[0] += 4096
        os.pwrite(fd, b"x" * 4096, offset)
        t = time.perf_counter()
        os.fdatasync(fd)
        mine.append(time.perf_counter() - t)
    with lock:
        times.extend(mine)


threads = [threading.Thread(target=run) for _ in range(k)]
for t in threads:
    t.start()
for t in threads:
    t.join()
times.sort()
q = lambda f: times[int(len(times) * f)] * 1e3
print(f"{layout}, {k} threads: {len(times) / seconds:.0f} fsyncs/s, "
      f"ms p50 {q(.5):.3f} p90 {q(.9):.3f} p99 {q(.99):.3f}")
os.unlink(path)
