#!/usr/bin/env python3
"""What one small durable write costs by how its file was made (BENCHMARKS.md, nineteenth
session): N times a 4 KiB write then fdatasync, on a 128 MiB file that is sparse (`set_len`,
as fjall makes its journals), `fallocate`d, or written before (zeros, as a recycled journal
would be). Prints the rate, the time per fsync, and the CPU per fsync of this process and of
the whole machine (/proc/stat: the kernel's own threads included).

usage: fsync_cpu.py DIR sparse|fallocated|written [N]
"""
import os, resource, sys, time

from layout import open_laid_out

if len(sys.argv) < 3:
    sys.exit(__doc__)
d, layout = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 20000
path = os.path.join(d, "fsync_cpu")
fd = open_laid_out(path, layout, 128 << 20)


def busy_ticks():
    v = list(map(int, open("/proc/stat").readline().split()[1:]))
    return sum(v) - v[3] - v[4]  # all but idle and iowait


r0, m0, t0 = resource.getrusage(resource.RUSAGE_SELF), busy_ticks(), time.time()
for _ in range(n):
    os.write(fd, b"x" * 4096)
    os.fdatasync(fd)
t1, m1, r1 = time.time(), busy_ticks(), resource.getrusage(resource.RUSAGE_SELF)
own = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / n * 1e6
machine = (m1 - m0) / os.sysconf("SC_CLK_TCK") / n * 1e6
print(f"{layout}: {n / (t1 - t0):.0f}/s, {(t1 - t0) / n * 1e6:.0f} us each; "
      f"CPU per fsync: own {own:.0f} us, machine {machine:.0f} us")
os.unlink(path)
