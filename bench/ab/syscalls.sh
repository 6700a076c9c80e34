#!/bin/bash
# System calls per durable send, by thread (BENCHMARKS.md, twenty-second session): a fresh
# server from BINDIR, 5,000 warm-up SendMessage calls with h2load (4 connections, 16 in flight
# each), then SECONDS more under `perf trace -s`; prints, for each thread and system call, the
# calls per send (sends: the server's own count of OK sends from /metrics). Tracing slows the
# server: the counts per send are the figure, not the rate.
#
# usage: bench/ab/syscalls.sh BINDIR SECONDS   (perf: apt install linux-perf; h2load: nghttp2-client)
set -euo pipefail
bin=$(realpath "$1"); secs=$2
. "$(dirname "$0")/server.sh"
command -v perf >/dev/null || { echo "perf not found"; exit 1; }
sender_and_body ab$$ "$dir"
send_h2load -n 5000 >/dev/null
n0=$(ok_sends $mport)
perf trace -s -p $sp -o "$dir/trace" &
tp=$!
send_h2load -D "$secs" >/dev/null
kill -INT $tp; wait $tp || true
n=$(( $(ok_sends $mport) - n0 ))
echo "$n sends"
# perf trace -s: a line per thread ("name (tid), N events"), then one per system call.
awk -v n="$n" '
  /^ [^ ].*\([0-9]+\), [0-9]+ events/ { thread = $1 " " $2; next }
  thread != "" && $1 ~ /^[a-z_0-9]+$/ && $2 ~ /^[0-9]+$/ {
    printf "%-26s %-14s %6.3f per send\n", thread, $1, $2 / n
  }' "$dir/trace"
