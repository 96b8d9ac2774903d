#!/bin/sh
# First start: create the cluster in $PGDATA with the superuser $POSTGRES_USER (password $POSTGRES_PASSWORD, required)
# and the database $POSTGRES_DB, reachable over TCP with a password only (scram-sha-256). During that setup the server
# listens on its Unix socket only, so nothing can connect over TCP before the database exists. Then runs the command.
set -eu
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "postgres-entrypoint: POSTGRES_PASSWORD must be set for the first start" >&2
    exit 1
  fi
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  # initdb allows host connections from the loopback only; the compose network reaches it from other containers
  printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
  pg_ctl --pgdata="$PGDATA" --wait --silent -o "-c listen_addresses='' -c unix_socket_directories=/tmp" start
  if [ "$POSTGRES_DB" != postgres ]; then
    psql --quiet --username="$POSTGRES_USER" --dbname=postgres --set=ON_ERROR_STOP=1 \
      --command="CREATE DATABASE \"$POSTGRES_DB\""
  fi
  pg_ctl --pgdata="$PGDATA" --wait --silent stop
  echo "postgres-entrypoint: created database $POSTGRES_DB for $POSTGRES_USER in $PGDATA" >&2
fi
if [ "${1:-}" = postgres ]; then
  shift
  exec postgres -c unix_socket_directories=/tmp "$@"
fi
exec "$@"
