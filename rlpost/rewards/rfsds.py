"""Rectified-flow score distillation from a frozen teacher: a gradient source (:class:`RFScoreDistillation`) and a
scalar reward module (``rf_score``) for the flow GRPO trainer. The math is in :mod:`rlpost.algorithms.rfsds`.

A teacher is a module with ``encode(video) -> latent``, ``forward(z_tau, tau, prompt_ids, first_frame) -> velocity``,
``null_prompt`` and ``prompt_id(prompt)``, in the ``tau = 0`` clean convention (Wan / SD3). A teacher in the other
convention (``convention = "t0_noise"``: Klear's ``t = 0`` noise, ``t = 1`` data, velocity ``data - noise``) is
converted in :func:`teacher_velocity`, the one place that knows about conventions.

``rf_score`` (spec §3.9 (2), an extension: CHORD itself is a per-scene optimiser, not RL) scores a sample by the
negative RF denoising loss ``-E_{tau ~ w_hat, eps} |v_hat(z_tau | prompt) - (eps - z)|^2`` under the teacher, with
``samples`` draws of (tau, eps) shared by every member of a GRPO group (common random numbers: the group's ranking is
not noise). By default (``baseline="unconditional"``) the same loss under the null prompt is added back, so the score
is how much better the prompt explains the sample than no prompt. The raw negative loss (``baseline="none"``, the
spec's literal form) is a likelihood proxy that a blank video wins (it is easy to denoise): measured in
``tests/test_chord.py``, and the reason for the default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from rlpost.algorithms.rfsds import (
    WEIGHTS,
    annealed_taus,
    cfg_velocity,
    check_tau_options,
    noised_latent,
    rf_denoising_loss,
    rfsds_loss,
    sample_taus,
)
from rlpost.rewards.base import RewardModule, RewardOutput
from rlpost.rewards.registry import register_reward

__all__ = ["RFScoreDistillation", "RFScoreReward", "load_teacher", "teacher_velocity"]


def teacher_velocity(teacher: Any, z_tau: Tensor, tau: Tensor, prompt_ids: Tensor, first_frame: Tensor) -> Tensor:
    """The teacher's velocity in rlpost's convention (``tau = 0`` clean, ``v ~= eps - z``)."""
    convention = getattr(teacher, "convention", "tau0_clean")
    if convention == "tau0_clean":
        return teacher(z_tau, tau, prompt_ids, first_frame)
    if convention == "t0_noise":  # t = 1 - tau and v_t = data - noise = -(eps - z)
        return -teacher(z_tau, 1 - tau, prompt_ids, first_frame)
    raise ValueError(f"Unknown teacher convention {convention!r}: expected 'tau0_clean' or 't0_noise'.")


def load_teacher(spec: Any) -> Any:
    """A teacher from a spec: a module (returned as is), ``"tiny"`` / ``"tiny:rf_video"`` (the cached CPU teacher), or
    a local folder saved by ``TinyRFVideoTeacher.save_pretrained``."""
    if not isinstance(spec, str):
        return spec
    from rlpost.models.rf_video import TinyRFVideoTeacher, tiny_rf_video_teacher

    if spec in ("tiny", "tiny:rf_video"):
        return tiny_rf_video_teacher()
    return TinyRFVideoTeacher.from_pretrained(spec)


class RFScoreDistillation:
    """W-RFSDS as a gradient source for any differentiable generator of videos (or their latents).

    ``loss(video, prompt, iteration)`` returns the surrogate whose gradient w.r.t. the rendered video's latent is
    ``w (v_hat_cfg - eps + z)``; backpropagate it into the generator's parameters.

    Args:
        teacher: see the module docstring (or a spec for :func:`load_teacher`).
        iterations: the run length, for the annealed schedule and the CFG ramp.
        schedule: ``"anneal"`` (Eq. 4) or ``"sample"`` (tau ~ w_hat, Eq. 3).
        weight: name in :data:`rlpost.algorithms.rfsds.WEIGHTS` (default ``"chord"``, the released code's).
        tau_min, tau_max: tau clamp (code: 0.02, 0.98).
        cfg_start, cfg_end: guidance scale, linear over the run (paper: 25 -> 12).
        reduction: ``"sum"`` (released code) or ``"mean"``.
        seed: noise seed.
    """

    def __init__(self, teacher: Any, iterations: int, schedule: str = "anneal", weight: str = "chord",
                 tau_min: float = 0.02, tau_max: float = 0.98, cfg_start: float = 25.0, cfg_end: float = 12.0,
                 reduction: str = "sum", seed: int = 0) -> None:
        check_tau_options(schedule, weight, tau_min, tau_max)
        self.teacher = load_teacher(teacher)
        self.iterations, self.schedule, self.weight = iterations, schedule, WEIGHTS[weight]
        self.tau_min, self.tau_max = tau_min, tau_max
        self.cfg_start, self.cfg_end, self.reduction = cfg_start, cfg_end, reduction
        self.generator = torch.Generator().manual_seed(seed)
        self.taus = annealed_taus(self.weight, iterations, tau_min, tau_max) if schedule == "anneal" else None

    def tau(self, iteration: int) -> float:
        if self.taus is not None:
            return float(self.taus[min(iteration, self.iterations - 1)])
        return float(sample_taus(self.weight, 1, self.generator, self.tau_min, self.tau_max)[0])

    def guidance(self, iteration: int) -> float:
        return self.cfg_start + (self.cfg_end - self.cfg_start) * iteration / max(self.iterations - 1, 1)

    def loss(self, video: Tensor, prompt: str, iteration: int) -> tuple[Tensor, dict[str, float]]:
        """Surrogate loss for a video ``[B, C, T, H, W]`` (encoded by the teacher) and its metrics."""
        z = self.teacher.encode(video)
        tau = torch.full((z.shape[0],), self.tau(iteration), dtype=z.dtype)
        eps = torch.randn(z.shape, generator=self.generator, dtype=z.dtype)
        scale = self.guidance(iteration)
        with torch.no_grad():
            z_tau, first = noised_latent(z.detach(), eps, tau), z[:, :, 0].detach()
            b = z.shape[0]
            ids = torch.cat([torch.full((b,), self.teacher.null_prompt), torch.full((b,), self.teacher.prompt_id(prompt))])
            both = teacher_velocity(self.teacher, z_tau.repeat(2, *[1] * (z.dim() - 1)), tau.repeat(2), ids,
                                    first.repeat(2, *[1] * (first.dim() - 1)))  # one forward for both CFG branches
            v = cfg_velocity(both[:b], both[b:], scale)
        return rfsds_loss(z, v, eps, reduction=self.reduction), {"tau": float(tau[0]), "cfg": scale}


def _as_video(value: Any) -> Tensor:
    x = torch.as_tensor(value, dtype=torch.float32)
    if x.dim() == 3:  # an image [C, H, W] is a one-frame video
        x = x[:, None]
    if x.dim() != 4:
        raise ValueError(f"rf_score expects a video [C, T, H, W] or an image [C, H, W], got shape {tuple(x.shape)}.")
    return x


@register_reward("rf_score")
class RFScoreReward(RewardModule):
    """``-E_{tau ~ w_hat, eps} |v_hat(z_tau) - (eps - z)|^2`` under a frozen RF teacher (higher = more likely).

    Args:
        teacher: a teacher or a spec for :func:`load_teacher` (default ``"tiny"``).
        samples: (tau, eps) draws per score, shared by a group (common random numbers).
        weight, tau_min, tau_max: tau density and clamp, as :class:`RFScoreDistillation`.
        guidance_scale: CFG on the teacher's conditional branch (1 = conditional only).
        baseline: ``"unconditional"`` (default) subtracts the null-prompt loss's negative; ``"none"`` is the raw
            negative RF loss. See the module docstring.
        seed: base seed of the shared draws.
    """

    description = "CHORD-style: negative rectified-flow loss of a video/image under a frozen RF teacher (likelihood proxy)."
    requires = ("video", "prompt")
    granularity = "groupwise"

    def __init__(self, teacher: Any = "tiny", samples: int = 4, weight: str = "chord", tau_min: float = 0.02,
                 tau_max: float = 0.98, guidance_scale: float = 1.0, baseline: str = "unconditional", seed: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if baseline not in ("unconditional", "none"):
            raise ValueError(f"rf_score: baseline must be 'unconditional' or 'none', got {baseline!r}.")
        self.baseline = baseline
        check_tau_options("sample", weight, tau_min, tau_max)
        if samples < 1:
            raise ValueError(f"rf_score: samples must be >= 1, got {samples}.")
        self.teacher = load_teacher(teacher)
        self.samples, self.weight, self.guidance_scale, self.seed = samples, WEIGHTS[weight], guidance_scale, seed
        self.tau_min, self.tau_max = tau_min, tau_max

    @torch.no_grad()
    def score_batch(self, batch: dict[str, list], group_ids: Sequence[int]) -> RewardOutput:
        scores: list[float | None] = []
        for video, prompt, gid in zip(batch["video"], batch["prompt"], group_ids):
            if video is None:
                scores.append(None)
                continue
            z = self.teacher.encode(_as_video(video)[None])
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(gid) % 1_000_003)  # shared within a group
            taus = sample_taus(self.weight, self.samples, g, self.tau_min, self.tau_max).float()
            ids, null = torch.tensor([self.teacher.prompt_id(prompt)]), torch.tensor([self.teacher.null_prompt])
            gains = []
            for tau in taus:
                eps = torch.randn(z.shape, generator=g)
                t = tau.reshape(1)
                z_tau = noised_latent(z, eps, t)
                both = teacher_velocity(self.teacher, z_tau.repeat(2, 1, 1, 1, 1), t.repeat(2), torch.cat([null, ids]),
                                        z[:, :, 0].repeat(2, 1, 1, 1))
                v_uncond, v_cond = both[:1], both[1:]
                loss = rf_denoising_loss(z, cfg_velocity(v_uncond, v_cond, self.guidance_scale), eps)
                if self.baseline == "unconditional":
                    loss = loss - rf_denoising_loss(z, v_uncond, eps)
                gains.append(-loss)
            scores.append(float(torch.cat(gains).mean()))
        return RewardOutput(scores)
