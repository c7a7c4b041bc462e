"""Rectified-flow score distillation (RFSDS) and its weighted, annealed form W-RFSDS (CHORD, arXiv 2601.04194 §3).

Convention (Wan / SD3 / diffusers flow matching, and rlpost's flow trainer): ``tau = 0`` is clean, ``tau = 1`` is
noise, ``z_tau = (1 - tau) z + tau eps`` and the teacher predicts the velocity ``v_hat ~= eps - z``.

- RFSDS (Eq. 2): ``grad_theta = E_{tau, eps}[ w(tau) (v_hat(z_tau) - eps + z) dz/dtheta ]``, the RF loss gradient with
  the teacher Jacobian dropped (as SDS drops it), computed through the surrogate :func:`rfsds_loss`.
- W-RFSDS (Eq. 3): sample ``tau`` from the normalised weight ``w_hat = w / integral(w)`` and drop ``w``
  (importance sampling: same expected direction, lower variance) — :func:`sample_taus`.
- Annealing (Eq. 4): the deterministic quantile schedule ``tau_i = h^-1(1 - i / (I + 1))``, ``h`` the CDF of ``w_hat``,
  so ``tau`` falls from high noise (coarse motion) to low noise (detail) — :func:`annealed_taus`.

The weight ``w(tau)`` is pluggable (any ``Tensor -> Tensor`` callable). The default, :func:`chord_weight`, is the one
in CHORD's released code (wave-2 addendum §1: ``tau / (1 - tau) * logitNormalPDF(tau; 0, 1)``, clipped to
[0.02, 0.98]); the original spec marked it as unknown, hence the alternatives here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "WEIGHTS",
    "annealed_taus",
    "cfg_velocity",
    "check_tau_options",
    "chord_weight",
    "inverse_cdf",
    "linear_weight",
    "noised_latent",
    "rf_denoising_loss",
    "rfsds_direction",
    "rfsds_loss",
    "sample_taus",
    "shifted_uniform_weight",
    "uniform_weight",
]

WeightFn = Callable[[Tensor], Tensor]


# -- weights w(tau) ------------------------------------------------------------------------------------------------
def uniform_weight(tau: Tensor) -> Tensor:
    """``w = 1``: plain uniform-tau RFSDS; its annealed schedule is ``tau_i = 1 - i / (I + 1)``."""
    return torch.ones_like(tau)


def linear_weight(tau: Tensor) -> Tensor:
    """``w ∝ tau``, the choice of one third-party re-implementation (spec §3.4 (a))."""
    return tau.clone()


def chord_weight(tau: Tensor, mu: float = 0.0, sigma: float = 1.0) -> Tensor:
    """CHORD's released weight: ``tau / (1 - tau) * logitNormalPDF(tau; mu, sigma)`` (addendum §1.1)."""
    logit = torch.log(tau) - torch.log1p(-tau)
    pdf = torch.exp(-((logit - mu) ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi) * tau * (1 - tau))
    return tau / (1 - tau) * pdf


def shifted_uniform_weight(tau: Tensor, shift: float = 5.0) -> Tensor:
    """Density of Wan's training timesteps ``tau = s u / (1 + (s - 1) u)``, ``u ~ U(0, 1)`` (spec §3.4 (b), shift 5)."""
    return shift / (shift - (shift - 1) * tau) ** 2


WEIGHTS: dict[str, WeightFn] = {
    "chord": chord_weight,
    "uniform": uniform_weight,
    "linear": linear_weight,
    "shifted_uniform": shifted_uniform_weight,
}
"""Weights by name, for configs (``weight: chord``)."""


# -- tau: inverse CDF of the normalised weight ---------------------------------------------------------------------
def inverse_cdf(weight: WeightFn, q: Tensor, grid_size: int = 20001) -> Tensor:
    """``h^-1(q)`` for ``h`` the CDF of ``w_hat = w / integral_0^1 w`` (numerically: midpoint rule, linear interpolation).

    ``q``: quantiles in [0, 1], any shape; returns taus of the same shape in [0, 1]. Exact for piecewise-linear ``w``.
    """
    tau = torch.linspace(0.0, 1.0, grid_size, dtype=torch.float64)
    mid = (tau[1:] + tau[:-1]) / 2  # w is evaluated inside the cells only: it may diverge at 0 or 1
    density = torch.nan_to_num(weight(mid).to(torch.float64), nan=0.0, posinf=0.0).clamp_min(0.0)
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(density, 0)])
    if not cdf[-1] > 0:
        raise ValueError("The tau weight integrates to 0 on (0, 1): nothing to sample.")
    cdf = cdf / cdf[-1]
    flat = q.reshape(-1).to(torch.float64).clamp(0.0, 1.0)
    hi = torch.searchsorted(cdf, flat).clamp(1, len(cdf) - 1)
    lo = hi - 1
    span = (cdf[hi] - cdf[lo]).clamp_min(1e-300)
    frac = ((flat - cdf[lo]) / span).clamp(0.0, 1.0)
    out = tau[lo] + frac * (tau[hi] - tau[lo])
    return out.reshape(q.shape).to(q.dtype if q.is_floating_point() else torch.float32)


def annealed_taus(
    weight: WeightFn, iterations: int, tau_min: float = 0.02, tau_max: float = 0.98, grid_size: int = 20001
) -> Tensor:
    """The annealed schedule of Eq. 4: ``tau_i = clamp(h^-1(1 - i / (I + 1)), tau_min, tau_max)`` for ``i = 1..I``.

    Returns ``[I]``, non-increasing (strictly decreasing where unclamped). Iteration ``i`` (1-based, as in the paper)
    uses element ``i - 1``. For ``w = 1`` it is ``1 - i / (I + 1)``.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}.")
    i = torch.arange(1, iterations + 1, dtype=torch.float64)
    return inverse_cdf(weight, 1.0 - i / (iterations + 1), grid_size).clamp(tau_min, tau_max)


def sample_taus(
    weight: WeightFn, n: int, generator: torch.Generator | None = None, tau_min: float = 0.02, tau_max: float = 0.98
) -> Tensor:
    """W-RFSDS's random alternative to annealing: ``n`` taus drawn from ``w_hat`` (inverse-CDF sampling), clamped."""
    q = torch.rand(n, generator=generator, dtype=torch.float64)
    return inverse_cdf(weight, q).clamp(tau_min, tau_max)


# -- the distillation gradient -------------------------------------------------------------------------------------
def check_tau_options(schedule: str, weight: str, tau_min: float, tau_max: float) -> None:
    """The tau options every W-RFSDS user takes (optimiser config, gradient source, reward), checked in one place."""
    if schedule not in ("anneal", "sample"):
        raise ValueError(f"schedule must be 'anneal' or 'sample', got {schedule!r}.")
    if weight not in WEIGHTS:
        raise ValueError(f"weight {weight!r} is unknown; choose one of {sorted(WEIGHTS)}.")
    if not 0 <= tau_min < tau_max <= 1:
        raise ValueError(f"need 0 <= tau_min < tau_max <= 1, got {tau_min}, {tau_max}.")


def _per_sample(tau: Tensor | float, like: Tensor) -> Tensor:
    tau = torch.as_tensor(tau, dtype=like.dtype, device=like.device)
    return tau.reshape(tau.shape + (1,) * (like.dim() - tau.dim())) if tau.dim() else tau


def noised_latent(z: Tensor, eps: Tensor, tau: Tensor | float) -> Tensor:
    """``z_tau = (1 - tau) z + tau eps`` (§3.3). ``tau``: a scalar or ``[B]`` for ``z`` of ``[B, ...]``."""
    t = _per_sample(tau, z)
    return (1 - t) * z + t * eps


def cfg_velocity(v_uncond: Tensor, v_cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance on the teacher: ``v = v_u + s (v_c - v_u)``; ``s = 1`` is the conditional velocity."""
    return v_uncond + scale * (v_cond - v_uncond)


def rfsds_direction(z: Tensor, v_hat: Tensor, eps: Tensor, weight: Tensor | float = 1.0) -> Tensor:
    """``g = w(tau) (v_hat - (eps - z))`` (Eq. 2), no gradient, NaN/inf zeroed as the released code does."""
    g = _per_sample(weight, z) * (v_hat.detach() - (eps - z.detach()))
    return torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)


def rfsds_loss(
    z: Tensor, v_hat: Tensor, eps: Tensor, weight: Tensor | float = 1.0, reduction: str = "sum"
) -> Tensor:
    """Surrogate whose gradient w.r.t. ``z`` is the RFSDS direction ``g`` (``reduction="sum"``, CHORD's code) or
    ``g / z.numel()`` (``"mean"``), with no backprop through the teacher: ``0.5 * sum((z - sg(z - g))^2)``.

    Backpropagating it through ``z = render(theta)`` gives ``g * dz/dtheta``, the W-RFSDS update of Eq. 3.
    """
    g = rfsds_direction(z, v_hat, eps, weight)
    target = (z - g).detach()
    loss = 0.5 * ((z - target) ** 2).sum()
    if reduction == "mean":
        return loss / z.numel()
    if reduction != "sum":
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}.")
    return loss


def rf_denoising_loss(z: Tensor, v_hat: Tensor, eps: Tensor, weight: Tensor | float = 1.0) -> Tensor:
    """Per-sample RF loss ``w(tau) mean ||v_hat - (eps - z)||^2`` (§3.3), ``[B]``: a likelihood proxy whose negative
    is the scalar reward of spec §3.9 (2)."""
    err = (v_hat - (eps - z)) ** 2
    return _per_sample(weight, z).reshape(-1) * err.reshape(err.shape[0], -1).mean(1) if z.dim() > 1 else err.mean()
