#!/usr/bin/env bash
# pyenv.sh — create (once) a Python venv for the service smoke checks at
# ${MELTSTREAM_CACHE:-~/.cache/meltstream}/venv with confluent-kafka and pyarrow (reading the
# Parquet export back) installed, and print the path of its python on stdout (all other output
# goes to stderr).
# Knobs: CONFLUENT_KAFKA_VERSION (2.16.1), PYARROW_VERSION (21.0.0), PYTHON (python3).
set -euo pipefail

CACHE="${MELTSTREAM_CACHE:-$HOME/.cache/meltstream}"
VENV="$CACHE/venv"
CONFLUENT_KAFKA_VERSION="${CONFLUENT_KAFKA_VERSION:-2.16.1}"
PYARROW_VERSION="${PYARROW_VERSION:-21.0.0}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.confluent-kafka-$CONFLUENT_KAFKA_VERSION-pyarrow-$PYARROW_VERSION"

die() { echo "pyenv.sh: ERROR: $*" >&2; exit 1; }

if [[ ! -f "$STAMP" || ! -x "$VENV/bin/python" ]]; then
  command -v "$PYTHON" >/dev/null 2>&1 ||
    die "$PYTHON is missing. Install it: apt-get install -y python3 python3-venv"
  if [[ ! -x "$VENV/bin/python" ]]; then
    mkdir -p "$CACHE"
    if ! "$PYTHON" -m venv "$VENV" >&2; then
      rm -rf "$VENV"
      if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "pyenv.sh: python venv module missing; installing python3-venv" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
        "$PYTHON" -m venv "$VENV" >&2
      else
        die "'$PYTHON -m venv' failed. Install it: apt-get install -y python3-venv"
      fi
    fi
  fi
  echo "pyenv.sh: installing confluent-kafka==$CONFLUENT_KAFKA_VERSION and pyarrow==$PYARROW_VERSION into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    "confluent-kafka==$CONFLUENT_KAFKA_VERSION" "pyarrow==$PYARROW_VERSION" >&2
  touch "$STAMP"
fi
echo "$VENV/bin/python"
