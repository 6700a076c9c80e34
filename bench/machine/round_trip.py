#!/usr/bin/env python3
"""One-byte round trips between two processes over two pipes, each process pinned to a vCPU:
both on vCPU 0, then one on each. The difference is what waking a thread on the other vCPU
costs on this machine (40–62 µs in a nested AMD guest whose idle vCPUs halt, 71–76 µs in an
Intel Firecracker guest; BENCHMARKS.md, thirty-fifth to thirty-eighth sessions). Python's own
cost per trip is in both figures alike.

usage: python3 bench/machine/round_trip.py [TRIPS]
"""
import os
import sys
import time


def round_trip_us(a, b, n):
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.sched_setaffinity(0, {b})
        for _ in range(n + 1000):
            os.read(r1, 1)
            os.write(w2, b"x")
        os._exit(0)
    os.sched_setaffinity(0, {a})
    for _ in range(1000):  # warm-up
        os.write(w1, b"x")
        os.read(r2, 1)
    t = time.perf_counter()
    for _ in range(n):
        os.write(w1, b"x")
        os.read(r2, 1)
    dt = time.perf_counter() - t
    os.waitpid(pid, 0)
    return dt / n * 1e6


n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
for _ in range(2):
    same, across = round_trip_us(0, 0, n), round_trip_us(0, 1, n)
    print(f"same vCPU: {same:.1f} us, across: {across:.1f} us per round trip")
