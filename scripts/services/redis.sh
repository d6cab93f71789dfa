#!/usr/bin/env bash
# redis.sh — a throwaway Redis server on loopback for meltstream's integration tests (the
# `redis` sink), from Debian's redis-server package (installed here when missing, as root).
#
#   redis.sh start     start (no-op if running)
#   redis.sh status    exit 0 if running, 1 if not
#   redis.sh env       print `export REDIS_URL=...` (eval "$(redis.sh env)")
#   redis.sh stop      stop the server and delete its directory
#
# Knobs: REDIS_PORT (16379), MELTSTREAM_SERVICES_DIR (/tmp/meltstream-services).
set -euo pipefail

REDIS_PORT="${REDIS_PORT:-16379}"
SERVICES_DIR="${MELTSTREAM_SERVICES_DIR:-/tmp/meltstream-services}"
RUN="$SERVICES_DIR/redis"
PIDFILE="$RUN/redis.pid"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/"

log() { echo "redis.sh: $*" >&2; }
die() { echo "redis.sh: ERROR: $*" >&2; exit 1; }

ensure_binary() {
  command -v redis-server >/dev/null 2>&1 && return 0
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "redis-server not found; installing Debian's redis-server package ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || true
    apt-get install -y -qq redis-server >&2 || die "apt-get install redis-server failed"
    # The package starts a system service on 6379; ours runs on its own port.
    command -v redis-server >/dev/null 2>&1 && return 0
  fi
  die "redis-server not found. Install it (as root): apt-get install -y redis-server"
}

running() {
  [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

ping() {
  # RESP by hand (redis-cli may be absent): PING answers +PONG.
  exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" 2>/dev/null || return 1
  printf '*1\r\n$4\r\nPING\r\n' >&3
  local reply
  read -r -t 2 reply <&3 || true
  exec 3>&- 3<&-
  [[ "$reply" == +PONG* ]]
}

start() {
  if running && ping; then log "already running: $REDIS_URL"; return 0; fi
  ensure_binary
  mkdir -p "$RUN"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --dir "$RUN" \
    --pidfile "$PIDFILE" --logfile "$RUN/server.log" --save "" --appendonly no >&2
  for _ in $(seq 1 100); do
    if ping; then log "ready: $REDIS_URL"; return 0; fi
    sleep 0.1
  done
  die "redis-server did not answer on port $REDIS_PORT; see $RUN/server.log"
}

stop() {
  if running; then
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    for _ in $(seq 1 50); do running || break; sleep 0.1; done
  fi
  rm -rf "$RUN"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) running && ping ;;
  env) echo "export REDIS_URL=$REDIS_URL" ;;
  *) die "usage: redis.sh start|stop|status|env" ;;
esac
