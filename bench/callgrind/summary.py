#!/usr/bin/env python3
"""Reads a callgrind file from `count.sh` (BENCHMARKS.md, "Instructions per call"): the
instructions per call in all, by thread (the inclusive count of each thread's entry point),
and the functions with the most instructions of their own; `--callees RE` / `--callers RE`
list what the functions matching RE call, or what calls them, with the instructions spent
per call through each edge; `--inclusive` sorts functions by instructions including calls;
`--calls RE` counts the calls made to the functions matching RE (not inlined ones), per call
of the load: fjall's `WriteBatch::commit`, say, for the store batches a call took.

usage: summary.py FILE CALLS [--top N] [--inclusive] [--match RE] [--callees RE] [--callers RE]
                  [--calls RE]
"""
import argparse, collections, re, signal

# Output piped into `head` or `grep -q` ends quietly when the reader stops.
signal.signal(signal.SIGPIPE, signal.SIG_DFL)

ap = argparse.ArgumentParser()
ap.add_argument("file")
ap.add_argument("calls", type=float)
ap.add_argument("--top", type=int, default=30)
ap.add_argument("--inclusive", action="store_true")
ap.add_argument("--match")
ap.add_argument("--callees")
ap.add_argument("--callers")
ap.add_argument("--calls", dest="called")
a = ap.parse_args()

names, own, out, calls = {}, collections.Counter(), collections.Counter(), collections.Counter()
edges = collections.Counter()
fn = callee = None
after_calls = False


def name(spec):
    # "(id) name" defines a compressed name, "(id)" refers to one.
    m = re.match(r"\((\d+)\)(?: (.*))?", spec)
    if not m:
        return spec
    if m.group(2) is not None:
        names[m.group(1)] = m.group(2)
    return names.get(m.group(1), spec)


for line in open(a.file, errors="replace"):
    if line.startswith("fn="):
        fn = name(line[3:].strip())
    elif line.startswith("cfn="):
        callee = name(line[4:].strip())
    elif line.startswith("calls="):
        after_calls = True
        calls[callee] += int(line[6:].split()[0])
    elif line[:1].isdigit() or line[:1] in "+-*":
        parts = line.split()
        if len(parts) < 2:
            continue
        cost = int(parts[1])
        if after_calls:
            # The line after `calls=` is the call's inclusive cost; recursion is counted once.
            if callee != fn:
                out[fn] += cost
                edges[(fn, callee)] += cost
            after_calls = False
        else:
            own[fn] += cost

total = sum(own.values())
per = lambda v: v / a.calls
incl = {f: own[f] + out[f] for f in set(own) | set(out)}
print(f"{per(total):,.0f} instructions per call ({total:,} for {a.calls:,.0f} calls)")

threads = [
    ("tokio workers (gRPC, HTTP/2, handlers)", r"^tokio::runtime::scheduler::multi_thread::worker::run$"),
    ("store writer", r"^phantom::store::(lsm|sqlite)::writer::run$|^phantom::store::writer::run$"),
    ("store syncer", r"^phantom::store::syncer::run$"),
    ("actors' thread", r"^actix_rt::system::SystemRunner::run$"),
    ("memtable keeper", r"^phantom::store::lsm::memtables::run$"),
    # fjall 3.1.13's worker thread calls this in its loop (`worker_pool.rs`).
    ("fjall worker", r"^fjall::worker_pool::worker_tick$"),
]
print("\nby thread (inclusive):")
for label, pattern in threads:
    hits = [incl[f] for f in incl if re.search(pattern, f)]
    if hits:
        print(f"{per(max(hits)):12,.0f}  {label}")

rank = incl if a.inclusive else own
print(f"\nfunctions by instructions {'including calls' if a.inclusive else 'of their own'}:")
shown = 0
for f, v in sorted(rank.items(), key=lambda x: -x[1]):
    if a.match and not re.search(a.match, f):
        continue
    print(f"{per(v):12,.0f} {100 * v / total:5.1f}%  own {per(own[f]):10,.0f}  {f[:160]}")
    shown += 1
    if shown >= a.top:
        break

for flag, pattern, side in (("callees", a.callees, 0), ("callers", a.callers, 1)):
    if not pattern:
        continue
    print(f"\n{flag} of {pattern}:")
    rows = collections.Counter({e: v for e, v in edges.items() if re.search(pattern, e[side])})
    for (caller, called), v in rows.most_common(a.top):
        print(f"{per(v):12,.0f}  {caller[:70]}  ->  {called[:110]}")

if a.called:
    print(f"\ncalls to {a.called}:")
    for f, v in calls.most_common():
        if re.search(a.called, f):
            print(f"{per(v):12,.3f}  ({v:,} in all)  {f[:120]}")
