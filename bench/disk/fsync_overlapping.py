#!/usr/bin/env python3
"""Whether fsyncs overlap on this disk (BENCHMARKS.md, nineteenth session): K threads, each
appending 4 KiB (in turn) then fdatasync'ing, for SECONDS, on a 256 MiB file that is sparse
(`set_len`, as fjall makes its journals) or written before. Prints fsyncs per second in all
and the p50 / p90 / p99 of one.

usage: fsync_overlapping.py DIR K sparse|written [SECONDS]
"""
import os, sys, threading, time

d, k, layout = sys.argv[1], int(sys.argv[2]), sys.argv[3]
seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 8.0
path = os.path.join(d, "fsync_overlapping")
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
size = 256 << 20
if layout == "written":
    for _ in range(size >> 20):
        os.write(fd, b"\0" * (1 << 20))
elif layout == "sparse":
    os.ftruncate(fd, size)
else:
    sys.exit(__doc__)
os.fsync(fd)
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
