"""Equal-wall-time controls for a recipe's GRPO stage: the baselines a practitioner would try instead of RL.

A two-stage recipe (SFT warm-up, then GRPO) is run once; then, from the same SFT checkpoint and for the same
wall-clock time the GRPO stage took in that run (its ``train_runtime``), two controls:

- **more SFT**: stage 0's SFT continued on the same demonstrations with the same arguments, for
  ``GRPO seconds / SFT seconds-per-step`` steps (both measured in the same run; :func:`more_sft_control`);
- **rejection-sampling SFT** (RS-SFT; RAFT, arXiv 2304.06767; ReST-EM, arXiv 2312.06585; :func:`rejection_sampling_sft`):
  rounds of *sample* (``model.generate`` on the GRPO stage's prompts, with GRPO's temperature, top-p/top-k and
  completion length, ``samples_per_prompt`` completions each), *filter* (keep the completions the GRPO stage's own
  rewards accept) and *train* (rlpost's SFT core, i.e. TRL's ``SFTTrainer`` with the SFT stage's arguments and loss,
  on the kept pairs), each round sampling from the model the previous one trained, until GRPO's time is spent. Like
  GRPO it sees only the prompts and the checker, never the teacher's demonstrations.

:func:`quickstart_controls` runs all three arms for one seed; ``benchmarks/quickstart_control.py`` and
``tests/test_learning.py`` both call it, so the benchmark's table and the test's assertions come from one code path.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rlpost.config import Recipe, StageSpec, load_recipe, trainer_config_class
from rlpost.logging import read_metrics

__all__ = ["RSSFTOptions", "more_sft_control", "quickstart_controls", "rejection_sampling_sft", "sample_completions",
           "stage_runtime"]

QUIET = ["sft.disable_tqdm=true", "grpo.disable_tqdm=true", "tracking.wandb=disabled", "tracking.plots=false"]


@dataclass
class RSSFTOptions:
    """Rejection-sampling SFT. Every default is a choice of ours, documented here.

    Args:
        prompts_per_round: training prompts sampled per round (taken in a seeded shuffled order, cycling).
        samples_per_prompt: completions per prompt; None = the GRPO stage's ``num_generations`` (same group size).
        accept_reward: a completion is kept when the weighted sum of the GRPO stage's rewards reaches this
            (1.0: an ``exact_match`` of weight 1 accepts exactly the correct answers).
        unique: keep each accepted (prompt, completion) pair once per round (True): a prompt the model already
            solves every time then weighs no more than one it solves once in eight, which is where RS-SFT can fix
            the SFT teacher's mistakes. False keeps every accepted sample (RAFT's plain filter).
        epochs_per_round: passes of SFT over a round's kept pairs (capped by the time left).
    """

    prompts_per_round: int = 512
    samples_per_prompt: int | None = None
    accept_reward: float = 1.0
    unique: bool = True
    epochs_per_round: int = 1


def stage_runtime(run_dir: str | Path, stage: str) -> tuple[float, int]:
    """``(train_runtime seconds, steps)`` that stage ``stage`` (e.g. ``"1-grpo"``) logged in ``run_dir/metrics.jsonl``."""
    rows = [r for r in read_metrics(run_dir) if r["stage"] == stage and "train_runtime" in r]
    if not rows:
        raise ValueError(f"{run_dir}/metrics.jsonl has no train_runtime row for stage {stage!r}; did it finish?")
    return float(rows[-1]["train_runtime"]), int(rows[-1]["step"])


def more_sft_control(recipe_path: str | Path, overrides: list[str], seconds: float) -> tuple[float, int]:
    """Held-out accuracy after stage 0 (SFT) is continued for ``seconds`` of its own measured steps, and the steps.

    ``overrides`` must name the finished run's ``output_dir``: the run is reopened with ``resume=true``, so stage 0
    is loaded from its ``final/`` and the new SFT stage writes ``<output_dir>/1-sft``."""
    run = load_recipe(recipe_path, [*overrides, "resume=true"])
    sft_seconds, sft_steps = stage_runtime(run.output_dir, "0-sft")
    steps = max(1, round(seconds / (sft_seconds / sft_steps)))
    run.stages[1] = StageSpec(trainer="sft", args={**run.stages[0].args, "max_steps": steps}, split=run.stages[0].split)
    from rlpost.pipeline import run_recipe

    return run_recipe(run)["accuracy"]["after SFT #2"], steps


def sample_completions(model, tokenizer, prompts: list[str], num_samples: int, max_new_tokens: int,
                       temperature: float = 1.0, top_p: float = 1.0, top_k: int | None = 0, min_p: float | None = None,
                       batch_size: int = 64) -> list[list[str]]:
    """``num_samples`` sampled completions per prompt, as decoded text without special tokens: what GRPO's rewards
    see."""
    from rlpost.eval.generation import generate_texts

    texts = generate_texts(model, tokenizer, prompts, max_new_tokens, batch_size, do_sample=True,
                           num_return_sequences=num_samples, temperature=temperature, top_p=top_p, top_k=top_k or 0,
                           min_p=min_p)
    return [texts[i : i + num_samples] for i in range(0, len(texts), num_samples)]


def rejection_sampling_sft(recipe: Recipe, seconds: float, options: RSSFTOptions | None = None) -> dict:
    """RS-SFT from ``recipe``'s finished stage 0 for ``seconds`` of sampling + training time; returns the held-out
    accuracy and what the rounds did.

    ``recipe`` is the two-stage run (``stages[0]`` an SFT stage whose ``final/`` exists under ``output_dir``,
    ``stages[1]`` the GRPO stage whose prompts, rewards and sampling settings are used). The time counted is what
    GRPO's ``train_runtime`` counts: generation, reward scoring and optimizer steps, not building a trainer.
    Rounds write under ``<output_dir>/rs-sft/``; nothing is saved but ``summary`` numbers.
    """
    from datasets import Dataset

    from rlpost.eval.generation import exact_match_accuracy
    from rlpost.models import load_causal_lm, load_tokenizer
    from rlpost.recipe_runner import build_task, heldout_split, stage_config
    from rlpost.rewards import build_rewards
    from rlpost.rewards.base import WeightedSum
    from rlpost.trainers import SFTTrainer
    from transformers import set_seed

    options = options or RSSFTOptions()
    sft_stage, grpo_stage = recipe.stages[0], recipe.stages[1]
    if (sft_stage.trainer, grpo_stage.trainer) != ("sft", "grpo") or not recipe.data.task:
        raise ValueError("rejection_sampling_sft needs a recipe with a built-in data.task and stages [sft, grpo].")
    if recipe.model.lora is not None:
        raise ValueError("rejection_sampling_sft continues a full model; this recipe trains a LoRA adapter "
                         "(model.lora). Drop model.lora for the control run.")
    run_dir = Path(recipe.output_dir)
    final = run_dir / "0-sft" / "final"
    if not (final / "config.json").exists():
        raise FileNotFoundError(f"{final} holds no finished SFT stage; run the recipe first (quickstart_controls does).")
    set_seed(recipe.seed)
    if recipe.torch_threads is not None:
        torch.set_num_threads(recipe.torch_threads)
    task = build_task(recipe)
    tokenizer, model = load_tokenizer(str(final)), load_causal_lm(str(final))
    use_cpu = not torch.cuda.is_available()
    grpo_args = stage_config(recipe, 1, grpo_stage, report_to=[])  # its sampling settings, as the stage had them
    checker = WeightedSum(build_rewards(grpo_stage.rewards), [r.weight for r in grpo_stage.rewards])
    samples = options.samples_per_prompt or grpo_args.num_generations
    pool = task.split(grpo_stage.split or "rl")
    order = list(range(len(pool)))
    random.Random(recipe.seed).shuffle(order)

    sft_seconds, sft_steps = stage_runtime(run_dir, "0-sft")
    seconds_per_step = sft_seconds / sft_steps  # re-measured after each round
    spent, last_sampling, cursor = 0.0, 0.0, 0
    rounds: list[dict] = []
    while seconds - spent >= last_sampling + seconds_per_step:
        started = time.perf_counter()
        rows = [pool[order[(cursor + i) % len(order)]] for i in range(options.prompts_per_round)]
        cursor += options.prompts_per_round
        completions = sample_completions(
            model, tokenizer, [r["prompt"] for r in rows], samples, grpo_args.max_completion_length,
            temperature=grpo_args.temperature, top_p=grpo_args.top_p, top_k=grpo_args.top_k, min_p=grpo_args.min_p,
        )
        flat = [(row, text, group) for group, (row, texts) in enumerate(zip(rows, completions)) for text in texts]
        columns = {key: [row[key] for row, _, _ in flat] for key in pool.column_names}
        columns["completion"] = [text for _, text, _ in flat]
        scores = checker(columns, [group for _, _, group in flat]).scores
        kept = [(row["prompt"], text) for (row, text, _), s in zip(flat, scores) if s is not None and s >= options.accept_reward]
        if options.unique:
            kept = list(dict.fromkeys(kept))
        last_sampling = time.perf_counter() - started
        spent += last_sampling
        record = {"sampled": len(flat), "accepted": len(kept), "prompts_solved": len({p for p, _ in kept}),
                  "sampling_s": last_sampling, "sft_steps": 0, "sft_s": 0.0}
        batch = int(sft_stage.args.get("per_device_train_batch_size", 8))
        steps = min(math.ceil(len(kept) / batch) * options.epochs_per_round,
                    math.floor((seconds - spent) / seconds_per_step))
        if kept and steps >= 1:
            args = trainer_config_class("sft")(**{
                "output_dir": str(run_dir / "rs-sft" / f"round{len(rounds)}"), "seed": recipe.seed + len(rounds),
                "report_to": "none", "use_cpu": use_cpu, "bf16": False, "save_strategy": "no",
                **sft_stage.args, "max_steps": steps,
            })
            data = Dataset.from_list([{"prompt": p, "completion": c} for p, c in kept])
            trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
            runtime = trainer.train().metrics["train_runtime"]
            model = trainer.accelerator.unwrap_model(trainer.model)
            spent += runtime
            seconds_per_step = runtime / steps
            record.update(sft_steps=steps, sft_s=runtime)
        rounds.append(record)

    heldout = heldout_split(recipe, task)
    accuracy, _ = exact_match_accuracy(model, tokenizer, heldout["prompt"], heldout["answer"],
                                       max_new_tokens=recipe.eval.max_new_tokens, batch_size=recipe.eval.batch_size)
    return {"accuracy": accuracy, "seconds": spent, "budget_s": seconds, "options": asdict(options),
            "sampled": sum(r["sampled"] for r in rounds), "accepted": sum(r["accepted"] for r in rounds),
            "sft_steps": sum(r["sft_steps"] for r in rounds), "rounds": rounds}


def quickstart_controls(recipe_path: str | Path, seed: int, run_dir: str | Path, overrides: list[str] | None = None,
                        rs_options: RSSFTOptions | None = None) -> dict:
    """One seed of the learning claim: the recipe (SFT -> GRPO), then both equal-time controls from its SFT checkpoint.

    ``seed`` sets the recipe's ``seed`` and ``model.seed`` (init, data order, sampling); the held-out split is the
    task's own. Returns one row: accuracies before training, after SFT, after GRPO, after more SFT and after RS-SFT,
    the GRPO seconds both controls were given, and what each control did with them."""
    from rlpost.pipeline import run_recipe

    common = [f"output_dir={run_dir}", f"seed={seed}", f"model.seed={seed}", *QUIET, *(overrides or [])]
    recipe = load_recipe(recipe_path, common)
    accuracy = run_recipe(recipe)["accuracy"]
    grpo_seconds, _ = stage_runtime(run_dir, "1-grpo")
    rs = rejection_sampling_sft(recipe, grpo_seconds, rs_options)
    more_sft, extra_steps = more_sft_control(recipe_path, common, grpo_seconds)
    return {
        "seed": seed, "before": accuracy["before training"], "after_sft": accuracy["after SFT"],
        "after_grpo": accuracy["after GRPO"], "after_more_sft": more_sft, "after_rs_sft": rs["accuracy"],
        "grpo_seconds": grpo_seconds, "extra_sft_steps": extra_steps, "rs_sft_seconds": rs["seconds"],
        "rs_sft_rounds": len(rs["rounds"]), "rs_sft_steps": rs["sft_steps"], "rs_sampled": rs["sampled"],
        "rs_accepted": rs["accepted"],
    }
