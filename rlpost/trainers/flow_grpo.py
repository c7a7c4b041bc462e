"""GRPO for rectified-flow image models (FLUX, SD3) on accelerate + diffusers: E-GRPO, Flow-GRPO, DanceGRPO.

One iteration runs five named stages, in this order:

1. :meth:`FlowGRPOTrainer.rollout` samples images without gradients and stores every transition it will train on:
   input latent, time interval, sampled next latent and its log-prob under the sampling policy.

   - ``mode="e_grpo"`` (E-GRPO, arXiv 2601.00423 §3.3, Alg. 1; VisualGRPO code): one shared initial noise per
     prompt and one deterministic ODE *anchor* trajectory. At every active step i (merge length l, chosen by entropy,
     :func:`rlpost.algorithms.sde.merge_schedule`) each of the G group members takes **one merged SDE step** from the
     anchor latent x_{t_i} to t_{i+l}, then the ODE completes it to t = 0. The ODE continues from index i + l, the
     end of the merged interval (the paper's semantics; VisualGRPO restarts at i + 1, spec §1.5 caveat).
   - ``mode="flow_grpo"`` (Flow-GRPO, arXiv 2505.05470) and ``"dance_grpo"`` (DanceGRPO, σ = constant η): G full SDE
     trajectories per prompt; a random ``timestep_fraction`` of the steps is trained.
2. :meth:`score` decodes latents to images and runs the reward modules (``rewards/<name>/mean`` etc.).
3. :meth:`compute_advantages` z-scores rewards per prompt group (and, in E-GRPO, per active step: each (prompt, step)
   pair is its own group), clipped to ±``adv_clip_max``.
4. :meth:`compute_loss` re-evaluates the stored transitions' log-probs under the current weights
   (:func:`rlpost.algorithms.sde.sde_step` with ``prev_sample``) and applies the PPO clip loss
   (:func:`rlpost.algorithms.losses.ppo_clip_loss`), optionally plus β·closed-form Gaussian KL.
5. :meth:`optimize` runs the updates: one optimizer step per trained timestep (VisualGRPO, E-GRPO's default) or one
   per iteration with gradients summed over timesteps (Flow-GRPO / DanceGRPO). In the latter, all (trajectory,
   timestep) pairs go through the transformer in **one batched forward** with per-sample timesteps
   (``batched_forward=True``) instead of one forward/backward per timestep (the reference implementations).

Inputs that are identical across a group (E-GRPO: all G members branch from the same anchor latent) go through the
transformer once and the velocity is shared, as in VisualGRPO's trainer.

Metric names follow the LM trainer / TRL (``reward``, ``reward_std``, ``rewards/<name>/mean``, ``clip_ratio/*``,
``entropy``, ``kl``, ``frac_reward_zero_std``, ``advantages/*``) plus per-timestep ``timestep/<i>/...`` metrics.
Rows go to ``<output_dir>/metrics.jsonl`` as ``{"stage": "flow_grpo", "step": ..., ...}`` and to wandb when enabled.

Distributed: each process samples its own prompts and keeps every group on one process (an E-GRPO group shares one
anchor trajectory), so advantages need no gather; gradients are synchronized by accelerate (DDP / DeepSpeed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from rlpost.algorithms.advantages import get_advantage, per_function_scores
from rlpost.algorithms.losses import gaussian_mean_kl, ppo_clip_loss
from rlpost.algorithms.sde import (
    explicit_schedule,
    gaussian_entropy,
    merge_schedule,
    ode_step,
    sde_sigma,
    sde_step,
    shifted_sigmas,
    step_entropy,
)
from rlpost.models.flow import FlowAdapter, PromptEmbeds, get_flow_adapter
from rlpost.rewards import RewardModule, get_reward
from rlpost.rewards import image as _image_rewards  # noqa: F401  (registers the image rewards by name)

__all__ = ["FLOW_MODES", "FlowGRPOConfig", "FlowGRPOTrainer", "FlowRollout", "reward_batch"]

FLOW_MODES = ("e_grpo", "flow_grpo", "dance_grpo")

# Per-mode defaults for fields left as None: (E-GRPO / VisualGRPO, Flow-GRPO config/grpo.py, DanceGRPO flux script).
_MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "e_grpo": dict(noise_level=0.7, init_same_noise=True, advantage="grpo", advantage_eps=1e-8,
                   optimizer_step_per_timestep=True, timestep_fraction=1.0),
    "flow_grpo": dict(noise_level=0.7, init_same_noise=False, advantage="grpo_population", advantage_eps=1e-4,
                      optimizer_step_per_timestep=False, timestep_fraction=0.99),
    "dance_grpo": dict(noise_level=0.3, init_same_noise=True, advantage="grpo", advantage_eps=1e-8,
                       optimizer_step_per_timestep=False, timestep_fraction=0.6),
}


@dataclass
class FlowGRPOConfig:
    """Everything a flow-GRPO run needs. Defaults are E-GRPO's paper settings (FLUX.1-dev, HPS reward, 8 GPUs).

    Fields left ``None`` take the default of ``mode`` (E-GRPO / Flow-GRPO / DanceGRPO) in ``__post_init__``.
    """

    output_dir: str = "runs/flow_grpo"
    mode: str = "e_grpo"  # "e_grpo" | "flow_grpo" | "dance_grpo"
    seed: int = 0
    max_steps: int = 300  # iterations; E-GRPO §4.1 trains 300
    # -- model and conditioning (used by rlpost.flow_pipeline.run_flow_recipe to build the pieces) --
    adapter: str = "flux"  # rlpost.models.flow adapter: "flux" | "sd3"
    prompt_encoder: str = "auto"  # "random" (tiny models), "pipeline" (the checkpoint's encoders) or a .pt file
    decoder: str = "auto"  # "latent_rgb" (tiny models) or "vae" (the checkpoint's AutoencoderKL)
    prompts: list[str] = field(default_factory=list)  # inline prompts; or data.train_files in a recipe
    # -- sampler --
    num_inference_steps: int = 16  # T; E-GRPO §4.1 / VisualGRPO
    shift: float = 3.0  # SD3 time shift s; VisualGRPO config (spec §1.1)
    noise_level: float | None = None  # a (σ_t = a·sqrt(t/(1−t))): 0.7 E-GRPO/Flow-GRPO; DanceGRPO's η 0.3
    guidance_scale: float = 3.5  # FLUX.1-dev distilled guidance; VisualGRPO (no CFG)
    resolution: int = 720  # pixels; VisualGRPO config (paper does not state it)
    vae_scale_factor: int = 8  # pixels per latent cell (FLUX/SD3 VAE)
    log_prob_reduce: str = "mean"  # mean over latent dims as in all three codebases (spec §1.2); "sum" = exact
    # -- groups --
    num_generations: int = 12  # G; VisualGRPO config (paper: not stated)
    prompts_per_step: int = 1  # prompts per process per iteration; E-GRPO: batch 1 per GPU
    init_same_noise: bool | None = None  # share the initial noise within a group (E-GRPO requires it: the anchor)
    # -- E-GRPO step selection --
    num_active_steps: int = 8  # first-half steps are trained; E-GRPO Table 3 ("first 8 steps")
    active_steps: list[int] | None = None  # explicit schedule indices (VisualGRPO eta_step_list); overrides the above
    merge_lens: list[int] | None = None  # explicit merge lengths (VisualGRPO eta_step_merge_list); else adaptive
    tau: float = 2.2  # entropy threshold τ; E-GRPO §3.3.1, Table 4 (0 disables merging)
    entropy_definition: str = "per_dim_exp"  # what τ is compared with [inferred, spec §1.4]; see step_entropy
    max_merge: int | None = None  # optional cap on a merge length
    # -- Flow-GRPO / DanceGRPO step selection --
    timestep_fraction: float | None = None  # share of steps trained; Flow-GRPO 0.99, DanceGRPO 0.6
    # -- advantage (same vocabulary as rlpost's LM GRPOConfig) --
    advantage: str | None = None  # registry name: "grpo" (unbiased std: E-GRPO, DanceGRPO); Flow-GRPO "grpo_population"
    advantage_eps: float | None = None  # 1e-8 E-GRPO / DanceGRPO; 1e-4 Flow-GRPO
    advantage_options: dict[str, Any] = field(default_factory=dict)
    adv_clip_max: float = 5.0  # advantages clamped to ±5; VisualGRPO, Flow-GRPO, DanceGRPO
    # -- loss --
    clip_range: float = 1e-4  # PPO ε; VisualGRPO / Flow-GRPO / DanceGRPO
    beta: float = 0.0  # KL weight; E-GRPO uses none (§3.1); Flow-GRPO 0.01–0.04 with the closed-form Gaussian KL
    # -- optimization --
    learning_rate: float = 2e-6  # E-GRPO §4.1 (VisualGRPO config says 1e-5)
    weight_decay: float = 1e-4  # E-GRPO §4.1
    adam_beta1: float = 0.9  # VisualGRPO
    adam_beta2: float = 0.999  # VisualGRPO
    adam_epsilon: float = 1e-8  # VisualGRPO
    max_grad_norm: float = 1.0  # VisualGRPO
    lr_scheduler_type: str = "constant_with_warmup"  # VisualGRPO
    warmup_steps: int = 0  # VisualGRPO
    optimizer_step_per_timestep: bool | None = None  # True: VisualGRPO (one step per active step); False: per iteration
    batched_forward: bool = True  # per-iteration updates: one forward over all (trajectory, timestep) pairs
    use_lora: bool = False  # Flow-GRPO trains LoRA; E-GRPO full fine-tunes
    lora_r: int = 32  # Flow-GRPO config/grpo.py
    lora_alpha: int = 64  # Flow-GRPO config/grpo.py
    lora_target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    gradient_checkpointing: bool = False  # VisualGRPO enables it for FLUX-12B
    mixed_precision: str = "no"  # "bf16" on GPU (E-GRPO: bf16 autocast, fp32 master weights)
    use_cpu: bool = False
    # -- tracking --
    logging_steps: int = 1
    report_to: str = "none"  # "none" or "wandb" (offline unless WANDB_MODE says otherwise)
    sample_images_every: int = 0  # save a captioned sample grid every N iterations (0 = only at the end)
    num_sample_images: int = 8
    save_model: bool = True  # save the trained transformer (or LoRA) to <output_dir>/final

    def __post_init__(self) -> None:
        if self.mode not in FLOW_MODES:
            raise ValueError(f"mode must be one of {FLOW_MODES}, got {self.mode!r}.")
        for key, value in _MODE_DEFAULTS[self.mode].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.mode == "e_grpo" and not self.init_same_noise:
            raise ValueError("mode='e_grpo' branches every group member from one anchor trajectory: init_same_noise "
                             "must be true (or left unset).")
        if self.num_generations < 2:
            raise ValueError(f"num_generations must be >= 2 to form a group baseline, got {self.num_generations}.")
        if not 0 < self.timestep_fraction <= 1:
            raise ValueError(f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}.")
        if self.log_prob_reduce not in ("mean", "sum"):
            raise ValueError(f"log_prob_reduce must be 'mean' or 'sum', got {self.log_prob_reduce!r}.")
        if self.report_to not in ("none", "wandb"):
            raise ValueError(f"report_to must be 'none' or 'wandb', got {self.report_to!r}.")
        if self.resolution % self.vae_scale_factor:
            raise ValueError(f"resolution {self.resolution} must be a multiple of vae_scale_factor "
                             f"{self.vae_scale_factor}.")

    @property
    def sde_variant(self) -> str:
        return "dance_grpo" if self.mode == "dance_grpo" else "flow_grpo"

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae_scale_factor


@dataclass
class FlowRollout:
    """What :meth:`FlowGRPOTrainer.rollout` stores. U unique transformer inputs, N transitions, M images.

    A transition n goes from ``inputs[src[n]]`` at time ``t[n]`` to the stored ``x_out[n]`` at ``t_next[n]``; its
    advantage is that of image ``image_of[n]``, and ``slot[n]`` says which trained timestep it belongs to (the unit of
    one optimizer step, or one chunk of the loss). Image m belongs to prompt ``image_prompt[m]`` and reward column
    ``image_column[m]`` (the active-step index in E-GRPO, 0 otherwise); (prompt, column) pairs are the groups.
    """

    prompts: list[str]  # [B]
    cond: PromptEmbeds  # [B]
    inputs: Tensor  # [U, C, H, W]
    input_t: Tensor  # [U]
    input_prompt: Tensor  # [U] row of cond
    src: Tensor  # [N]
    t: Tensor  # [N]
    t_next: Tensor  # [N]
    x_out: Tensor  # [N, C, H, W]
    old_log_prob: Tensor  # [N]
    slot: Tensor  # [N] trained-timestep slot
    slot_index: list[int]  # schedule index of each slot (for metric names)
    slot_merge: list[int]  # merge length of each slot
    image_of: Tensor  # [N]
    latents: Tensor  # [M, C, H, W] final x0
    image_prompt: Tensor  # [M]
    image_column: Tensor  # [M]
    images: Tensor | None = None  # [M, 3, H', W'] filled by score()
    records: list[dict[str, Any]] = field(default_factory=list)  # [B] the prompt records (extra fields → rewards)
    rewards_per_func: Tensor | None = None  # [M, D] one column per reward module, filled by score()


def _as_record(prompt: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(prompt, str):
        return {"prompt": prompt}
    if isinstance(prompt, Mapping) and isinstance(prompt.get("prompt"), str):
        return dict(prompt)
    raise TypeError(f"a flow prompt is a string or a mapping with a 'prompt' string, got {prompt!r:.80}.")


def reward_batch(images: Sequence[Any], records: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """The reward modules' batch for one image per record: ``image``, ``prompt`` and every other record field as a
    column (``source_image``, a task spec, ...), None where a record lacks it."""
    batch: dict[str, list] = {"image": list(images), "prompt": [r["prompt"] for r in records]}
    for key in {k for r in records for k in r} - {"prompt"}:
        batch[key] = [r.get(key) for r in records]
    return batch


def _make_accelerator(use_cpu: bool, mixed_precision: str):
    """The trainer's ``Accelerator``, with the true rank and world size under DeepSpeed on CPU too.

    ``PartialState`` is a process-wide singleton that the first caller initializes. Under a DeepSpeed launch,
    ``cpu=False`` without CUDA lets DeepSpeed open a 2-process group while accelerate finds no backend and reports
    rank 0 of 1 on every process (so all ranks drew the same prompts); ``cpu=True`` instead silently drops DeepSpeed
    for plain gloo DDP. As in :func:`rlpost.pipeline.run_recipe`, the process group is set up first with
    ``PartialState(cpu=True)`` (gloo, true ranks); the ``Accelerator`` is then built with ``cpu=False`` under DeepSpeed
    so that it still selects the DeepSpeed plugin (the device stays the CPU).
    """
    from accelerate import Accelerator, PartialState

    if use_cpu or not torch.cuda.is_available():
        PartialState(cpu=True)
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    return Accelerator(cpu=use_cpu and not deepspeed, mixed_precision=mixed_precision)


class FlowGRPOTrainer:
    """Flow-matching GRPO trainer (see the module docstring for the stages).

    Args:
        model: a diffusers flow transformer (``FluxTransformer2DModel``, ``SD3Transformer2DModel``) or any module the
            adapter knows how to call.
        reward_funcs: one or more :class:`rlpost.rewards.RewardModule` (or registered names); they receive the batch
            fields ``image`` (float ``[3, H, W]`` in [0, 1]), ``prompt`` and ``group_id``.
        args: :class:`FlowGRPOConfig`.
        prompts: the training prompts (default ``args.prompts``); each iteration draws ``prompts_per_step`` of them.
            A prompt is a string or a record ``{"prompt": str, ...}`` whose other fields reach the reward modules
            as batch columns (e.g. ``source_image`` for the checklist reward, a task spec for a programmatic judge).
        prompt_encoder: callable ``list[str] -> PromptEmbeds`` (see :mod:`rlpost.models.flow`).
        image_encoder: for editing: callable ``images [B, 3, H, W] in [0, 1] -> latents [B, C, h, w]`` (a VAE
            encoder, or the identity for pixel-space tiny models). Records with a ``source_image`` are encoded with
            it into ``PromptEmbeds.image_latents``, which an editing adapter feeds to the transformer.
        decoder: callable ``latents [M, C, H, W] -> images [M, 3, H', W']`` in [0, 1].
        adapter: adapter name or instance (default ``args.adapter``).
        reward_weights: one weight per reward (default 1.0 each); the total reward is the weighted sum.
        ref_model: frozen reference for the KL term (``beta > 0``); default: the LoRA base (adapters disabled) or a
            frozen copy of ``model``.
    """

    def __init__(self, model: torch.nn.Module, reward_funcs: Any, args: FlowGRPOConfig,
                 prompt_encoder: Callable[[Sequence[str]], PromptEmbeds], decoder: Callable[[Tensor], Tensor],
                 prompts: Sequence[str | Mapping[str, Any]] | None = None, adapter: str | FlowAdapter | None = None,
                 reward_weights: Sequence[float] | None = None, ref_model: torch.nn.Module | None = None,
                 image_encoder: Callable[[Tensor], Tensor] | None = None) -> None:
        from accelerate.utils import set_seed

        if not isinstance(args, FlowGRPOConfig):
            raise TypeError(f"args must be a FlowGRPOConfig, got {type(args).__name__}.")
        self.args = args
        self.prompts = [_as_record(p) for p in (prompts if prompts is not None else args.prompts)]
        if not self.prompts:
            raise ValueError("FlowGRPOTrainer needs prompts: pass prompts=[...] or set args.prompts.")
        funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        self.reward_funcs: list[RewardModule] = [get_reward(f) if isinstance(f, str) else f for f in funcs]
        for f in self.reward_funcs:
            if not isinstance(f, RewardModule):
                raise TypeError(f"reward_funcs must be RewardModule objects or names, got {type(f).__name__}. "
                                "Wrap plain functions with rlpost.rewards.from_trl(fn, requires=('image', 'prompt')).")
        self.reward_weights = [1.0] * len(self.reward_funcs) if reward_weights is None else list(reward_weights)
        if len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"got {len(self.reward_weights)} reward_weights for {len(self.reward_funcs)} rewards.")
        self.adapter = get_flow_adapter(adapter or args.adapter) if not isinstance(adapter, FlowAdapter) else adapter
        self.prompt_encoder, self.decoder, self.image_encoder = prompt_encoder, decoder, image_encoder
        self.advantage_fn = get_advantage(args.advantage)

        self.accelerator = _make_accelerator(args.use_cpu, args.mixed_precision)
        if (getattr(self.accelerator.state, "deepspeed_plugin", None) is not None and not args.batched_forward
                and not args.optimizer_step_per_timestep):
            # accelerate's DeepSpeed backward() also steps the engine, so per-timestep backwards would become one
            # optimizer step per timestep instead of one per iteration.
            raise ValueError("batched_forward=False with optimizer_step_per_timestep=False is not supported under "
                             "DeepSpeed (every backward steps the DeepSpeed engine). Use batched_forward=True, which "
                             "gives the same gradient in one backward.")
        set_seed(args.seed, device_specific=True)
        self.generator = torch.Generator().manual_seed(args.seed + 1000 * self.accelerator.process_index)
        self.sigmas = shifted_sigmas(args.num_inference_steps, args.shift)
        self.schedule = self._build_schedule()

        model = self._prepare_trainable(model, ref_model)
        self.model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(model, *self._build_optimizer(model))
        if self.ref_model is not None:
            self.ref_model.to(self.accelerator.device)
        self.run_dir = Path(args.output_dir)
        self.global_step = 0
        self._wandb = None

    def _prepare_trainable(self, model: torch.nn.Module, ref_model: torch.nn.Module | None) -> torch.nn.Module:
        """LoRA adapters (peft, through diffusers' ``add_adapter``) or full fine-tuning; the KL reference."""
        args = self.args
        model.requires_grad_(False)
        if args.use_lora:
            from peft import LoraConfig

            model.add_adapter(LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, init_lora_weights="gaussian",
                                         target_modules=list(args.lora_target_modules)))
        else:
            model.requires_grad_(True)
        if args.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        self.ref_model = ref_model
        if args.beta > 0 and ref_model is None and not args.use_lora:  # with LoRA the base model is the reference
            import copy

            self.ref_model = copy.deepcopy(model).requires_grad_(False).eval()
        return model

    def _build_optimizer(self, model: torch.nn.Module):
        """AdamW + scheduler over the trainable parameters, sized to the number of optimizer steps."""
        from transformers import get_scheduler

        args = self.args
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                      eps=args.adam_epsilon, weight_decay=args.weight_decay)
        num_updates = args.max_steps * (len(self.schedule) if args.optimizer_step_per_timestep else 1)
        scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.warmup_steps,
                                  num_training_steps=num_updates)
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if plugin is not None:
            # No dataloader goes through prepare() (prompts are drawn here), so DeepSpeed cannot infer its "auto"
            # micro-batch; one prompt group per process per optimizer step is what the loop does.
            world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else \
                self.accelerator.num_processes
            plugin.deepspeed_config.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1,
                                           train_batch_size=world, gradient_clipping=args.max_grad_norm)
        return optimizer, scheduler

    # ------------------------------------------------------------------------------------------- schedule
    def _build_schedule(self) -> list[tuple[int, int]]:
        """(schedule index, merge length) of every SDE step that can be trained.

        E-GRPO: the active steps with their adaptive (or explicit) merge lengths. Flow-GRPO / DanceGRPO: every step,
        unmerged; :meth:`rollout` samples the trained subset each iteration.
        """
        args, num_steps = self.args, self.args.num_inference_steps
        if args.mode != "e_grpo":
            return [(i, 1) for i in range(num_steps)]
        active = args.active_steps if args.active_steps is not None else list(range(min(args.num_active_steps,
                                                                                          num_steps)))
        if args.merge_lens is not None:
            return explicit_schedule(active, args.merge_lens, num_steps)
        return merge_schedule(self.sigmas, args.noise_level, args.tau, active, definition=args.entropy_definition,
                              max_merge=args.max_merge)

    # ------------------------------------------------------------------------------------------- helpers
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def _velocity(self, model: torch.nn.Module, x: Tensor, t: Tensor, cond: PromptEmbeds) -> Tensor:
        with self.accelerator.autocast():
            return self.adapter.velocity(model, x, t.to(self.device), cond.to(self.device),
                                         guidance=self.args.guidance_scale)

    def _sde(self, x: Tensor, v: Tensor, t: Tensor, t_next: Tensor, **kwargs: Any):
        # sigmas[1] replaces t in 1/(1-t) at t=1, for merged first steps too (VisualGRPO, spec §1.2).
        return sde_step(x, v, t, t_next, self.args.noise_level, variant=self.args.sde_variant,
                        reduce=self.args.log_prob_reduce, t_at_one=float(self.sigmas[1]), **kwargs)

    def _randn(self, *shape: int) -> Tensor:
        return torch.randn(*shape, generator=self.generator).to(self.device)

    def _latent_shape(self) -> tuple[int, int, int]:
        size = self.args.latent_size
        return self.adapter.latent_channels(self.accelerator.unwrap_model(self.model)), size, size

    @torch.no_grad()
    def _ode_complete(self, x: Tensor, start: Tensor, cond: PromptEmbeds, rows: Tensor) -> Tensor:
        """Euler ODE from per-sample schedule index ``start[N]`` to t = 0, samples at different indices batched
        together (the transformer takes per-sample timesteps)."""
        x, idx, sigmas = x.clone(), start.clone(), self.sigmas.to(self.device)
        while bool((idx < len(sigmas) - 1).any()):
            live = torch.nonzero(idx < len(sigmas) - 1).squeeze(1)
            t, t_next = sigmas[idx[live]], sigmas[idx[live] + 1]
            v = self._velocity(self.model, x[live], t, cond.index(rows[live]))
            x[live] = ode_step(x[live], v, t, t_next)
            idx[live] += 1
        return x

    def encode(self, records: Sequence[Mapping[str, Any]]) -> PromptEmbeds:
        """Conditioning for prompt records: the prompt encoder on the texts, plus the source images through
        ``image_encoder`` when the records carry ``source_image`` (editing). A prompt encoder whose embedding also
        depends on the source image (Qwen-Image-Edit's Qwen2.5-VL) sets ``takes_records = True``: it gets the
        records."""
        takes_records = getattr(self.prompt_encoder, "takes_records", False)
        cond = self.prompt_encoder(list(records) if takes_records else [r["prompt"] for r in records])
        sources = [r.get("source_image") for r in records]
        if any(image is not None for image in sources):
            if any(image is None for image in sources):
                raise ValueError("some prompt records have a source_image and some do not; an editing batch needs "
                                 "one per record.")
            if self.image_encoder is None:
                raise ValueError("prompt records carry source_image but the trainer has no image_encoder: pass "
                                 "image_encoder= (a VAE encoder, or the identity for pixel-space models).")
            from rlpost.rewards.image import to_image_tensor

            images = torch.stack([to_image_tensor(image) for image in sources])
            with torch.no_grad():
                cond.image_latents = self.image_encoder(images.to(self.device))
        return cond.to(self.device)

    @torch.no_grad()
    def sample(self, prompts: Sequence[str | Mapping[str, Any]], seed: int = 0) -> Tensor:
        """Deterministic ODE samples (one per prompt, noise from ``seed``) decoded to images [B, 3, H, W]: the
        evaluation sampler, independent of the training mode, so runs in different modes compare on equal terms."""
        cond = self.encode([_as_record(p) for p in prompts])
        noise = torch.randn(len(prompts), *self._latent_shape(), generator=torch.Generator().manual_seed(seed))
        start = torch.zeros(len(prompts), dtype=torch.long, device=self.device)
        rows = torch.arange(len(prompts), device=self.device)
        return self.decoder(self._ode_complete(noise.to(self.device), start, cond, rows)).float().cpu()

    # ------------------------------------------------------------------------------------------- 1. rollout
    @torch.no_grad()
    def rollout(self, prompts: Sequence[str | Mapping[str, Any]], num_generations: int | None = None) -> FlowRollout:
        """Sample the group's images and store the transitions to train (stage 1).

        ``num_generations`` overrides ``args.num_generations`` for this call (Flow-GRPO / DanceGRPO modes), e.g. 1
        when a caller forms the groups itself, as the reasoning trainer does with one rewritten prompt per candidate.
        """
        records = [_as_record(p) for p in prompts]
        cond = self.encode(records)
        g = self.args.num_generations if num_generations is None else num_generations
        if self.args.mode == "e_grpo":
            if g < 2:
                raise ValueError("mode='e_grpo' branches a group of >= 2 members from each anchor; num_generations "
                                 f"must be >= 2, got {g}.")
            rollout = self._rollout_e_grpo([r["prompt"] for r in records], cond, g)
        else:
            rollout = self._rollout_sde([r["prompt"] for r in records], cond, g)
        rollout.records = records
        return rollout

    def _rollout_e_grpo(self, prompts: list[str], cond: PromptEmbeds, g: int) -> FlowRollout:
        b, sigmas = len(prompts), self.sigmas.to(self.device)
        rows = torch.arange(b, device=self.device)
        # Anchor: one deterministic ODE trajectory per prompt from one shared noise (E-GRPO Alg. 1).
        x = self._randn(b, *self._latent_shape())
        anchor, anchor_v = [x], []
        for k in range(self.args.num_inference_steps):
            v = self._velocity(self.model, x, sigmas[k].expand(b), cond)
            anchor_v.append(v)
            x = ode_step(x, v, sigmas[k], sigmas[k + 1])
            anchor.append(x)
        # One merged SDE step per active step per group member; the anchor velocity is reused (same input).
        x_out, log_probs, starts = [], [], []
        for i, length in self.schedule:
            x_in = anchor[i].repeat_interleave(g, 0)  # [B*G, C, H, W], member order (prompt, member)
            v_in = anchor_v[i].repeat_interleave(g, 0)
            out, logp, _, _ = self._sde(x_in, v_in, sigmas[i], sigmas[i + length], noise=self._randn(*x_in.shape))
            x_out.append(out)
            log_probs.append(logp)
            starts.append(torch.full((b * g,), i + length, device=self.device))
        s = len(self.schedule)
        x_out_all = torch.cat(x_out)  # [S*B*G], order (step, prompt, member)
        member_prompt = rows.repeat_interleave(g).repeat(s)  # [S*B*G]
        latents = self._ode_complete(x_out_all, torch.cat(starts), cond, member_prompt)
        slot = torch.arange(s, device=self.device).repeat_interleave(b * g)
        return FlowRollout(
            prompts=prompts, cond=cond,
            inputs=torch.stack([anchor[i] for i, _ in self.schedule]).flatten(0, 1),  # [S*B], order (step, prompt)
            input_t=torch.stack([sigmas[i].expand(b) for i, _ in self.schedule]).flatten(),
            input_prompt=rows.repeat(s),
            src=slot * b + member_prompt,
            t=torch.cat([sigmas[i].expand(b * g) for i, _ in self.schedule]),
            t_next=torch.cat([sigmas[i + length].expand(b * g) for i, length in self.schedule]),
            x_out=x_out_all, old_log_prob=torch.cat(log_probs), slot=slot,
            slot_index=[i for i, _ in self.schedule], slot_merge=[length for _, length in self.schedule],
            image_of=torch.arange(s * b * g, device=self.device), latents=latents,
            image_prompt=member_prompt, image_column=slot,
        )

    def _rollout_sde(self, prompts: list[str], cond: PromptEmbeds, g: int) -> FlowRollout:
        b, sigmas = len(prompts), self.sigmas.to(self.device)
        n, num_steps = b * g, self.args.num_inference_steps
        member_prompt = torch.arange(b, device=self.device).repeat_interleave(g)
        shape = self._latent_shape()
        x = self._randn(b, *shape).repeat_interleave(g, 0) if self.args.init_same_noise else self._randn(n, *shape)
        # The trained timesteps: one random subset per iteration, shared by the batch so that each training chunk
        # has the rollout's batch composition (bit-identical forward, ratio exactly 1 on-policy).
        num_train = max(1, int(num_steps * self.args.timestep_fraction))
        trained = torch.randperm(num_steps, generator=self.generator)[:num_train].tolist()
        member_cond = cond.index(member_prompt)
        inputs, x_out, log_probs = {}, {}, {}
        for k in range(num_steps):
            v = self._velocity(self.model, x, sigmas[k].expand(n), member_cond)
            x_next, logp, _, _ = self._sde(x, v, sigmas[k], sigmas[k + 1], noise=self._randn(*x.shape))
            if k in trained:
                inputs[k], x_out[k], log_probs[k] = x, x_next, logp
            x = x_next
        slot = torch.arange(num_train, device=self.device).repeat_interleave(n)
        return FlowRollout(
            prompts=prompts, cond=cond,
            inputs=torch.cat([inputs[k] for k in trained]),
            input_t=torch.cat([sigmas[k].expand(n) for k in trained]),
            input_prompt=member_prompt.repeat(num_train),
            src=torch.arange(num_train * n, device=self.device),
            t=torch.cat([sigmas[k].expand(n) for k in trained]),
            t_next=torch.cat([sigmas[k + 1].expand(n) for k in trained]),
            x_out=torch.cat([x_out[k] for k in trained]), old_log_prob=torch.cat([log_probs[k] for k in trained]),
            slot=slot, slot_index=trained, slot_merge=[1] * num_train,
            image_of=torch.arange(n, device=self.device).repeat(num_train), latents=x,
            image_prompt=member_prompt, image_column=torch.zeros(n, dtype=torch.long, device=self.device),
        )

    # ------------------------------------------------------------------------------------------- 2. reward
    def score(self, rollout: FlowRollout) -> tuple[Tensor, dict[str, float]]:
        """Decode and score every image (stage 2): the weighted sum of the reward modules, NaN where none applies."""
        rollout.images = self.decoder(rollout.latents).float().cpu()
        records = [{**rollout.records[int(p)], "prompt": rollout.prompts[int(p)]} if rollout.records
                   else {"prompt": rollout.prompts[int(p)]} for p in rollout.image_prompt]
        batch = reward_batch(rollout.images, records)
        total, rollout.rewards_per_func, metrics = self.score_batch(batch, self._group_ids(rollout).tolist())
        return total, metrics

    def score_batch(self, batch: dict[str, list], group_ids: list[int]) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Run the reward modules on a batch of columns (``image``, ``prompt``, ...): ``(weighted sum [M] with NaN
        where no reward applies, per-module scores [M, D], metrics)``. Callers that form their own groups (the
        reasoning trainer scores against the task's instruction, not the plan it conditioned on) use this directly.
        """
        batch = {**batch, "group_id": list(group_ids)}
        m = len(group_ids)
        total = torch.zeros(m, dtype=torch.float64)
        scored = torch.zeros(m, dtype=torch.bool)
        per_func = []
        metrics: dict[str, float] = {}
        for module, weight in zip(self.reward_funcs, self.reward_weights):
            output = module(batch, group_ids)
            values = torch.tensor([math.nan if s is None else s for s in output.scores], dtype=torch.float64)
            per_func.append(values)
            valid = ~torch.isnan(values)
            total += torch.where(valid, weight * values, 0.0)
            scored |= valid
            if valid.any():
                metrics[f"rewards/{module.name}/mean"] = values[valid].mean().item()
                metrics[f"rewards/{module.name}/std"] = values[valid].std(unbiased=False).item()
            for key, value in output.metrics.items():
                metrics[key if key.startswith("rewards/") else f"rewards/{module.name}/{key}"] = float(value)
        total[~scored] = math.nan  # no reward applies: excluded from group statistics, advantage 0
        return total, torch.stack(per_func, dim=1), metrics

    def advantage_scores(self, rewards: Tensor, rewards_per_func: Tensor | None) -> Tensor:
        """What the advantage estimator sees: the weighted sum ``[M]``, or one column per reward ``[M, D]`` for an
        estimator that asks for it (UCPG)."""
        if getattr(self.advantage_fn, "wants_per_function_rewards", False) and rewards_per_func is not None:
            return per_function_scores(rewards_per_func, torch.tensor(self.reward_weights))
        return rewards

    def _group_ids(self, rollout: FlowRollout) -> Tensor:
        # E-GRPO normalizes per (prompt, active step) (§3.3.2); one id per pair makes any registry estimator do that.
        return rollout.image_prompt * (int(rollout.image_column.max()) + 1) + rollout.image_column

    # ------------------------------------------------------------------------------------------- 3. advantage
    def compute_advantages(self, rewards: Tensor, rollout: FlowRollout) -> Tensor:
        """Group-normalized advantages per image [M] (stage 3), clipped to ±adv_clip_max; NaN rewards give 0."""
        options = {"eps": self.args.advantage_eps, "clip": self.args.adv_clip_max, **self.args.advantage_options}
        scores = self.advantage_scores(rewards, rollout.rewards_per_func)
        adv = self.advantage_fn(scores, self._group_ids(rollout).cpu(), **options)
        return torch.nan_to_num(adv, nan=0.0).to(self.device, torch.float32)

    # ------------------------------------------------------------------------------------------- 4. loss
    def compute_loss(self, rollout: FlowRollout, advantages: Tensor, slots: Sequence[int]) -> tuple[Tensor, dict]:
        """PPO-clip loss over the transitions of ``slots``, averaged over slots (E-GRPO's 1/T̂ Σ_n 1/G Σ_i), stage 4.

        The unique inputs of those transitions go through the transformer in one forward pass with per-sample
        timesteps; group members sharing an input share its velocity.
        """
        chosen = torch.nonzero(torch.isin(rollout.slot, torch.as_tensor(list(slots), device=self.device))).squeeze(1)
        unique, inverse = torch.unique(rollout.src[chosen], return_inverse=True)  # sorted = rollout batch order
        cond_u = rollout.cond.index(rollout.input_prompt[unique])
        v = self._velocity(self.model, rollout.inputs[unique], rollout.input_t[unique], cond_u)[inverse]
        x_in = rollout.inputs[rollout.src[chosen]]
        t, t_next = rollout.t[chosen], rollout.t_next[chosen]
        _, log_prob, mean, std = self._sde(x_in, v, t, t_next, prev_sample=rollout.x_out[chosen])
        adv = advantages[rollout.image_of[chosen]]
        slot_of = rollout.slot[chosen]
        loss = torch.zeros((), device=self.device)
        stats: dict[str, float] = {}
        for s in slots:
            rows = slot_of == s
            slot_loss, slot_stats = ppo_clip_loss(log_prob[rows], rollout.old_log_prob[chosen][rows], adv[rows],
                                                  epsilon_low=self.args.clip_range)
            loss = loss + slot_loss / len(slots)
            ratio = torch.exp(log_prob[rows] - rollout.old_log_prob[chosen][rows]).detach()
            name = f"timestep/{rollout.slot_index[s]}"
            stats[f"{name}/ratio_mean"] = ratio.mean().item()
            stats[f"{name}/ratio_std"] = ratio.std(unbiased=False).item()
            stats[f"{name}/clip_ratio"] = slot_stats["clip_ratio/region_mean"].item()
            for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
                stats.setdefault(key, 0.0)
                stats[key] += slot_stats[key].item() / len(slots)
        if self.args.beta > 0:
            kl = gaussian_mean_kl(mean, self._reference_mean(rollout, chosen, unique, inverse, x_in), std).mean()
            loss = loss + self.args.beta * kl
            stats["kl"] = kl.item()
        return loss, stats

    @torch.no_grad()
    def _reference_mean(self, rollout, chosen, unique, inverse, x_in) -> Tensor:
        cond_u = rollout.cond.index(rollout.input_prompt[unique])
        if self.ref_model is not None:
            v_ref = self._velocity(self.ref_model, rollout.inputs[unique], rollout.input_t[unique], cond_u)
        else:  # LoRA: the base model is the reference
            model = self.accelerator.unwrap_model(self.model)
            model.disable_adapters()
            try:
                v_ref = self._velocity(model, rollout.inputs[unique], rollout.input_t[unique], cond_u)
            finally:
                model.enable_adapters()
        _, _, mean_ref, _ = self._sde(x_in, v_ref[inverse], rollout.t[chosen], rollout.t_next[chosen],
                                      noise=torch.zeros_like(x_in))
        return mean_ref

    # ------------------------------------------------------------------------------------------- 5. update
    def optimize(self, rollout: FlowRollout, advantages: Tensor) -> dict[str, float]:
        """Backward passes and optimizer steps (stage 5).

        ``optimizer_step_per_timestep``: one chunk per trained timestep, each its own objective and optimizer step
        (VisualGRPO). Otherwise one optimizer step on the mean over timesteps, computed in one batched forward
        (``batched_forward``) or as one backward per timestep with the loss scaled by 1/#timesteps (Flow-GRPO's
        gradient accumulation); both give the same gradient.
        """
        num_slots = len(rollout.slot_index)
        per_step = self.args.optimizer_step_per_timestep
        chunks = [list(range(num_slots))] if self.args.batched_forward and not per_step else \
            [[s] for s in range(num_slots)]
        stats: dict[str, float] = {"loss": 0.0}
        grad_norms = []
        self.model.train()
        for n, chunk in enumerate(chunks):
            share = len(chunk) / num_slots  # this chunk's share of the iteration's mean over timesteps
            loss, chunk_stats = self.compute_loss(rollout, advantages, chunk)
            self.accelerator.backward(loss if per_step else loss * share)
            stats["loss"] += loss.item() * share
            for key, value in chunk_stats.items():  # timestep/* keys occur in one chunk only
                stats[key] = stats.get(key, 0.0) + (value if key.startswith("timestep/") else value * share)
            if per_step or n == len(chunks) - 1:
                norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
                grad_norms.append(math.nan if norm is None else float(norm))  # DeepSpeed clips internally
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        stats["grad_norm"] = sum(grad_norms) / len(grad_norms)
        stats["learning_rate"] = self.lr_scheduler.get_last_lr()[0]
        return stats

    # ------------------------------------------------------------------------------------------- the loop
    def _next_prompts(self) -> list[dict[str, Any]]:
        picks = torch.randint(len(self.prompts), (self.args.prompts_per_step,), generator=self.generator)
        return [self.prompts[int(i)] for i in picks]

    def step(self) -> dict[str, float]:
        """One iteration: rollout → reward → advantage → loss → update. Returns the metrics row."""
        t0 = time.perf_counter()
        rollout = self.rollout(self._next_prompts())
        t1 = time.perf_counter()
        rewards, reward_metrics = self.score(rollout)
        advantages = self.compute_advantages(rewards, rollout)
        t2 = time.perf_counter()
        train_metrics = self.optimize(rollout, advantages)
        t3 = time.perf_counter()
        self.global_step += 1
        self.last_rollout, self.last_rewards = rollout, rewards
        return {**self._reward_stats(rewards, advantages, rollout), **reward_metrics,
                **self._schedule_stats(rollout, rewards), **train_metrics,
                "time/rollout_s": t1 - t0, "time/reward_s": t2 - t1, "time/train_s": t3 - t2,
                "time/iteration_s": t3 - t0}

    def _reward_stats(self, rewards: Tensor, advantages: Tensor, rollout: FlowRollout) -> dict[str, float]:
        valid = ~torch.isnan(rewards)
        groups = self._group_ids(rollout).cpu()
        stds, zero = [], []
        for gid in torch.unique(groups):
            r = rewards[(groups == gid) & valid]
            if r.numel():
                stds.append(r.std(unbiased=False).item())
                zero.append(float(r.max() == r.min()))
        return {
            "reward": rewards[valid].mean().item() if valid.any() else math.nan,
            "reward_std": sum(stds) / max(1, len(stds)),
            "frac_reward_zero_std": sum(zero) / max(1, len(zero)),
            "advantages/mean": advantages.mean().item(),
            "advantages/abs_mean": advantages.abs().mean().item(),
        }

    def _schedule_stats(self, rollout: FlowRollout, rewards: Tensor) -> dict[str, float]:
        """Per trained timestep: merge length, the τ-compared entropy, reward (E-GRPO columns); ``entropy`` is the
        mean per-dimension differential entropy h/d = log(std) + ½·log(2πe) of the trained steps."""
        stats, per_dim = {}, []
        a, fix = self.args.noise_level, float(self.sigmas[1])
        for s, (i, length) in enumerate(zip(rollout.slot_index, rollout.slot_merge)):
            t, t_next = float(self.sigmas[i]), float(self.sigmas[i + length])
            name = f"timestep/{i}"
            stats[f"{name}/merge_len"] = float(length)
            if self.args.sde_variant == "flow_grpo":  # τ is defined on the Flow-GRPO σ_t only
                stats[f"{name}/entropy"] = float(step_entropy(t, t_next, a, definition=self.args.entropy_definition,
                                                              t_at_one=fix, dim=1))
            sigma = float(sde_sigma(t, a, t_next_at_one=fix, variant=self.args.sde_variant))
            per_dim.append(float(gaussian_entropy(sigma * math.sqrt(t - t_next))))
            if self.args.mode == "e_grpo":
                column = rewards[(rollout.image_column == s).cpu()]
                stats[f"{name}/reward_mean"] = column[~torch.isnan(column)].mean().item()
        stats["entropy"] = sum(per_dim) / len(per_dim)
        return stats

    def train(self) -> list[dict[str, float]]:
        """Run ``max_steps`` iterations, logging every ``logging_steps``; returns the metric rows."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._init_tracking()
        history = []
        bar = tqdm(range(self.args.max_steps), desc=f"{self.args.mode}", disable=not self.accelerator.is_main_process)
        for _ in bar:
            row = self.step()
            history.append(row)
            bar.set_postfix(reward=f"{row['reward']:.4f}", s_per_it=f"{row['time/iteration_s']:.2f}")
            if self.global_step % self.args.logging_steps == 0:
                self.log(row)
            every = self.args.sample_images_every
            if every and self.global_step % every == 0:
                self.save_samples()
        self.save_samples()
        if self.args.save_model and self.accelerator.is_main_process:
            self.save_model(self.run_dir / "final")
        if self._wandb is not None:
            self._wandb.finish()
        return history

    # ------------------------------------------------------------------------------------------- tracking
    def _init_tracking(self) -> None:
        if self.args.report_to != "wandb" or not self.accelerator.is_main_process:
            return
        from rlpost.logging import configure_wandb

        if configure_wandb(os.environ.get("WANDB_MODE", "offline"), self.run_dir):
            import wandb

            self._wandb = wandb.init(config=dataclasses.asdict(self.args), reinit=True)

    def log(self, row: dict[str, float]) -> None:
        """Append ``{"stage": "flow_grpo", "step", ...}`` to ``metrics.jsonl`` (main process) and to wandb."""
        if not self.accelerator.is_main_process:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"stage": "flow_grpo", "step": self.global_step, **clean}) + "\n")
        if self._wandb is not None:
            self._wandb.log(row, step=self.global_step)

    def save_samples(self) -> Path | None:
        """Save the last rollout's first images as a PNG grid captioned with prompt and reward (and to wandb)."""
        rollout, rewards = getattr(self, "last_rollout", None), getattr(self, "last_rewards", None)
        if rollout is None or rollout.images is None or not self.accelerator.is_main_process:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        k = min(self.args.num_sample_images, rollout.images.shape[0])
        captions = [f"{rollout.prompts[int(rollout.image_prompt[i])][:24]}\nr={float(rewards[i]):.3f}"
                    for i in range(k)]
        fig, axes = plt.subplots(1, k, figsize=(2 * k, 2.4), squeeze=False)
        for ax, image, caption in zip(axes[0], rollout.images[:k], captions):
            ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(caption, fontsize=7)
            ax.axis("off")
        path = self.run_dir / "samples" / f"step_{self.global_step:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)
        if self._wandb is not None:
            import wandb

            self._wandb.log({"samples": [wandb.Image(img.permute(1, 2, 0).numpy(), caption=c)
                                         for img, c in zip(rollout.images[:k], captions)]}, step=self.global_step)
        return path

    def save_model(self, path: str | Path) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if self.args.use_lora:
            from peft import get_peft_model_state_dict

            Path(path).mkdir(parents=True, exist_ok=True)
            torch.save(get_peft_model_state_dict(model), Path(path) / "lora.pt")
        else:
            model.save_pretrained(path)
