#!/usr/bin/env python3
"""How long a small durable write takes when every CPU is busy (BENCHMARKS.md, eighteenth
session): a loop of 1 KiB writes, each fdatasync'd, for SECONDS, beside one busy loop per CPU
(none with BUSY=0) at nice BUSY_NICE. SLICE_NS asks for a shorter scheduler slice for the
writing thread (`sched_setattr`, EEVDF, Linux 6.12 and later), as the server's own threads do
(`sched::short_slice`). Prints the fdatasync's p50 / p90 / p99 / p99.9 / max in ms: the time
includes the wait for a CPU once the disk has answered.

usage: [BUSY=N] [BUSY_NICE=N] [SLICE_NS=N] fsync_beside_busy_cpus.py DIR [SECONDS]
"""
import ctypes, os, struct, subprocess, sys, time

d = sys.argv[1]
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
busy = int(os.environ.get("BUSY", os.cpu_count() or 1))
nice = int(os.environ.get("BUSY_NICE", "0"))
slice_ns = int(os.environ.get("SLICE_NS", "0"))
if slice_ns:
    # struct sched_attr up to SCHED_ATTR_SIZE_VER1: SCHED_OTHER, nice 0, sched_runtime = slice.
    attr = ctypes.create_string_buffer(struct.pack("IIQiIQQQII", 56, 0, 0, 0, 0, slice_ns, 0, 0, 0, 0))
    if ctypes.CDLL(None, use_errno=True).syscall(314, 0, attr, 0) != 0:  # sched_setattr, x86_64
        sys.exit(f"sched_setattr: errno {ctypes.get_errno()}")
hogs = [subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
try:
    time.sleep(0.5)
    os.makedirs(d, exist_ok=True)
    fd = os.open(os.path.join(d, "small"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    lat, end = [], time.time() + seconds
    while time.time() < end:
        os.write(fd, b"x" * 1024)
        t = time.perf_counter()
        os.fdatasync(fd)
        lat.append(time.perf_counter() - t)
        time.sleep(0.0005)
finally:
    for h in hogs:
        h.kill()
lat.sort()
q = lambda f: lat[min(len(lat) - 1, int(len(lat) * f))] * 1e3
print(f"busy {busy} at nice {nice}, slice {slice_ns or 'default'}: {len(lat)} fdatasyncs, ms p50 {q(.5):.3f} "
      f"p90 {q(.9):.3f} p99 {q(.99):.3f} p99.9 {q(.999):.3f} max {lat[-1] * 1e3:.1f}")
