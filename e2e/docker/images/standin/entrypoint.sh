#!/bin/bash
# Dify's api image picks its role from MODE (api/docker/entrypoint.sh); so does this stand-in.
set -euo pipefail

# PID 1 ignores signals it does not handle: without this trap, `docker stop` would wait out its
# whole timeout and then SIGKILL.
idle() {
  trap 'exit 0' TERM INT
  while :; do sleep 1 & wait $!; done
}

case "${MODE:-}" in
  api)
    trap 'exit 0' TERM INT
    sleep "${STANDIN_BOOT}" & wait $!
    trap - TERM INT
    # Dify's gunicorn: SERVER_WORKER_AMOUNT workers × SERVER_WORKER_CONNECTIONS gevent
    # connections; SIGTERM lets in-flight runs finish, as gunicorn's graceful stop does.
    exec dify-shaper sim --listen 0.0.0.0:5001 \
      --workers "${SERVER_WORKER_AMOUNT:-1}" \
      --worker-connections "${SERVER_WORKER_CONNECTIONS:-10}" \
      --service-time "${STANDIN_SERVICE_TIME}" \
      --graceful-timeout "${GUNICORN_TIMEOUT:-360}s"
    ;;
  *)
    echo "stand-in for ${MODE:-a Dify service}: idle until stopped"
    idle
    ;;
esac
