"""E-GRPO vs Flow-GRPO-style vs DanceGRPO-style training on one tiny FLUX model: time per iteration and reward gain
per wall-second, at equal group size and at equal sampling budget; plus batched vs per-timestep training throughput.

All runs share the model initialisation, prompts, sampling grid, reward (``prompt_color``), optimizer and seed; the
first three differ only in ``mode`` (and with it the mode defaults: a, advantage std, trained steps, optimizer
steps). The reward is measured the same way for every run, by a deterministic ODE sampler on fixed noise
(:meth:`FlowGRPOTrainer.sample`), before training and after, so the gain is not biased by each mode's own rollouts.

Sampling budget. E-GRPO (arXiv 2601.00423 §3.3.2, Alg. 1; spec §1.5) samples G images per prompt *per active step*
(S·B·G per iteration: each a merged SDE branch off a shared ODE anchor, completed by ODE), Flow-GRPO G per prompt
(B·G). At equal G, E-GRPO therefore samples S times more images. The paper reports no E-GRPO vs Flow-GRPO cost
number (spec §1.7), so two equal-budget arms are added (see :func:`equal_budget_arms`): Flow-GRPO with S times more
prompts (E-GRPO's image count), and a small E-GRPO with the image count of Flow-GRPO. Every arm also reports its
per-sample transformer evaluations per iteration (NFE, rollout + training), since branches share the anchor and
images are not equally expensive.

Targets (issue 3): E-GRPO ≤ 0.5× Flow-GRPO's time per iteration at no lower reward gain per second; batched training
≥ 1.5× the per-timestep loop's throughput. The script prints, per comparison, whether the target is met.

Usage (CPU, 2 cores: about 4-6 minutes with the defaults; run it once, not in CI)::

    OMP_NUM_THREADS=1 python benchmarks/bench_egrpo.py [--iterations 40] [--steps 16] [--generations 8]
        [--prompts-per-step 2] [--hidden 32] [--small-generations 2 --small-active 4] [--no-equal-budget]
        [--json out.json]
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
    settings = dict(
        output_dir=f"/tmp/bench_egrpo_{mode}", mode=mode, max_steps=args.iterations, seed=0, use_cpu=True,
        num_inference_steps=args.steps, resolution=8 * args.latent, num_generations=args.generations,
        prompts_per_step=args.prompts_per_step, num_active_steps=args.steps // 2, learning_rate=args.lr,
        clip_range=args.clip, save_model=False,
    )
    settings.update(overrides)  # the equal-budget arms change group size, prompts or active steps
    config = FlowGRPOConfig(**settings)
    model = tiny_flow_transformer("flux", seed=0, hidden_size=args.hidden, num_heads=2)
    return FlowGRPOTrainer(model, [PromptColor()], config, prompt_encoder=RandomPromptEncoder(8, 32, 32, seed=0),
                           decoder=LatentRGBDecoder(4, seed=0), prompts=PROMPTS)


def _count_forwards(trainer: FlowGRPOTrainer) -> list[int]:
    """Wrap the trainer's transformer call to count per-sample forward evaluations (rollout + training, the NFE
    budget); returns the one-element counter the wrapper adds to."""
    counter, velocity = [0], trainer._velocity

    def counted(model, x, t, cond):
        counter[0] += x.shape[0]
        return velocity(model, x, t, cond)

    trainer._velocity = counted
    return counter


def eval_reward(trainer: FlowGRPOTrainer) -> float:
    images = trainer.sample(EVAL_PROMPTS, seed=123)
    scores = PromptColor()({"image": list(images), "prompt": EVAL_PROMPTS}).scores
    return sum(scores) / len(scores)


def run_mode(mode: str, args: argparse.Namespace, label: str | None = None, **overrides) -> dict:
    trainer = make_trainer(mode, args, **overrides)
    before = eval_reward(trainer)
    forwards = _count_forwards(trainer)  # after the evaluation sampler, so only training iterations count
    start = time.perf_counter()
    rows = [trainer.step() for _ in range(args.iterations)]
    wall = time.perf_counter() - start
    del trainer._velocity  # back to the class method: the evaluation sampler is not part of the budget
    after = eval_reward(trainer)
    return {
        "arm": label or mode, "mode": mode, "overrides": overrides,
        "reward_before": before, "reward_after": after, "gain": after - before, "wall_s": wall,
        "s_per_iteration": wall / args.iterations, "gain_per_s": (after - before) / wall,
        "rollout_s": sum(r["time/rollout_s"] for r in rows) / len(rows),
        "train_s": sum(r["time/train_s"] for r in rows) / len(rows),
        "images_per_iteration": int(trainer.last_rollout.latents.shape[0]),
        "forwards_per_iteration": forwards[0] / args.iterations,
        "optimizer_steps_per_iteration": len(trainer.last_rollout.slot_index)
        if trainer.args.optimizer_step_per_timestep else 1,
        "trained_steps": list(zip(trainer.last_rollout.slot_index, trainer.last_rollout.slot_merge)),
    }


def equal_budget_arms(args: argparse.Namespace) -> list[tuple[str, str, dict]]:
    """(label, mode, config overrides) of the arms that match E-GRPO's and Flow-GRPO's sampling budgets.

    E-GRPO samples G images per prompt *per active step* (S·B·G per iteration), Flow-GRPO G per prompt (B·G). Two
    ways to equalize the number of sampled images per iteration:
    - ``flow_grpo_xS_prompts``: Flow-GRPO with S times more prompts (S·B·G images, E-GRPO's budget);
    - ``e_grpo_small``: E-GRPO with G/S members per active step where that is >= 2; with the defaults (G = S = 8) it
      is not, so ``--small-active`` active steps × ``--small-generations`` members (4 × 2 = 8 = G images per prompt,
      Flow-GRPO's budget).
    """
    active = args.steps // 2
    arms = [("flow_grpo_x%d_prompts" % active, "flow_grpo", {"prompts_per_step": args.prompts_per_step * active})]
    per_step = args.generations // active
    if per_step >= 2 and per_step * active == args.generations:
        arms.append(("e_grpo_small", "e_grpo", {"num_generations": per_step}))
    else:
        arms.append(("e_grpo_small", "e_grpo", {"num_generations": args.small_generations,
                                                "num_active_steps": args.small_active}))
    return arms


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


def _compare(runs: dict, arm: str, reference: str, budget: str) -> dict:
    """Time-per-iteration and gain-per-second ratios of ``arm`` against ``reference``, and whether issue 3's target
    (time ratio <= 0.5 at no lower gain per second) holds."""
    a, r = runs[arm], runs[reference]
    time_ratio = a["s_per_iteration"] / r["s_per_iteration"]
    gain_ratio = a["gain_per_s"] / r["gain_per_s"] if r["gain_per_s"] > 0 else None
    return {"budget": budget, "arm": arm, "reference": reference, "time_ratio": time_ratio,
            "gain_per_s_ratio": gain_ratio, "images_ratio": a["images_per_iteration"] / r["images_per_iteration"],
            "forwards_ratio": a["forwards_per_iteration"] / r["forwards_per_iteration"],
            "time_target_met": time_ratio <= 0.5,
            "gain_target_met": a["gain_per_s"] >= r["gain_per_s"]}


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
    parser.add_argument("--small-generations", type=int, default=2,
                        help="e_grpo_small: members per active step when G/S < 2")
    parser.add_argument("--small-active", type=int, default=4, help="e_grpo_small: active steps when G/S < 2")
    parser.add_argument("--no-equal-budget", action="store_true", help="skip the equal-sampling-budget arms")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    arms = [(m, m, {}) for m in ("e_grpo", "flow_grpo", "dance_grpo")]
    if not args.no_equal_budget:
        arms += equal_budget_arms(args)
    runs = [run_mode(mode, args, label, **overrides) for label, mode, overrides in arms]
    results = {"config": vars(args), "runs": runs}
    by_arm = {r["arm"]: r for r in runs}
    flow = by_arm["flow_grpo"]
    for r in runs:
        r["time_ratio_vs_flow_grpo"] = r["s_per_iteration"] / flow["s_per_iteration"]
        r["gain_per_s_ratio_vs_flow_grpo"] = (r["gain_per_s"] / flow["gain_per_s"]) if flow["gain_per_s"] > 0 \
            else None
    comparisons = [_compare(by_arm, "e_grpo", "flow_grpo", "equal group size G (E-GRPO samples S x more images)")]
    if not args.no_equal_budget:
        big, small = arms[-2][0], arms[-1][0]
        comparisons += [_compare(by_arm, "e_grpo", big, "equal images per iteration (E-GRPO's S*B*G)"),
                        _compare(by_arm, small, "flow_grpo", "equal images per iteration (Flow-GRPO's B*G)")]
    results["comparisons"] = comparisons
    results["training_throughput"] = training_throughput(args)

    print(f"{'arm':<20} {'s/iter':>7} {'rollout':>8} {'train':>7} {'images':>6} {'NFE':>6} {'opt':>4} "
          f"{'before':>8} {'after':>8} {'gain/s':>8}")
    for r in runs:
        print(f"{r['arm']:<20} {r['s_per_iteration']:7.3f} {r['rollout_s']:8.3f} {r['train_s']:7.3f} "
              f"{r['images_per_iteration']:6d} {r['forwards_per_iteration']:6.0f} "
              f"{r['optimizer_steps_per_iteration']:4d} {r['reward_before']:8.4f} {r['reward_after']:8.4f} "
              f"{r['gain_per_s']:8.5f}")
    print("\nissue 3 target: E-GRPO <= 0.5x Flow-GRPO time per iteration, at no lower reward gain per second")
    for c in comparisons:
        gain = "n/a (reference gained nothing)" if c["gain_per_s_ratio"] is None else f"{c['gain_per_s_ratio']:.2f}x"
        verdict = "MET" if c["time_target_met"] and c["gain_target_met"] else "not met"
        print(f"- {c['budget']}: {c['arm']} vs {c['reference']}: images {c['images_ratio']:.2f}x, "
              f"NFE {c['forwards_ratio']:.2f}x, time/iter {c['time_ratio']:.2f}x, gain/s {gain} -> {verdict}")
    tp = results["training_throughput"]
    print(f"training pass over one Flow-GRPO rollout: batched {tp['batched']['s_per_pass']:.4f} s, per-timestep "
          f"{tp['per_timestep']['s_per_pass']:.4f} s -> {tp['speedup']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
