#!/usr/bin/env bash
# postgres.sh — a real, throwaway PostgreSQL cluster on loopback for meltstream's
# integration tests (trust auth on 127.0.0.1 only, fsync on, database `meltstream`).
#
#   postgres.sh start               initdb (first time) + start + create db; no-op if running
#   postgres.sh status              exit 0 if running, 1 if not
#   postgres.sh env                 print `export DATABASE_URL=...` lines (eval "$(postgres.sh env)")
#   postgres.sh stop-server [MODE]  stop the server, KEEP the data (MODE: fast|immediate|smart;
#                                   immediate = crash-like, WAL recovery on next start)
#   postgres.sh start-server        start it again on the kept data
#   postgres.sh stop                stop the server and delete the cluster
#
# Knobs: PG_PORT (15432), PG_USER (postgres: the database superuser), PG_DB (meltstream),
#   PG_OS_USER (OS user that owns the cluster when run as root: postgres if it exists,
#   else a `meltstream` system user is created), PG_BINDIR (server binaries),
#   PG_EXTRA_CONF (extra postgresql.conf lines), PG_START_TIMEOUT (60 s),
#   MELTSTREAM_SERVICES_DIR (/tmp/meltstream-services).
set -euo pipefail

PG_PORT="${PG_PORT:-15432}"
PG_USER="${PG_USER:-postgres}"
PG_DB="${PG_DB:-meltstream}"
PG_START_TIMEOUT="${PG_START_TIMEOUT:-60}"
SERVICES_DIR="${MELTSTREAM_SERVICES_DIR:-/tmp/meltstream-services}"
RUN="$SERVICES_DIR/pg"        # throwaway: everything below here
PGDATA_DIR="$RUN/data"        # the cluster; its unix socket lives in here too
LOG="$RUN/server.log"
DATABASE_URL="postgres://$PG_USER@127.0.0.1:$PG_PORT/$PG_DB"

log() { echo "postgres.sh: $*" >&2; }
die() { echo "postgres.sh: ERROR: $*" >&2; exit 1; }

is_root() { [[ "$(id -u)" == 0 ]]; }

# Locate initdb/pg_ctl/postgres: PG_BINDIR, pg_config --bindir, /usr/lib/postgresql/*/bin
# (newest first), PATH. Prints the directory; returns 1 if none has all three.
find_bindir() {
  local -a cands=()
  [[ -n "${PG_BINDIR:-}" ]] && cands+=("$PG_BINDIR")
  if command -v pg_config >/dev/null 2>&1; then cands+=("$(pg_config --bindir 2>/dev/null || true)"); fi
  local d
  while IFS= read -r d; do cands+=("$d"); done < <(
    compgen -G '/usr/lib/postgresql/*/bin' | sort -t/ -k5,5 -V -r || true)
  if command -v initdb >/dev/null 2>&1; then cands+=("$(dirname "$(command -v initdb)")"); fi
  for d in "${cands[@]}"; do
    if [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

ensure_bindir() {
  if BIN="$(find_bindir)"; then return 0; fi
  if is_root && command -v apt-get >/dev/null 2>&1; then
    log "PostgreSQL server binaries not found; installing Debian's postgresql package ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
      postgresql >&2
    BIN="$(find_bindir)" || die "installed postgresql but still found no initdb/pg_ctl/postgres"
    return 0
  fi
  die "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in PG_BINDIR, pg_config --bindir, /usr/lib/postgresql/*/bin or PATH. Install them (as root): apt-get install -y postgresql — or set PG_BINDIR"
}

# As root, the cluster must belong to an unprivileged OS user (initdb/postgres refuse root).
ensure_os_user() {
  if ! is_root; then
    OS_USER="$(id -un)"
    return 0
  fi
  if [[ -n "${PG_OS_USER:-}" ]]; then
    OS_USER="$PG_OS_USER"
  elif id postgres >/dev/null 2>&1; then
    OS_USER=postgres
  else
    OS_USER=meltstream
  fi
  if ! id "$OS_USER" >/dev/null 2>&1; then
    log "creating system user $OS_USER to own the throwaway cluster"
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$OS_USER" ||
      die "could not create system user $OS_USER (set PG_OS_USER to an existing unprivileged user)"
  fi
}

# Run a command as the cluster's owner, from / (the owner may not be able to read our cwd).
as_owner() {
  if ! is_root; then
    (cd / && "$@")
  elif command -v runuser >/dev/null 2>&1; then
    (cd / && runuser -u "$OS_USER" -- "$@")
  else
    local q
    printf -v q '%q ' "$@"
    (cd / && su -s /bin/sh "$OS_USER" -c "$q")
  fi
}

pg_running() {
  [[ -f "$PGDATA_DIR/PG_VERSION" ]] && as_owner "$BIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

psql_q() {
  as_owner "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" "$@"
}

init_cluster() {
  log "initdb $PGDATA_DIR (superuser $PG_USER, OS owner $OS_USER, $("$BIN/postgres" --version))"
  mkdir -p "$RUN"
  if is_root; then
    chown "$OS_USER" "$RUN"
    as_owner test -w "$RUN" ||
      die "user $OS_USER cannot reach $RUN (a parent dir is not searchable?); set MELTSTREAM_SERVICES_DIR elsewhere, e.g. /tmp/meltstream-services"
  fi
  chmod 700 "$RUN"
  as_owner "$BIN/initdb" -D "$PGDATA_DIR" -U "$PG_USER" -E UTF8 --locale=C \
    --auth-local=trust --auth-host=trust --no-sync --no-instructions >"$RUN/initdb.log" 2>&1 ||
    { cat "$RUN/initdb.log" >&2; die "initdb failed"; }
  # trust, but only on the unix socket (inside the data dir) and 127.0.0.1
  cat >"$PGDATA_DIR/pg_hba.conf" <<'EOF'
# generated by scripts/services/postgres.sh — throwaway test cluster
local   all          all                 trust
host    all          all   127.0.0.1/32  trust
host    replication  all   127.0.0.1/32  trust
EOF
  cat >>"$PGDATA_DIR/postgresql.conf" <<EOF

# --- scripts/services/postgres.sh ---
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PGDATA_DIR'
max_connections = 100
shared_buffers = 128MB
fsync = on
synchronous_commit = on
full_page_writes = on
log_min_messages = warning
log_line_prefix = '%m [%p] %q%u@%d '
${PG_EXTRA_CONF:-}
EOF
  chown "$OS_USER" "$PGDATA_DIR/pg_hba.conf" "$PGDATA_DIR/postgresql.conf" 2>/dev/null || true
}

cmd_start() {
  ensure_bindir
  ensure_os_user
  if pg_running; then
    log "already running on 127.0.0.1:$PG_PORT ($PGDATA_DIR)"
  else
    if port_open "$PG_PORT"; then
      die "port $PG_PORT is already in use by something else; set PG_PORT"
    fi
    [[ -f "$PGDATA_DIR/PG_VERSION" ]] || init_cluster
    if is_root; then touch "$LOG" && chown "$OS_USER" "$LOG"; fi
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT (log $LOG)"
    if ! as_owner "$BIN/pg_ctl" -D "$PGDATA_DIR" -l "$LOG" -w -t "$PG_START_TIMEOUT" start >/dev/null; then
      tail -n 30 "$LOG" >&2 || true
      die "PostgreSQL did not start within ${PG_START_TIMEOUT}s (log: $LOG)"
    fi
  fi
  if [[ "$(psql_q -d postgres -tAc "select 1 from pg_database where datname = '$PG_DB'")" != 1 ]]; then
    psql_q -d postgres -c "create database \"$PG_DB\""
    log "created database $PG_DB"
  fi
  log "ready: $DATABASE_URL"
}

cmd_stop_server() {
  local mode="${1:-fast}"
  case "$mode" in fast | immediate | smart) ;; *) die "stop mode must be fast, immediate or smart" ;; esac
  ensure_bindir
  ensure_os_user
  if ! pg_running; then
    log "not running"
    return 0
  fi
  if ! as_owner "$BIN/pg_ctl" -D "$PGDATA_DIR" -m "$mode" -w -t 60 stop >/dev/null; then
    log "pg_ctl stop -m $mode failed; trying immediate"
    as_owner "$BIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -w -t 30 stop >/dev/null
  fi
  log "stopped ($mode); data kept in $PGDATA_DIR"
}

cmd_stop() {
  if [[ -d "$RUN" ]]; then cmd_stop_server fast; fi
  rm -rf "$RUN"
  log "removed $RUN"
}

cmd_status() {
  if ! BIN="$(find_bindir)"; then echo "postgres: not installed"; return 1; fi
  ensure_os_user
  if pg_running; then
    echo "postgres: running on 127.0.0.1:$PG_PORT, data $PGDATA_DIR"
  else
    echo "postgres: not running"
    return 1
  fi
}

cmd_env() {
  echo "export DATABASE_URL=$DATABASE_URL"
  echo "export PG_PORT=$PG_PORT"
  echo "export PGHOST=127.0.0.1"
  echo "export PGPORT=$PG_PORT"
  echo "export PGUSER=$PG_USER"
  echo "export PGDATABASE=$PG_DB"
}

case "${1:-}" in
  start | start-server) cmd_start ;;
  stop) cmd_stop ;;
  stop-server) cmd_stop_server "${2:-fast}" ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *)
    echo "usage: $0 {start|stop|status|env|stop-server [fast|immediate|smart]|start-server}" >&2
    exit 2
    ;;
esac
