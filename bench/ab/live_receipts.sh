#!/bin/bash
# Live receipts under bursts, for A/B runs of two builds (BENCHMARKS.md, thirty-eighth
# session): a fresh server from BINDIR, one recipient with a live stream (`phantomctl
# events`), h2load sending to it at RPS calls per second on each of its 4 connections for
# SECONDS after 2,000 warm-up sends. The writer commits several sends at once, so the stream
# gets them in one turn and reports them in one receipt. Prints sends/s (the server's count of
# OK sends), the server's CPU and its store writer thread's per send (/proc), and whether the
# stream was still open at the end (it would have ended had it fallen behind).
#
# usage: bench/ab/live_receipts.sh BINDIR RPS SECONDS   (h2load: apt install nghttp2-client)
set -euo pipefail
bin=$(realpath "$1"); rps=$2; secs=$3
. "$(dirname "$0")/server.sh"
token=$(ctl account create "lr$$-a" | awk '/^token:/ {print $2}')
made=$(ctl account create "lr$$-b")
to=$(awk '/^account_id:/ {print $2}' <<<"$made")
send_body "$to" >"$dir/send.bin"
"$bin/phantomctl" --server 127.0.0.1:$port --token "$(awk '/^token:/ {print $2}' <<<"$made")" \
  events >"$dir/events" 2>&1 &
ep=$!
# The stream is open once it printed its SubscriptionStarted.
for _ in $(seq 100); do [ -s "$dir/events" ] && break; sleep 0.1; done
send_h2load -n 2000 >/dev/null
read -r c0 w0 < <(cpu); n0=$(ok_sends $mport)
send_h2load --rps "$rps" -D "$secs" >/dev/null
read -r c1 w1 < <(cpu); n1=$(ok_sends $mport)
open=$(kill -0 $ep 2>/dev/null && echo open || echo ENDED)
kill $ep 2>/dev/null || true
python3 -c "n = $n1 - $n0; print(f'{n / $secs:,.0f} sends/s  server {($c1 - $c0) / $tck * 1e6 / n:.1f} µs/send  writer {($w1 - $w0) / $tck * 1e6 / n:.1f} µs/send  stream $open')"
