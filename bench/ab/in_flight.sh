#!/bin/bash
# What bounds `unary-send` on a host (BENCHMARKS.md, twenty-first session): h2load drives the
# tool's echo ceiling at 64 calls in flight, then SendMessage on a fresh server from BINDIR at
# 64 and at 128 in flight (4 connections), SECONDS each, ROUNDS times; each line gives the
# calls/s and the machine's idle share (/proc/stat) over the middle of the window. If doubling
# the calls in flight takes the idle away and the rate moves little, CPU per send is the bound,
# not the wait for the fsync.
#
# usage: bench/ab/in_flight.sh BINDIR SECONDS ROUNDS   (h2load: apt install nghttp2-client)
set -euo pipefail
bin=$(realpath "$1"); secs=$2; rounds=$3
# The idle share is read over all but the first and last second of each window.
[ "$secs" -ge 3 ] || { echo "SECONDS must be 3 or more"; exit 2; }
. "$(dirname "$0")/server.sh"
sender_and_body ab$$ "$dir"
"$bin/phantom-bench" --serve-echo 127.0.0.1:0 >"$dir/echo.log" 2>&1 &
ep=$!
trap 'kill $sp $ep 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
eport=$(port_in "$dir/echo.log" "echo listening on ")
echo_body >"$dir/echo.bin"
# The machine's busy and idle jiffies so far.
ticks() { awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat; }
window() {  # PER_CONNECTION BODY URL [h2load ARGS]
  local m=$1 body=$2 url=$3; shift 3
  grpc_h2load -m "$m" "$@" -d "$body" -D "$secs" "$url" >"$dir/out" &
  local h=$! t0 i0 t1 i1
  sleep 1; read -r t0 i0 < <(ticks); sleep $((secs - 2)); read -r t1 i1 < <(ticks)
  wait $h
  grep -q "0 failed, 0 errored" "$dir/out" || echo "h2load reported failed calls"
  printf '%-12s %3d in flight  %9s calls/s  idle %d%%\n' "${url##*/}" $((4 * m)) \
    "$(awk '/finished in/ {print $4}' "$dir/out")" $((100 * (i1 - i0) / (t1 - t0)))
}
send=http://127.0.0.1:$port/phantom.v1.PhantomController/SendMessage
for _ in $(seq "$rounds"); do
  window 16 "$dir/echo.bin" http://127.0.0.1:$eport/phantom.bench.v1.Echo/Unary
  window 16 "$dir/send.bin" $send -H "authorization: Bearer $token"
  window 32 "$dir/send.bin" $send -H "authorization: Bearer $token"
done
