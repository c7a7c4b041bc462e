"""CHORD's regularisers (Eq. 12-13) and their weight schedules (addendum §1.4).

- ARAP on near-surface points: ``sum_x sum_{y in N(x)} |(x^t - y^t) - R_x (x - y)|^2`` with ``R_x`` the best-fit
  rotation of x's neighbourhood (Procrustes / Kabsch by SVD). The spec's form maps deformed edges back to rest edges;
  this is the equivalent ``R = R_hat^T`` form (spec §3.6 note).
- Temporal 3D flow: render a "flow video" whose colours are displacements ``mu^t - mu^{t+1}`` and penalise its energy.
- Schedules: a base weight times landmark values, interpolated log-linearly between landmark iterations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from rlpost.envs.chord.render import render_gaussians

__all__ = [
    "ARAP_SCHEDULE",
    "TEMPORAL_SCHEDULE",
    "arap_loss",
    "knn",
    "landmark_schedule",
    "near_surface_points",
    "temporal_flow_loss",
]

ARAP_SCHEDULE = (2.4, (0, 500, 1000, 1500, 3000), (1200, 800, 400, 200, 50))
"""(base, landmark iterations, landmark values) of CHORD's code: 2880 -> 120 over 3000 iterations."""
TEMPORAL_SCHEDULE = (2.0, (0, 500, 1000, 1500, 3000), (6, 6, 6, 4, 1))
"""12 -> 2 over 3000 iterations. (The original spec's 3000 -> 300 and 9.6 -> 1.6 are superseded by the code.)"""


def landmark_schedule(
    iteration: int, base: float, steps: Sequence[int], values: Sequence[float], total: int | None = None
) -> float:
    """``base * value(iteration)``, log-linear between landmarks; ``total`` rescales the landmark iterations to a run
    of another length (the landmarks are for ``steps[-1]`` iterations)."""
    scale = 1.0 if total is None else total / steps[-1]
    xs = [s * scale for s in steps]
    if iteration <= xs[0]:
        return base * values[0]
    for (x0, v0), (x1, v1) in zip(zip(xs, values), zip(xs[1:], values[1:])):
        if iteration <= x1:
            frac = (iteration - x0) / (x1 - x0)
            return base * math.exp((1 - frac) * math.log(v0) + frac * math.log(v1))
    return base * values[-1]


def knn(points: Tensor, k: int) -> Tensor:
    """Indices ``[N, k]`` of each point's ``k`` nearest other points."""
    d2 = torch.cdist(points, points)
    d2.fill_diagonal_(float("inf"))
    return d2.topk(min(k, points.shape[0] - 1), largest=False).indices


def near_surface_points(
    centers: Tensor, radii: Tensor, count: int = 1024, band: float = 1.0, grid: int = 24, seed: int = 0
) -> Tensor:
    """Voxel centres within ``band`` voxels of the surface of the union of spheres ``(centers, radii)``, ``[<=count, 3]``.

    The union's signed distance ``phi(x) = min_i |x - c_i| - r_i`` stands in for the object SDF of §3.6; points with
    ``|phi| <= band * voxel`` are kept and subsampled to ``count`` (CHORD's code: ``arap_sample_num=1024``).
    """
    lo = (centers - radii[:, None]).min(0).values
    hi = (centers + radii[:, None]).max(0).values
    axes = [torch.linspace(float(a), float(b), grid) for a, b in zip(lo, hi)]
    voxels = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    voxel = float((hi - lo).max()) / (grid - 1)
    phi = (torch.cdist(voxels, centers) - radii[None]).min(1).values
    near = voxels[phi.abs() <= band * voxel]
    if near.shape[0] > count:
        g = torch.Generator().manual_seed(seed)
        near = near[torch.randperm(near.shape[0], generator=g)[:count]]
    return near


def _best_rotations(rest_edges: Tensor, moved_edges: Tensor) -> Tensor:
    """Per point the rotation R minimising ``sum |moved - R rest|^2`` (Kabsch), ``[..., N, 3, 3]``; no gradient."""
    cov = torch.einsum("...nki,...nkj->...nij", moved_edges, rest_edges).detach()
    u, _, vh = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(u @ vh))
    fix = torch.diag_embed(torch.stack([torch.ones_like(sign), torch.ones_like(sign), sign], -1))
    return u @ fix @ vh


def arap_loss(rest: Tensor, moved: Tensor, neighbors: Tensor) -> Tensor:
    """As-rigid-as-possible energy (Eq. 13) of ``moved [..., N, 3]`` (leading dims: frames) against ``rest [N, 3]``,
    neighbours ``[N, k]``: mean over edges of ``|(x^t - y^t) - R_x (x - y)|^2``. Zero for any rigid motion."""
    rest_edges = (rest[:, None] - rest[neighbors]).expand(moved.shape[:-2] + neighbors.shape + (3,))  # [..., N, k, 3]
    moved_edges = moved[..., :, None, :] - moved[..., neighbors, :]
    rot = _best_rotations(rest_edges, moved_edges)
    residual = moved_edges - torch.einsum("...nij,...nkj->...nki", rot, rest_edges)
    return (residual**2).sum(-1).mean()


def temporal_flow_loss(trajectory: Tensor, scales: Tensor, opacities: Tensor, size: int = 32) -> Tensor:
    """Eq. 12: render each frame pair's displacement ``mu^t - mu^{t+1}`` as colour and take the mean squared pixel
    flow over frames and pixels (the paper sums; the mean keeps the weight independent of resolution and length).
    ``trajectory``: ``[T, N, 3]``. Zero for a static scene."""
    flow = render_gaussians(trajectory[:-1], trajectory[:-1] - trajectory[1:], scales, opacities, size)  # [T-1, 3, H, W]
    return flow.pow(2).sum(1).mean()
