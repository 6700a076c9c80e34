#!/usr/bin/env python3
"""Summarises collapsed stacks (`phantom-bench --profile DIR`, or the server's
GET /debug/pprof/profile): each thread's share of the samples, then the frames that the most
samples were in (self) or under (total), optionally of one thread name only.

usage: bench/prof/summary.py FILE.folded [--thread PREFIX] [--total] [--top N]
       bench/prof/summary.py FILE.folded --callers FRAME_PREFIX [--depth N]
"""
import argparse
import collections
import signal


def stacks(path):
    for line in open(path):
        stack, count = line.rstrip("\n").rsplit(" ", 1)
        frames = stack.split(";")
        yield frames[0], frames[1:], int(count)


def main():
    # Ended quietly by a reader that stops early (head, grep -q), as other command-line tools.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    p = argparse.ArgumentParser()
    p.add_argument("file")
    p.add_argument("--thread", default="", help="only threads whose name starts so")
    p.add_argument("--total", action="store_true", help="frames by samples under them")
    p.add_argument("--callers", help="who calls frames starting so")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--top", type=int, default=30)
    a = p.parse_args()
    rows = [r for r in stacks(a.file) if r[0].startswith(a.thread)]
    every = sum(c for _, _, c in stacks(a.file))
    pct = lambda n: f"{n:7d} {100.0 * n / max(every, 1):5.1f}%"
    print(f"{every} samples in all; {sum(c for _, _, c in rows)} shown")
    if a.callers:
        by = collections.Counter()
        for _, frames, c in rows:
            for i, f in enumerate(frames):
                if f.startswith(a.callers):
                    by[" <- ".join(x[:80] for x in reversed(frames[max(0, i - a.depth):i]))] += c
                    break
        for k, n in by.most_common(a.top):
            print(pct(n), k)
        return
    threads = collections.Counter()
    frames_by = collections.Counter()
    for thread, frames, c in rows:
        threads[thread] += c
        if a.total:
            for f in set(frames):
                frames_by[f] += c
        elif frames:
            frames_by[frames[-1]] += c
    print("threads:")
    for k, n in threads.most_common():
        print(pct(n), k)
    print("frames (samples under them):" if a.total else "frames (samples in them):")
    for k, n in frames_by.most_common(a.top):
        print(pct(n), k[:160])


if __name__ == "__main__":
    main()
