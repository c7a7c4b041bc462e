#!/usr/bin/env bash
# The test suite (unit + end-to-end + slow multi-process and learning checks). Extra args go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` for the fast tier only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR="$PWD/.venv/torch_extensions"   # DeepSpeed's JIT op is built once per venv
exec .venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
