#!/usr/bin/env bash
# Shared tracking for many workers: PostgreSQL (Debian packages, own data dir, 127.0.0.1 only) with two databases,
# `mlflow` (the MLflow tracking server's backend store) and `optuna` (RDB storage for Hydra's Optuna sweeper), and an
# MLflow tracking server on it that serves the artifacts itself (clients upload and download through HTTP).
#
#   scripts/stack.sh up        # install PostgreSQL if missing (apt, as root), init + start both, wait until they answer
#   eval "$(scripts/stack.sh env)"   # RECSYS_TRACKING_URI + RECSYS_OPTUNA_STORAGE, read by conf/ when set
#   scripts/stack.sh status    # what runs (exit 0 when both answer, 3 otherwise)
#   scripts/stack.sh down      # stop the MLflow server, then PostgreSQL (fast shutdown); data is kept
#
# Settings (environment; the values of the last `up` are saved in $RECSYS_STACK_DIR/stack.env and reused):
#   RECSYS_STACK_DIR     state dir: data, logs, pid files, artifacts        default <checkout>/.stack (git-ignored)
#   RECSYS_PG_PORT       PostgreSQL TCP port on 127.0.0.1                    default 55432
#   RECSYS_PG_PASSWORD   password of the database user `recsys`          default recsys  (letters, digits, . _ ~ -)
#   RECSYS_MLFLOW_PORT   MLflow tracking server port on 127.0.0.1            default 5055
#   RECSYS_PYTHON        Python with mlflow + psycopg installed            default <checkout>/.venv/bin/python, python3
# PostgreSQL refuses to run as root: as root the server runs as the Debian `postgres` user, which must be able to reach
# RECSYS_STACK_DIR (every parent directory searchable). The password is fixed when the data dir is first created.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STACK="${RECSYS_STACK_DIR:-$ROOT/.stack}"
SAVED="$STACK/stack.env"
# shellcheck disable=SC1090
if [ -f "$SAVED" ]; then . "$SAVED"; fi
PG_PORT="${RECSYS_PG_PORT:-${SAVED_PG_PORT:-55432}}"
PG_PASSWORD="${RECSYS_PG_PASSWORD:-${SAVED_PG_PASSWORD:-recsys}}"
MLFLOW_PORT="${RECSYS_MLFLOW_PORT:-${SAVED_MLFLOW_PORT:-5055}}"
PG_USER=recsys
PGDATA="$STACK/pg"
if [ -n "${RECSYS_PYTHON:-}" ]; then PY="$RECSYS_PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi

die() { echo "stack.sh: $*" >&2; exit 1; }

case "$PG_PASSWORD" in *[!A-Za-z0-9._~-]*|"") die "RECSYS_PG_PASSWORD may only hold letters, digits and . _ ~ - (it goes into URLs)";; esac
for p in "$PG_PORT" "$MLFLOW_PORT"; do
  case "$p" in *[!0-9]*|"") die "ports must be numbers (RECSYS_PG_PORT=$PG_PORT, RECSYS_MLFLOW_PORT=$MLFLOW_PORT)";; esac
done
if [ -f "$SAVED" ] && [ -n "${SAVED_PG_PASSWORD:-}" ] && [ "$PG_PASSWORD" != "$SAVED_PG_PASSWORD" ]; then
  die "RECSYS_PG_PASSWORD differs from the one $PGDATA was created with; unset it, or remove $STACK to start afresh"
fi

PG_URL="postgresql+psycopg://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT"
TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT"

pg_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
  done
  return 1
}

install_pg() {
  pg_bindir >/dev/null && command -v psql >/dev/null && return 0
  [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed; as root run: apt-get update && apt-get install -y postgresql"
  echo "stack.sh: installing PostgreSQL (apt-get install postgresql)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq postgresql >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }
  pg_bindir >/dev/null || die "apt-get installed postgresql but no /usr/lib/postgresql/*/bin/pg_ctl was found"
}

# Run a PostgreSQL server binary as the postgres user when we are root (initdb and postgres refuse root).
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_running() { [ -f "$PGDATA/postmaster.pid" ] && as_pg "$(pg_bindir)/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }
pg_answers() { PGPASSWORD="$PG_PASSWORD" psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc 'select 1' >/dev/null 2>&1; }
mlflow_pid() { [ -f "$STACK/mlflow.pid" ] && kill -0 "$(cat "$STACK/mlflow.pid")" 2>/dev/null && cat "$STACK/mlflow.pid"; }
mlflow_answers() {
  "$PY" - "$TRACKING_URI/health" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=3).status == 200 else 1)
EOF
}

init_pg() {
  local bindir="$1"
  mkdir -p "$STACK"
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- test -x "$STACK" \
      || die "the postgres user cannot reach $STACK (a parent directory is not searchable); set RECSYS_STACK_DIR elsewhere"
  fi
  [ -f "$PGDATA/PG_VERSION" ] && return 0
  mkdir -p "$PGDATA"
  chmod 700 "$PGDATA"
  local pw="$STACK/.pw.$$"
  ( umask 077; printf '%s\n' "$PG_PASSWORD" >"$pw" )
  if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$PGDATA" "$pw"; fi
  as_pg "$bindir/initdb" -D "$PGDATA" -U "$PG_USER" --pwfile="$pw" --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8 \
    >"$STACK/initdb.log" 2>&1 || { rm -f "$pw"; cat "$STACK/initdb.log" >&2; die "initdb failed (log above)"; }
  rm -f "$pw"
  # TCP on loopback only, no unix socket (its path may be too long, and nothing here needs it).
  cat >>"$PGDATA/postgresql.conf" <<EOF

# scripts/stack.sh
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
EOF
}

save_settings() {  # what `env`, `status` and `down` use later without the variables set
  ( umask 077
    { echo "SAVED_PG_PORT=$PG_PORT"; echo "SAVED_PG_PASSWORD=$PG_PASSWORD"; echo "SAVED_MLFLOW_PORT=$MLFLOW_PORT"; } >"$SAVED" )
}

up() {
  install_pg
  local bindir; bindir="$(pg_bindir)"
  "$PY" -c 'import mlflow, optuna, psycopg' 2>/dev/null \
    || die "$PY lacks mlflow, optuna or psycopg (pip install -e . installs them; or set RECSYS_PYTHON)"
  init_pg "$bindir"
  if { pg_running || [ -n "$(mlflow_pid || true)" ]; } \
      && [ "${SAVED_PG_PORT:-$PG_PORT}:${SAVED_MLFLOW_PORT:-$MLFLOW_PORT}" != "$PG_PORT:$MLFLOW_PORT" ]; then
    die "already running on ports $SAVED_PG_PORT (PostgreSQL) / $SAVED_MLFLOW_PORT (MLflow); run 'scripts/stack.sh down' first"
  fi
  save_settings
  if ! pg_running; then
    touch "$STACK/postgres.log"
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$STACK/postgres.log"; fi
    as_pg "$bindir/pg_ctl" -D "$PGDATA" -l "$STACK/postgres.log" -o "-p $PG_PORT" -w -t 60 start >/dev/null \
      || { tail -n 20 "$STACK/postgres.log" >&2; die "PostgreSQL did not start on 127.0.0.1:$PG_PORT (log: $STACK/postgres.log)"; }
  fi
  head -n 1 "$PGDATA/postmaster.pid" >"$STACK/postgres.pid"
  for _ in $(seq 60); do pg_answers && break; sleep 0.5; done
  pg_answers || die "PostgreSQL runs but does not accept user $PG_USER on 127.0.0.1:$PG_PORT (log: $STACK/postgres.log)"
  local db
  for db in mlflow optuna; do
    if [ -z "$(PGPASSWORD="$PG_PASSWORD" psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc \
          "select 1 from pg_database where datname = '$db'")" ]; then
      PGPASSWORD="$PG_PASSWORD" psql -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -c "create database $db" \
        || die "could not create database $db"
    fi
  done
  # Optuna's tables, once: workers that all start on an empty database race on creating them (CREATE TYPE fails).
  "$PY" -c 'import sys, optuna; optuna.storages.RDBStorage(sys.argv[1])' "$PG_URL/optuna" \
    || die "could not create Optuna's tables in database optuna"
  if [ -z "$(mlflow_pid || true)" ]; then
    mkdir -p "$STACK/artifacts"
    # setsid: the server (and its uvicorn worker) get their own process group, so `down` can stop exactly that group.
    # MLflow's job runner (GenAI jobs: 7 huey consumer processes) is not used here: off, to spare a small machine.
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid "$PY" -m mlflow server --backend-store-uri "$PG_URL/mlflow" --serve-artifacts \
      --artifacts-destination "$STACK/artifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
      >"$STACK/mlflow.log" 2>&1 </dev/null &
    echo $! >"$STACK/mlflow.pid"
  fi
  for _ in $(seq 240); do
    mlflow_answers && break
    [ -n "$(mlflow_pid || true)" ] || { tail -n 30 "$STACK/mlflow.log" >&2; die "the MLflow server exited (log: $STACK/mlflow.log)"; }
    sleep 0.5
  done
  mlflow_answers || die "the MLflow server did not answer on $TRACKING_URI within 120 s (log: $STACK/mlflow.log)"
  echo "stack up: PostgreSQL 127.0.0.1:$PG_PORT (databases mlflow, optuna), MLflow server $TRACKING_URI; state in $STACK"
  echo "next: eval \"\$(scripts/stack.sh env)\""
}

down() {
  local pid
  pid="$(mlflow_pid || true)"
  if [ -n "$pid" ]; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; fi
    echo "MLflow server stopped (pid $pid)"
  fi
  rm -f "$STACK/mlflow.pid"
  if pg_running; then
    as_pg "$(pg_bindir)/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null
    echo "PostgreSQL stopped"
  fi
  rm -f "$STACK/postgres.pid"
}

status() {
  local rc=0 pid
  if pg_bindir >/dev/null && pg_running && pg_answers; then
    echo "PostgreSQL: running on 127.0.0.1:$PG_PORT (pid $(head -n 1 "$PGDATA/postmaster.pid"), data $PGDATA)"
  else
    echo "PostgreSQL: not running (data $PGDATA)"; rc=3
  fi
  pid="$(mlflow_pid || true)"
  if [ -n "$pid" ] && mlflow_answers; then
    echo "MLflow server: running at $TRACKING_URI (pid $pid, artifacts $STACK/artifacts)"
  else
    echo "MLflow server: not running${pid:+ (pid $pid does not answer on $TRACKING_URI)}"; rc=3
  fi
  return $rc
}

env_lines() {
  echo "export RECSYS_TRACKING_URI=$TRACKING_URI"
  echo "export RECSYS_OPTUNA_STORAGE=$PG_URL/optuna"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) env_lines ;;
  *) echo "usage: scripts/stack.sh up|down|status|env" >&2; exit 2 ;;
esac
