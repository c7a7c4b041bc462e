"""UCPG vs the weighted sum of the same rewards on the shapes editing env, with an equal-time supervised control.

    python benchmarks/bench_ucpg.py                      # 3 seeds, the settings of recipes/thinkrl_edit/tiny.yaml
    python benchmarks/bench_ucpg.py --seeds 0 1 --iterations 40

For each seed: one supervised flow-matching warm start of the tiny Qwen-Image-Edit-style editor
(:func:`rlpost.models.flow_edit.pretrain_editor`), then three arms from that same checkpoint:

- ``ucpg``: Flow-GRPO with checklist + consistency + quality and ``advantage: ucpg`` (one column per reward);
- ``weighted_sum``: the same, with ``advantage: grpo`` on the sum of the three rewards (weights 1, per-group z-score);
- ``sft_more``: more supervised warm start for the wall time the ``ucpg`` arm took (the equal-compute control).

Every arm is evaluated on the held-out tasks with the deterministic ODE sampler (``trainer.sample``, seed 0), before
and after. Prints one row per (seed, arm) and the mean gains; ``--json`` writes them too. Runs are deterministic on CPU
for a given seed (wall-time matching makes the control's step count vary slightly).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlpost.envs.shapes_edit import ShapesChecklist, ShapesConsistency, ShapesEditTask, ShapesQuality  # noqa: E402
from rlpost.models.flow import tiny_flow_transformer  # noqa: E402
from rlpost.models.flow_edit import PixelCodec, WordPromptEncoder, pretrain_editor  # noqa: E402
from rlpost.trainers.flow_grpo import FlowGRPOConfig, FlowGRPOTrainer  # noqa: E402

DIMENSIONS = ("shapes_checklist", "shapes_consistency", "shapes_quality")


def rewards():
    return [ShapesChecklist(), ShapesConsistency(), ShapesQuality()]


def make_trainer(model, train, seed, advantage, opts, output_dir="/tmp/rlpost_bench_ucpg"):
    args = FlowGRPOConfig(
        output_dir=output_dir, mode="flow_grpo", adapter="qwen_image_edit", seed=seed, max_steps=opts.iterations,
        num_inference_steps=10, shift=1.0, noise_level=opts.noise_level, resolution=12, vae_scale_factor=1,
        num_generations=opts.num_generations, prompts_per_step=opts.prompts_per_step, advantage=advantage,
        timestep_fraction=opts.timestep_fraction, learning_rate=opts.learning_rate, clip_range=1e-2,
        weight_decay=0.0, beta=opts.beta, use_cpu=True, save_model=False,
        advantage_options={"score": opts.ucpg_score} if advantage == "ucpg" else {},
    )
    return FlowGRPOTrainer(model, rewards(), args, prompt_encoder=WordPromptEncoder(32), decoder=PixelCodec.decode,
                           prompts=train, image_encoder=PixelCodec.encode)


def evaluate(trainer, records):
    """Mean of each reward dimension on ``records``, images from the deterministic ODE sampler."""
    images = trainer.sample(records, seed=0)
    batch = {"image": list(images), "prompt": [r["prompt"] for r in records],
             "source_image": [r["source_image"] for r in records], "task": [r["task"] for r in records]}
    out = {}
    for module in rewards():
        scores = module(batch, list(range(len(records)))).scores
        out[module.name] = sum(scores) / len(scores)
    return out


def run_seed(seed, opts):
    task = ShapesEditTask(num_train=opts.num_train, num_heldout=opts.num_heldout, seed=0)
    train, heldout = task.split("train"), task.split("heldout")
    base = tiny_flow_transformer("qwen_image_edit", seed=seed)
    t0 = time.perf_counter()
    pretrain_editor(base, train, WordPromptEncoder(32), steps=opts.pretrain_steps, batch_size=32,
                    learning_rate=opts.pretrain_lr, seed=seed)
    pretrain_s = time.perf_counter() - t0
    rows = []
    before = evaluate(make_trainer(copy.deepcopy(base), train, seed, "grpo", opts), heldout)
    ucpg_s = None
    for arm, advantage in (("ucpg", "ucpg"), ("weighted_sum", "grpo")):
        trainer = make_trainer(copy.deepcopy(base), train, seed, advantage, opts)
        t0 = time.perf_counter()
        for _ in range(opts.iterations):
            trainer.step()
        seconds = time.perf_counter() - t0
        ucpg_s = seconds if arm == "ucpg" else ucpg_s
        rows.append(dict(seed=seed, arm=arm, seconds=seconds, before=before, after=evaluate(trainer, heldout)))
    # equal-time control: continue the supervised warm start for as long as the UCPG arm trained
    model = copy.deepcopy(base)
    t0, steps = time.perf_counter(), 0
    while time.perf_counter() - t0 < ucpg_s:
        pretrain_editor(model, train, WordPromptEncoder(32), steps=10, batch_size=32, learning_rate=opts.pretrain_lr,
                        seed=seed + 10_000 + steps)
        steps += 10
    control = make_trainer(model, train, seed, "grpo", opts)
    rows.append(dict(seed=seed, arm="sft_more", seconds=time.perf_counter() - t0, extra_steps=steps, before=before,
                     after=evaluate(control, heldout)))
    for row in rows:
        row["pretrain_s"] = pretrain_s
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--pretrain-steps", type=int, default=500)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--ucpg-score", default="zscore", choices=["position", "zscore"],
                        help="UCPG chain-member score (rlpost.algorithms.ucpg); zscore: spec §3.4 step 3")
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--noise-level", type=float, default=0.7)
    parser.add_argument("--beta", type=float, default=0.04, help="KL to the warm start, both RL arms")
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--timestep-fraction", type=float, default=0.5)
    parser.add_argument("--num-train", type=int, default=256)
    parser.add_argument("--num-heldout", type=int, default=128)
    parser.add_argument("--json", type=str, default=None, help="write the rows to this file")
    opts = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    print(f"settings: {vars(opts)}")
    header = "seed arm           time_s | " + " | ".join(f"{d[7:]:>11} before->after" for d in DIMENSIONS)
    print(header)
    all_rows = []
    for seed in opts.seeds:
        for row in run_seed(seed, opts):
            all_rows.append(row)
            cells = " | ".join(f"{row['before'][d]:.3f} -> {row['after'][d]:.3f} "
                               f"({row['after'][d] - row['before'][d]:+.3f})" for d in DIMENSIONS)
            print(f"{row['seed']:>4} {row['arm']:<13} {row['seconds']:6.1f} | {cells}", flush=True)
    print("\nmean gain over seeds (after - before), and after/before ratio:")
    for arm in ("ucpg", "weighted_sum", "sft_more"):
        rows = [r for r in all_rows if r["arm"] == arm]
        parts = []
        for d in DIMENSIONS:
            gain = sum(r["after"][d] - r["before"][d] for r in rows) / len(rows)
            ratio = sum(r["after"][d] / max(r["before"][d], 1e-9) for r in rows) / len(rows)
            parts.append(f"{d[7:]} {gain:+.3f} (x{ratio:.2f})")
        print(f"  {arm:<13} " + " | ".join(parts))
    gains = {arm: sum(r["after"]["shapes_checklist"] - r["before"]["shapes_checklist"] for r in all_rows
                      if r["arm"] == arm) / len(opts.seeds) for arm in ("ucpg", "weighted_sum", "sft_more")}
    if abs(gains["weighted_sum"]) > 1e-9:
        print(f"checklist gain ratio UCPG / weighted sum: {gains['ucpg'] / gains['weighted_sum']:.2f}")
    if opts.json:
        Path(opts.json).write_text(json.dumps(all_rows, indent=1))
    return all_rows


if __name__ == "__main__":
    main()
