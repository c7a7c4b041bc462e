#!/usr/bin/env bash
# The test suite. By default the fast tier (unit + end-to-end, about a minute on 2 cores); extra args go to pytest
# and a later -m wins, so `bash scripts/test.sh -m "slow or not slow"` (what CI runs) adds the slow multi-process and
# learning checks (about 12 more minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR="$PWD/.venv/torch_extensions"   # DeepSpeed's JIT op is built once per venv
exec .venv/bin/python -m pytest tests -q -p no:cacheprovider -m "not slow" "$@"
