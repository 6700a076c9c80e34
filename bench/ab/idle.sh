#!/bin/bash
# What an idle server does (BENCHMARKS.md, forty-third session): starts SERVER (default
# BINDIR/phantom-grpc-api, `server.sh`) on a fresh temp data dir; with STREAM=1 one account
# holds an event stream open (`phantomctl events`), as a GUI does; then, from 3 s after the
# start for SECONDS_IDLE (default 20) seconds, counts per thread name the voluntary context
# switches (each one a wake-up after a sleep) and the CPU, from /proc/PID/task/*.
#
# usage: [SERVER=BINARY] [STREAM=1] [SECONDS_IDLE=N] bench/ab/idle.sh BINDIR
set -uo pipefail
bin=$(realpath "$1")
. "$(dirname "$0")/server.sh"
if [ "${STREAM:-}" = 1 ]; then
  tok=$(ctl account create "idle$$" | awk '/^token:/ {print $2}')
  "$bin/phantomctl" --server 127.0.0.1:$port --token "$tok" events >"$dir/events" 2>&1 &
  ep=$!
  trap 'kill $ep $sp 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
fi
secs=${SECONDS_IDLE:-20}
sleep 3
threads >"$dir/before"; sleep "$secs"; threads >"$dir/after"
if [ "${STREAM:-}" = 1 ] && ! grep -q subscription_started "$dir/events"; then
  echo "the event stream did not open: $(head -c 300 "$dir/events")" >&2
  exit 1
fi
join "$dir/before" "$dir/after" | awk -v s="$secs" -v tck="$(getconf CLK_TCK)" '
  # `threads` columns: name, voluntary, involuntary, user, system; then the same after.
  { v = $6 - $2; c = $8 + $9 - $4 - $5; V += v; C += c
    if (v > 0 || c > 0) printf "%-18s %.1f wake-ups/s  cpu %.2f ms/s\n", $1, v / s, c * 1000 / tck / s }
  END { printf "%-18s %.1f wake-ups/s  cpu %.2f ms/s\n", "all", V / s, C * 1000 / tck / s }'
