# Sourced by the scripts beside it: starts BIN/phantom-grpc-api (or $SERVER) on a fresh temp
# data dir (127.0.0.1, gRPC on `$port` and metrics on `$mport`, both picked by the kernel: port 0;
# load-test limits off, log level warn) and
# defines `ctl` (phantomctl as the admin), `cpu` (the server's CPU ticks in all, and its
# store writer thread's), `threads` (switches and CPU per thread name) and `send_h2load`.
# Killed, and the dir removed, when the script exits.
# HAND_OFFS=batched sets `server.hand_offs`. BATCH_THREADS="NAME ..." moves the server's threads
# of those names (as in /proc, cut to 15 characters) to SCHED_BATCH with the default slice once it
# is up (`chrt -b`, as `hand_offs = "batched"` does for two of them), to measure one at a time.
# RECEIPT_INTERVAL_MS=N sets `events.receipt_interval_ms` (0: a live stream reports after every
# batch, as before the fortieth session) and RETENTION=N `events.retention_per_account`
# (`server_config`, ../lib.sh).
# RUNTIME=single_thread sets `server.runtime`.
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
dir=$(mktemp -d); admin=bench-admin-token-0123456789abcdef
server_config "$dir" 0 0 $admin
if [ -n "${HAND_OFFS:-}" ]; then
  sed -i "/^\[server\]/a hand_offs = \"$HAND_OFFS\"" "$dir/server.toml"
fi
if [ -n "${RUNTIME:-}" ]; then
  sed -i "/^\[server\]/a runtime = \"$RUNTIME\"" "$dir/server.toml"
fi
"${SERVER:-$bin/phantom-grpc-api}" --config "$dir/server.toml" >"$dir/log" 2>&1 &
sp=$!
trap 'kill $sp 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
server_ports "$dir/log"
for name in ${BATCH_THREADS:-}; do
  for t in /proc/$sp/task/*; do
    [ "$(cat "$t/comm")" = "$name" ] && chrt -b -p 0 "${t##*/}"
  done
done
ctl() { "$bin/phantomctl" --server 127.0.0.1:$port --token $admin "$@"; }
cpu() {
  local w=0 t
  for t in /proc/$sp/task/*; do
    # The writer's thread name, cut to the kernel's 15 characters.
    [ "$(cat "$t/comm")" = "phantom-store-w" ] && w=$(awk '{print $14+$15}' "$t/stat")
  done
  echo "$(awk '{print $14+$15}' /proc/$sp/stat) $w"
}
tck=$(getconf CLK_TCK)
# Per thread name (spaces as _), summed over the threads of that name: voluntary and
# involuntary context switches, user and system CPU ticks; sorted, for `join`.
threads() {
  local t
  for t in /proc/$sp/task/*; do
    echo "$(tr ' ' '_' <"$t/comm")" \
      "$(awk '/^voluntary_ctxt/ {v=$2} /^nonvoluntary_ctxt/ {n=$2} END {print v, n}' "$t/status")" \
      "$(awk '{print $14, $15}' "$t/stat")"
  done | awk '{v[$1]+=$2; n[$1]+=$3; u[$1]+=$4; s[$1]+=$5} END {for (k in v) print k, v[k], n[k], u[k], s[k]}' | sort
}
# h2load SendMessage on this server, 16 in flight per connection, from the pair that
# `sender_and_body NAME "$dir"` made.
send_h2load() {
  grpc_h2load -m 16 -H "authorization: Bearer $token" -d "$dir/send.bin" "$@" \
    http://127.0.0.1:$port/phantom.v1.PhantomController/SendMessage
}
