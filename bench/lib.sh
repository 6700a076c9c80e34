# Sourced by the benchmark scripts: what they share.

# server_config DIR PORT METRICS_PORT ADMIN: writes DIR/server.toml for a server on
# 127.0.0.1:PORT with its data in DIR/data, metrics and CPU profiles (phantom-bench --profile)
# on 127.0.0.1:METRICS_PORT, the limits that would throttle a load test off, and log level warn.
server_config() {
  cat >"$1/server.toml" <<CFG
[server]
listen = "127.0.0.1:$2"
[storage]
data_dir = "$1/data"
[auth]
admin_token = "$4"
[limits]
send_rate_per_sec = 1000000000
send_burst = 1000000000
max_event_streams_per_account = 1000000
max_streams_per_connection = 1000000
[metrics]
listen = "127.0.0.1:$3"
profiling = true
[log]
level = "warn"
CFG
  # RETENTION=N: `events.retention_per_account`; RECEIPT_INTERVAL_MS=N: `events.receipt_interval_ms`.
  if [ -n "${RETENTION:-}${RECEIPT_INTERVAL_MS:-}" ]; then
    echo "[events]" >>"$1/server.toml"
    [ -z "${RETENTION:-}" ] || echo "retention_per_account = $RETENTION" >>"$1/server.toml"
    [ -z "${RECEIPT_INTERVAL_MS:-}" ] || echo "receipt_interval_ms = $RECEIPT_INTERVAL_MS" >>"$1/server.toml"
  fi
}

# send_body RECIPIENT: a SendMessageRequest to RECIPIENT, gRPC-framed, on stdout (h2load -d).
send_body() {
  python3 - "$1" <<'PY'
import sys
f = lambda n, d: bytes([(n << 3) | 2, len(d)]) + d
m = f(1, sys.argv[1].encode()) + f(2, b"benchmark message, about the size of a chat line")
sys.stdout.buffer.write(b"\x00" + len(m).to_bytes(4, "big") + m)
PY
}

# echo_body: the echo ceiling's request (a 64-byte body), gRPC-framed, on stdout (h2load -d).
echo_body() {
  python3 -c "import sys; sys.stdout.buffer.write(b'\x00\x00\x00\x00\x42\x0a\x40' + b'\x07'*64)"
}

# sender_and_body NAME DIR: with the caller's `ctl` (phantomctl as the admin), creates two
# accounts NAME-a and NAME-b; sets `token` to the first's token and writes a SendMessage to the
# second to DIR/send.bin.
sender_and_body() {
  local to
  token=$(ctl account create "$1-a" | awk '/^token:/ {print $2}')
  to=$(ctl account create "$1-b" | awk '/^account_id:/ {print $2}')
  send_body "$to" >"$2/send.bin"
}

# grpc_h2load ARGS: h2load with one thread, 4 connections and the headers a gRPC call needs.
grpc_h2load() {
  h2load -c 4 -t 1 -H 'content-type: application/grpc' -H 'te: trailers' "$@"
}

# port_in LOG TEXT: waits (two minutes at most: a server under valgrind starts slowly) until LOG
# has a line with TEXT followed by 127.0.0.1:PORT, and prints PORT. For a process started on
# port 0 that prints where it listens once it takes connections (the server: "listening on ",
# "metrics on http://"; the tool's echo: "echo listening on "): a fixed port inside the
# ephemeral range (32768-60999 on Linux) can be held for a while by an earlier client's
# connection, and the bind then fails.
port_in() {
  local line
  for _ in $(seq 1200); do
    if line=$(grep -m1 -F "$2" "$1" 2>/dev/null); then
      sed -E 's/.*127\.0\.0\.1:([0-9]+).*/\1/' <<<"$line"
      return
    fi
    sleep 0.1
  done
  echo "no \"$2\" in $1" >&2
  exit 1
}

# server_ports LOG: sets `port` and `mport` to where the server logging to LOG listens for gRPC
# and serves its metrics (both started on port 0 by `server_config DIR 0 0 ADMIN`).
server_ports() {
  port=$(port_in "$1" "listening on ")
  mport=$(port_in "$1" "metrics on http://")
}

# ok_sends METRICS_PORT: the SendMessage calls the server answered OK, from its /metrics (h2load
# counts a gRPC error as a success: HTTP 200).
ok_sends() {
  python3 -c "import urllib.request as u; print(sum(int(float(l.split()[-1])) for l in u.urlopen('http://127.0.0.1:$1/metrics').read().decode().splitlines() if l.startswith('phantom_grpc_requests_total') and 'code=\"Ok\"' in l and 'SendMessage' in l))"
}
