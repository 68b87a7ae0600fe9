# The Docker engine the docker suite (e2e/docker/run.sh) runs on, sourced by it:
#   engine_up    install what is missing, start dockerd unless one already answers, and make
#                sure the local base image exists; returns 3 where no engine can run here
#   engine_down  stop the dockerd engine_up started (one that was already running is left)
#   compose …    Docker Compose v2
#
# Facts about these machines it relies on: Debian's docker.io (20.10) starts by hand as root
# without systemd given no iptables and no default bridge; no image registry is reachable, so
# the base image is made with debootstrap from the Debian mirror and `docker import`ed, and
# kept in the engine's store (/var/lib/docker) for later runs on the same machine.
#
# Compose: Debian bookworm's docker-compose is 1.29, which rejects Dify 1.12.1's compose file
# (`depends_on: … required: false`, a Compose v2.20 key). Docker Compose v2 is Debian's own
# package in the next release (trixie, 2.26.1, a static Go binary needing only libc): its
# binary is taken from that .deb, checked against the hash pinned here, and kept beside the
# base image's cache. Nothing is installed system-wide for it.

ENGINE_CACHE=${DIFY_SHAPER_DOCKER_CACHE:-/var/cache/dify-shaper-e2e}
BASE_IMAGE=dify-shaper-e2e/debian:bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
COMPOSE_DEB=pool/main/d/docker-compose/docker-compose_2.26.1-4_amd64.deb
COMPOSE_SHA256=47681197cb2b1ab88206b42a1a92fc75f50d9530a6322d03494a473eed0408ea
COMPOSE_BIN=$ENGINE_CACHE/docker-compose-2.26.1
DOCKERD_PID=
DOCKERD_LOG=

say() { echo "docker suite: $*" >&2; }

compose() { "$COMPOSE_BIN" "$@"; }

# Installs docker.io and debootstrap from apt, and Compose v2 from Debian's pool.
engine_install() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  if ((${#missing[@]})); then
    say "installing ${missing[*]} (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  mkdir -p "$ENGINE_CACHE"
  if [[ ! -x $COMPOSE_BIN ]]; then
    say "fetching Docker Compose v2 from $DEBIAN_MIRROR/$COMPOSE_DEB"
    local tmp; tmp=$(mktemp -d)
    curl -fsS -o "$tmp/compose.deb" "$DEBIAN_MIRROR/$COMPOSE_DEB"
    echo "$COMPOSE_SHA256  $tmp/compose.deb" | sha256sum -c --quiet
    dpkg-deb -x "$tmp/compose.deb" "$tmp/x"
    install -m 0755 "$tmp/x/usr/libexec/docker/cli-plugins/docker-compose" "$COMPOSE_BIN"
    rm -rf "$tmp"
  fi
}

# Starts dockerd (unless one answers already) and waits until it does.
engine_start() {
  if docker info >/dev/null 2>&1; then
    say "using the Docker engine already running"
    return 0
  fi
  DOCKERD_LOG=$ENGINE_CACHE/dockerd.log
  say "starting dockerd (log: $DOCKERD_LOG)"
  dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver=overlay2 \
    --pidfile "$ENGINE_CACHE/dockerd.pid" >"$DOCKERD_LOG" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 1 150); do
    docker info >/dev/null 2>&1 && return 0
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.2
  done
  say "dockerd did not come up; its log ends with:"
  tail -n 5 "$DOCKERD_LOG" >&2
  DOCKERD_PID=
  return 1
}

# The base image every test image starts from: Debian bookworm minbase, made here once.
engine_base_image() {
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    return 0
  fi
  local root; root=$(mktemp -d)
  say "making the base image $BASE_IMAGE with debootstrap (once per machine, about a minute)"
  if ! debootstrap --variant=minbase bookworm "$root" "$DEBIAN_MIRROR" >"$ENGINE_CACHE/debootstrap.log" 2>&1; then
    say "debootstrap failed; its log ends with:"
    tail -n 5 "$ENGINE_CACHE/debootstrap.log" >&2
    rm -rf "$root"
    return 1
  fi
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
}

# Everything engine_up promises; 3 where no engine can run (not root, no dockerd).
engine_up() {
  if [[ $(id -u) -ne 0 ]]; then
    say "skipped: starting a Docker engine needs root"
    return 3
  fi
  engine_install || { say "skipped: could not install the Docker engine"; return 3; }
  engine_start || { say "skipped: no Docker engine can start on this machine"; return 3; }
  engine_base_image
}

engine_down() {
  [[ -n $DOCKERD_PID ]] || return 0
  say "stopping the dockerd it started"
  kill "$DOCKERD_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.2
  done
  DOCKERD_PID=
}
