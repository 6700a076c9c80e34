#!/bin/bash
# `e2e` at a fixed rate against a fresh server from BINDIR, for A/B runs of two builds
# (BENCHMARKS.md, twentieth session): the tool's e2e row, and the server's CPU and its store
# writer thread's per message sent (/proc, over the whole run: setup and the 2 s warm-up
# included, divided by RATE times warm-up plus SECONDS).
#
# usage: bench/ab/e2e_cpu.sh BINDIR RATE SECONDS
set -euo pipefail
bin=$(realpath "$1"); rate=$2; secs=$3
. "$(dirname "$0")/server.sh"
read -r c0 w0 < <(cpu)
row=$("$bin/phantom-bench" --target 127.0.0.1:$port --admin-token $admin \
  --target-metrics 127.0.0.1:$mport --scenarios e2e --e2e-rate "$rate" --warmup 2 \
  --duration "$secs" 2>/dev/null | grep '^e2e')
read -r c1 w1 < <(cpu)
python3 -c "n = $rate * ($secs + 2); print('''$row'''.split('  SendMessage')[0], f'| server {($c1 - $c0) / $tck * 1e6 / n:.1f} µs/msg, writer {($w1 - $w0) / $tck * 1e6 / n:.1f} µs/msg')"
