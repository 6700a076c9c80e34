#!/bin/bash
# Instructions per call, counted by callgrind (BENCHMARKS.md, "Instructions per call"): runs
# the server (or the tool's echo ceiling) under `valgrind --tool=callgrind` on a temp data dir,
# sends WARMUP calls with h2load, zeroes the counts, sends N more (4 connections, 16 calls in
# flight each), and writes the counts of those N calls to OUT. callgrind counts instructions,
# not seconds: the same binary gives the same count within a tenth of a per cent, whatever
# else the host does, so a change to user-space code shows as an exact difference.
# Kernel time (system calls, wake-ups, the disk) is not counted.
#
# usage: bench/callgrind/count.sh send|echo N OUT
#   BIN=DIR (default target/release) holds phantom-grpc-api, phantomctl and phantom-bench; build
#   them with line tables for function names:
#   CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --bins
# then: python3 bench/callgrind/summary.py OUT N
set -euo pipefail
what=$1; n=$2; out=$(realpath -m "$3")
bin=$(realpath "${BIN:-target/release}")
warmup=${WARMUP:-2000}
. "$(dirname "$0")/../lib.sh"
for tool in valgrind callgrind_control h2load; do
  command -v $tool >/dev/null || { echo "$tool not found (apt install valgrind nghttp2-client)"; exit 1; }
done
dir=$(mktemp -d)
vp=
trap '[ -n "$vp" ] && kill $vp 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
h2() { grpc_h2load -m 16 "$@"; }
callgrind() { valgrind --tool=callgrind --callgrind-out-file="$dir/cg.%p" "$@" >"$dir/log" 2>&1 & vp=$!; }
counted() {  # h2 ARGS: warm-up, zero, N calls, dump
  h2 -n "$warmup" "$@" | grep -q "$warmup succeeded"
  callgrind_control -z $vp >/dev/null 2>&1
  h2 -n "$n" "$@" | tee "$dir/h2" | grep -E 'finished in|succeeded'
  grep -q " $n succeeded" "$dir/h2" || { echo "not every call succeeded"; exit 1; }
  callgrind_control -d $vp >/dev/null 2>&1
}
case $what in
echo)
  callgrind "$bin/phantom-bench" --serve-echo 127.0.0.1:0
  port=$(port_in "$dir/log" "echo listening on ")
  echo_body >"$dir/echo.bin"
  counted -d "$dir/echo.bin" http://127.0.0.1:$port/phantom.bench.v1.Echo/Unary
  ;;
send)
  admin=callgrind-admin-token-0123456789abcdef
  server_config "$dir" 0 0 $admin
  callgrind "$bin/phantom-grpc-api" --config "$dir/server.toml"
  server_ports "$dir/log"
  ctl() { "$bin/phantomctl" --server 127.0.0.1:$port --token $admin "$@"; }
  sender_and_body callgrind$$ "$dir"
  counted -H "authorization: Bearer $token" -d "$dir/send.bin" \
    http://127.0.0.1:$port/phantom.v1.PhantomController/SendMessage
  # h2load counts a gRPC error as a success (HTTP 200): the server's own count of OK sends.
  ok=$(ok_sends $mport)
  [ "$ok" -eq $((warmup + n)) ] || { echo "the server answered $ok sends OK, not $((warmup + n))"; exit 1; }
  ;;
*) echo "usage: $0 send|echo N OUT"; exit 2 ;;
esac
kill $vp; wait $vp 2>/dev/null || true; vp=
cp "$(ls "$dir"/cg.*.1)" "$out"
echo "counts of $n calls in $out"
