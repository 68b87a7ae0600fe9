#!/usr/bin/env bash
# Raw proxy overhead against a fast backend, measured side by side in one run: the simulator's
# /sim/fast answered directly and through dify-shaper, alternating rounds so both see the
# same machine state. Needs wrk (apt-get install wrk); installs it when missing.
#
#   bash benches/overhead.sh [seconds-per-round] [connections] [rounds]
#
# Writes a markdown table to stdout and to benches/results/overhead.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_ROUND=${1:-10}
CONNECTIONS=${2:-50}
ROUNDS=${3:-3}
PROXY_THREADS=${PROXY_THREADS:-1}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --quiet
BIN=target/release/dify-shaper

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SIM_PORT=$(port); PROXY_PORT=$(port); ADMIN_PORT=$(port)
WORK=$(mktemp -d)
cleanup() { kill "${SIM_PID:-}" "${PROXY_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# A backend that is never the bottleneck: plenty of connection slots, long keep-alive.
"$BIN" sim --listen "127.0.0.1:$SIM_PORT" --workers 16 --worker-connections 64 \
  --keepalive-timeout 60s >"$WORK/sim.log" 2>&1 &
SIM_PID=$!
cat >"$WORK/shaper.toml" <<TOML
[server]
threads = $PROXY_THREADS
[log]
level = "warn"
access_log = false
[upstreams.api]
servers = ["127.0.0.1:$SIM_PORT"]
# A fast backend without gunicorn's slot-per-connection: reuse upstream connections, and take
# the admission limit out of the picture (this measures the proxy path itself).
keepalive = "60s"
[upstreams.api.admission]
enabled = false
[[routes]]
prefix = "/"
upstream = "api"
TOML
"$BIN" run --config "$WORK/shaper.toml" --listen "127.0.0.1:$PROXY_PORT" --admin "127.0.0.1:$ADMIN_PORT" >"$WORK/proxy.log" 2>&1 &
PROXY_PID=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$ADMIN_PORT/live" >/dev/null 2>&1 && curl -sf "http://127.0.0.1:$SIM_PORT/health" >/dev/null 2>&1 && break
  sleep 0.1
done

# wrk prints latency percentiles with --latency; pull p50/p99 (in ms) and requests/s.
measure() {
  local url=$1 conns=${2:-$CONNECTIONS} out
  out=$(wrk -t1 -c"$conns" -d"${SECONDS_PER_ROUND}s" --latency "$url")
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}
to_ms() { python3 -c "import sys,re; v=sys.argv[1]; m=re.match(r'([0-9.]+)(us|ms|s)',v); f={'us':1e-3,'ms':1,'s':1e3}[m.group(2)]; print(round(float(m.group(1))*f,3))" "$1"; }

declare -a D_RPS D_P50 D_P99 P_RPS P_P50 P_P99 D1_P50 D1_P99 P1_P50 P1_P99
for round in $(seq 1 "$ROUNDS"); do
  read -r r a b < <(measure "http://127.0.0.1:$SIM_PORT/sim/fast"); D_RPS+=("$r"); D_P50+=("$a"); D_P99+=("$b")
  read -r r a b < <(measure "http://127.0.0.1:$PROXY_PORT/sim/fast"); P_RPS+=("$r"); P_P50+=("$a"); P_P99+=("$b")
  # One connection: the latency a request gains, without queueing behind others.
  read -r r a b < <(measure "http://127.0.0.1:$SIM_PORT/sim/fast" 1); D1_P50+=("$a"); D1_P99+=("$b")
  read -r r a b < <(measure "http://127.0.0.1:$PROXY_PORT/sim/fast" 1); P1_P50+=("$a"); P1_P99+=("$b")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
DR=$(median "${D_RPS[@]}"); D50=$(median "${D_P50[@]}"); D99=$(median "${D_P99[@]}")
PR=$(median "${P_RPS[@]}"); P50=$(median "${P_P50[@]}"); P99=$(median "${P_P99[@]}")
D150=$(median "${D1_P50[@]}"); D199=$(median "${D1_P99[@]}"); P150=$(median "${P1_P50[@]}"); P199=$(median "${P1_P99[@]}")
REPORT=$(python3 - "$DR" "$D50" "$D99" "$PR" "$P50" "$P99" "$D150" "$D199" "$P150" "$P199" "$CONNECTIONS" <<'PY'
import sys
dr, d50, d99, pr, p50, p99, d150, d199, p150, p199, c = map(float, sys.argv[1:])
print(f"| path | requests/s ({c:.0f} conns) | p50 ms | p99 ms | p50 ms (1 conn) | p99 ms (1 conn) |")
print("|---|---:|---:|---:|---:|---:|")
print(f"| direct (simulator) | {dr:,.0f} | {d50:.3f} | {d99:.3f} | {d150:.3f} | {d199:.3f} |")
print(f"| through dify-shaper | {pr:,.0f} | {p50:.3f} | {p99:.3f} | {p150:.3f} | {p199:.3f} |")
print(f"| proxy vs direct | {pr/dr:.2f}× | +{p50-d50:.3f} | +{p99-d99:.3f} | +{p150-d150:.3f} | +{p199-d199:.3f} |")
PY
)
{
  echo "# Raw proxy overhead ($(date -u +%Y-%m-%d))"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)."
  echo "Command: \`bash benches/overhead.sh $SECONDS_PER_ROUND $CONNECTIONS $ROUNDS\` (PROXY_THREADS=$PROXY_THREADS):"
  echo "wrk -t1 -c$CONNECTIONS, ${SECONDS_PER_ROUND}s per round, $ROUNDS alternating rounds, medians."
  echo "Backend: \`dify-shaper sim\` /sim/fast (16×64 slots, 60 s keep-alive). Proxy: release build, access log off, upstream keep-alive on, admission off."
  echo
  echo "$REPORT"
} | tee benches/results/overhead.md
