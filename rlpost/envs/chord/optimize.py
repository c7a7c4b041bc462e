"""CHORD's per-scene loop: render the deforming scene, take a W-RFSDS gradient from a frozen video teacher, add the
regularisers, step Adam (CHORD, arXiv 2601.04194 §3; defaults from the released code, wave-2 addendum §1).

One iteration, in order:
1. ``tau_i`` from the annealed schedule (Eq. 4) or sampled from ``w_hat`` (Eq. 3), clamped to [tau_min, tau_max];
2. render the video of the current motion, encode it (the teacher's VAE), noise it to ``z_tau``;
3. teacher velocity with CFG (``v_u + s (v_c - v_u)``, ``s`` annealed from ``cfg_start`` to ``cfg_end``);
4. loss = W-RFSDS surrogate + lambda_ARAP · ARAP + lambda_temp · temporal flow (landmark schedules);
5. Adam step on the motion (control-point nodes and radii), learning rates decayed exponentially as the paper's.

The teacher is any module with ``encode(video)``, ``forward(z_tau, tau, prompt_ids, first_frame)``, ``null_prompt``
and ``prompt_id(prompt)``; :class:`rlpost.models.rf_video.TinyRFVideoTeacher` is the CPU one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlpost.algorithms.rfsds import check_tau_options
from rlpost.envs.chord.motion import HierarchicalMotion
from rlpost.envs.chord.regularizers import (
    ARAP_SCHEDULE,
    TEMPORAL_SCHEDULE,
    arap_loss,
    knn,
    landmark_schedule,
    near_surface_points,
    temporal_flow_loss,
)
from rlpost.envs.chord.render import render_video
from rlpost.rewards.rfsds import RFScoreDistillation

__all__ = ["ChordConfig", "ChordResult", "Scene", "optimize_motion", "export_tracks", "toy_scene"]


@dataclass
class ChordConfig:
    """CHORD's optimisation settings. Paper-scale values in comments; the defaults fit the tiny CPU teacher.

    Args:
        prompt: the motion prompt, one the teacher knows.
        iterations: optimisation iterations (paper 2,000; released code 3,000 with early stop at 2/3).
        schedule: ``"anneal"`` (Eq. 4, every example of the released code) or ``"sample"`` (tau ~ w_hat each step).
        weight: tau weight by name (``rlpost.algorithms.rfsds.WEIGHTS``); ``"chord"`` is the released code's.
        tau_min, tau_max: tau clamp (code: [0.02, 0.98]).
        cfg_start, cfg_end: CFG scale, linear in iteration (paper/code: 25 -> 12; the tiny teacher is trained with 10%
            null prompts and wants far less).
        lr_start, lr_end: deformation-node learning rate, exponential decay (paper: 6e-3 -> 6e-5).
        radius_lr_start, radius_lr_end: control-point radius learning rate (paper: 6e-3 -> 6e-5).
        coarse, fine, neighbors: control points per layer and LBS neighbours (code: 60 coarse, 300-1500 fine, 3).
        fine_start: fraction of the run after which the fine layer switches on (code: 300 of 3000 iterations).
        fine_residual_on, detach_coarse_with_fine: see :class:`rlpost.envs.chord.motion.HierarchicalMotion`.
        arap_weight, temporal_weight: multipliers of the code's landmark schedules (1 = the code's values, rescaled to
            ``iterations``); 0 turns a regulariser off.
        arap_points, arap_neighbors: near-surface samples and their neighbours (code: 1024; spec: 10 neighbours).
        hold_after_fraction, hold_after_frame: CHORD's "split training": at that fraction of the run, frames after
            ``hold_after_frame`` are reset to its deformation (code: iteration 100 of 3000, frame 29 of 41); a
            fraction of None disables it.
        reduction: RFSDS surrogate reduction (``"sum"`` as the code).
        seed: noise and initialisation seed.
        scene_center, scene_points: the toy scene of ``rlpost train`` recipes (a blob like the teacher's objects).
        gif_every: write the rendered video as a GIF every this many iterations (and at the end); 0 = only the end.
    """

    prompt: str = "move right"
    iterations: int = 150
    schedule: str = "anneal"
    weight: str = "chord"
    tau_min: float = 0.02
    tau_max: float = 0.98
    cfg_start: float = 3.0
    cfg_end: float = 1.5
    lr_start: float = 6e-3
    lr_end: float = 6e-5
    radius_lr_start: float = 6e-3
    radius_lr_end: float = 6e-5
    coarse: int = 4
    fine: int = 8
    neighbors: int = 3
    fine_start: float = 0.5
    fine_residual_on: str = "canonical"
    detach_coarse_with_fine: bool = True
    arap_weight: float = 1e-3
    temporal_weight: float = 1e-2
    arap_points: int = 256
    arap_neighbors: int = 6
    hold_after_fraction: float | None = None
    hold_after_frame: int = 29
    reduction: str = "sum"
    seed: int = 0
    scene_center: list[float] = field(default_factory=lambda: [0.0, 0.0])
    scene_points: int = 12
    gif_every: int = 50

    def __post_init__(self) -> None:
        check_tau_options(self.schedule, self.weight, self.tau_min, self.tau_max)


@dataclass
class Scene:
    """Canonical Gaussians of the input snapshot (frame 0): means ``[N, 3]``, colours ``[N, C]``, scales, opacities."""

    means: Tensor
    colors: Tensor
    scales: Tensor
    opacities: Tensor
    size: int = 16


def toy_scene(center: tuple[float, float] = (0.0, 0.0), count: int = 12, seed: int = 0, size: int = 16) -> Scene:
    """One blob like the tiny teacher's training objects, at ``center`` (x, y)."""
    from rlpost.models.rf_video import blob

    g = torch.Generator().manual_seed(seed)
    means = blob(torch.tensor([center[0], center[1], 0.0]), count=count, generator=g)
    return Scene(means, torch.tensor([[0.9, 0.6, 0.3]]).expand(count, -1).clone(), torch.full((count,), 0.08),
                 torch.full((count,), 0.8), size)


@dataclass
class ChordResult:
    trajectory: Tensor  # [T, N, 3] final per-frame means
    video: Tensor  # [C, T, H, W] final render
    history: list[dict[str, float]] = field(default_factory=list)

    def centroid_shift(self) -> Tensor:
        """Last frame's mean position minus frame 0's, ``[3]``: how far the scene moved."""
        return self.trajectory[-1].mean(0) - self.trajectory[0].mean(0)


def _exp_decay(start: float, end: float, fraction: float) -> float:
    return start * (end / start) ** fraction


def optimize_motion(teacher: Any, scene: Scene, config: ChordConfig, frames: int | None = None,
                    callback=None) -> ChordResult:
    """Optimise a motion of ``scene`` that the teacher finds likely under ``config.prompt``; see the module docstring."""
    frames = frames or teacher.config.frames
    torch.manual_seed(config.seed)
    motion = HierarchicalMotion(scene.means, frames, config.coarse, config.fine, config.neighbors,
                                config.fine_residual_on, config.detach_coarse_with_fine, config.seed)
    sds = RFScoreDistillation(teacher, config.iterations, config.schedule, config.weight, config.tau_min,
                              config.tau_max, config.cfg_start, config.cfg_end, config.reduction, config.seed)
    surface = near_surface_points(scene.means, scene.scales * 1.5, count=config.arap_points, seed=config.seed)
    surface_nn = knn(surface, config.arap_neighbors)
    node_params = [motion.coarse.nodes] + ([motion.fine.nodes] if motion.fine is not None else [])
    radius_params = [motion.coarse.log_radius] + ([motion.fine.log_radius] if motion.fine is not None else [])
    opt = torch.optim.Adam([{"params": node_params, "lr": config.lr_start},
                            {"params": radius_params, "lr": config.radius_lr_start}])
    history = []
    for i in range(config.iterations):
        fraction = i / max(config.iterations - 1, 1)
        if motion.fine is not None and fraction >= config.fine_start:
            motion.enable_fine()
        if config.hold_after_fraction is not None and i == int(config.hold_after_fraction * config.iterations):
            motion.hold_after(min(config.hold_after_frame, frames - 1))
        opt.param_groups[0]["lr"] = _exp_decay(config.lr_start, config.lr_end, fraction)
        opt.param_groups[1]["lr"] = _exp_decay(config.radius_lr_start, config.radius_lr_end, fraction)

        trajectory = motion.trajectory()  # [T, N, 3]
        video = render_video(trajectory, scene.colors, scene.scales, scene.opacities, scene.size)[None]
        loss_sds, info = sds.loss(video, config.prompt, i)
        moved = torch.stack([motion.deform(t, surface) for t in range(1, frames)])  # [T-1, P, 3]
        loss_arap = arap_loss(surface, moved, surface_nn)
        loss_temp = temporal_flow_loss(trajectory, scene.scales, scene.opacities, scene.size)
        lam_arap = config.arap_weight * landmark_schedule(i, *ARAP_SCHEDULE, total=config.iterations)
        lam_temp = config.temporal_weight * landmark_schedule(i, *TEMPORAL_SCHEDULE, total=config.iterations)
        loss = loss_sds + lam_arap * loss_arap + lam_temp * loss_temp
        opt.zero_grad()
        loss.backward()
        opt.step()
        row = {"iteration": i, **info, "loss/rfsds": float(loss_sds.detach()),
               "loss/arap": float(loss_arap.detach()), "loss/temporal": float(loss_temp.detach()),
               "shift_x": float((trajectory[-1, :, 0].mean() - trajectory[0, :, 0].mean()).detach())}
        history.append(row)
        if callback is not None:
            callback(row, video.detach())
    with torch.no_grad():
        trajectory = motion.trajectory()
        video = render_video(trajectory, scene.colors, scene.scales, scene.opacities, scene.size)
    return ChordResult(trajectory, video, history)


def export_tracks(result: ChordResult, path: str | Path, fps: float = 16.0) -> Path:
    """Per-point 3D tracks as JSON a robotics user can read: ``{"fps", "frames", "points", "tracks": [T][N][3]}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tracks = result.trajectory.tolist()
    path.write_text(json.dumps({"fps": fps, "frames": len(tracks), "points": len(tracks[0]), "units": "scene",
                                "tracks": tracks}))
    return path
