"""Multi-process runs on CPU: a 2-process DeepSpeed ZeRO-2 job of the quickstart recipe (SFT -> GRPO)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
    "data.task_options.max_operand=9", "data.task_options.num_heldout=20",
    "sft.max_steps=4", "grpo.max_steps=3", "grpo.logging_steps=1", "grpo.per_device_train_batch_size=8",
    "sft.disable_tqdm=true", "grpo.disable_tqdm=true", "tracking.wandb=disabled", "tracking.plots=false",
]


@pytest.mark.slow
def test_two_process_deepspeed_zero2_grpo(tmp_path):
    pytest.importorskip("deepspeed")
    run_dir = tmp_path / "ds"
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "recipes" / "accelerate" / "zero2.yaml"),
        "--num_processes", "2", "--mixed_precision", "no",
        "-m", "rlpost.cli", "train", str(ROOT / "recipes" / "quickstart.yaml"), f"output_dir={run_dir}", *TINY,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, "\n".join(l for l in proc.stderr.splitlines() if "rank1" in l or "Error" in l)[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2
    assert results["distributed_type"] == "DEEPSPEED"
    assert set(results["accuracy"]) == {"before training", "after SFT", "after GRPO"}
    # One summary line: only rank 0 prints it.
    assert proc.stdout.count("held-out accuracy: before training") == 1
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for r in rows if r["stage"] == "1-grpo" and "reward" in r) == 3
