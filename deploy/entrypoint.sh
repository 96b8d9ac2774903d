#!/bin/sh
# Entrypoint of the platform image, for every role (mlops commands, the code server, the webserver, the daemon, the
# prediction service):
#   1. waits for the TCP endpoints in $MLOPS_WAIT_FOR ("host:port host:port", e.g. "postgres:5432 code-server:4000";
#      at most $MLOPS_WAIT_SECONDS, default 120): start order without relying on the orchestrator (podman-compose
#      before podman 4.6 ignores `condition: service_healthy`, Kubernetes has no order at all);
#   2. prepares the Dagster instance settings $DAGSTER_HOME/dagster.yaml with `mlops home` (PostgreSQL when
#      $MLOPS_DAGSTER_POSTGRES_URL is set, else SQLite files on the data volume), one container at a time (a lock
#      file on the shared volume), so no process reads the file while another writes it;
#   3. becomes the role's command (under tini, which forwards SIGTERM and reaps the run workers).
set -eu
if [ ! -w "$MLOPS_DATA_DIR" ]; then
  echo "entrypoint: $MLOPS_DATA_DIR is not writable by uid $(id -u): give the data directory to that uid" \
    "(a bind mount: chown -R $(id -u) DIR) or run the container with --user of the directory's owner" >&2
  exit 1
fi
if [ -n "${MLOPS_WAIT_FOR:-}" ]; then
  python - "${MLOPS_WAIT_SECONDS:-120}" $MLOPS_WAIT_FOR <<'PY'
import socket
import sys
import time

deadline = time.monotonic() + float(sys.argv[1])
for endpoint in sys.argv[2:]:
    host, _, port = endpoint.rpartition(":")
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            break
        except OSError as error:
            if time.monotonic() > deadline:
                sys.exit(f"entrypoint: {endpoint} did not accept connections within {sys.argv[1]} s ({error})")
            time.sleep(0.5)
PY
fi
# compose.yaml pastes the password into $MLOPS_DAGSTER_POSTGRES_URL: a character with a meaning in a URL ('@', ':',
# '%', '?', '#', ...) would break it (a host name made of the password's end, retried for a minute): said at once
case "${MLOPS_POSTGRES_PASSWORD:-}" in
  *[!A-Za-z0-9._~+=/-]*)
    echo "entrypoint: MLOPS_POSTGRES_PASSWORD holds a character a URL cannot carry as it is: use letters, digits" \
      "and . _ ~ + = / - only (PostgreSQL keeps the password it was first started with: change it there too)" >&2
    exit 1 ;;
esac
mkdir -p "$DAGSTER_HOME"
flock "$DAGSTER_HOME/.mlops-home.lock" mlops home >/dev/null
exec "$@"
