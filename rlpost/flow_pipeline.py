"""Flow recipes: YAML → the pieces a :class:`~rlpost.trainers.flow_grpo.FlowGRPOTrainer` needs → a training run.

A flow recipe has rlpost's recipe layout (:mod:`rlpost.config`) with one ``trainer: flow_grpo`` stage whose ``args``
are :class:`~rlpost.trainers.flow_grpo.FlowGRPOConfig` fields. :func:`run_flow_recipe` builds the transformer
(``tiny:flux`` / ``tiny:sd3`` / ``tiny:qwen_image_edit`` random-init, or a checkpoint), its prompt encoder, latent
decoder and (editing) image encoder, the reward modules, the prompts or task records, an optional supervised warm
start from the task, trains, and evaluates the rewards on the task's held-out split before and after.
``rlpost train`` routes recipes with a ``flow_grpo`` stage here; :mod:`rlpost.pipeline` runs the LM stages.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlpost.logging import append_metrics
from rlpost.models.flow import get_flow_adapter
from rlpost.recipe_runner import build_task, flow_stage_config
from rlpost.rewards import RewardModule, build_rewards
from rlpost.trainers.flow_grpo import FlowGRPOConfig, FlowGRPOTrainer, reward_batch

__all__ = ["FlowRun", "build_flow_run", "load_flow_recipe", "run_flow_recipe"]


def load_flow_recipe(path: str | Path, overrides: Sequence[str] | None = None):
    """Read and validate a flow recipe (rlpost's recipe layout with one ``flow_grpo`` stage) into
    ``(Recipe, FlowGRPOConfig)``; :func:`rlpost.config.load_recipe` checks every key and coerces the stage ``args``
    and ``reasoning.args`` to their dataclass field types."""
    from rlpost.config import load_recipe

    from rlpost.recipe_check import check_recipe

    recipe = load_recipe(path, list(overrides or []))
    check_recipe(recipe)  # the validation pass every recipe gets: rewards, advantage, config, resume
    if recipe.tracking.wandb == "online":
        os.environ.setdefault("WANDB_MODE", "online")  # an explicit WANDB_MODE still wins (rlpost.logging)
    return recipe, flow_stage_config(recipe)


def _recipe_rewards(recipe) -> list[RewardModule]:
    """The stage's reward modules; ``options.name`` renames an instance (two ``checklist`` rewards with different
    question prompts need distinct names for their metrics and UCPG columns)."""
    return build_rewards(recipe.stages[0].rewards)


def _recipe_prompts(recipe, args: FlowGRPOConfig, task: Any = None) -> list[str | dict[str, Any]]:
    """Inline prompts, ``data.train_files`` lines, and the records of ``data.task``'s training split (editing tasks
    give ``{"prompt", "source_image", "task", ...}`` records whose fields reach the rewards)."""
    prompts: list[str | dict[str, Any]] = list(args.prompts)
    for file in recipe.data.train_files:
        for line in Path(file).read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            record = json.loads(line) if line.startswith("{") else {"prompt": line}
            if isinstance(record.get("source_image"), str):  # editing data: keep the record, load its image
                record["source_image"] = _load_image(record["source_image"], Path(file).parent, args.resolution)
                prompts.append(record)
            else:
                prompts.append(record["prompt"])
    if task is not None:
        prompts.extend(task.split(recipe.stages[0].split or "train"))
    if not prompts:
        raise ValueError("the flow recipe has no prompts: set stages.0.args.prompts, data.train_files "
                         "(a .txt with one prompt per line, or .jsonl with a `prompt` field) or data.task.")
    return prompts


def _load_image(path: str, base: Path, resolution: int) -> Tensor:
    """A source image file (relative to its .jsonl) as [3, resolution, resolution] in [0, 1] (bicubic resize; the
    trainer samples one latent size per run, so a non-square source is stretched) [inferred preprocessing]."""
    from PIL import Image

    from rlpost.rewards.image import to_image_tensor

    file = Path(path) if Path(path).is_absolute() else base / path
    if not file.is_file():
        raise FileNotFoundError(f"source_image {str(file)!r} (from a data.train_files record) does not exist.")
    return to_image_tensor(Image.open(file).convert("RGB").resize((resolution, resolution), Image.BICUBIC))


def _edit_components(recipe, args: FlowGRPOConfig, model: Any, tiny: bool):
    """(prompt encoder, decoder, image encoder) for the ``qwen_image_edit`` adapter.

    Tiny: word-level prompt embeddings and pixel-space latents (``prompt_encoder: words``, ``decoder: pixel``). A
    checkpoint: Qwen-Image-Edit's own Qwen2.5-VL on instruction + source image, and its ``AutoencoderKLQwenImage``.
    With a reasoning loop the editor reads plans with the reflector's feedback appended, hence more words.
    """
    from rlpost.models.flow_edit import PixelCodec, QwenEditPromptEncoder, QwenImageVAECodec, WordPromptEncoder

    spec = recipe.model
    encoder_kind = args.prompt_encoder if args.prompt_encoder != "auto" else ("words" if tiny else "pipeline")
    if encoder_kind == "words":
        max_words = 24 if recipe.stages[0].reasoning is None else 96
        encoder = WordPromptEncoder(model.config.joint_attention_dim, max_words=max_words, seed=spec.seed)
    elif encoder_kind == "pipeline":
        from diffusers import QwenImageEditPipeline

        encoder = QwenEditPromptEncoder(QwenImageEditPipeline.from_pretrained(
            spec.name_or_path, transformer=None, vae=None, torch_dtype=_dtype(spec.torch_dtype)))
    else:
        raise ValueError(f"qwen_image_edit: prompt_encoder must be 'auto', 'words' or 'pipeline', got "
                         f"{encoder_kind!r}.")
    decoder_kind = args.decoder if args.decoder != "auto" else ("pixel" if tiny else "vae")
    if decoder_kind == "pixel":
        codec: Any = PixelCodec
    elif decoder_kind == "vae":
        from diffusers import AutoencoderKLQwenImage

        codec = QwenImageVAECodec(AutoencoderKLQwenImage.from_pretrained(spec.name_or_path, subfolder="vae",
                                                                         torch_dtype=_dtype(spec.torch_dtype)))
    else:
        raise ValueError(f"qwen_image_edit: decoder must be 'auto', 'pixel' or 'vae', got {decoder_kind!r}.")
    return encoder, codec.decode, codec.encode


def _dtype(name: str | None) -> Any:
    return getattr(torch, name) if isinstance(name, str) else name


def _pretrain_from_task(task: Any, model: Any, records: Sequence[Any], encoder: Any, image_encoder: Any, seed: int,
                        adapter: str) -> list[float]:
    """The task's supervised flow-matching warm start (``data.task_options.pretrain_steps`` > 0), before RL."""
    from rlpost.models.flow_edit import pretrain_editor

    steps = getattr(task, "pretrain_steps", 0) if task is not None else 0
    if steps <= 0:
        return []

    class _Codec:  # pretrain_editor encodes sources and targets with the trainer's image encoder
        encode = staticmethod(image_encoder)

    return pretrain_editor(model, [r for r in records if isinstance(r, Mapping)], encoder, _Codec, steps=steps,
                           batch_size=task.pretrain_batch_size, learning_rate=task.pretrain_learning_rate, seed=seed,
                           adapter=adapter)


def _heldout_eval(trainer: "FlowGRPOTrainer", task: Any, rewards: Sequence[RewardModule]) -> dict[str, float]:
    """Mean of every reward on the task's held-out split, images from the deterministic ODE sampler."""
    if task is None or not hasattr(task, "split"):
        return {}
    try:
        records = task.split("heldout")
    except ValueError:
        return {}
    images = trainer.sample(records, seed=0)
    batch = reward_batch(images, records)
    out = {}
    for module in rewards:
        scores = [s for s in module(batch, list(range(len(records)))).scores if s is not None]
        out[f"heldout/{module.name}"] = sum(scores) / max(1, len(scores))
    return out


def _reflector(spec: Any):
    """The reasoning loop's reflector from ``reasoning.reflector`` (see :class:`rlpost.config.ReasoningSpec`)."""
    from rlpost.trainers.reasoning_edit import JudgeReflector

    if spec is None:
        return None
    if spec == "shapes":
        from rlpost.envs.shapes_edit import ShapesJudge

        return JudgeReflector(ShapesJudge(), image_format="object")
    from rlpost.rewards.judges import build_judge

    return JudgeReflector(build_judge(dict(spec)), image_format="openai" if "base_url" in spec else "object")


def _build_reasoning(recipe, generator: FlowGRPOTrainer, task: Any, records: Sequence[Any]):
    """The planner (tiny random init with a tokenizer trained on the task's texts, or a checkpoint), the reflector
    and the :class:`~rlpost.trainers.reasoning_edit.ReasoningEditTrainer` around ``generator``; then the planner's
    supervised warm start. Returns ``(trainer, pretrain_losses)``."""
    from rlpost.recipe_runner import load_model
    from rlpost.trainers.reasoning_edit import ReasoningEditConfig, ReasoningEditTrainer, pretrain_planner

    spec = recipe.stages[0].reasoning
    tasks = [r for r in records if isinstance(r, Mapping)]
    if not tasks:
        raise ValueError("the reasoning loop needs prompt records with source images (data.task or .jsonl "
                         "train_files with source_image), not bare prompts.")
    corpus = list(task.corpus()) if hasattr(task, "corpus") else [r["prompt"] for r in tasks]
    tokenizer, planner = load_model(spec.planner, corpus=corpus)  # the corpus trains a tiny planner's tokenizer
    args = ReasoningEditConfig(**{"output_dir": str(generator.run_dir), "seed": recipe.seed, **spec.args})
    trainer = ReasoningEditTrainer(planner, tokenizer, generator, tasks, args, reflector=_reflector(spec.reflector))
    losses: list[float] = []
    if spec.pretrain_steps > 0:
        missing = [i for i, r in enumerate(tasks) if not isinstance(r.get(spec.pretrain_target), str)]
        if missing:
            raise ValueError(f"reasoning.pretrain_target {spec.pretrain_target!r} is not a text field of task record "
                             f"{missing[0]}; fields: {sorted(tasks[missing[0]])}. Set pretrain_target to the field "
                             "holding reference rewrites, or pretrain_steps: 0.")
        losses = pretrain_planner(trainer, tasks, [r[spec.pretrain_target] for r in tasks], spec.pretrain_steps,
                                  batch_size=spec.pretrain_batch_size, learning_rate=spec.pretrain_learning_rate,
                                  seed=recipe.seed)
    return trainer, losses


def _reasoning_eval(trainer: Any, task: Any, target: str) -> dict[str, float]:
    """The whole loop (greedy plans, ODE sampler, one reflection round) on the task's held-out split; ``plan_exact``
    compares greedy plans with the records' reference rewrites (field ``target``) where they have one."""
    try:
        records = task.split("heldout") if task is not None and hasattr(task, "split") else []
    except ValueError:
        records = []
    if not records:
        return {}
    result = trainer.evaluate(records, seed=0)
    out = {f"heldout_reasoning/{k.split('/', 1)[1]}": v for k, v in result.items() if k.startswith("rewards/")}
    exact = [p == r[target] for p, r in zip(result["plans"], records) if target in r]
    if exact:  # tasks with a reference rewrite: how often the greedy plan is exactly it
        out["heldout_reasoning/plan_exact"] = sum(exact) / len(exact)
    out["heldout_reasoning/regenerated_frac"] = result["regenerated"] / len(records)
    return out


@dataclasses.dataclass
class FlowRun:
    """Everything a flow recipe builds, warm starts done, before RL (see :func:`build_flow_run`)."""

    recipe: Any
    trainer: FlowGRPOTrainer  # the editor / generator's flow GRPO trainer
    reasoning: Any  # ReasoningEditTrainer around ``trainer`` when the stage has ``reasoning:``, else None
    task: Any
    rewards: list[RewardModule]
    pretrain_losses: list[float]  # the editor's supervised warm start
    planner_pretrain_losses: list[float]
    warm_records: list[Any]  # what the editor's warm start trained on (reference plans with a reasoning loop)
    prompt_encoder: Any
    image_encoder: Any

    def evaluate(self) -> dict[str, float]:
        """Held-out reward means: the editor on the raw instruction, and the whole loop when there is one."""
        spec = self.recipe.stages[0].reasoning
        loop = _reasoning_eval(self.reasoning, self.task, spec.pretrain_target) if spec is not None else {}
        return {**_heldout_eval(self.trainer, self.task, self.rewards), **loop}


def build_flow_run(path: str | Path, overrides: Sequence[str] | None = None) -> FlowRun:
    """Build everything a flow recipe names and run its supervised warm starts; no RL yet.

    ``model.name_or_path: tiny:flux`` (or ``tiny:sd3``) builds a tiny random transformer from ``model.hidden_size``,
    ``num_layers``, ``num_heads`` and ``seed``, with random prompt embeddings and the latent-RGB decoder; a local
    folder or hub id loads ``<path>/transformer`` and, for ``prompt_encoder``/``decoder`` "auto", the checkpoint's
    text encoders and VAE. ``tiny:qwen_image_edit`` (or ``adapter: qwen_image_edit`` with a checkpoint) builds an
    editor (:mod:`rlpost.models.flow_edit`): records from ``data.task`` (e.g. ``shapes_edit``) carry source images,
    the task's ``pretrain_steps`` run a supervised warm start first, and held-out reward means are measured before
    and after RL by :func:`run_flow_recipe`. A ``reasoning:`` block wraps the editor in ThinkRL-Edit's loop.
    """
    from rlpost.models import flow_edit as _flow_edit  # noqa: F401  (registers the qwen_image_edit adapter)
    from rlpost.models.flow import (
        LatentRGBDecoder,
        PipelinePromptEncoder,
        PrecomputedPromptEncoder,
        RandomPromptEncoder,
        VAEDecoder,
        load_flow_transformer,
    )

    recipe, args = load_flow_recipe(path, overrides)
    spec = recipe.model
    tiny = spec.name_or_path.startswith("tiny:")
    kind = spec.name_or_path.split(":", 1)[1] if tiny else args.adapter
    args.adapter = kind
    if tiny:
        model = load_flow_transformer(spec.name_or_path, seed=spec.seed, hidden_size=spec.hidden_size,
                                      num_layers=spec.num_layers, num_heads=spec.num_heads)
    else:
        model = load_flow_transformer(spec.name_or_path, kind=kind, torch_dtype=spec.torch_dtype)
    task = build_task(recipe)
    prompts = _recipe_prompts(recipe, args, task)
    image_encoder = None
    if kind == "qwen_image_edit":
        encoder, decoder, image_encoder = _edit_components(recipe, args, model, tiny)
    else:
        encoder_kind = args.prompt_encoder if args.prompt_encoder != "auto" else ("random" if tiny else "pipeline")
        if encoder_kind == "random":
            cfg = model.config
            encoder = RandomPromptEncoder(8, cfg.joint_attention_dim, cfg.pooled_projection_dim, seed=spec.seed)
        elif encoder_kind == "pipeline":
            from diffusers import DiffusionPipeline

            pipe = DiffusionPipeline.from_pretrained(spec.name_or_path, transformer=None, vae=None)
            encoder = PipelinePromptEncoder(pipe)
        else:
            encoder = PrecomputedPromptEncoder(encoder_kind)
        decoder_kind = args.decoder if args.decoder != "auto" else ("latent_rgb" if tiny else "vae")
        if decoder_kind == "latent_rgb":
            decoder = LatentRGBDecoder(get_flow_adapter(kind).latent_channels(model), seed=spec.seed)
        else:
            from diffusers import AutoencoderKL

            decoder = VAEDecoder(AutoencoderKL.from_pretrained(spec.name_or_path, subfolder="vae"))
    size = getattr(task, "image_size", None)
    if size is not None and args.decoder in ("auto", "pixel") and tiny and args.resolution != size * \
            args.vae_scale_factor:
        raise ValueError(f"data.task images are {size}x{size} px but resolution / vae_scale_factor = "
                         f"{args.resolution} / {args.vae_scale_factor}: set resolution: {size} and "
                         "vae_scale_factor: 1 for pixel-space latents.")
    reasoning_spec = recipe.stages[0].reasoning
    warm_records = prompts
    if reasoning_spec is not None:  # the editor will be conditioned on plans: warm it up on the reference plans
        target = reasoning_spec.pretrain_target
        warm_records = [{**r, "prompt": r.get(target, r["prompt"])} if isinstance(r, Mapping) else r for r in prompts]
    pretrain_losses = _pretrain_from_task(task, model, warm_records, encoder, image_encoder, args.seed, kind)
    rewards = _recipe_rewards(recipe)
    weights = [r.weight for r in recipe.stages[0].rewards]
    trainer = FlowGRPOTrainer(model, rewards, args, prompt_encoder=encoder, decoder=decoder, prompts=prompts,
                              reward_weights=weights, image_encoder=image_encoder)
    reasoning, planner_losses = None, []
    if reasoning_spec is not None:
        reasoning, planner_losses = _build_reasoning(recipe, trainer, task, prompts)
    return FlowRun(recipe, trainer, reasoning, task, rewards, pretrain_losses, planner_losses, warm_records, encoder,
                   image_encoder)


def run_flow_recipe(path: str | Path, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Build a flow recipe (:func:`build_flow_run`), train it, and measure the task's held-out rewards before and
    after RL. Returns ``{"run_dir", "history", "heldout", "pretrain_losses", "planner_pretrain_losses"}``;
    ``{"stage": "eval"}`` and warm-start rows go to ``metrics.jsonl``."""
    run = build_flow_run(path, overrides)
    trainer, reasoning = run.trainer, run.reasoning
    pretrain_losses, planner_losses = run.pretrain_losses, run.planner_pretrain_losses
    heldout = {"before": run.evaluate()}
    history = (reasoning or trainer).train()
    heldout["after"] = run.evaluate()
    if heldout["before"] and trainer.accelerator.is_main_process:
        for when, values in heldout.items():
            append_metrics(trainer.run_dir, {"stage": "eval", "when": when, **values})
        planner_steps = run.recipe.stages[0].reasoning.pretrain_steps if reasoning else 0
        for stage, steps, losses in (("pretrain", len(pretrain_losses), pretrain_losses),
                                     ("planner_pretrain", planner_steps, planner_losses)):
            if losses:  # first and last logged training loss
                append_metrics(trainer.run_dir, {"stage": stage, "steps": steps, "loss_first": losses[0],
                                                 "loss_last": losses[-1]})
        print("held-out " + " | ".join(f"{k.removeprefix('heldout/')}: {heldout['before'][k]:.3f} -> {v:.3f}"
                                       for k, v in heldout["after"].items()))
    return {"run_dir": str(trainer.run_dir), "history": history, "heldout": heldout,
            "pretrain_losses": pretrain_losses, "planner_pretrain_losses": planner_losses}
