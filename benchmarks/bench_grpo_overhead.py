"""rlpost.trainers.GRPOTrainer vs plain trl.GRPOTrainer: per-step time on the same model, data, seed and config.

    python benchmarks/bench_grpo_overhead.py [--steps 60] [--rounds 6] [--reward function|module]

Both trainers run in this one process, alternating in rounds (A B A B ...) so drift in machine load hits both.
Each step is timed from on_step_begin to on_step_end (generation + reward + advantage + loss + update); the first
few steps of each round are dropped as warm-up. Prints the median step time of each and the ratio rlpost / TRL
(target <= 1.03).

`--reward function` gives both trainers the same plain TRL reward function, isolating the trainer hooks (grouping,
advantage recomputation, logged-advantage replacement); `--reward module` gives rlpost the `exact_match` reward
module through `to_trl` (adds the reward-module failure policy and field handling) and TRL an equivalent function.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
import trl  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from rlpost.envs import AdditionTask  # noqa: E402
from rlpost.models import tiny_causal_lm, tiny_tokenizer  # noqa: E402
from rlpost.rewards import get_reward  # noqa: E402
from rlpost.trainers import GRPOConfig, GRPOTrainer  # noqa: E402


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def exact_match_function(completions, answer, **kwargs):
    return [float(c.strip() == a) for c, a in zip(completions, answer)]


def run(kind: str, steps: int, reward: str, task, tokenizer, out_dir: str) -> list[float]:
    model = tiny_causal_lm(tokenizer=tokenizer, hidden_size=64, num_layers=2, num_heads=4, seed=0)
    common = dict(
        output_dir=out_dir, use_cpu=True, bf16=False, report_to="none", max_steps=steps, logging_steps=10_000,
        save_strategy="no", per_device_train_batch_size=64, num_generations=8, max_completion_length=4,
        learning_rate=1e-3, beta=0.0, seed=0, disable_tqdm=True,
    )
    timer = StepTimer()
    if kind == "trl":
        trainer = trl.GRPOTrainer(model=model, reward_funcs=exact_match_function, args=trl.GRPOConfig(**common),
                                  train_dataset=task.rl_dataset(), processing_class=tokenizer, callbacks=[timer])
    else:
        reward_func = get_reward("exact_match", normalize=False) if reward == "module" else exact_match_function
        trainer = GRPOTrainer(model=model, reward_funcs=[reward_func], args=GRPOConfig(**common),
                              train_dataset=task.rl_dataset(), processing_class=tokenizer, callbacks=[timer])
    torch.manual_seed(0)
    trainer.train()
    return timer.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reward", choices=["function", "module"], default="function")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: no oversubscription)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    task = AdditionTask(max_operand=49, num_heldout=200)
    tokenizer = tiny_tokenizer(vocab_size=64, corpus=task.corpus())
    times = {"trl": [], "rlpost": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            for kind in ("trl", "rlpost") if round_index % 2 == 0 else ("rlpost", "trl"):
                times[kind] += run(kind, args.steps, args.reward, task, tokenizer, tmp)[args.warmup :]
    medians = {k: statistics.median(v) for k, v in times.items()}
    print(f"reward: {args.reward}; {args.rounds} rounds x {args.steps} steps (first {args.warmup} of each dropped)")
    print(f"{'trainer':<10}{'median step (ms)':>18}{'steps timed':>14}")
    for kind in ("trl", "rlpost"):
        print(f"{kind:<10}{medians[kind] * 1e3:>18.2f}{len(times[kind]):>14}")
    print(f"ratio rlpost / trl: {medians['rlpost'] / medians['trl']:.3f}  (target <= 1.03)")


if __name__ == "__main__":
    main()
