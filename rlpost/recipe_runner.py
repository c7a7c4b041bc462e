"""What the LM pipeline (:mod:`rlpost.pipeline`) and flow recipes (:mod:`rlpost.flow_pipeline`) share.

One place for the pieces both recipe runners need: the process state set up before any trainer exists, the recipe's
built-in task, its local data files, the held-out split, the TRL config of an LM stage (built identically by the
validation pass in :mod:`rlpost.recipe_check` and by the stage that trains), metrics rows, and console messages.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "build_task",
    "default_report_to",
    "flow_stage_config",
    "heldout_split",
    "init_process_state",
    "is_main_process",
    "load_data_files",
    "load_model",
    "log",
    "stage_config",
]

# Which split of a built-in task feeds each trainer by default.
DEFAULT_SPLIT = {"sft": "sft", "grpo": "rl", "flow_grpo": "train"}

# Checkpointing of LM stages unless a stage's args say otherwise: keep the latest checkpoint only, written every
# tenth of the stage (transformers reads a save_steps below 1 as a fraction of max_steps), so a killed stage resumes
# from at most a tenth of a stage back (`resume: true`) instead of from the stage's start.
DEFAULT_SAVE = {"save_strategy": "steps", "save_steps": 0.1, "save_total_limit": 1}


def init_process_state(cpu: bool | None = None):
    """The process-wide ``PartialState``, initialized the one way rlpost's trainers expect.

    ``PartialState`` is a singleton that its first caller configures, and every ``TrainingArguments`` touches it. It
    must say ``cpu=True`` when there is no GPU: under a DeepSpeed launch on CPU ``cpu=False`` lets DeepSpeed open a
    process group while accelerate reports rank 0 of 1 on every process, and accelerate and DeepSpeed then disagree
    on the world size. ``cpu`` None means "no CUDA device"; the trainers' ``use_cpu`` must match it.
    """
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available() if cpu is None else cpu)


def is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def log(message: str) -> None:
    """One ``[rlpost] ...`` line on the main process (what a user reads between progress bars)."""
    if is_main_process():
        print(f"[rlpost] {message}", flush=True)


def build_task(recipe) -> Any:
    """The recipe's built-in task (``data.task`` with ``data.task_options``), or None."""
    if recipe.data.task is None:
        return None
    from rlpost.envs import TASKS

    return TASKS[recipe.data.task](**recipe.data.task_options)


def load_data_files(files: list[str]):
    """Local json/jsonl/csv/parquet files as one ``datasets.Dataset`` (all files must share one format)."""
    from datasets import load_dataset

    suffix = Path(files[0]).suffix.lstrip(".")
    kind = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}.get(suffix)
    if kind is None:
        raise ValueError(f"Unsupported data file type {suffix!r} ({files[0]}); use json, jsonl, csv or parquet.")
    missing = [f for f in files if not Path(f).exists()]
    if missing:
        raise FileNotFoundError(f"Data files not found: {missing}.")
    return load_dataset(kind, data_files=files, split="train")


def heldout_split(recipe, task):
    """The held-out data exact-match evaluation reads (``prompt`` and ``answer`` columns): the task's ``heldout``
    split or ``data.heldout_files``, cut to ``eval.max_items``; None when the recipe has neither."""
    if task is not None:
        data = task.split("heldout")
    elif recipe.data.heldout_files:
        data = load_data_files(recipe.data.heldout_files)
    else:
        return None
    if recipe.eval.max_items is not None:
        data = data.select(range(min(recipe.eval.max_items, len(data))))
    for column in ("prompt", "answer"):
        if column not in data.column_names:
            raise ValueError(f"Held-out data needs a {column!r} column for exact-match evaluation; has {data.column_names}.")
    return data


def default_report_to(recipe) -> list[str]:
    """TRL's ``report_to`` for the recipe, without touching the environment (see
    :func:`rlpost.logging.configure_wandb`, which the run itself calls)."""
    if recipe.tracking.wandb == "disabled" or os.environ.get("WANDB_MODE") == "disabled":
        return []
    return ["wandb"]


def stage_config(recipe, index: int, stage, report_to: list[str], verbose: bool = False):
    """The TRL / rlpost config of LM stage ``index``: the pipeline's defaults, then the stage's ``args``.

    Constructing it runs TRL's own ``__post_init__`` checks (and rlpost's: the advantage options); nothing is written.
    Defaults: CPU when there is no GPU, bf16 where supported, logging every 10 steps, a progress bar, checkpoints as
    :data:`DEFAULT_SAVE`, and for GRPO the completions table (wandb and ``<stage>/completions/*.parquet``) printed
    to the console only when ``verbose``.
    """
    from rlpost.config import trainer_config_class

    defaults: dict[str, Any] = dict(
        output_dir=str(Path(recipe.output_dir) / f"{index}-{stage.trainer}"),
        seed=recipe.seed,
        data_seed=recipe.seed,
        report_to=report_to,
        run_name=f"{recipe.name}-{index}-{stage.trainer}",
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        logging_steps=10,
        disable_tqdm=False,  # transformers turns the bar off when its log level is above WARNING (quiet mode)
        **DEFAULT_SAVE,
    )
    if stage.trainer == "grpo":
        # The completions table (prompt, completion, per-reward scores, the advantage actually used) goes to wandb
        # and to <stage>/completions/*.parquet at every logging step; TRL's rich console copy of it only with
        # --verbose (num_completions_to_print 0 keeps the files and wandb table, prints nothing).
        defaults.update(log_completions=True)
        if "log_completions" not in stage.args:  # a recipe asking for log_completions gets TRL's console table
            defaults["num_completions_to_print"] = 2 if verbose else 0
        if stage.recycling is not None:
            # The recycling stream reshuffles the base data each epoch itself; TRL's buffered shuffle would draw
            # ~1000 prompts ahead and delay recycled ones by as much (rlpost.envs.recycling).
            defaults["shuffle_dataset"] = False
    return trainer_config_class(stage.trainer)(**{**defaults, **stage.args})


def flow_stage_config(recipe):
    """The :class:`~rlpost.trainers.flow_grpo.FlowGRPOConfig` of a flow recipe's one ``flow_grpo`` stage: its
    ``args`` over the recipe's ``output_dir``, ``seed``, tracking and ``resume``. ValueError names the problem."""
    import dataclasses

    from rlpost.trainers.flow_grpo import FlowGRPOConfig

    kwargs = dict(recipe.stages[0].args)
    kwargs.setdefault("output_dir", recipe.output_dir)
    kwargs.setdefault("seed", recipe.seed)
    kwargs.setdefault("report_to", "none" if recipe.tracking.wandb == "disabled" else "wandb")
    if "resume" in {f.name for f in dataclasses.fields(FlowGRPOConfig)}:
        kwargs.setdefault("resume", recipe.resume)
    elif recipe.resume:
        raise ValueError("resume: flow recipes cannot resume in this version (FlowGRPOConfig has no resume); "
                         "remove resume=true, or rerun from the start.")
    return FlowGRPOConfig(**kwargs)


def load_model(spec, corpus: list[str] | None = None):
    """``(tokenizer, causal LM)`` for a recipe's model spec (:class:`rlpost.config.ModelSpec`): ``tiny:`` builds a
    random model with a tokenizer trained on ``corpus``; a folder or hub id loads both (safetensors)."""
    from rlpost.models import load_causal_lm, load_tokenizer

    if spec.name_or_path.startswith("tiny:"):
        tokenizer = load_tokenizer(spec.name_or_path, vocab_size=spec.tokenizer_vocab_size, corpus=corpus)
        model = load_causal_lm(
            spec.name_or_path, tokenizer=tokenizer, hidden_size=spec.hidden_size, num_layers=spec.num_layers,
            num_heads=spec.num_heads, seed=spec.seed,
        )
    else:
        tokenizer = load_tokenizer(spec.name_or_path, trust_remote_code=spec.trust_remote_code)
        model = load_causal_lm(spec.name_or_path, trust_remote_code=spec.trust_remote_code, torch_dtype=spec.torch_dtype)
    return tokenizer, model
