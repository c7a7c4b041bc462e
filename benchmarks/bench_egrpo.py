"""E-GRPO vs Flow-GRPO-style vs DanceGRPO-style training on one tiny FLUX model: time per iteration and reward gain
per wall-second; plus batched vs per-timestep training throughput.

All three runs share the model initialisation, prompts, group size, sampling grid, reward (``prompt_color``), optimizer
and seed; only ``mode`` differs (and with it the mode defaults: a, advantage std, trained steps, optimizer steps).
The reward is measured the same way for every run, by a deterministic ODE sampler on fixed noise
(:meth:`FlowGRPOTrainer.sample`), before training and after, so the gain is not biased by each mode's own rollouts.

Targets (issue 3): E-GRPO ≤ 0.5× Flow-GRPO's time per iteration at no lower reward gain per second; batched training
≥ 1.5× the per-timestep loop's throughput.

Usage (CPU, 2 cores: about 3-4 minutes with the defaults; run it once, not in CI)::

    OMP_NUM_THREADS=1 python benchmarks/bench_egrpo.py [--iterations 40] [--steps 16] [--generations 8]
        [--prompts-per-step 2] [--hidden 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from rlpost.models.flow import LatentRGBDecoder, RandomPromptEncoder, tiny_flow_transformer
from rlpost.rewards.image import PromptColor
from rlpost.trainers.flow_grpo import FlowGRPOConfig, FlowGRPOTrainer

PROMPTS = ["a red square", "a blue square", "a green square", "a yellow square"]
EVAL_PROMPTS = PROMPTS * 4  # 16 deterministic samples


def make_trainer(mode: str, args: argparse.Namespace, **overrides) -> FlowGRPOTrainer:
    config = FlowGRPOConfig(
        output_dir=f"/tmp/bench_egrpo_{mode}", mode=mode, max_steps=args.iterations, seed=0, use_cpu=True,
        num_inference_steps=args.steps, resolution=8 * args.latent, num_generations=args.generations,
        prompts_per_step=args.prompts_per_step, num_active_steps=args.steps // 2, learning_rate=args.lr,
        clip_range=args.clip, save_model=False, **overrides,
    )
    model = tiny_flow_transformer("flux", seed=0, hidden_size=args.hidden, num_heads=2)
    return FlowGRPOTrainer(model, [PromptColor()], config, prompt_encoder=RandomPromptEncoder(8, 32, 32, seed=0),
                           decoder=LatentRGBDecoder(4, seed=0), prompts=PROMPTS)


def eval_reward(trainer: FlowGRPOTrainer) -> float:
    images = trainer.sample(EVAL_PROMPTS, seed=123)
    scores = PromptColor()({"image": list(images), "prompt": EVAL_PROMPTS}).scores
    return sum(scores) / len(scores)


def run_mode(mode: str, args: argparse.Namespace) -> dict:
    trainer = make_trainer(mode, args)
    before = eval_reward(trainer)
    start = time.perf_counter()
    rows = [trainer.step() for _ in range(args.iterations)]
    wall = time.perf_counter() - start
    after = eval_reward(trainer)
    return {
        "mode": mode, "reward_before": before, "reward_after": after, "gain": after - before, "wall_s": wall,
        "s_per_iteration": wall / args.iterations, "gain_per_s": (after - before) / wall,
        "rollout_s": sum(r["time/rollout_s"] for r in rows) / len(rows),
        "train_s": sum(r["time/train_s"] for r in rows) / len(rows),
        "trained_steps": list(zip(trainer.last_rollout.slot_index, trainer.last_rollout.slot_merge)),
    }


def training_throughput(args: argparse.Namespace, repeats: int = 5) -> dict:
    """Seconds per training pass (loss + backward, no rollout) over the same Flow-GRPO rollout: one batched forward
    over all (trajectory, timestep) pairs vs one forward/backward per timestep."""
    out = {}
    for batched in (True, False):
        trainer = make_trainer("flow_grpo", args, batched_forward=batched)
        rollout = trainer.rollout(PROMPTS[: args.prompts_per_step])
        advantages = torch.linspace(-1, 1, rollout.latents.shape[0])
        slots = list(range(len(rollout.slot_index)))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            if batched:
                trainer.compute_loss(rollout, advantages, slots)[0].backward()
            else:
                for s in slots:
                    (trainer.compute_loss(rollout, advantages, [s])[0] / len(slots)).backward()
            times.append(time.perf_counter() - start)
            trainer.optimizer.zero_grad()
        pairs = rollout.x_out.shape[0]
        best = min(times[1:]) if repeats > 1 else times[0]  # first pass warms up allocators
        out["batched" if batched else "per_timestep"] = {"s_per_pass": best, "pairs_per_s": pairs / best}
    out["speedup"] = out["per_timestep"]["s_per_pass"] / out["batched"]["s_per_pass"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--steps", type=int, default=16, help="sampling steps T")
    parser.add_argument("--generations", type=int, default=8, help="group size G")
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--latent", type=int, default=8, help="latent height = width")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clip", type=float, default=1e-2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    results = {"config": vars(args), "runs": [run_mode(m, args) for m in ("e_grpo", "flow_grpo", "dance_grpo")]}
    by_mode = {r["mode"]: r for r in results["runs"]}
    flow = by_mode["flow_grpo"]
    for r in results["runs"]:
        r["time_ratio_vs_flow_grpo"] = r["s_per_iteration"] / flow["s_per_iteration"]
        r["gain_per_s_ratio_vs_flow_grpo"] = (r["gain_per_s"] / flow["gain_per_s"]) if flow["gain_per_s"] else None
    results["training_throughput"] = training_throughput(args)

    print(f"{'mode':<11} {'s/iter':>7} {'rollout':>8} {'train':>7} {'before':>8} {'after':>8} {'gain/s':>8} "
          f"{'time x':>7} {'gain/s x':>8}")
    for r in results["runs"]:
        ratio = r["gain_per_s_ratio_vs_flow_grpo"]
        print(f"{r['mode']:<11} {r['s_per_iteration']:7.3f} {r['rollout_s']:8.3f} {r['train_s']:7.3f} "
              f"{r['reward_before']:8.4f} {r['reward_after']:8.4f} {r['gain_per_s']:8.5f} "
              f"{r['time_ratio_vs_flow_grpo']:7.2f} {'n/a' if ratio is None else f'{ratio:8.2f}'}")
    tp = results["training_throughput"]
    print(f"training pass over one Flow-GRPO rollout: batched {tp['batched']['s_per_pass']:.4f} s, per-timestep "
          f"{tp['per_timestep']['s_per_pass']:.4f} s -> {tp['speedup']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
