"""FlowGRPOTrainer under a 2-process DeepSpeed ZeRO-2 launch on CPU (issue 3 follow-up: every rank said rank 0)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ITERATIONS = 2

# Wraps FlowGRPOTrainer.step to record, per process and iteration, what the trainer believes about its rank and what it
# sampled; metrics.jsonl alone cannot show this because only the main process writes it. Each process appends to its
# own file (named by the launcher's RANK): two processes printing to one stdout pipe can interleave a line.
DRIVER = """
import json, os, sys
import torch
from rlpost.trainers import flow_grpo

_step = flow_grpo.FlowGRPOTrainer.step

def step(self):
    row = _step(self)
    a = self.accelerator
    info = json.dumps({
        "process_index": a.process_index, "num_processes": a.num_processes,
        "distributed_type": str(a.distributed_type), "dist_rank": torch.distributed.get_rank(),
        "dist_world": torch.distributed.get_world_size(), "engine": type(self.model).__name__,
        "prompts": self.last_rollout.prompts})
    with open(os.path.join(os.environ["RANKINFO_DIR"], "rank" + os.environ["RANK"] + ".jsonl"), "a") as f:
        f.write(info + "\\n")
    return row

flow_grpo.FlowGRPOTrainer.step = step
from rlpost.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    # The config's fixed port 29500 collides with any other 2-process job on the machine.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_deepspeed_zero2_e_grpo_ranks_differ(tmp_path):
    pytest.importorskip("deepspeed")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    run_dir = tmp_path / "run"
    info_dir = tmp_path / "rankinfo"
    info_dir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "RANKINFO_DIR": str(info_dir),
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "recipes" / "accelerate" / "zero2.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(_free_port()),
        str(driver), "train", str(ROOT / "recipes" / "e_grpo" / "tiny.yaml"),
        f"output_dir={run_dir}", f"stages.0.args.max_steps={ITERATIONS}", "stages.0.args.sample_images_every=0",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    infos = [json.loads(line) for path in sorted(info_dir.glob("rank*.jsonl"))
             for line in path.read_text().splitlines()]
    assert len(infos) == 2 * ITERATIONS, [p.name for p in info_dir.iterdir()]
    by_rank = {}
    for info in infos:
        # accelerate's view must match the process group DeepSpeed runs on (the bug: 0 of 1 on both processes).
        assert (info["process_index"], info["num_processes"]) == (info["dist_rank"], info["dist_world"])
        assert info["num_processes"] == 2
        assert info["distributed_type"] == "DistributedType.DEEPSPEED"  # not silently downgraded to gloo DDP
        assert info["engine"] == "DeepSpeedEngine"
        by_rank.setdefault(info["process_index"], []).append(info["prompts"])
    assert sorted(by_rank) == [0, 1]
    # Each rank seeds its prompt generator with seed + 1000 * rank, so the two draw different prompt sequences.
    assert by_rank[0] != by_rank[1]
    # Only the main process logs: one row per iteration, not one per process.
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == list(range(1, ITERATIONS + 1))


@pytest.mark.slow
def test_unbatched_per_iteration_updates_are_refused_under_deepspeed(tmp_path):
    """accelerate's DeepSpeed backward() also steps the engine, so one backward per timestep would silently become
    one optimizer step per timestep: the trainer refuses that combination with the fix in the message."""
    pytest.importorskip("deepspeed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "recipes" / "accelerate" / "zero2.yaml"),
        "--num_processes", "1", "--mixed_precision", "no", "--main_process_port", str(_free_port()),
        "-m", "rlpost.cli", "train", str(ROOT / "recipes" / "e_grpo" / "tiny.yaml"), f"output_dir={tmp_path / 'run'}",
        "stages.0.args.mode=flow_grpo", "stages.0.args.batched_forward=false", "stages.0.args.max_steps=1",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode != 0
    assert "batched_forward=False with optimizer_step_per_timestep=False is not supported under DeepSpeed" in (
        proc.stdout + proc.stderr)
