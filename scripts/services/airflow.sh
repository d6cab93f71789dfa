#!/usr/bin/env bash
# airflow.sh — a throwaway Apache Airflow 3 on loopback for meltstream's `airflow` sink test
# (tests/airflow_sink.rs): apache-airflow from PyPI in its own venv, SQLite metadata database,
# LocalExecutor, the DAGs of examples/airflow/, and the simple auth manager with one user whose
# password this script sets.
#
#   airflow.sh start     install (once), `db migrate`, start api-server, scheduler and
#                        dag-processor (no-op if running); waits until the API answers
#   airflow.sh status    exit 0 if all three run and the API answers, 1 if not
#   airflow.sh env       print the `export AIRFLOW_URL=...` lines the engine and the test read
#                        (eval "$(airflow.sh env)")
#   airflow.sh stop      stop each process by its PID and delete the directory
#
# The DAGs' tasks inherit this script's environment: MELTSTREAM_AIRFLOW_OUT (where they write)
# and DATABASE_URL (what the quality report reads) when it is set.
#
# Knobs: AIRFLOW_VERSION (3.3.2), AIRFLOW_PORT (18080), AIRFLOW_START_TIMEOUT (240 s),
#   MELTSTREAM_CACHE (~/.cache/meltstream: the venv), MELTSTREAM_SERVICES_DIR
#   (/tmp/meltstream-services), PYTHON (python3).
set -euo pipefail

AIRFLOW_VERSION="${AIRFLOW_VERSION:-3.3.2}"
AIRFLOW_PORT="${AIRFLOW_PORT:-18080}"
AIRFLOW_START_TIMEOUT="${AIRFLOW_START_TIMEOUT:-240}"
PYTHON="${PYTHON:-python3}"
CACHE="${MELTSTREAM_CACHE:-$HOME/.cache/meltstream}"
VENV="$CACHE/airflow-venv"
STAMP="$VENV/.apache-airflow-$AIRFLOW_VERSION"
SERVICES_DIR="${MELTSTREAM_SERVICES_DIR:-/tmp/meltstream-services}"
RUN="$SERVICES_DIR/airflow"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
URL="http://127.0.0.1:$AIRFLOW_PORT"
USER_NAME="meltstream"
PROCS=(api-server scheduler dag-processor)

log() { echo "airflow.sh: $*" >&2; }
die() { echo "airflow.sh: ERROR: $*" >&2; exit 1; }

install() {
  [[ -f "$STAMP" && -x "$VENV/bin/airflow" ]] && return 0
  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON is missing. Install it: apt-get install -y python3 python3-venv"
  if [[ ! -x "$VENV/bin/python" ]]; then
    mkdir -p "$CACHE"
    "$PYTHON" -m venv "$VENV" >&2 || { rm -rf "$VENV"; die "'$PYTHON -m venv' failed. Install it: apt-get install -y python3-venv"; }
  fi
  log "installing apache-airflow==$AIRFLOW_VERSION and psycopg into $VENV (a few minutes, once) ..."
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "apache-airflow==$AIRFLOW_VERSION" "psycopg[binary]>=3.1" >&2 ||
    die "pip install apache-airflow==$AIRFLOW_VERSION failed (PyPI reachable?)"
  touch "$STAMP"
}

# The configuration every Airflow process of this script runs with.
airflow_env() {
  export AIRFLOW_HOME="$RUN/home"
  export AIRFLOW__CORE__DAGS_FOLDER="$REPO/examples/airflow"
  export AIRFLOW__CORE__LOAD_EXAMPLES=False
  export AIRFLOW__CORE__EXECUTOR=LocalExecutor
  export AIRFLOW__CORE__PARALLELISM=4
  export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
  export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="$USER_NAME:admin"
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$RUN/passwords.json"
  # Not 8080, so the workers must be told where the execution API is.
  export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="$URL/execution/"
  export AIRFLOW__API__HOST=127.0.0.1
  export AIRFLOW__API__PORT="$AIRFLOW_PORT"
  export AIRFLOW__API__BASE_URL="$URL"
  export AIRFLOW__API__WORKERS=1
  # One secret for the API server, which checks task tokens, and the scheduler, which signs them.
  export AIRFLOW__API_AUTH__JWT_SECRET="$(cat "$RUN/jwt_secret")"
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="sqlite:///$RUN/airflow.db"
  export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=5
  export AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL=5
  export AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC=1
  export AIRFLOW__LOGGING__BASE_LOG_FOLDER="$RUN/logs"
  export MELTSTREAM_AIRFLOW_OUT="$RUN/out"
}

pid_of() { cat "$RUN/$1.pid" 2>/dev/null || true; }

alive() { local p; p="$(pid_of "$1")"; [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null; }

api_up() {
  command -v curl >/dev/null 2>&1 || { "$VENV/bin/python" - "$URL" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/api/v2/monitor/health", timeout=2).read()
EOF
    return; }
  curl -fsS -m 2 "$URL/api/v2/monitor/health" >/dev/null 2>&1
}

running() {
  local p
  for p in "${PROCS[@]}"; do alive "$p" || return 1; done
  api_up
}

start() {
  if running; then log "already running: $URL"; return 0; fi
  stop_processes
  install
  mkdir -p "$RUN/home" "$RUN/out" "$RUN/logs"
  [[ -f "$RUN/jwt_secret" ]] || "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(32))' > "$RUN/jwt_secret"
  [[ -f "$RUN/password" ]] || "$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(18))' > "$RUN/password"
  printf '{"%s": "%s"}\n' "$USER_NAME" "$(cat "$RUN/password")" > "$RUN/passwords.json"
  airflow_env
  log "db migrate ($RUN/airflow.db) ..."
  "$VENV/bin/airflow" db migrate > "$RUN/migrate.log" 2>&1 || die "airflow db migrate failed; see $RUN/migrate.log"
  local p
  for p in "${PROCS[@]}"; do
    # Its own session, so that stop ends the process and the workers it started.
    setsid "$VENV/bin/airflow" "$p" > "$RUN/$p.log" 2>&1 < /dev/null &
    echo $! > "$RUN/$p.pid"
  done
  local deadline=$((SECONDS + AIRFLOW_START_TIMEOUT))
  until api_up; do
    for p in "${PROCS[@]}"; do
      alive "$p" || die "airflow $p exited; see $RUN/$p.log"
    done
    ((SECONDS < deadline)) || die "the Airflow API did not answer on $URL within ${AIRFLOW_START_TIMEOUT}s; see $RUN/api-server.log"
    sleep 1
  done
  log "ready: $URL (api-server, scheduler, dag-processor; DAGs from examples/airflow)"
}

stop_processes() {
  local p pid
  for p in "${PROCS[@]}"; do
    pid="$(pid_of "$p")"
    [[ -n "$pid" ]] || continue
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for p in "${PROCS[@]}"; do
    pid="$(pid_of "$p")"
    [[ -n "$pid" ]] || continue
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$RUN/$p.pid"
  done
}

stop() {
  stop_processes
  rm -rf "$RUN"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) running ;;
  env)
    [[ -f "$RUN/password" ]] || die "not started: run airflow.sh start first"
    echo "export AIRFLOW_URL=$URL"
    echo "export AIRFLOW_USERNAME=$USER_NAME"
    echo "export AIRFLOW_PASSWORD=$(cat "$RUN/password")"
    echo "export MELTSTREAM_AIRFLOW_OUT=$RUN/out"
    ;;
  *) die "usage: airflow.sh start|stop|status|env" ;;
esac
