#!/usr/bin/env bash
# chromium.sh — headless Chromium for meltstream's dashboard test (tests/dashboard.rs), from
# Debian's chromium package (installed here when missing, as root).
#
#   chromium.sh path      print the browser's path (installing it first when missing)
#   chromium.sh env       print `export MELTSTREAM_CHROMIUM=...` (eval "$(chromium.sh env)")
set -euo pipefail

log() { echo "chromium.sh: $*" >&2; }
die() { echo "chromium.sh: ERROR: $*" >&2; exit 1; }

find_binary() {
  local b
  for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
  done
  return 1
}

ensure_binary() {
  find_binary && return 0
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "chromium not found; installing Debian's chromium package ..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || true
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2 || die "apt-get install chromium failed"
    find_binary && return 0
  fi
  die "chromium not found. Install it (as root): apt-get install -y chromium"
}

case "${1:-path}" in
  path) ensure_binary ;;
  env) echo "export MELTSTREAM_CHROMIUM=$(ensure_binary)" ;;
  *) die "usage: chromium.sh path|env" ;;
esac
