#!/usr/bin/env python3
"""What deleting a large file costs the fsyncs behind it (online discard; BENCHMARKS.md,
2026-12-04): a loop of 1 KiB writes, each fdatasync'd, for 12 s, while another thread writes
a file of MIB, fsyncs it, and deletes it a second later (as fjall deletes a journal after a
flush). Prints the worst small fdatasync in the 300 ms after each deletion, and in the
300 ms before it for comparison.

usage: fsync_after_unlink.py DIR [MIB]
"""
import os, sys, threading, time

d = sys.argv[1]
mib = int(sys.argv[2]) if len(sys.argv) > 2 else 64
os.makedirs(d, exist_ok=True)
fd = os.open(os.path.join(d, "small"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
stop = False
unlinks, lat = [], []


def big():
    chunk, i = os.urandom(1 << 20), 0
    while not stop:
        p = os.path.join(d, f"big{i}")
        i += 1
        b = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
        for _ in range(mib):
            os.write(b, chunk)
        os.fsync(b)
        os.close(b)
        time.sleep(1.0)  # the write's own stall is over
        unlinks.append(time.perf_counter())
        os.unlink(p)
        time.sleep(1.0)


t = threading.Thread(target=big)
t.start()
rec, end = os.urandom(1024), time.time() + 12
while time.time() < end:
    os.write(fd, rec)
    s = time.perf_counter()
    os.fdatasync(fd)
    lat.append((s, (time.perf_counter() - s) * 1000))
stop = True
t.join()


def worst(lo, hi):
    return [max((l for s, l in lat if lo <= s - u < hi), default=0.0) for u in unlinks]


print(f"{mib} MiB, {len(unlinks)} deletions")
print("worst after each deletion, ms:", " ".join(f"{x:.1f}" for x in worst(0, 0.3)))
print("worst before each deletion, ms:", " ".join(f"{x:.1f}" for x in worst(-0.3, 0)))
