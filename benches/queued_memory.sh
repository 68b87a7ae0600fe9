#!/usr/bin/env bash
# Memory per queued request: the proxy's RSS while N requests wait in its admission queue
# (the backend holds its one slot for the whole run), compared with its RSS before — and,
# side by side in a second proxy process, the RSS of N idle client connections (what pingora
# spends per connection before any request), so the cost of being queued can be told apart
# from the cost of an open connection.
#
#   bash benches/queued_memory.sh [N]      (default 10000)
#
# Writes benches/results/queued_memory.md. Raises the open-file limit for itself.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
ulimit -n "$(ulimit -Hn)"  # the proxy and the client each hold N sockets
cargo build --release --quiet
BIN=target/release/dify-shaper
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SIM_PORT=$(port); PROXY_PORT=$(port); ADMIN_PORT=$(port)
WORK=$(mktemp -d)
cleanup() { kill "${SIM_PID:-}" "${PROXY_PID:-}" "${CLIENT_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

"$BIN" sim --listen "127.0.0.1:$SIM_PORT" --workers 1 --worker-connections 1 --service-time 600s >"$WORK/sim.log" 2>&1 &
SIM_PID=$!
cat >"$WORK/shaper.toml" <<TOML
[log]
level = "warn"
access_log = false
[upstreams.api]
servers = ["127.0.0.1:$SIM_PORT"]
[upstreams.api.admission]
initial_limit = 1
max_limit = 1
max_queue = $((N + 100))
[classes.run]
queue_timeout = "10m"
[[routes]]
prefix = "/"
upstream = "api"
class = "run"
TOML
rss() { awk '/VmRSS/ {print $2}' "/proc/$PROXY_PID/status"; }
start_proxy() {
  "$BIN" run --config "$WORK/shaper.toml" --listen "127.0.0.1:$PROXY_PORT" --admin "127.0.0.1:$ADMIN_PORT" >"$WORK/proxy.log" 2>&1 &
  PROXY_PID=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$ADMIN_PORT/live" >/dev/null 2>&1 && break; sleep 0.1; done
}

# 1. N idle client connections (no request sent).
start_proxy
IDLE_BEFORE=$(rss)
python3 - "$PROXY_PORT" "$N" <<'PY' &
import asyncio, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
async def main():
    held = []
    for i in range(0, n, 500):
        held += await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(min(500, n - i))))
    await asyncio.sleep(3600)
asyncio.run(main())
PY
CLIENT_PID=$!
for _ in $(seq 1 300); do
  [ "$(ss -tn state established "( sport = :$PROXY_PORT )" | tail -n +2 | wc -l)" -ge "$N" ] && break
  sleep 0.2
done
sleep 1
IDLE_AFTER=$(rss)
kill "$CLIENT_PID" "$PROXY_PID" 2>/dev/null || true
wait "$CLIENT_PID" "$PROXY_PID" 2>/dev/null || true
IDLE_PER=$(python3 -c "print(round(($IDLE_AFTER - $IDLE_BEFORE) * 1024 / $N))")

# 2. N requests waiting in the admission queue, each on its own connection.
start_proxy
queued() { curl -s "http://127.0.0.1:$ADMIN_PORT/status" | python3 -c 'import sys,json; print(json.load(sys.stdin)["upstreams"]["api"]["admission"]["queued"])'; }
# Warm up: one request through so threads and buffers exist.
curl -s -o /dev/null -m 2 "http://127.0.0.1:$PROXY_PORT/health" || true
BEFORE=$(rss)

python3 - "$PROXY_PORT" "$N" <<'PY' &
import asyncio, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
body = b'{"inputs":{},"response_mode":"blocking","user":"mem"}'
req = (b"POST /v1/workflows/run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
       b"Authorization: Bearer app-memorymemorymemory\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
async def one(held):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(req); await w.drain(); held.append(w)
async def main():
    held = []
    for i in range(0, n, 500):
        await asyncio.gather(*(one(held) for _ in range(min(500, n - i))))
    await asyncio.sleep(3600)
asyncio.run(main())
PY
CLIENT_PID=$!
for _ in $(seq 1 600); do
  Q=$(queued || echo 0)
  [ "$Q" -ge $((N - 1)) ] && break
  sleep 0.2
done
sleep 1
AFTER=$(rss)
Q=$(queued)
PER=$(python3 -c "print(round(($AFTER - $BEFORE) * 1024 / $Q))")
MARGINAL=$(python3 -c "print($PER - $IDLE_PER)")
{
  echo "# Memory per queued request ($(date -u +%Y-%m-%d))"
  echo
  echo "Machine: $(nproc) cores, $(uname -sr). Command: \`bash benches/queued_memory.sh $N\`."
  echo "Release build; backend holds its one slot; $Q requests (each its own client connection) wait in the queue."
  echo
  echo "| proxy RSS before | with $Q queued | per queued request | per idle connection (N=$N, separate process) | queued beyond an idle connection |"
  echo "|---:|---:|---:|---:|---:|"
  echo "| $((BEFORE / 1024)) MiB | $((AFTER / 1024)) MiB | $PER bytes | $IDLE_PER bytes | $MARGINAL bytes |"
} | tee benches/results/queued_memory.md
