#!/usr/bin/env bash
# The docker suite: dify-shaper as a sidecar on a real Docker engine, in Dify 1.12.1's own
# compose project, under steady load through Dify's own nginx — and the same compose, load and
# restart without dify-shaper, side by side.
#
#   bash e2e/docker/run.sh            (make test-docker; as root: it starts its own dockerd)
#
# What runs: Dify's docker-compose.yaml and nginx files from ../shared/dify's 1.12.1 tarball,
# unmodified, with docker/docker-compose.shaper.yaml on top and e2e/docker/images.yaml, which
# only swaps images that need a registry for local ones: `api` is dify-shaper's Dify simulator
# (1 gunicorn worker × 10 gevent connections, 1 s runs, a 4 s boot), `nginx` is Debian's nginx
# running Dify's entrypoint and templates. dify-shaper is the real runtime image
# (docker/Dockerfile, target runtime-local) around the binary built here. Load is open-loop
# (examples/loadgen.rs): blocking and streaming workflow runs to nginx's published port.
#
# Scenarios (each on a fresh compose project):
#   install   docker/README.md's install and revert commands on a running Dify
#   restart   the 20:00 restart of `api` and `worker` — direct: `docker compose restart api
#             worker` as cron runs it; dify-shaper: its schedule fires and its `docker` action
#             restarts both through the Engine API. dify-shaper must lose nothing.
#   memory    dify-shaper's memory trigger reads `api`'s container stats; a leak (60 MB in the
#             container's /dev/shm) crosses the threshold and runs the same cycle.
#   recreate  `docker compose up -d --force-recreate dify-shaper`: failures while the old
#             container drains are counted; once the new one serves, none.
#   nomatch   the `docker` action names a service without containers: a warning at start-up;
#             a restart then fails before restarting anything, and serving resumes.
#   stopped   the dify-shaper container stopped: what clients get from nginx; then a reboot's
#             start order (nginx before dify-shaper): nginx must still come up and serve.
# Prints a table (sent / ok / failed by kind, per scenario and side) and exits non-zero when a
# check fails. Skips with one line (exit 0) where no Docker engine can run or Dify's files are
# not beside the project. KEEP_WORK=1 keeps the work directory (compose project, logs, JSON).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD

TARBALL=${DIFY_COMPOSE_TARBALL:-$REPO/../shared/dify/dify-1.12.1-api.tar.gz}
if [[ ! -f $TARBALL ]]; then
  echo "docker suite: skipped: Dify's compose files ($TARBALL) are not beside the project"
  exit 0
fi

# shellcheck source=e2e/docker/engine.sh
source e2e/docker/engine.sh
rc=0
engine_up || rc=$?
if ((rc == 3)); then exit 0; elif ((rc)); then exit "$rc"; fi

STARTED=$(date +%s)
WORK=$(mktemp -d /tmp/dify-shaper-docker.XXXXXX)
PROJECT_DIR=$WORK/dify/docker
SHAPER_DIR=$WORK/shaper
TOKEN=e2e-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
FAILED=()

cleanup() {
  local status=$?
  docker ps -aq --filter label=dify-shaper-e2e=squatter | xargs -r docker rm -f >/dev/null 2>&1 || true
  docker image prune -f --filter label=dify-shaper-e2e=1 >/dev/null 2>&1 || true
  if [[ -d $PROJECT_DIR ]]; then
    (cd "$PROJECT_DIR" && compose_all down --remove-orphans -t 2 >/dev/null 2>&1) || true
  fi
  engine_down
  if [[ ${KEEP_WORK:-} == 1 ]]; then say "work directory kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$status"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- images --------------------------------------------------------------------------------
# The debug build by default: `make test` has just built it (cargo test builds the binary and
# the examples), and the load here is a few requests a second. DIFY_SHAPER_PROFILE=release
# packs the release build instead.
PROFILE=${DIFY_SHAPER_PROFILE:-debug}
PROFILE_FLAGS=()
[[ $PROFILE == release ]] && PROFILE_FLAGS=(--release)
say "building dify-shaper and the load generator ($PROFILE)"
cargo build "${PROFILE_FLAGS[@]}" --quiet --bin dify-shaper --example loadgen
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}/$PROFILE
LOADGEN=$TARGET_DIR/examples/loadgen
export DOCKER_BUILDKIT=0   # the classic builder: no buildx here
mkdir -p "$WORK/ctx/docker/prebuilt" "$WORK/standin"
cp docker/Dockerfile docker/dify-shaper.toml "$WORK/ctx/docker/"
install -m 0755 "$TARGET_DIR/dify-shaper" "$WORK/ctx/docker/prebuilt/dify-shaper"
strip --strip-debug "$WORK/ctx/docker/prebuilt/dify-shaper"
cp "$WORK/ctx/docker/prebuilt/dify-shaper" e2e/docker/images/standin/* "$WORK/standin/"
# Labelled, so that the images an earlier run built (untagged by this one) can be pruned.
build() {
  docker build -q --network host --label dify-shaper-e2e=1 --build-arg "BASE_IMAGE=$BASE_IMAGE" "$@" >/dev/null
}
say "building images: dify-shaper:e2e (docker/Dockerfile, runtime-local), the stand-in, nginx"
build -f "$WORK/ctx/docker/Dockerfile" --target runtime-local -t dify-shaper:e2e "$WORK/ctx"
build -t dify-shaper-e2e/standin "$WORK/standin"
build -t dify-shaper-e2e/nginx e2e/docker/images/nginx

# --- Dify's compose project ----------------------------------------------------------------
mkdir -p "$WORK/dify" "$SHAPER_DIR/docker"
tar -C "$WORK/dify" -xzf "$TARBALL" docker/
NGINX_PORT=$(port)
ADMIN_PORT=$(port)
# Dify's own first step (cp .env.example .env), then what docker/README.md tells an operator
# to add, and ports on 127.0.0.1 only.
cp "$PROJECT_DIR/.env.example" "$PROJECT_DIR/.env"
cat >>"$PROJECT_DIR/.env" <<EOF
EXPOSE_NGINX_PORT=127.0.0.1:$NGINX_PORT
EXPOSE_NGINX_SSL_PORT=127.0.0.1:$(port)
EXPOSE_PLUGIN_DEBUGGING_PORT=127.0.0.1:$(port)
DIFY_SHAPER_ADMIN_TOKEN=$TOKEN
DOCKER_GID=$(stat -c %g /var/run/docker.sock)
DIFY_SHAPER_DIR=$SHAPER_DIR
DIFY_SHAPER_ADMIN_PORT=$ADMIN_PORT
DIFY_SHAPER_IMAGE=dify-shaper:e2e
EOF
FILES=(-f docker-compose.yaml -f "$REPO/e2e/docker/images.yaml")
SHAPED=(-f "$REPO/docker/docker-compose.shaper.yaml")
# The services this suite runs (Dify's databases, sandbox and vector store are not needed by
# the stand-in, hence --no-deps).
SERVICES=(api worker web plugin_daemon nginx)
compose_direct() { compose "${FILES[@]}" "$@"; }
compose_all() { compose "${FILES[@]}" "${SHAPED[@]}" "$@"; }
in_project() { (cd "$PROJECT_DIR" && "$@"); }

# dify-shaper's config for a scenario: the shipped docker/dify-shaper.toml with the schedule
# replaced (a cron line, or none), extra TOML appended to its [[maintenance]], and optionally
# its action replaced.
shaper_config() {
  local schedule=$1 extra=${2:-} action=${3:-}
  python3 - "$REPO/docker/dify-shaper.toml" "$SHAPER_DIR/docker/dify-shaper.toml" "$schedule" "$extra" "$action" <<'PY'
import re, sys
src, dst, schedule, extra, action = sys.argv[1:]
text = open(src).read()
line = f'schedule = "{schedule}"\ntimezone = "UTC"' if schedule else ""
text, n = re.subn(r'^schedule = .*\ntimezone = .*$', line, text, count=1, flags=re.M)
assert n == 1, "the shipped config's schedule line moved"
if action:
    text, n = re.subn(r'^action = .*$', lambda _: f"action = {action}", text, count=1, flags=re.M)
    assert n == 1, "the shipped config's action line moved"
open(dst, "w").write(text + ("\n" + extra + "\n" if extra else ""))
PY
}

# `compose up`, tried again a few times: right after a `down`, Docker 20.10 can still count a
# published port as allocated for a moment ("port is already allocated").
up() {
  local how=$1 try
  shift
  for try in 1 2 3 4 5; do
    in_project "$how" up -d --no-deps "$@" >"$WORK/up.log" 2>&1 && return 0
    sleep "$try"
  done
  say "compose up failed:"; tail -n 3 "$WORK/up.log" >&2
  return 1
}
up_direct() { up compose_direct "${SERVICES[@]}"; }
up_shaped() { up compose_all "${SERVICES[@]}" dify-shaper; }
down() { in_project compose_all down --remove-orphans -t 5 >/dev/null 2>&1; }

# Waits until nginx's API location answers from the backend (the stand-in answers this path
# 404; nginx alone would say 502), up to 90 s. With `shaped`, the answer must also have come
# through dify-shaper (the X-Request-Id it adds; the stand-in sets none).
wait_serving() {
  local headers code
  for _ in $(seq 1 90); do
    headers=$(curl -s -D - -o /dev/null --max-time 5 "http://127.0.0.1:$NGINX_PORT/console/api/setup" || true)
    code=$(awk 'NR == 1 {print $2}' <<<"$headers")
    if [[ $code == 404 ]] && { [[ ${1:-} != shaped ]] || grep -qi '^x-request-id:' <<<"$headers"; }; then
      return 0
    fi
    sleep 1
  done
  say "nginx on $NGINX_PORT never answered from the backend${1:+ through dify-shaper} (last: ${code:-none})"
  return 1
}

# Whether an answer from nginx's API location came through dify-shaper (its X-Request-Id).
via_shaper() {
  local headers
  headers=$(curl -s -D - -o /dev/null --max-time 5 "http://127.0.0.1:$NGINX_PORT/console/api/setup" || true)
  grep -qi '^x-request-id:' <<<"$headers"
}

# Starts steady load for DURATION: RATE/s blocking and RATE/s streaming workflow runs, clients
# that give up after 60 s. Results: $WORK/NAME.{blocking,streaming}.json.
LOAD_PIDS=()
load() {
  local name=$1 rate=$2 duration=$3 kind
  LOAD_PIDS=()
  for kind in blocking streaming; do
    local flags=()
    [[ $kind == streaming ]] && flags=(--stream)
    "$LOADGEN" --url "http://127.0.0.1:$NGINX_PORT/v1/workflows/run" --rate "$rate" \
      --duration "$duration" --timeout 60s --apps 4 "${flags[@]}" --label "$name $kind" \
      --out "$WORK/$name.$kind.json" >/dev/null 2>"$WORK/$name.$kind.log" &
    LOAD_PIDS+=($!)
  done
}
wait_load() { local p; for p in "${LOAD_PIDS[@]}"; do wait "$p"; done; }

admin() { curl -fsS --max-time 5 -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN_PORT$1"; }
started_at() { docker inspect -f '{{.State.StartedAt}}' "$1"; }
ip_of() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }
# A check passes when its command does; what the command printed goes with a failure, into the
# line that says so and into the summary at the end (CI shows the tail of the log).
check() {
  local out
  if out=$(eval "$2" 2>&1); then
    say "ok: $1"
  else
    say "FAILED: $1${out:+ — $out}"
    FAILED+=("$1${out:+ — $out}")
  fi
}
# Failed requests (sent − ok) of a scenario, both kinds; with FROM, only those sent from that
# second of the load on.
failed() { python3 e2e/docker/report.py failed "$WORK" "$1" "${2:-0}"; }

# --- restart: the 20:00 cycle --------------------------------------------------------------
scenario_restart() {
  say "restart, direct: load through nginx, \`docker compose restart api worker\` 15 s in"
  up_direct
  wait_serving
  load restart-direct 2 40s
  sleep 15
  in_project compose_direct restart api worker >/dev/null 2>&1
  wait_load
  down

  # The schedule fires 25 s from now: about 15 s into the load, after the boot and wait.
  local fire; fire=$(date -u -d '+25 seconds' '+%-S %-M %-H')
  shaper_config "$fire * * *"
  say "restart, dify-shaper: its schedule ($fire * * * UTC) restarts api and worker through the Engine API"
  up_shaped
  wait_serving shaped
  local api_before worker_before
  api_before=$(started_at docker-api-1)
  worker_before=$(started_at docker-worker-1)
  load restart-shaped 2 40s
  wait_load
  admin /status >"$WORK/restart-shaped.status.json"
  docker logs docker-dify-shaper-1 >"$WORK/restart-shaped.shaper.log" 2>&1
  check "restart: the scheduled cycle ran once and succeeded" \
    "python3 e2e/docker/report.py cycle '$WORK/restart-shaped.status.json' schedule 1"
  check "restart: api and worker were restarted" \
    "[[ \$(started_at docker-api-1) != '$api_before' && \$(started_at docker-worker-1) != '$worker_before' ]]"
  check "restart: 0 failed requests through dify-shaper" "[[ \$(failed restart-shaped) == 0 ]]"
  check "restart: direct lost requests in the same restart (the scenario bites)" \
    "[[ \$(failed restart-direct) -gt 0 ]]"
  down
}

# --- memory: the trigger through real container stats ---------------------------------------
scenario_memory() {
  shaper_config "" '[maintenance.memory]
service = "api"
threshold = "50MiB"
interval = "1s"
min_interval = "1h"'
  say "memory: a 60 MB leak in api 10 s into the load; the trigger's threshold is 50 MiB"
  up_shaped
  wait_serving shaped
  local api_before; api_before=$(started_at docker-api-1)
  load memory-shaped 2 35s
  sleep 10
  # 60 MB in api's /dev/shm (a tmpfs, charged to the container like the memory of a leak, and
  # held until a restart remounts it). A string held by a shell spawned with `docker exec`
  # was not always charged to the container on these machines: the shell said it held
  # 150 MB while the engine reported 12 MiB for the container.
  local leaked
  leaked=$(docker exec docker-api-1 sh -c 'head -c 60000000 /dev/zero >/dev/shm/leak && wc -c </dev/shm/leak' 2>&1)
  # What the engine reports for api until the trigger restarts it (at most 20 s), so a missed
  # trigger can be told from a leak that never happened.
  local seen="" deadline=$((SECONDS + 20))
  while ((SECONDS < deadline)); do
    if [[ $(started_at docker-api-1) != "$api_before" ]]; then
      seen+="api restarted"
      break
    fi
    seen+="$(docker stats --no-stream --format '{{.MemUsage}}' docker-api-1 2>&1 | cut -d/ -f1); "
  done
  say "memory: api after the leak of ${leaked} bytes (docker stats): $seen"
  wait_load
  admin /status >"$WORK/memory-shaped.status.json"
  docker logs docker-dify-shaper-1 >"$WORK/memory-shaped.shaper.log" 2>&1
  check "memory: the memory trigger ran one cycle and it succeeded" \
    "python3 e2e/docker/report.py cycle '$WORK/memory-shaped.status.json' memory 1 || { echo 'api after the leak: $seen'; false; }"
  check "memory: api was restarted" "[[ \$(started_at docker-api-1) != '$api_before' ]]"
  check "memory: 0 failed requests through dify-shaper" "[[ \$(failed memory-shaped) == 0 ]]"
  down
}

# --- recreate: a new dify-shaper container under load ---------------------------------------
scenario_recreate() {
  shaper_config ""
  say "recreate: \`docker compose up -d --force-recreate dify-shaper\` 8 s into the load"
  up_shaped
  wait_serving shaped
  load recreate-shaped 2 40s
  sleep 8
  local t0 nginx_before ip_before
  t0=$(date +%s.%N)
  nginx_before=$(started_at docker-nginx-1)
  ip_before=$(ip_of docker-dify-shaper-1)
  in_project compose_all up -d --no-deps --force-recreate dify-shaper >/dev/null 2>&1
  # From here the new container and nginx (restarted by compose after it) serve.
  wait_serving shaped
  say "recreate: dify-shaper's IP $ip_before -> $(ip_of docker-dify-shaper-1); nginx restarted: $([[ $(started_at docker-nginx-1) != "$nginx_before" ]] && echo yes || echo no)"
  local settled; settled=$(python3 -c "import math,sys; print(math.ceil(float(sys.argv[2]) - float(sys.argv[1])) + 8 + 1)" "$t0" "$(date +%s.%N)")
  echo "$settled" >"$WORK/recreate-shaped.settled"
  wait_load
  check "recreate: 0 failed requests sent after the new container serves (from second $settled)" \
    "[[ \$(failed recreate-shaped $settled) == 0 ]]"
  docker logs docker-dify-shaper-1 >"$WORK/recreate-shaped.shaper.log" 2>&1
  check "recreate: the new dify-shaper had nginx reload ([sidecar] reload_nginx)" \
    "grep -q 'sidecar: nginx reloaded' '$WORK/recreate-shaped.shaper.log'"
  down
}

# --- stopped: no dify-shaper, then a reboot's start order ----------------------------------
scenario_stopped() {
  shaper_config ""
  say "stopped: the dify-shaper container stopped 5 s into the load, started again 10 s later"
  up_shaped
  wait_serving shaped
  load stopped-shaped 2 25s
  sleep 5
  docker stop -t 45 docker-dify-shaper-1 >/dev/null
  sleep 10
  docker start docker-dify-shaper-1 >/dev/null
  wait_load
  check "stopped: nginx serves through dify-shaper again once it is back" "wait_serving shaped"

  say "stopped: dify-shaper back at a new address while nginx runs on"
  local old_ip new_ip squatters=()
  old_ip=$(ip_of docker-dify-shaper-1)
  docker stop -t 45 docker-dify-shaper-1 >/dev/null
  # Other containers take addresses meanwhile (a scale-up, a one-off job): until one holds
  # dify-shaper's.
  for _ in 1 2 3 4 5 6; do
    squatters+=("$(docker run -d --rm --network docker_default --label dify-shaper-e2e=squatter dify-shaper-e2e/standin)")
    [[ $(ip_of "${squatters[-1]}") == "$old_ip" ]] && break
  done
  docker start docker-dify-shaper-1 >/dev/null
  new_ip=$(ip_of docker-dify-shaper-1)
  say "stopped: dify-shaper's address $old_ip -> $new_ip"
  check "stopped: dify-shaper came back at another address" "[[ '$new_ip' != '$old_ip' ]]"
  check "stopped: nginx, running throughout, serves through dify-shaper at its new address" "wait_serving shaped"
  docker rm -f "${squatters[@]}" >/dev/null

  say "stopped: reboot order — everything stopped, then nginx started before dify-shaper"
  in_project compose_all stop -t 5 >/dev/null 2>&1
  docker start docker-api-1 docker-worker-1 docker-web-1 docker-plugin_daemon-1 >/dev/null
  docker start docker-nginx-1 >/dev/null
  sleep 5
  docker start docker-dify-shaper-1 >/dev/null
  check "stopped: after nginx started first, it comes up and serves through dify-shaper" "wait_serving shaped"
  say "stopped: nginx restarted itself $(docker inspect -f '{{.RestartCount}}' docker-nginx-1) time(s) before dify-shaper was up"
  down
}

# --- install and revert: docker/README.md's commands on a running Dify -----------------------
scenario_install() {
  shaper_config ""
  say "install: a running Dify, then the overlay added (docker/README.md), then reverted"
  up_direct
  wait_serving
  up_shaped
  check "install: with the overlay, nginx's API locations go through dify-shaper" "wait_serving shaped"
  # The revert command, as docker/README.md gives it (with --no-deps: no databases here).
  in_project compose_direct up -d --no-deps --remove-orphans "${SERVICES[@]}" >/dev/null 2>&1
  check "install: reverted, dify-shaper's container is gone" \
    "[[ -z \$(docker ps -aq --filter label=com.docker.compose.service=dify-shaper) ]]"
  check "install: reverted, nginx goes straight to api again" "wait_serving && ! via_shaper"
  down
}

# --- a selector that matches nothing: told at start-up, and the cycle resumes serving ---------
scenario_nomatch() {
  shaper_config "" "" '{ kind = "docker", services = ["api", "celery"] }'
  say "nomatch: the docker action names a service that has no container; a restart 5 s into the load"
  up_shaped
  wait_serving shaped
  load nomatch-shaped 2 20s
  sleep 5
  curl -fsS -X POST -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN_PORT/upstreams/api/restart" >/dev/null
  wait_load
  admin /status >"$WORK/nomatch-shaped.status.json"
  docker logs docker-dify-shaper-1 >"$WORK/nomatch-shaped.shaper.log" 2>&1
  check "nomatch: start-up warned that the action matches no container of \"celery\"" \
    "grep -q 'cannot restart anything as configured.*celery' '$WORK/nomatch-shaped.shaper.log'"
  check "nomatch: the cycle failed, restarted nothing, and serving resumed" \
    "python3 e2e/docker/report.py failed_cycle '$WORK/nomatch-shaped.status.json' celery"
  check "nomatch: 0 failed requests" "[[ \$(failed nomatch-shaped) == 0 ]]"
  down
}

for scenario in ${SCENARIOS:-install restart memory recreate stopped nomatch}; do
  "scenario_$scenario"
done

python3 e2e/docker/report.py table "$WORK" | tee "$WORK/report.md"
say "wall time $(($(date +%s) - STARTED)) s"
if ((${#FAILED[@]})); then
  say "${#FAILED[@]} check(s) failed:"
  for failure in "${FAILED[@]}"; do say "  - $failure"; done
  exit 1
fi
say "all checks passed"
