"""CHORD's hierarchical 4D motion: control points with linear blend skinning, each with a Fenwick-tree temporal store.

Spatial (Eq. 5-7): a point ``mu`` follows its ``neighbors`` nearest control points ``k``,
``mu^t = sum_k beta_k (R_k^t (mu - p_k) + p_k + T_k^t)``, ``beta_k ∝ exp(-|mu - p_k|^2 / (2 r_k^2)) + 1e-7`` (Gaussian
kernels with a learned radius per control point; CHORD's code uses anisotropic kernels, this is the isotropic case).
Temporal (Eq. 10-11): each control point's per-frame (quaternion, translation) is the Fenwick prefix sum of its nodes,
the quaternion being ``normalize(sum + (1, 0, 0, 0))`` as in the released code, so all-zero nodes are the identity and
frame 0 is frozen.

Coarse to fine (Eq. 8-9): a second, denser control-point set adds a residual once switched on. Where the residual is
computed is an option (``fine_residual_on``): ``"canonical"`` — ``LBS_fine(mu) - mu`` added to the coarse output, as
CHORD's code does (addendum §1.6, the default) — or ``"coarse"`` — ``LBS_fine(mu_coarse^t) - mu_coarse^t``, as the
paper's text reads. Points here carry no orientation (the renderer's Gaussians are isotropic), so the paper's
quaternion blending of Gaussian rotations is not needed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rlpost.algorithms import fenwick

__all__ = ["ControlPointLayer", "HierarchicalMotion", "farthest_points", "quaternion_to_matrix"]


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` from unit quaternions ``[..., 4]`` (w, x, y, z)."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(q.shape[:-1] + (3, 3))


def farthest_points(points: Tensor, k: int, seed: int = 0) -> Tensor:
    """``k`` of ``points [N, 3]`` by farthest-point sampling (CHORD initialises control points with FPS)."""
    k = min(k, points.shape[0])
    g = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(points.shape[0], (1,), generator=g))]
    dist = ((points - points[chosen[0]]) ** 2).sum(-1)
    for _ in range(k - 1):
        chosen.append(int(dist.argmax()))
        dist = torch.minimum(dist, ((points - points[chosen[-1]]) ** 2).sum(-1))
    return points[chosen].clone()


class ControlPointLayer(nn.Module):
    """One control-point set: centres ``p [K, 3]``, learned radii, and a Fenwick store ``[frames, K, 7]`` per frame.

    Args:
        centers: control point positions in the canonical (frame 0) scene.
        frames: number of frames including the frozen frame 0.
        neighbors: control points each point blends (CHORD's code: ``n_cp_num=3``).
        radius: initial kernel radius.
    """

    def __init__(self, centers: Tensor, frames: int, neighbors: int = 3, radius: float = 0.2) -> None:
        super().__init__()
        self.register_buffer("centers", centers.detach().clone())
        self.log_radius = nn.Parameter(torch.full((centers.shape[0],), float(radius)).log())
        self.nodes = nn.Parameter(torch.zeros(frames, centers.shape[0], 7))  # row 0 unused (frame 0 frozen)
        self.neighbors = min(neighbors, centers.shape[0])

    @property
    def frames(self) -> int:
        return self.nodes.shape[0]

    def frame_transforms(self, t: int) -> tuple[Tensor, Tensor]:
        """Frame ``t``'s rotations ``[K, 3, 3]`` and translations ``[K, 3]`` (Eq. 10-11)."""
        summed = fenwick.query(self.nodes, t)
        quat = summed[:, :4] + torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=summed.dtype, device=summed.device)
        return quaternion_to_matrix(quat / quat.norm(dim=-1, keepdim=True)), summed[:, 4:]

    def weights(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Blend weights ``[N, n]`` over each point's ``n`` nearest control points, and their indices ``[N, n]``."""
        d2 = ((points[:, None] - self.centers[None]) ** 2).sum(-1)  # [N, K]
        nearest = d2.detach().topk(self.neighbors, largest=False).indices
        radius = self.log_radius.exp()[nearest]
        beta = torch.exp(-d2.gather(1, nearest) / (2 * radius**2)) + 1e-7
        return beta / beta.sum(1, keepdim=True), nearest

    def deform(self, points: Tensor, t: int) -> Tensor:
        """``mu^t`` for ``points [N, 3]`` (Eq. 5)."""
        if t == 0:
            return points
        rot, trans = self.frame_transforms(t)
        beta, idx = self.weights(points)
        local = points[:, None] - self.centers[idx]  # [N, n, 3]
        moved = torch.einsum("nkij,nkj->nki", rot[idx], local) + self.centers[idx] + trans[idx]
        return (beta[..., None] * moved).sum(1)


class HierarchicalMotion(nn.Module):
    """Coarse control points plus an optional fine layer switched on later (``enable_fine``)."""

    def __init__(
        self,
        points: Tensor,
        frames: int,
        coarse: int = 8,
        fine: int = 24,
        neighbors: int = 3,
        fine_residual_on: str = "canonical",
        detach_coarse_with_fine: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if fine_residual_on not in ("canonical", "coarse"):
            raise ValueError(f"fine_residual_on must be 'canonical' or 'coarse', got {fine_residual_on!r}.")
        self.register_buffer("canonical", points.detach().clone())
        spread = float((points.max(0).values - points.min(0).values).norm()) or 1.0
        self.coarse = ControlPointLayer(farthest_points(points, coarse, seed), frames, neighbors, 0.25 * spread)
        self.fine = (
            ControlPointLayer(farthest_points(points, fine, seed + 1), frames, neighbors, 0.1 * spread) if fine else None
        )
        self.fine_residual_on = fine_residual_on
        self.detach_coarse_with_fine = detach_coarse_with_fine
        self.fine_active = False
        if self.fine is not None:
            self.fine.requires_grad_(False)

    @property
    def frames(self) -> int:
        return self.coarse.frames

    def enable_fine(self) -> None:
        """Switch the fine layer on; with ``detach_coarse_with_fine`` the coarse layer stops training (CHORD's code)."""
        if self.fine is None or self.fine_active:
            return
        self.fine_active = True
        self.fine.requires_grad_(True)
        if self.detach_coarse_with_fine:
            self.coarse.requires_grad_(False)

    def deform(self, t: int, points: Tensor | None = None) -> Tensor:
        """Frame ``t``'s positions of ``points`` (default: the canonical points) ``[N, 3]``."""
        x = self.canonical if points is None else points
        moved = self.coarse.deform(x, t)
        if self.fine_active:
            base = x if self.fine_residual_on == "canonical" else moved
            moved = moved + self.fine.deform(base, t) - base
        return moved

    def trajectory(self, points: Tensor | None = None) -> Tensor:
        """Every frame's positions ``[frames, N, 3]`` (frame 0 = the input)."""
        return torch.stack([self.deform(t, points) for t in range(self.frames)])

    @torch.no_grad()
    def hold_after(self, t_ref: int) -> None:
        """Copy frame ``t_ref``'s deformation onto every later frame (CHORD's "split training" re-initialisation)."""
        for layer in (self.coarse, self.fine):
            if layer is None:
                continue
            frames = fenwick.query_all(layer.nodes)
            frames[t_ref + 1:] = frames[t_ref]
            layer.nodes.copy_(fenwick.from_frames(frames))
