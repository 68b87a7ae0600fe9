#!/usr/bin/env bash
# Side by side: the same failure scenarios sent direct to the Dify simulator, through nginx
# (Dify's docker config), through HAProxy (an expert's static config told the true capacity)
# and through dify-shaper (embedded defaults, no capacity given). Then the raw overhead of the
# three proxies (benches/overhead.sh). Not part of `make test` or CI.
#
#   bash benches/compare.sh [--quick] [--rounds N] [--no-overhead] [--only s1,s2,…] [--cold]
#                           [--name NAME]
#
# Every run first sends the scenario's own traffic for WARMUP seconds (default 30, not
# reported): in production the proxy has been learning for hours when a peak or a restart
# comes, and the backend meets the window as loaded as that traffic leaves it. `--cold`
# skips it (a proxy just started into the storm) and writes compare-cold.{md,json,png}.
# s7 (cold start) never warms up.
#
# Writes benches/results/compare.md, compare.json and compare.png (and overhead.md/json);
# `--name NAME` writes NAME.{md,json,png} and NAME-runs/ instead and leaves README.md alone
# (a partial run beside the full table, e.g. `--only s5,s6 --name compare-new`).
# Installs nginx, haproxy and wrk with apt-get when missing, and matplotlib into a venv under
# ${BENCH_VENV:-/tmp/dify-shaper-bench-venv}. See benches/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0; ROUNDS=1; OVERHEAD=1; ONLY=""; WARMUP=${WARMUP:-30}; NAME=""
while (($#)); do
  case $1 in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    --no-overhead) OVERHEAD=0 ;;
    --only) ONLY=$2; shift ;;
    --cold) WARMUP=0 ;;
    --name) NAME=$2; shift ;;
    *) echo "usage: $0 [--quick] [--rounds N] [--no-overhead] [--only s1,…,s8] [--cold] [--name NAME]" >&2; exit 2 ;;
  esac
  shift
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin dify-shaper --example loadgen
BIN=$CARGO_TARGET_DIR/release/dify-shaper
LOADGEN=$CARGO_TARGET_DIR/release/examples/loadgen
WORK=$(mktemp -d)
RUNS=$WORK/runs; mkdir -p "$RUNS"
SIM_PID=; TARGET_PID=; SAMPLER_PID=; FLOOD_PID=
cleanup() {
  for p in $SAMPLER_PID $FLOOD_PID; do kill "$p" 2>/dev/null || true; done
  stop_target; stop_sim; [[ -n ${KEEP_WORK:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT
# shellcheck source=benches/lib/targets.sh
source benches/lib/targets.sh
ensure_proxies
T0=$(date +%s)
export BENCH_LOAD_BEFORE="$(cut -d" " -f1-3 /proc/loadavg)"

# Durations: full / --quick.
if ((QUICK)); then D_LONG=12; D_SSE=8; D_RESTART=16; D_COLD=12; D_HOLD=40
else D_LONG=25; D_SSE=20; D_RESTART=25; D_COLD=20; D_HOLD=50; fi
CLIENT_TIMEOUT=10s       # blocking clients give up after 10 s = 5× the 2 s run (see README)
SSE_TIMEOUT=30s

# Scenario table: id|title|sim flags|true capacity|haproxy timeout queue|rate|duration|
# client timeout|stream (0/1)|SIGHUP at (s, empty = none)|targets
SCENARIOS=(
  "s1|Overload: 1 worker × 10 connections, 2 s runs (capacity 5/s), offered 10/s (2×)|--workers 1 --worker-connections 10 --service-time 2s|10|8s|10|$D_LONG|$CLIENT_TIMEOUT|0||direct nginx haproxy dify-shaper"
  "s2|DB connection exhaustion: 12 slots, --db-connections 8, 2 s runs (DB capacity 4/s), offered 6/s (1.5×)|--workers 12 --worker-connections 1 --service-time 2s --db-connections 8|8|8s|6|$D_LONG|$CLIENT_TIMEOUT|0||direct nginx haproxy haproxy-maxconn12 dify-shaper"
  "s3|Uncoordinated restart: 10 slots, 2 s runs, 2.5/s (50 %), SIGHUP at 8 s, 3 s boot|--workers 1 --worker-connections 10 --service-time 2s --boot-delay 3s|10|8s|2.5|$D_RESTART|$CLIENT_TIMEOUT|0|8|direct nginx haproxy dify-shaper"
  "s4|SSE time to first frame: 10 slots, 2 s streaming runs, 2.5/s (50 %)|--workers 1 --worker-connections 10 --service-time 2s|10|28s|2.5|$D_SSE|$SSE_TIMEOUT|1||direct nginx haproxy dify-shaper"
  # s5: two app keys, one sending 10× the other (rate = both together; run_s5 splits it 10:1).
  # Clients give up after 5× the run, as in s1.
  "s5|10:1 flood: 1 worker × 8 connections, 0.5 s runs (capacity 16/s), a flooding app 29.1/s and a quiet app 2.91/s (2× together)|--workers 1 --worker-connections 8 --service-time 500ms|8|2s|32|$D_LONG|2500ms|0||direct nginx haproxy dify-shaper"
  "s6|A backend that copes: 1 worker × 10 connections, 0.2 s runs (capacity 50/s), offered 25/s (50 %)|--workers 1 --worker-connections 10 --service-time 200ms|10|800ms|25|$D_LONG|1s|0||direct nginx haproxy dify-shaper"
  # s7 never warms up; the in-flight count at the backend is sampled every 100 ms.
  "s7|Cold start: 2 workers × 10 connections, 0.25 s runs (capacity 20 in flight, 80/s), offered 160/s (2×), no warm-up|--workers 2 --worker-connections 10 --service-time 250ms|20|1s|160|$D_COLD|1250ms|0||direct nginx haproxy dify-shaper"
  # s8: the backend restarts and stays down 20 s; patient clients (60 s).
  "s8|Catch-up after a hold: 1 worker × 10 connections, 1 s runs (capacity 10/s), offered 5/s (50 %), SIGHUP at 5 s, down 20 s; clients wait 60 s|--workers 1 --worker-connections 10 --service-time 1s --boot-delay 20s|10|59s|5|$D_HOLD|60s|0|5|direct nginx haproxy dify-shaper"
)

run_one() { # scenario-line target round
  local line=$1 target=$2 round=$3
  IFS='|' read -r id title simflags cap qt rate dur ctimeout stream hup _targets <<<"$line"
  local tname=$target tcap=$cap
  if [[ $target == haproxy-maxconn12 ]]; then tname=haproxy; tcap=12; fi
  # shellcheck disable=SC2086
  start_sim $simflags
  start_target "$tname" dify "$tcap" "$qt"
  sleep 1   # the same settling time for every target (HAProxy's first health check)
  local warm=$WARMUP
  [[ $id == s7 ]] && warm=0   # cold start: the proxy meets the load the moment it starts
  local url="http://127.0.0.1:$TARGET_PORT/v1/workflows/run" out="$RUNS/$id.$target.$round"
  local args=(--url "$url" --rate "$rate"
    --duration "${dur}s" --warmup "${warm}s" --timeout "$ctimeout" --label "$id/$target" --apps 4
    --out "$out.json")
  if ((stream)); then args+=(--stream); fi
  if [[ -n $hup ]]; then args+=(--signal-pid "$SIM_PID" --signal-at "${hup}s"); fi
  printf '[%4ds] %s round %s: %-18s ' $(( $(date +%s) - T0 )) "$id" "$round" "$target" >&2
  if [[ $id == s5 ]]; then
    run_s5
  elif [[ $id == s7 ]]; then
    python3 benches/lib/inflight.py "$SIM_PORT" 0.1 "$out.inflight.json" &
    SAMPLER_PID=$!
    "$LOADGEN" "${args[@]}" >/dev/null
    kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" || true; SAMPLER_PID=
  else
    "$LOADGEN" "${args[@]}" >/dev/null
  fi
  # dify-shaper: what it learned (limit, sheds, waits, patience), kept beside the run.
  if [[ -n ${TARGET_ADMIN:-} ]]; then
    curl -s --max-time 2 "http://127.0.0.1:$TARGET_ADMIN/status" >"$RUNS/$id.$target.$round.status.json" || true
  fi
  if [[ $id == s5 ]]; then
    for part in unloaded flood quiet; do
      printf '    %-8s ' "$part" >&2; python3 benches/lib/summary.py "$out.$part.json" >&2
    done
  else
    python3 benches/lib/summary.py "$out.json" >&2
  fi
  stop_target
  stop_sim
}

# s5 (called by run_one, whose locals it reads): the quiet app alone first (its unloaded
# latency through this target, no warm-up needed at 18 % of capacity), then the flooding app
# and the quiet app together, each from its own loadgen with its own app key.
run_s5() {
  local flood quiet common
  flood=$(awk -v r="$rate" 'BEGIN { printf "%.4f", r * 10 / 11 }')
  quiet=$(awk -v r="$rate" 'BEGIN { printf "%.4f", r / 11 }')
  common=(--url "$url" --duration "${dur}s" --timeout "$ctimeout")
  local qkey="authorization: Bearer app-quiet0000000000000000000"
  local fkey="authorization: Bearer app-flood0000000000000000000"
  echo >&2
  "$LOADGEN" "${common[@]}" --rate "$quiet" --header "$qkey" --label "$id/$target/unloaded" \
    --out "$out.unloaded.json" >/dev/null
  "$LOADGEN" "${common[@]}" --rate "$flood" --warmup "${warm}s" --header "$fkey" \
    --label "$id/$target/flood" --out "$out.flood.json" >/dev/null &
  FLOOD_PID=$!
  "$LOADGEN" "${common[@]}" --rate "$quiet" --warmup "${warm}s" --header "$qkey" \
    --label "$id/$target/quiet" --out "$out.quiet.json" >/dev/null
  wait "$FLOOD_PID"; FLOOD_PID=
}

for round in $(seq 1 "$ROUNDS"); do
  i=0
  for line in "${SCENARIOS[@]}"; do
    id=${line%%|*}
    if [[ -n $ONLY && ",$ONLY," != *",$id,"* ]]; then continue; fi
    read -ra targets <<<"${line##*|}"
    # Rotate the order per scenario and round, so no target always runs first.
    n=${#targets[@]}; shift_by=$(( (i + round - 1) % n )); i=$((i + 1))
    for k in $(seq 0 $((n - 1))); do
      run_one "$line" "${targets[$(( (k + shift_by) % n ))]}" "$round"
    done
  done
done

if ((OVERHEAD)); then
  if ((QUICK)); then bash benches/overhead.sh 3 50 1; else bash benches/overhead.sh 5 50 5; fi
fi

# Tables, JSON and chart.
VENV=${BENCH_VENV:-/tmp/dify-shaper-bench-venv}
if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
  python3 -m venv "$VENV" && "$VENV/bin/pip" install -q matplotlib
fi
printf '%s\n' "${SCENARIOS[@]}" >"$WORK/scenarios.txt"
CMD="bash benches/compare.sh"; ((QUICK)) && CMD+=" --quick"; ((ROUNDS > 1)) && CMD+=" --rounds $ROUNDS"
((WARMUP == 0)) && CMD+=" --cold"; ((OVERHEAD)) || CMD+=" --no-overhead"
[[ -n $ONLY ]] && CMD+=" --only $ONLY"; true
[[ -n $NAME ]] && CMD+=" --name $NAME"
if [[ -z $NAME ]]; then NAME=compare; ((WARMUP == 0)) && NAME=compare-cold; fi
BENCH_NAME=$NAME BENCH_WARMUP=$WARMUP "$VENV/bin/python" benches/lib/report.py "$RUNS" "$WORK/scenarios.txt" "$CMD" "$(( $(date +%s) - T0 ))"
# The raw per-run results beside the report, for anyone who wants to check a number.
rm -rf "benches/results/$NAME-runs" && cp -r "$RUNS" "benches/results/$NAME-runs"
