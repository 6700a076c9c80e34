#!/usr/bin/env python3
"""How long a small durable write waits behind a bulk one on the same disk (BENCHMARKS.md,
2026-12-04): a loop of 1 KiB writes, each fdatasync'd, for 8 s, next to a file of BIG_MIB
written and fsync'd every 0.3 s (as fjall writes a flushed table).

usage: fsync_behind_bulk.py DIR LAYOUT [BIG_MIB]
  LAYOUT: append | sparse (ftruncate to 64 MiB, as fjall's journals) | falloc | zeroed
  BIGPRIO=N: the bulk writer's ioprio_set value (e.g. 24576 = idle class), Linux x86_64
"""
import ctypes, os, statistics, sys, threading, time

d, mode = sys.argv[1], sys.argv[2]
big_mib = int(sys.argv[3]) if len(sys.argv) > 3 else 32
size = 64 << 20
os.makedirs(d, exist_ok=True)
path = os.path.join(d, f"journal.{mode}")
if os.path.exists(path):
    os.unlink(path)
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
if mode == "sparse":
    os.ftruncate(fd, size)
elif mode == "falloc":
    os.posix_fallocate(fd, 0, size)
elif mode == "zeroed":
    for _ in range(size >> 20):
        os.write(fd, b"\0" * (1 << 20))
elif mode != "append":
    sys.exit(f"unknown layout {mode}")
os.fsync(fd)
os.lseek(fd, 0, os.SEEK_SET)
stop = False
lat, bulk = [], []


def bulk_writer():
    if os.environ.get("BIGPRIO"):
        libc = ctypes.CDLL(None, use_errno=True)
        # ioprio_set(IOPRIO_WHO_PROCESS, this thread, value)
        if libc.syscall(251, 1, threading.get_native_id(), int(os.environ["BIGPRIO"])) != 0:
            sys.exit(f"ioprio_set: errno {ctypes.get_errno()}")
    chunk, i = os.urandom(1 << 20), 0
    while not stop:
        time.sleep(0.3)
        b = os.open(os.path.join(d, f"bulk{i % 2}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        i += 1
        for _ in range(big_mib):
            os.write(b, chunk)
        t = time.perf_counter()
        os.fsync(b)
        bulk.append(time.perf_counter() - t)
        os.close(b)


t = threading.Thread(target=bulk_writer)
t.start()
rec, off, end = os.urandom(1024), 0, time.time() + 8
while time.time() < end:
    if mode == "append":
        os.write(fd, rec)
    else:
        os.pwrite(fd, rec, off)
    off += 1024
    s = time.perf_counter()
    os.fdatasync(fd)
    lat.append((time.perf_counter() - s) * 1000)
stop = True
t.join()
lat.sort()
print(f"{mode} bulk={big_mib} MiB: {len(lat)} fdatasyncs, p50 {lat[len(lat) // 2]:.2f} "
      f"p99 {lat[int(len(lat) * .99)]:.2f} max {lat[-1]:.2f} ms; "
      f"bulk fsync mean {statistics.mean(bulk) * 1000:.1f} ms x{len(bulk)}")
