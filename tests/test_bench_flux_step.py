"""benchmarks/bench_flux_step.py (issue 3 item 10's GPU measurement) on its tiny preset on CPU, so the script a GPU
session runs does not rot: counted FLOPs are wired to the real forward, and the training iteration samples what
E-GRPO should."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_flux_step  # noqa: E402


def test_tiny_preset_counts_flops_and_trains(tmp_path):
    out = bench_flux_step.main(["--preset", "tiny", "--device", "cpu", "--resolution", "32", "--batch", "2",
                                "--warmup", "0", "--repeats", "1", "--iterations", "1", "--steps", "4",
                                "--active-steps", "2", "--generations", "2", "--json", str(tmp_path / "r.json")])
    forward = out["forward"]
    tokens = forward["image_tokens"] + forward["text_tokens"]
    assert forward["image_tokens"] == (32 // 8 // 2) ** 2
    # Lower bound: every linear layer of the single-stream blocks sees every token (2 FLOPs per multiply-add).
    model = bench_flux_step.build_model(bench_flux_step.PRESETS["tiny"], torch.device("cpu"), torch.float32)
    single = sum(m.in_features * m.out_features for m in model.single_transformer_blocks.modules()
                 if isinstance(m, torch.nn.Linear))
    assert forward["flops_per_forward"] >= 2 * single * tokens * 2
    assert forward["samples_per_s"] > 0 and out["peak_tflops"] is None and "mfu" not in forward  # CPU: no peak
    train = out["train"]
    assert train["images_per_iteration"] == 2 * 2  # E-GRPO: G images per active step
    assert train["flops_per_iteration"] > forward["flops_per_forward"] and train["s_per_iteration"] > 0
    assert (tmp_path / "r.json").is_file()
