"""Run a recipe: load the model, evaluate, then run each training stage and evaluate again.

The stages of one recipe share one model: the SFT stage's weights are the GRPO stage's starting point. Each stage
writes its checkpoints under ``<output_dir>/<index>-<trainer>/``; with ``resume: true`` a finished stage is loaded
from its ``final/`` folder and an interrupted one continues from its last checkpoint (optimizer, scheduler, RNG and
data order included), so a killed run ends where an uninterrupted one would. Stages keep their latest checkpoint by
default (every tenth of the stage: :data:`rlpost.recipe_runner.DEFAULT_SAVE`); a stage's ``save_*`` args override it.

With ``model.lora`` the first stage wraps the model in peft LoRA adapters (``peft_config`` of TRL's trainers) and every
later stage keeps training that same adapter; each ``final/`` then holds the adapter (``adapter_config.json`` +
``adapter_model.safetensors``, loadable with ``PeftModel.from_pretrained(base, final_dir)``), not a full checkpoint,
plus the tokenizer and, for a ``tiny:`` base, a copy of that base in ``final/base_model/`` (see :func:`_save_final`);
``rlpost.models.load_causal_lm(final_dir)`` and ``rlpost eval --model final_dir`` load base + adapter.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import set_seed

from rlpost.config import Recipe, lora_config
from rlpost.logging import MetricsFileCallback, append_metrics, configure_wandb, truncate_metrics, write_report
from rlpost.recipe_runner import (
    DEFAULT_SPLIT,
    build_task,
    heldout_split,
    init_process_state,
    is_main_process,
    load_data_files,
    load_model,
    log,
    stage_config,
)

__all__ = ["load_model", "run_recipe"]

def run_recipe(recipe: Recipe, verbose: bool = False) -> dict:
    """Run every stage of ``recipe`` and return ``{"accuracy": {label: value}, "run_dir": ..., "world_size": ...}``.

    The validation pass (:func:`rlpost.recipe_check.check_recipe`) runs first, so a bad option fails before any
    model loads or file is written. ``verbose`` prints TRL's completion tables (see :func:`stage_config`).
    """
    from rlpost.recipe_check import check_recipe

    check_recipe(recipe)
    state = init_process_state()  # before any TrainingArguments: cpu= must match the trainers' use_cpu
    run_dir = Path(recipe.output_dir)
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
        if not recipe.resume:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    state.wait_for_everyone()
    set_seed(recipe.seed)
    if recipe.torch_threads is not None:
        torch.set_num_threads(recipe.torch_threads)
    report_to = configure_wandb(recipe.tracking.wandb, run_dir, recipe.tracking.project, recipe.name)

    with state.main_process_first():  # rank 0 builds the offline tiny model/tokenizer cache; the others read it
        task, tokenizer, model = _load(recipe)
    heldout = heldout_split(recipe, task)
    results: dict = {"accuracy": {}, "run_dir": str(run_dir)}
    results_path = run_dir / "results.json"
    if recipe.resume and results_path.exists():
        results = json.loads(results_path.read_text())

    def evaluate(label: str) -> None:
        if heldout is None or not recipe.eval.enabled or label in results["accuracy"]:
            return
        accuracy, correct = _evaluate(model, tokenizer, heldout, recipe, progress=verbose)
        results["accuracy"][label] = accuracy
        if state.is_main_process:
            log(f"held-out accuracy {label}: {accuracy:.3f} ({sum(correct)}/{len(correct)})")
            _append_items(run_dir, recipe, label, heldout, correct)
            append_metrics(run_dir, {"stage": f"eval: {label}", "step": 0, "eval/heldout_accuracy": accuracy})
            results_path.write_text(json.dumps(results, indent=2))

    evaluate("before training")
    for index, stage in enumerate(recipe.stages):
        label = f"after {stage.trainer.upper()}"
        repeats = sum(s.trainer == stage.trainer for s in recipe.stages[:index])
        label += f" #{repeats + 1}" if repeats else ""  # "after SFT", then "after SFT #2" for a second SFT stage
        stage_dir = run_dir / f"{index}-{stage.trainer}"
        final_dir = stage_dir / "final"
        if recipe.resume and _finished(final_dir, recipe):
            log(f"stage {index} ({stage.trainer}) already finished; loading {final_dir}")
            model = _load_finished(model, final_dir, recipe)
        else:
            model, accelerator = _train_stage(recipe, index, stage, stage_dir, model, tokenizer, task, report_to,
                                              verbose=verbose)
            # What the trainer actually ran on (accelerate's state is re-initialized by each TrainingArguments).
            results.update(world_size=accelerator.num_processes, distributed_type=accelerator.distributed_type.value)
            if state.is_main_process:
                _save_final(model, tokenizer, final_dir, recipe)
            state.wait_for_everyone()
        evaluate(label)

    if state.is_main_process and recipe.tracking.plots:
        plots = write_report(run_dir)
        log(f"plots: {len(plots)} PNG in {run_dir / 'plots'}")
    return results


def _load(recipe: Recipe):
    task = build_task(recipe)
    tokenizer, model = load_model(recipe.model, corpus=task.corpus() if task is not None else None)
    return task, tokenizer, model


def _save_final(model, tokenizer, final_dir: Path, recipe: Recipe) -> None:
    """The model (or its LoRA adapter) and tokenizer; with LoRA on a ``tiny:`` base also a copy of the base under
    ``final/base_model/``: a random-init base exists only in the local model cache, and ``load_causal_lm(final_dir)``
    (``rlpost eval --model``) needs the exact base the adapter was trained on. A hub or local base is not copied;
    the adapter names it in ``adapter_config.json`` (``base_model_name_or_path``)."""
    model.save_pretrained(final_dir)
    tokenizer.save_pretrained(final_dir)
    if recipe.model.lora is not None and recipe.model.name_or_path.startswith("tiny:"):
        from rlpost.models.factory import BASE_MODEL_DIR

        # LoRA leaves the base weights frozen, so the cached folder the base was loaded from is that base.
        shutil.copytree(model.get_base_model().name_or_path, final_dir / BASE_MODEL_DIR, dirs_exist_ok=True)


def _finished(final_dir: Path, recipe: Recipe) -> bool:
    marker = "adapter_config.json" if recipe.model.lora is not None else "config.json"
    return (final_dir / marker).exists()


def _load_finished(model, final_dir: Path, recipe: Recipe):
    """A finished stage's weights: the full model, or with LoRA its adapter on the current model (wrapping the base
    on the first stage, overwriting the adapter's weights on later ones)."""
    if recipe.model.lora is None:
        return type(model).from_pretrained(final_dir, use_safetensors=True)
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file

    if isinstance(model, PeftModel):
        set_peft_model_state_dict(model, load_file(final_dir / "adapter_model.safetensors"))
        return model
    return PeftModel.from_pretrained(model, final_dir, is_trainable=True)


def _peft_config(recipe: Recipe, model):
    """LoRA for the first stage; None once the model carries the adapter (later stages train the same one)."""
    if recipe.model.lora is None:
        return None
    from peft import PeftModel

    return None if isinstance(model, PeftModel) else lora_config(recipe.model.lora)


def _stage_dataset(recipe: Recipe, stage, task):
    if task is not None:
        return task.split(stage.split or DEFAULT_SPLIT[stage.trainer])
    return load_data_files(recipe.data.train_files)


def _train_stage(recipe, index, stage, stage_dir, model, tokenizer, task, report_to, verbose=False):
    args = stage_config(recipe, index, stage, report_to, verbose=verbose)
    dataset = _stage_dataset(recipe, stage, task)
    stage_name = f"{index}-{stage.trainer}"
    callbacks = [MetricsFileCallback(recipe.output_dir, stage_name)]
    if stage.trainer == "sft":
        from rlpost.trainers import SFTTrainer

        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks,
                             peft_config=_peft_config(recipe, model))
    else:
        from rlpost.rewards import build_rewards
        from rlpost.trainers import GRPOTrainer

        modules = build_rewards(stage.rewards)
        if stage.recycling is not None:
            modules, dataset = _with_recycling(stage.recycling, modules, dataset, recipe.seed)
        environment = {}
        if stage.environment is not None:
            from rlpost.envs import TOOL_ENVS

            environment["environment_factory"] = TOOL_ENVS[stage.environment.name](**stage.environment.options)
        if args.reward_weights is None and stage.rewards:  # TRL appends an environment's reward with weight 1
            args.reward_weights = [r.weight for r in stage.rewards]
        trainer = GRPOTrainer(
            model=model, reward_funcs=modules, args=args, train_dataset=dataset, processing_class=tokenizer,
            callbacks=callbacks, peft_config=_peft_config(recipe, model), **environment,
        )
    if not verbose:  # one bar per stage with the key metrics, not a printed dict per logging step (metrics.jsonl)
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        from rlpost.logging import CompactProgressCallback

        trainer.remove_callback(PrinterCallback)
        if not args.disable_tqdm:
            trainer.remove_callback(ProgressCallback)
            trainer.add_callback(CompactProgressCallback)
    checkpoint = last_complete_checkpoint(stage_dir) if recipe.resume else None
    if checkpoint is not None:
        step = int(checkpoint.name.rsplit("-", 1)[-1])
        if is_main_process():
            truncate_metrics(recipe.output_dir, stage_name, step)
        log(f"stage {index} ({stage.trainer}): resuming from {checkpoint}")
    log(f"stage {index} ({stage.trainer}): {args.max_steps if args.max_steps > 0 else 'all'} steps -> {stage_dir}")
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    log(f"stage {index} ({stage.trainer}) trained in {time.perf_counter() - started:.1f}s")
    model = trainer.accelerator.unwrap_model(trainer.model)
    if "ref" in getattr(model, "peft_config", {}):
        # TRL's GRPO with beta > 0 on an already-wrapped model adds a frozen "ref" copy of the adapter as the KL
        # reference. It is this stage's scaffolding: dropped so final/ holds only the trained adapter and a later
        # GRPO stage can add its own reference.
        model.delete_adapter("ref")
    return model, trainer.accelerator


def last_complete_checkpoint(stage_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` of a stage that was written to the end, or None.

    Trainer writes a checkpoint's ``trainer_state.json`` last, so a run killed while saving leaves a folder without
    a readable one; resuming skips it and takes the checkpoint before (``save_total_limit`` deletes the older one
    only after the newer one is complete).
    """
    if not stage_dir.is_dir():
        return None
    complete = []
    for folder in stage_dir.glob("checkpoint-*"):
        suffix = folder.name.rsplit("-", 1)[-1]
        try:
            json.loads((folder / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        if suffix.isdigit():
            complete.append((int(suffix), folder))
    return max(complete)[1] if complete else None


def _with_recycling(spec, modules, dataset, seed: int):
    """MDAgent2's recycling on a GRPO stage: the deciding reward records failures into a buffer, and the stage's
    data becomes an endless stream of base prompts (reshuffled each epoch) mixed with recycled ones."""
    from rlpost.envs.recycling import DEFAULT_TEMPLATE, RecyclingBuffer, recycling_dataset

    buffer = RecyclingBuffer(
        capacity=spec.capacity, threshold=spec.threshold, mix_ratio=spec.mix_ratio,
        template=spec.template if spec.template is not None else DEFAULT_TEMPLATE, group_reduce=spec.group_reduce,
        prompt_key=spec.prompt_key, context_keys=spec.context_keys, max_context_chars=spec.max_context_chars,
    )
    names = [m.name for m in modules]
    index = names.index(spec.reward) if spec.reward is not None else 0
    modules = [buffer.wrap(m) if i == index else m for i, m in enumerate(modules)]
    return modules, recycling_dataset(dataset, buffer, seed=seed)


def _evaluate(model, tokenizer, heldout, recipe, progress: bool = False):
    from rlpost.eval.generation import exact_match_accuracy

    return exact_match_accuracy(
        model, tokenizer, heldout["prompt"], heldout["answer"], max_new_tokens=recipe.eval.max_new_tokens,
        batch_size=recipe.eval.batch_size, progress=progress,
    )


def _append_items(run_dir: Path, recipe: Recipe, label: str, heldout, correct: list[bool]) -> None:
    """Per-item correctness in Benchmark²'s (benchmark, model, item, correct) format, one 'model' per checkpoint,
    so ``rlpost bench-quality --items`` can audit the evaluation built from this run."""
    from rlpost.eval.tables import read_item_correctness, write_item_correctness

    items = heldout["item"] if "item" in heldout.column_names else [str(i) for i in range(len(correct))]
    benchmark = recipe.data.task or "heldout"
    model = f"{recipe.name}:{label.replace(' ', '_')}"
    path = run_dir / "item_correctness.csv"
    rows = [tuple(r) for r in read_item_correctness(path).itertuples(index=False)] if path.exists() else []
    rows = [r for r in rows if r[1] != model]  # a resumed run re-evaluates a label: replace, never duplicate
    rows += [(benchmark, model, str(item), bool(ok)) for item, ok in zip(items, correct)]
    write_item_correctness(rows, path)
