# Shared by benches/compare.sh and benches/overhead.sh (sourced, not run): start and stop the
# simulator and the four targets — direct, nginx (Dify's docker config), HAProxy (an expert's
# static config told the capacity) and dify-shaper — each on fresh 127.0.0.1 ports.
#
# Needs: BIN (the dify-shaper binary), WORK (a scratch directory).

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

ensure_proxies() {
  local missing=()
  command -v nginx >/dev/null || missing+=(nginx)
  command -v haproxy >/dev/null || missing+=(haproxy)
  command -v wrk >/dev/null || missing+=(wrk)
  if ((${#missing[@]})); then
    echo "installing ${missing[*]} (apt-get)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Waits until something answers HTTP on 127.0.0.1:$1 (any status), up to 10 s.
wait_http() {
  local p=$1 path=${2:-/health}
  for _ in $(seq 1 200); do
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$p$path" && return 0
    sleep 0.05
  done
  echo "nothing answers on 127.0.0.1:$p" >&2
  return 1
}

# start_sim [sim flags…]: a fresh simulator; sets SIM_PORT, SIM_PID.
start_sim() {
  SIM_PORT=$(port)
  "$BIN" sim --listen "127.0.0.1:$SIM_PORT" "$@" >"$WORK/sim-$SIM_PORT.log" 2>&1 &
  SIM_PID=$!
  wait_http "$SIM_PORT" /health
}

stop_sim() {
  [[ -n ${SIM_PID:-} ]] || return 0
  kill "$SIM_PID" 2>/dev/null || true
  wait "$SIM_PID" 2>/dev/null || true
  SIM_PID=
}

# nginx_conf DIR PORT UPSTREAM MODE: Dify's docker nginx (nginx.conf.template,
# conf.d/default.conf.template, proxy.conf.template with .env defaults: 3600 s read/send
# timeouts, `proxy_buffering off` in every API location, HTTP/1.1 to the upstream without
# keep-alive, i.e. `Connection: close`). MODE `dify` is that; MODE `keepalive` (raw overhead
# only) adds an upstream keep-alive pool and /sim, and turns the access log off.
nginx_conf() {
  local dir=$1 p=$2 up=$3 mode=$4 pass access
  mkdir -p "$dir"
  if [[ $mode == keepalive ]]; then
    pass="http://backend"
    access="access_log off;"
  else
    pass="http://$up"
    access="access_log $dir/access.log;"
  fi
  cat >"$dir/proxy.conf" <<CONF
proxy_set_header Host \$host;
proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
proxy_set_header X-Forwarded-Proto \$scheme;
proxy_set_header X-Forwarded-Port \$server_port;
proxy_http_version 1.1;
$([[ $mode == keepalive ]] && echo 'proxy_set_header Connection "";' || echo '# proxy_set_header Connection "";')
proxy_buffering off;
proxy_read_timeout 3600s;
proxy_send_timeout 3600s;
CONF
  cat >"$dir/nginx.conf" <<CONF
user root;
worker_processes 1;
error_log $dir/error.log notice;
pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
  default_type application/octet-stream;
  $access
  sendfile on;
  keepalive_timeout 65;
  client_max_body_size 100M;
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  $([[ $mode == keepalive ]] && echo "upstream backend { server $up; keepalive 64; }")
  server {
    listen 127.0.0.1:$p;
    server_name _;
    location /console/api { proxy_pass $pass; include $dir/proxy.conf; }
    location /api { proxy_pass $pass; include $dir/proxy.conf; }
    location /v1 { proxy_pass $pass; include $dir/proxy.conf; }
    location /files { proxy_pass $pass; include $dir/proxy.conf; }
    location /mcp { proxy_pass $pass; include $dir/proxy.conf; }
    location /triggers { proxy_pass $pass; include $dir/proxy.conf; }
    $([[ $mode == keepalive ]] && echo "location /sim { proxy_pass $pass; include $dir/proxy.conf; }")
  }
}
CONF
}

# haproxy_cfg FILE PORT UPSTREAM MODE CAPACITY QUEUE_TIMEOUT: an expert's static config that is
# told the backend's true capacity (`maxconn` on the server), queues the excess for up to
# QUEUE_TIMEOUT, retries what failed to connect or came back empty/503 (and redispatches),
# drops queued requests whose client left, health-checks /health every second, and never
# delays small packets (SSE). MODE `dify`: a connection per request to the backend (a gunicorn
# slot is held by every open connection, idle or not); MODE `keepalive` (raw overhead only):
# connection reuse, no maxconn.
haproxy_cfg() {
  local f=$1 p=$2 up=$3 mode=$4 cap=${5:-0} qt=${6:-10s} maxconn conn
  if [[ $mode == keepalive ]]; then
    maxconn=""; conn="http-reuse safe"
  else
    maxconn="maxconn $cap"; conn="option http-server-close"
  fi
  cat >"$f" <<CONF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 3600s
  timeout server 3600s
  timeout http-keep-alive 65s
  timeout queue $qt
  timeout check 1s
  retries 3
  option redispatch
  retry-on conn-failure empty-response response-timeout 503
  option abortonclose
  option http-buffer-request
  $conn
frontend fe
  bind 127.0.0.1:$p
  default_backend api
backend api
  option httpchk GET /health
  option http-no-delay
  server dify $up $maxconn check inter 1s fall 2 rise 2
CONF
}

# start_target NAME MODE [CAPACITY QUEUE_TIMEOUT]: NAME is direct, nginx, haproxy, dify-shaper,
# dify-shaper-noadm (raw overhead: admission off), pingora-bare or pingora-bare-nosteal (raw
# overhead: the minimal pingora proxy, binary in BARE, with pingora's default work-stealing
# runtime or with dify-shaper's per-thread event loops); sets TARGET_PORT and TARGET_PID.
start_target() {
  local name=$1 mode=$2 cap=${3:-10} qt=${4:-10s} dir
  TARGET_PID=; TARGET_ADMIN=
  case $name in
    direct) TARGET_PORT=$SIM_PORT; return 0 ;;
  esac
  TARGET_PORT=$(port)
  dir="$WORK/$name-$TARGET_PORT"
  mkdir -p "$dir"
  case $name in
    nginx)
      nginx_conf "$dir" "$TARGET_PORT" "127.0.0.1:$SIM_PORT" "$mode"
      nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' >"$dir/stdout.log" 2>&1 &
      TARGET_PID=$!
      ;;
    haproxy*)
      haproxy_cfg "$dir/haproxy.cfg" "$TARGET_PORT" "127.0.0.1:$SIM_PORT" "$mode" "$cap" "$qt"
      haproxy -db -f "$dir/haproxy.cfg" >"$dir/stdout.log" 2>&1 &
      TARGET_PID=$!
      ;;
    dify-shaper)
      local admin; admin=$(port)
      if [[ $mode == keepalive ]]; then
        shaper_overhead_conf "$dir/shaper.toml" true
        "$BIN" run --config "$dir/shaper.toml" --upstream "http://127.0.0.1:$SIM_PORT" \
          --listen "127.0.0.1:$TARGET_PORT" --admin "127.0.0.1:$admin" >"$dir/stdout.log" 2>&1 &
      else
        # The embedded defaults: no capacity, no [[maintenance]], nothing tuned.
        "$BIN" run --upstream "http://127.0.0.1:$SIM_PORT" \
          --listen "127.0.0.1:$TARGET_PORT" --admin "127.0.0.1:$admin" >"$dir/stdout.log" 2>&1 &
      fi
      TARGET_PID=$!; TARGET_ADMIN=$admin
      wait_http "$admin" /live
      ;;
    pingora-bare | pingora-bare-nosteal)
      # examples/bare_pingora.rs: the framework's floor (raw overhead only); BARE is its binary.
      local flags=()
      [[ $name == pingora-bare-nosteal ]] && flags=(--no-work-stealing)
      "$BARE" "127.0.0.1:$TARGET_PORT" "127.0.0.1:$SIM_PORT" "${flags[@]}" >"$dir/stdout.log" 2>&1 &
      TARGET_PID=$!
      ;;
    dify-shaper-noadm)
      local admin; admin=$(port)
      shaper_overhead_conf "$dir/shaper.toml" false
      "$BIN" run --config "$dir/shaper.toml" --upstream "http://127.0.0.1:$SIM_PORT" \
        --listen "127.0.0.1:$TARGET_PORT" --admin "127.0.0.1:$admin" >"$dir/stdout.log" 2>&1 &
      TARGET_PID=$!
      wait_http "$admin" /live
      ;;
    *) echo "unknown target $name" >&2; return 1 ;;
  esac
  wait_http "$TARGET_PORT" /health
}

# The raw-overhead config of dify-shaper: 1 thread, access log off, upstream keep-alive on;
# admission on (the default learned limit) or off.
shaper_overhead_conf() {
  cat >"$1" <<TOML
[server]
threads = 1
[log]
level = "warn"
access_log = false
[upstreams.api]
servers = ["127.0.0.1:5001"]
keepalive = "60s"
[upstreams.api.admission]
enabled = $2
[[routes]]
prefix = "/"
upstream = "api"
TOML
}

stop_target() {
  [[ -n ${TARGET_PID:-} ]] || return 0
  kill "$TARGET_PID" 2>/dev/null || true
  # dify-shaper drains for up to shutdown_grace on SIGTERM; nothing is in flight here.
  for _ in $(seq 1 50); do kill -0 "$TARGET_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$TARGET_PID" 2>/dev/null || true
  wait "$TARGET_PID" 2>/dev/null || true
  TARGET_PID=
}
