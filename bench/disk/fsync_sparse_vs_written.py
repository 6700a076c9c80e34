#!/usr/bin/env python3
"""What a journal's fdatasync costs when its blocks were never written (fjall creates each
journal sparse: `create_new`, then `set_len` to 64 MiB) against one whose blocks were written
and fsync'd before (BENCHMARKS.md, 2026-12-05, seventeenth session): N appends of CHUNK bytes,
each fdatasync'd, into each kind of file in turn, twice. Prints syncs per second, the CPU
(user + system) per append and sync, and the sync's p50 and p99.

usage: fsync_sparse_vs_written.py DIR [N] [CHUNK]
"""
import os, resource, sys, time

d = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
chunk = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
os.makedirs(d, exist_ok=True)


def run(written):
    path = os.path.join(d, "written.jnl" if written else "sparse.jnl")
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
    if written:
        zeros = b"\0" * (1 << 20)
        for _ in range(64):
            os.write(fd, zeros)
        os.fsync(fd)
        os.lseek(fd, 0, os.SEEK_SET)
    else:
        os.ftruncate(fd, 64 << 20)
        os.fsync(fd)
    buf = b"x" * chunk
    lat = []
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(n):
        os.write(fd, buf)
        a = time.perf_counter()
        os.fdatasync(fd)
        lat.append(time.perf_counter() - a)
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    os.close(fd)
    os.unlink(path)
    lat.sort()
    cpu = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / n * 1e6
    print(
        f"{'written' if written else 'sparse '}: {n / (t1 - t0):.0f} syncs/s, "
        f"{cpu:.1f} us of CPU per append and sync, "
        f"p50 {lat[n // 2] * 1e3:.3f} ms, p99 {lat[int(n * 0.99)] * 1e3:.3f} ms"
    )


for _ in range(2):
    run(False)
    run(True)
