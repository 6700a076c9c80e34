#!/usr/bin/env python3
"""Samples a running server's threads for `episodes.py` (BENCHMARKS.md, "Where e2e's slow
messages fall"): every 5 ms, one line of the Unix time in µs, then for each thread
`name|tid:run_ns:wait_ns` from /proc/PID/task/TID/schedstat (time on a CPU, and time
runnable but waiting for one). Runs until the process exits or is interrupted.

usage: threads.py PID OUT
"""
import os, sys, time

pid, out = int(sys.argv[1]), open(sys.argv[2], "w")
names, taken = {}, 0
try:
    while True:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            break
        row = [str(int(time.time() * 1e6))]
        for t in tids:
            try:
                # Threads may name themselves after they start (fjall's worker does): names
                # are read again every second.
                if t not in names:
                    names[t] = open(f"/proc/{pid}/task/{t}/comm").read().strip().replace(" ", "_")
                run, wait = open(f"/proc/{pid}/task/{t}/schedstat").read().split()[:2]
                row.append(f"{names[t]}|{t}:{run}:{wait}")
            except OSError:
                pass  # the thread ended
        out.write(" ".join(row) + "\n")
        taken += 1
        if taken % 200 == 0:
            names = {}
        time.sleep(0.005)
except KeyboardInterrupt:
    pass
