#!/bin/bash
# Sustained durable sends, for A/B runs of two builds (BENCHMARKS.md, twentieth session): a
# fresh server from BINDIR, 5,000 warm-up SendMessage calls with h2load (4 connections, 16 in
# flight each), then SECONDS more; prints sends/s (the server's own count of OK sends from
# /metrics), the server's CPU (user + system, /proc) per send and the bytes it wrote to the
# disk per send (write_bytes of /proc/PID/io: the journal and fjall's tables).
#
# usage: bench/ab/sends.sh BINDIR SECONDS   (h2load: apt install nghttp2-client)
set -euo pipefail
bin=$(realpath "$1"); secs=$2
. "$(dirname "$0")/server.sh"
sender_and_body ab$$ "$dir"
send_h2load -n 5000 >/dev/null
read -r c0 _ < <(cpu); w0=$(awk '/^write_bytes/ {print $2}' /proc/$sp/io); n0=$(ok_sends $mport)
send_h2load -D "$secs" >"$dir/h2"
read -r c1 _ < <(cpu); w1=$(awk '/^write_bytes/ {print $2}' /proc/$sp/io); n1=$(ok_sends $mport)
grep -q "0 failed, 0 errored" "$dir/h2" || echo "h2load reported failed calls"
python3 -c "n = $n1 - $n0; print(f'{n / $secs:,.0f} sends/s  server {($c1 - $c0) / $tck * 1e6 / n:.1f} µs/send  {($w1 - $w0) / n:,.0f} B/send to disk  ({n} OK)')"
