#!/usr/bin/env bash
# The main job: EAFT SFT warm-up then GRPO on held-out addition, tiny Qwen2, CPU, offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-offline}
exec .venv/bin/rlpost train recipes/quickstart.yaml "$@"
