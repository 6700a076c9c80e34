#!/bin/bash
# Where a send's CPU and context switches go, per server thread (BENCHMARKS.md, thirty-third
# session): starts SERVER (default BINDIR/phantom-grpc-api) on a fresh temp data dir, drives
# it with BINDIR/phantom-bench `--target` and the given arguments (say `--scenarios unary-send
# --h2load --rounds 1 --duration 8`), and prints, per thread name, the voluntary and
# involuntary context switches and the CPU, user and system (/proc/PID/task/*/status and stat,
# over the tool's whole run), per SendMessage the server answered OK (`ok_sends`), then the
# tool's rows. A/B: the same tool, SERVER (or HAND_OFFS, BATCH_THREADS, RECEIPT_INTERVAL_MS or
# RUNTIME, `server.sh`) changed.
#
# usage: [SERVER=BINARY] [HAND_OFFS=batched] [BATCH_THREADS="NAME ..."] [RECEIPT_INTERVAL_MS=N] \
#   [RUNTIME=single_thread] \
#   bench/ab/per_thread.sh BINDIR PHANTOM_BENCH_ARGS...
set -uo pipefail
bin=$(realpath "$1"); shift
. "$(dirname "$0")/server.sh"
threads >"$dir/before"; s0=$(ok_sends $mport)
"$bin/phantom-bench" --target 127.0.0.1:$port --admin-token $admin --server-pid $sp \
  --target-metrics 127.0.0.1:$mport "$@" >"$dir/rows" 2>/dev/null
threads >"$dir/after"; n=$(($(ok_sends $mport) - s0))
echo "sends $n"
# cpu is user + system (the kernel's share: system calls, wake-ups, the disk's flushes).
join "$dir/before" "$dir/after" | awk -v n="$n" -v tck="$(getconf CLK_TCK)" '
  function us(t) { return t * 1e6 / tck / n }
  function row(k, v, i, u, s) { printf "%-18s voluntary %.3f  involuntary %.3f  cpu %.2f us (user %.2f, system %.2f)\n", k, v / n, i / n, us(u + s), us(u), us(s) }
  { row($1, $6 - $2, $7 - $3, $8 - $4, $9 - $5); V += $6 - $2; I += $7 - $3; U += $8 - $4; S += $9 - $5 }
  END { row("all", V, I, U, S) }'
grep -E "^(unary|e2e|echo)" "$dir/rows"
