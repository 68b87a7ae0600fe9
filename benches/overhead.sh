#!/usr/bin/env bash
# Raw proxy overhead against a fast backend, measured side by side in one run: the simulator's
# /sim/fast answered directly, through dify-shaper (admission off, and with its default learned
# admission on), through the minimal pingora proxy of examples/bare_pingora.rs (the floor of
# the framework dify-shaper is built on; with pingora's default work-stealing runtime and with
# the per-thread event loops dify-shaper runs on), through nginx and through HAProxy — every
# proxy with 1 worker thread, access log off, upstream keep-alive on — alternating rounds so
# all see the same machine state. Besides requests/s it reports each proxy's own CPU time per
# request (user + system, from /proc), which says where a gap comes from and is steadier than
# requests/s when wrk, the simulator and the proxy share two cores.
# Needs wrk, nginx, haproxy (installed with apt-get when missing).
#
#   bash benches/overhead.sh [seconds-per-round] [connections] [rounds]
#
# Writes a markdown table to stdout and to benches/results/overhead.md (+ overhead.json).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_ROUND=${1:-10}
CONNECTIONS=${2:-50}
ROUNDS=${3:-3}
PROXY_THREADS=1   # every proxy: 1 worker (nginx worker_processes 1, HAProxy nbthread 1)
TARGETS=(direct dify-shaper-noadm dify-shaper pingora-bare pingora-bare-nosteal nginx haproxy)

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin dify-shaper --example bare_pingora
BIN=$CARGO_TARGET_DIR/release/dify-shaper
BARE=$CARGO_TARGET_DIR/release/examples/bare_pingora
WORK=$(mktemp -d)
SIM_PID=; TARGET_PID=
declare -A PORT PID CPU_PIDS
cleanup() {
  for t in "${!PID[@]}"; do TARGET_PID=${PID[$t]}; stop_target; done
  stop_sim; rm -rf "$WORK"
}
trap cleanup EXIT
# shellcheck source=benches/lib/targets.sh
source benches/lib/targets.sh
ensure_proxies
LOAD_BEFORE=$(cut -d" " -f1-3 /proc/loadavg)

# A backend that is never the bottleneck: plenty of connection slots, long keep-alive.
start_sim --workers 16 --worker-connections 64 --keepalive-timeout 60s
for t in "${TARGETS[@]}"; do
  start_target "$t" keepalive
  PORT[$t]=$TARGET_PORT
  [[ -n $TARGET_PID ]] && PID[$t]=$TARGET_PID
  # Whose CPU time is the proxy's: nginx's work happens in its worker, a child of the master.
  case $t in
    direct) CPU_PIDS[$t]= ;;
    nginx) CPU_PIDS[$t]=$(pgrep -P "$TARGET_PID" | tr '\n' ' ') ;;
    *) CPU_PIDS[$t]=$TARGET_PID ;;
  esac
done

# User and system clock ticks (1/100 s) used so far by the processes given.
cpu_ticks() {
  local u=0 s=0 pid
  for pid in "$@"; do
    read -r pu ps < <(awk '{print $14, $15}' "/proc/$pid/stat")
    u=$((u + pu)); s=$((s + ps))
  done
  echo "$u $s"
}

to_ms() { python3 -c "import sys,re; v=sys.argv[1]; m=re.match(r'([0-9.]+)(us|ms|s)',v); f={'us':1e-3,'ms':1,'s':1e3}[m.group(2)]; print(round(float(m.group(1))*f,3))" "$1"; }
# wrk prints latency percentiles with --latency; pull requests/s, p50/p99 (ms) and the CPU
# microseconds per request (user, system) spent by the processes named after the connections.
measure() {
  local url=$1 conns=$2 out u0 s0 u1 s1 n
  shift 2
  read -r u0 s0 < <(cpu_ticks "$@")
  out=$(wrk -t1 -c"$conns" -d"${SECONDS_PER_ROUND}s" --latency "$url")
  read -r u1 s1 < <(cpu_ticks "$@")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") $(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")") $(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")" \
    "$(python3 -c "import sys; u,s,n=map(int,sys.argv[1:]); print(round(u*1e4/n,2), round(s*1e4/n,2))" $((u1 - u0)) $((s1 - s0)) "$n")"
}

RAW=$WORK/raw.txt; : >"$RAW"
for round in $(seq 1 "$ROUNDS"); do
  n=${#TARGETS[@]}
  for k in $(seq 0 $((n - 1))); do
    t=${TARGETS[$(( (k + round - 1) % n ))]}
    # shellcheck disable=SC2086  # CPU_PIDS holds a list of pids (or none)
    read -r r a b cu cs < <(measure "http://127.0.0.1:${PORT[$t]}/sim/fast" "$CONNECTIONS" ${CPU_PIDS[$t]})
    # One connection: the latency a request gains, without queueing behind others.
    read -r _ c d _ _ < <(measure "http://127.0.0.1:${PORT[$t]}/sim/fast" 1)
    echo "$t $round $r $a $b $c $d $cu $cs" | tee -a "$RAW" >&2
  done
done

python3 - "$RAW" "$CONNECTIONS" "$SECONDS_PER_ROUND" "$ROUNDS" "$(nginx -v 2>&1 | sed 's/.*\///')" "$(haproxy -v | head -1 | awk '{print $3}')" \
  "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'PY'
import json, statistics, sys
raw, conns, secs, rounds, nginx_v, haproxy_v, measured, commit = sys.argv[1:9]
rows = {}
for line in open(raw):
    t, _, r, a, b, c, d, cu, cs = line.split()
    rows.setdefault(t, []).append(tuple(map(float, (r, a, b, c, d, cu, cs))))
order = ["direct", "dify-shaper-noadm", "dify-shaper", "pingora-bare", "pingora-bare-nosteal", "nginx", "haproxy"]
label = {"direct": "direct (simulator)", "dify-shaper-noadm": "dify-shaper, admission off",
         "dify-shaper": "dify-shaper, admission on (default)",
         "pingora-bare": "pingora 0.9, minimal proxy, default work-stealing runtime (examples/bare_pingora.rs)",
         "pingora-bare-nosteal": "pingora 0.9, minimal proxy, per-thread event loops (`--no-work-stealing`)",
         "nginx": f"nginx {nginx_v}",
         "haproxy": f"HAProxy {haproxy_v}"}
med = lambda xs: statistics.median(xs)
out = []
for t in order:
    if t not in rows:
        continue
    v = list(zip(*rows[t]))
    out.append({"target": t, "label": label[t], "rps": med(v[0]), "p50": med(v[1]), "p99": med(v[2]),
                "p50_1": med(v[3]), "p99_1": med(v[4]),
                # The direct row has no proxy: its CPU columns stay empty.
                "cpu_user_us": None if t == "direct" else med(v[5]),
                "cpu_sys_us": None if t == "direct" else med(v[6]),
                "cpu_us": None if t == "direct" else med(v[5]) + med(v[6])})
d = out[0]
hap = next((o for o in out if o["target"] == "haproxy"), None)
lines = [f"| path | requests/s ({conns} conns) | vs direct | vs HAProxy | proxy CPU µs/request (user + system) | p50 ms | p99 ms | added p50 ms | added p99 ms | p50 ms (1 conn) | p99 ms (1 conn) | added p50 (1 conn) | added p99 (1 conn) |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
for o in out:
    add = lambda k: "–" if o is d else f"{o[k] - d[k]:+.3f}"
    vs_h = f"{o['rps'] / hap['rps']:.2f}×" if hap else "–"
    cpu = "–" if o["cpu_us"] is None else f"{o['cpu_us']:.1f} ({o['cpu_user_us']:.1f} + {o['cpu_sys_us']:.1f})"
    lines.append(f"| {o['label']} | {o['rps']:,.0f} | {o['rps'] / d['rps']:.2f}× | {vs_h} | {cpu} | {o['p50']:.3f} | {o['p99']:.3f} | {add('p50')} | {add('p99')} | "
                 f"{o['p50_1']:.3f} | {o['p99_1']:.3f} | {add('p50_1')} | {add('p99_1')} |")
md = "\n".join(lines)
json.dump({"connections": int(conns), "seconds": int(secs), "rounds": int(rounds), "measured": measured,
           "commit": commit, "rows": out, "markdown": md},
          open("benches/results/overhead.json", "w"), indent=1)
print(md, file=open(raw + ".md", "w"))
PY
{
  echo "# Raw proxy overhead ($(date -u +%Y-%m-%d))"
  echo
  echo "Machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)."
  echo "Command: \`bash benches/overhead.sh $SECONDS_PER_ROUND $CONNECTIONS $ROUNDS\`:"
  echo "wrk -t1 -c$CONNECTIONS (then -c1), ${SECONDS_PER_ROUND}s per round, $ROUNDS rounds in rotating order, medians."
  echo "Backend: \`dify-shaper sim\` /sim/fast (16×64 slots, 60 s keep-alive). Every proxy: 1 worker thread"
  echo "(dify-shaper \`threads = 1\`, nginx \`worker_processes 1\`, HAProxy \`nbthread 1\`), access log off,"
  echo "upstream keep-alive on (nginx \`keepalive 64\`, HAProxy \`http-reuse safe\`, dify-shaper \`keepalive = \"60s\"\`)."
  echo "Proxy CPU: the proxy's user and system time (/proc/PID/stat; nginx: its worker) over each ${CONNECTIONS}-connection run,"
  echo "divided by the requests wrk completed in it."
  echo "wrk, the simulator and the proxy share the machine's cores; load average $LOAD_BEFORE before, $(cut -d" " -f1-3 /proc/loadavg) after."
  echo
  cat "$RAW.md"
} | tee benches/results/overhead.md
