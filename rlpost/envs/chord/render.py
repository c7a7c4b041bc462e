"""A differentiable splatting renderer for isotropic 3D Gaussians, small enough for CPU (CHORD's gsplat stand-in).

Orthographic camera looking down -z: a Gaussian at (x, y, z) lands at pixel coordinates (x, y) in [-1, 1]^2 and is
composited front to back by depth (larger z is nearer). Pixel colour = sum_i T_i a_i c_i + T_N background, with
a_i = opacity_i exp(-|p - mu_i|^2 / (2 s_i^2)) and T_i = prod_{j<i} (1 - a_j): the alpha blending of 3D Gaussian
splatting with spherical Gaussians and no view-dependent colour. Gradients reach means, colours, scales and opacities.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pixel_grid", "render_gaussians", "render_video"]


def pixel_grid(size: int, device=None, dtype=torch.float32) -> Tensor:
    """Pixel centres of a ``size x size`` image in [-1, 1]^2, ``[size*size, 2]`` as (x, y), row-major, y up."""
    coords = (torch.arange(size, device=device, dtype=dtype) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(coords.flip(0), coords, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], 1)


def render_gaussians(
    means: Tensor, colors: Tensor, scales: Tensor, opacities: Tensor, size: int = 32, background: float = 0.0
) -> Tensor:
    """Images ``[..., C, size, size]`` from ``means [..., N, 3]``, ``colors [..., N, C]``, ``scales [..., N]``,
    ``opacities [..., N]`` (leading dims batch several scenes or frames; ``colors`` may have any channel count —
    CHORD's temporal regulariser renders displacements as colours)."""
    lead = means.shape[:-2]
    colors, scales, opacities = (
        colors.expand(lead + colors.shape[-2:]), scales.expand(lead + scales.shape[-1:]),
        opacities.expand(lead + opacities.shape[-1:]),
    )
    order = torch.argsort(means[..., 2].detach(), dim=-1, descending=True)  # nearest first
    means = means.gather(-2, order[..., None].expand(means.shape))
    colors = colors.gather(-2, order[..., None].expand(colors.shape))
    scales, opacities = scales.gather(-1, order), opacities.gather(-1, order)
    pixels = pixel_grid(size, means.device, means.dtype)  # [P, 2]
    d2 = ((pixels - means[..., :, None, :2]) ** 2).sum(-1)  # [..., N, P]
    alpha = (opacities[..., None] * torch.exp(-d2 / (2 * scales[..., None] ** 2))).clamp(max=0.999)
    passed = torch.cumprod(1 - alpha, -2)  # transmittance after each Gaussian
    transmit = torch.cat([torch.ones_like(alpha[..., :1, :]), passed[..., :-1, :]], -2)  # T_i
    image = (transmit * alpha).transpose(-1, -2) @ colors + passed[..., -1, :, None] * background  # [..., P, C]
    return image.transpose(-1, -2).reshape(lead + (colors.shape[-1], size, size))


def render_video(
    means: Tensor, colors: Tensor, scales: Tensor, opacities: Tensor, size: int = 32, background: float = 0.0
) -> Tensor:
    """Videos ``[..., C, T, size, size]`` from per-frame means ``[..., T, N, 3]`` (colours, scales and opacities
    ``[..., N, C]`` / ``[..., N]`` shared by the frames)."""
    frames = render_gaussians(means, colors[..., None, :, :], scales[..., None, :], opacities[..., None, :], size,
                              background)  # [..., T, C, H, W]
    return frames.transpose(-3, -4)
