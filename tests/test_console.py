"""Quiet by default: third-party deprecation warnings filtered, one progress bar per stage; --verbose shows all."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from rlpost.console import quiet_third_party

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = str(ROOT / "recipes" / "quickstart.yaml")
SHORT = ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "data.task_options.max_operand=9",
         "data.task_options.num_heldout=20", "sft.max_steps=4", "sft.logging_steps=2", "grpo.max_steps=4",
         "grpo.logging_steps=1", "grpo.per_device_train_batch_size=16", "tracking.wandb=disabled"]


def test_third_party_deprecations_are_filtered_and_rlpost_warnings_stay():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        warnings.warn_explicit("old api", FutureWarning, "modeling_utils.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit("old api", DeprecationWarning, "x.py", 1, module="trl.trainer.grpo_trainer")
        warnings.warn_explicit("check your data", UserWarning, "x.py", 1, module="trl.trainer.grpo_trainer")
        warnings.warn_explicit("ours", FutureWarning, "pipeline.py", 1, module="rlpost.pipeline")
    assert sorted(str(w.message) for w in caught) == ["check your data", "ours"]


def _train(tmp_path, *flags):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
    cmd = [sys.executable, "-m", "rlpost.cli", "train", *flags, QUICKSTART, f"output_dir={tmp_path}", *SHORT]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, proc.stderr


@pytest.mark.slow
def test_quickstart_console_fits_a_screen_and_verbose_brings_everything_back(tmp_path):
    out, err = _train(tmp_path / "quiet")
    assert "Warning" not in err and "Running in WANDB offline mode" not in out and "{'loss'" not in out + err
    assert "Tokenizing train dataset" not in err and "Step 1" not in out  # no map bars, no completion tables
    bars = [line for line in err.replace("\r", "\n").splitlines() if "/4 [" in line]
    assert bars, "each stage shows its progress bar"
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) <= 12, out
    assert any("stage 0 (sft)" in line for line in lines) and any("stage 1 (grpo)" in line for line in lines)
    assert "held-out accuracy: before training:" in out and f"results: {tmp_path / 'quiet'}" in out

    out, err = _train(tmp_path / "loud", "--verbose")
    assert "{'loss'" in out + err and "Step 1" in out  # TRL's logged dicts and its completions table
