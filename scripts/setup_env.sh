#!/usr/bin/env bash
# Create (or refresh) the project virtualenv in .venv. Idempotent: reinstalls only when pyproject.toml changed.
# pip, not uv/poetry: pip takes the local CPU build of torch==2.13.0 (see README, "Environment").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.rlpost-installed
want=$(sha1sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing rlpost and pinned dependencies into .venv (about 70 s on a fresh machine)"
  .venv/bin/pip install -q -U pip
  .venv/bin/pip install -q -e ".[all]"
  echo "$want" > "$stamp"
fi
