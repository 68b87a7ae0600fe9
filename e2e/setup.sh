#!/usr/bin/env bash
# Installs what the end-to-end suites (tests/it/gunicorn_e2e.rs, tests/it/dify_e2e.rs) need, when it is missing:
#   - PostgreSQL server binaries (Debian's `postgresql`, 15 on bookworm) and the unprivileged
#     `postgres` user the tests run them as (PostgreSQL refuses to run as root);
#   - a Python venv at target/e2e-venv with e2e/requirements.txt (gunicorn, gevent, psycopg);
#   - the real Dify API server (Dify 1.12.1) when its kit is beside the project
#     (../shared/dify/realdify): `realdify install` into target/realdify (a few minutes the
#     first time: redis-server, uv and the api's locked dependencies; a no-op afterwards).
#   - redis-server, haproxy and openssl (Debian's), which the cluster tests (tests/it/cluster.rs) use.
# Starts nothing: the tests start and stop their own PostgreSQL, gunicorn and Redis.
# Idempotent and fast once done: a stamp in the venv records the requirements it holds.
# `make test` runs it before `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${DIFY_SHAPER_E2E_VENV:-target/e2e-venv}"
stamp="$venv/.e2e-ready"
want="$(sha256sum e2e/requirements.txt | cut -d' ' -f1)"

if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

if [ -z "$(pg_bin)" ] || [ ! -x "$(pg_bin)/initdb" ] || [ ! -x "$(pg_bin)/postgres" ]; then
  echo "e2e setup: installing PostgreSQL (Debian's postgresql)"
  $SUDO apt-get update -qq
  # Debian's package creates a cluster and starts it where it can; the tests do not use it
  # (each runs its own on a private socket), so stop it again if it runs.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    for cluster in $(pg_lsclusters -h 2>/dev/null | awk '$4 == "online" {print $1 "/" $2}'); do
      $SUDO pg_ctlcluster "${cluster%/*}" "${cluster#*/}" stop || true
    done
  fi
fi
# The cluster tests (tests/it/cluster.rs) start their own redis-server and HAProxy, and make
# the certificates of a TLS-only Redis with openssl.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v haproxy >/dev/null 2>&1 \
  || ! command -v openssl >/dev/null 2>&1; then
  echo "e2e setup: installing redis-server, haproxy and openssl (Debian's)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server haproxy openssl >/dev/null
  $SUDO systemctl stop haproxy >/dev/null 2>&1 || $SUDO service haproxy stop >/dev/null 2>&1 || true
  # Debian's package starts a system Redis on 6379 where it can; the tests do not use it.
  $SUDO systemctl stop redis-server >/dev/null 2>&1 || $SUDO service redis-server stop >/dev/null 2>&1 || true
fi
if [ "$(id -u)" -eq 0 ] && ! id -u postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi

# The real Dify API: installed here, not in the test, so the test's time is the test's.
kit="../shared/dify/realdify"
if [ -x "$kit" ]; then
  if [ ! -x target/realdify/venv/bin/gunicorn ] || [ ! -f target/realdify/dify.env ]; then
    echo "e2e setup: installing the real Dify API (Dify 1.12.1) into target/realdify"
    started=$(date +%s)
    DIFY_HOME="$PWD/target/realdify" "$kit" install
    # The install starts PostgreSQL and Redis for Dify's migrations and leaves them running;
    # this script starts nothing (the test starts and stops its own).
    DIFY_HOME="$PWD/target/realdify" "$kit" stop
    echo "e2e setup: real Dify installed in $(( $(date +%s) - started )) s"
  fi
else
  echo "e2e setup: $kit is absent: tests/it/dify_e2e.rs will skip its real-Dify test"
fi

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "e2e setup: creating the Python venv $venv (gunicorn, gevent, psycopg from PyPI)"
python="${PYTHON:-python3}"
command -v "$python" >/dev/null 2>&1 || { echo "e2e setup: $python not found" >&2; exit 1; }
rm -f "$stamp"
if ! "$python" -m venv "$venv"; then
  # Debian's python3 ships venv's pip bootstrap separately.
  echo "e2e setup: installing python3-venv"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r e2e/requirements.txt
# Prove the pieces import together the way gunicorn's gevent worker loads them.
"$venv/bin/python" -c 'import gevent.monkey; gevent.monkey.patch_all(); import gunicorn.workers.ggevent, psycopg'
echo "$want" > "$stamp"
echo "e2e setup: ready ($("$venv/bin/gunicorn" --version 2>&1), $("$(pg_bin)/postgres" --version))"
