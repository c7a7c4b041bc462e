"""SDE sampling math for GRPO on rectified-flow models (Flow-GRPO, DanceGRPO, E-GRPO).

Conventions (spec e-grpo.md §1.1): time t ∈ [0, 1], t = 1 is pure noise and t = 0 is
data, x_t = (1 − t)·x0 + t·ε, the model predicts the velocity v ≈ ε − x0, and sampling
runs from t = 1 down to 0, so every step has Δt = t_next − t < 0.

Everything here is a pure function of its inputs (torch only, no I/O, no state):

- ``shifted_sigmas``      the SD3-shifted time grid t_0 = 1 > t_1 > … > t_T = 0.
- ``sde_sigma``           the diffusion coefficient σ_t (Flow-GRPO) or η (DanceGRPO).
- ``sde_step``            one Euler–Maruyama step of the reverse SDE with its log-prob.
- ``ode_step``            one Euler step of the probability-flow ODE.
- ``gaussian_log_prob``   diagonal Gaussian log-density, averaged or summed per sample.
- ``gaussian_entropy``    differential entropy of an isotropic Gaussian step, total or per dimension.
- ``step_entropy``        E-GRPO's per-step Gaussian entropy (three readings).
- ``merge_schedule``      E-GRPO's adaptive step merging (smallest l with E ≥ τ).
- ``explicit_schedule``   validated hand-written (active_steps, merge_lens) lists.

The t = 1 fix. σ_t = a·sqrt(t/(1−t)) is infinite at t = 1. The reference code
(flow_grpo ``sd3_sde_with_logprob.py``, VisualGRPO ``_flow_grpo_step``) replaces the
*denominator* (1 − t) by (1 − sigmas[1]) and keeps the numerator t = 1. This module calls
that convention ``at_one="denominator"`` (the default everywhere). The spec's reproducer
for the E-GRPO golden entropies (§1.4: 8.19, 8.93, 4.56, 3.11, 2.38) instead evaluates
the whole ratio t/(1−t) at sigmas[1]; that is ``at_one="ratio"``. The two differ only at
t = 1 (index 0) and by the factor sigmas[1] (= 45/46 for T=16, shift 3): the
"denominator" reading gives E_0 = 2πe·a² = 8.369 there instead of 8.187. Merge lengths
are identical under both for the paper's settings (index 0 is far above τ either way).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = [
    "shifted_sigmas",
    "sde_sigma",
    "sde_step",
    "ode_step",
    "gaussian_log_prob",
    "gaussian_entropy",
    "step_entropy",
    "merge_schedule",
    "explicit_schedule",
    "SIGMA_VARIANTS",
    "ENTROPY_DEFINITIONS",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_TWO_PI_E = 2.0 * math.pi * math.e
_AT_ONE_CONVENTIONS = ("denominator", "ratio")
_REDUCTIONS = ("mean", "sum", "none")

TimeLike = float | torch.Tensor


# ----------------------------------------------------------------------------- schedule


def shifted_sigmas(num_steps: int, shift: float = 3.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """SD3-shifted sampling grid, from noise (t=1) to data (t=0).

    t̂_k = linspace(1, 0, T+1), then t_k = s·t̂_k / (1 + (s−1)·t̂_k)
    (the SD3 time shift of Esser et al. 2024 as coded in Flow-GRPO / VisualGRPO
    ``sd3_time_shift``; spec e-grpo.md §1.1). Endpoints stay exactly 1 and 0 for any s > 0.

    Args:
        num_steps: T, the number of sampling steps (≥ 1).
        shift: s (> 0); 1.0 leaves the grid uniform. Default 3.0 (E-GRPO / DanceGRPO FLUX).
        dtype: float32 by default, the dtype the reference samplers use.

    Returns:
        sigmas: [T+1], strictly decreasing, sigmas[0] = 1, sigmas[T] = 0.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}.")
    if not shift > 0:
        raise ValueError(f"shift must be > 0 (1.0 = no shift), got {shift!r}.")
    base = torch.linspace(1.0, 0.0, num_steps + 1, dtype=dtype)
    return shift * base / (1.0 + (shift - 1.0) * base)


# ----------------------------------------------------------------------------- helpers


def _as_tensor(value: TimeLike, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(dtype=dtype, device=device if device is not None else value.device)
    return torch.tensor(float(value), dtype=dtype, device=device)


def _per_sample(value: TimeLike, x: torch.Tensor, name: str) -> torch.Tensor:
    """float32 copy of a scalar or per-sample [B] time, shaped to broadcast over x [B, ...]."""
    out = _as_tensor(value, torch.float32, x.device)
    if out.ndim == 0:
        return out
    if out.ndim == 1 and out.shape[0] == x.shape[0]:
        return out.view(-1, *([1] * (x.ndim - 1)))  # [B, 1, ..., 1]
    raise ValueError(
        f"{name} must be a python float, a 0-dim tensor or a per-sample tensor of shape "
        f"[{x.shape[0]}] (the batch size of x {tuple(x.shape)}); got shape {tuple(out.shape)}."
    )


def _check_times(t: torch.Tensor, t_next: torch.Tensor) -> None:
    # Sampling runs from noise to data: 0 ≤ t_next < t ≤ 1, so Δt < 0 everywhere.
    if not bool(((t > 0) & (t <= 1)).all()):
        raise ValueError(f"t must lie in (0, 1] (t=1 is noise, t=0 is data); got {t.flatten().tolist()}.")
    if not bool(((t_next >= 0) & (t_next < t)).all()):
        raise ValueError(
            "t_next must satisfy 0 <= t_next < t (sampling goes from t=1 down to 0, so dt < 0); "
            f"got t={t.flatten().tolist()}, t_next={t_next.flatten().tolist()}."
        )


def _noise_ratio(t: torch.Tensor, t_at_one: TimeLike | None, at_one: str) -> torch.Tensor:
    """r(t) = t/(1−t) with the t=1 fix; the single place that convention lives."""
    if at_one not in _AT_ONE_CONVENTIONS:
        raise ValueError(f"at_one must be one of {_AT_ONE_CONVENTIONS}, got {at_one!r}.")
    at_end = t == 1
    if bool(at_end.any()):
        if t_at_one is None:
            raise ValueError(
                "t/(1-t) is infinite at t=1: pass t_next_at_one (the reference code uses sigmas[1], "
                "the first time after t=1) to replace t in the denominator."
            )
        fix = _as_tensor(t_at_one, t.dtype, t.device)
        if not bool(((fix >= 0) & (fix < 1)).all()):
            raise ValueError(f"t_next_at_one must lie in [0, 1), got {fix.flatten().tolist()}.")
        denom_t = torch.where(at_end, fix, t)
    else:
        denom_t = t
    numer_t = denom_t if at_one == "ratio" else t
    return numer_t / (1 - denom_t)


# ----------------------------------------------------------------------------- sigma


def _flow_grpo_sigma(t: torch.Tensor, a: float, t_next_at_one: TimeLike | None, at_one: str) -> torch.Tensor:
    return a * torch.sqrt(_noise_ratio(t, t_next_at_one, at_one))


def _dance_grpo_sigma(t: torch.Tensor, a: float, t_next_at_one: TimeLike | None, at_one: str) -> torch.Tensor:
    # DanceGRPO's η is constant in time, so the t=1 fix never applies.
    return torch.full_like(t, float(a))


SIGMA_VARIANTS: dict[str, Callable[..., torch.Tensor]] = {
    "flow_grpo": _flow_grpo_sigma,
    "dance_grpo": _dance_grpo_sigma,
}
"""Diffusion-coefficient variants for ``sde_sigma`` / ``sde_step``, by name."""


def sde_sigma(
    t: TimeLike,
    a: float,
    t_next_at_one: TimeLike | None = None,
    variant: str = "flow_grpo",
    at_one: str = "denominator",
) -> torch.Tensor:
    """Diffusion coefficient σ_t of the reverse-time SDE.

    - ``"flow_grpo"``: σ_t = a·sqrt(t / (1−t)) (E-GRPO eq. 2, taken unchanged from
      Flow-GRPO, Liu et al. 2025; spec e-grpo.md §1.2), a = "noise_level"/"eta", 0.7 in E-GRPO.
    - ``"dance_grpo"``: σ_t = a constant (DanceGRPO's η, 0.3 in its FLUX script).

    At t = 1 the flow_grpo ratio is infinite. ``t_next_at_one`` is the value that
    replaces t there: the reference code passes sigmas[1]. With ``at_one="denominator"``
    (default, the reference code) only (1−t) becomes (1 − t_next_at_one), giving
    a·sqrt(1/(1−sigmas[1])); with ``"ratio"`` the whole t/(1−t) is evaluated at
    t_next_at_one (the reading that reproduces the spec's golden entropy 8.19 at index 0;
    see the module docstring). Inferred from code, not stated in any paper.

    Args:
        t: float or tensor of any shape, values in [0, 1].
        a: noise scale, ≥ 0.
        t_next_at_one: required when any t == 1 (flow_grpo); float or tensor broadcastable to t.
        variant: key of ``SIGMA_VARIANTS``.
        at_one: "denominator" or "ratio".

    Returns:
        σ_t, float32 tensor with the shape of t.
    """
    if variant not in SIGMA_VARIANTS:
        raise ValueError(f"Unknown SDE variant {variant!r}; choose one of {sorted(SIGMA_VARIANTS)}.")
    if not a >= 0:
        raise ValueError(f"The noise scale a must be >= 0, got {a!r}.")
    t = _as_tensor(t, torch.float32)
    if not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError(f"t must lie in [0, 1], got {t.flatten().tolist()}.")
    return SIGMA_VARIANTS[variant](t, a, t_next_at_one, at_one)


# ----------------------------------------------------------------------------- log-prob


def gaussian_log_prob(
    x: torch.Tensor, mean: torch.Tensor, std: TimeLike, reduce: str = "mean"
) -> torch.Tensor:
    """Log-density of x under the diagonal Gaussian N(mean, std²·I), per sample.

    log p = −(x−μ)²/(2s²) − log s − log sqrt(2π), element-wise (Flow-GRPO / DanceGRPO /
    VisualGRPO code, spec e-grpo.md §1.2), then reduced over every non-batch dim.
    ``reduce="mean"`` (default) is those codebases' convention, so a PPO ratio is
    exp(mean per-element log-ratio) and clip ranges like 1e-4 keep their meaning;
    ``"sum"`` is the true joint log-density; ``"none"`` keeps the element-wise values.

    Args:
        x: [B, ...] the sample.
        mean: broadcastable to x.
        std: float or tensor broadcastable to x; every entry must be > 0.
        reduce: "mean", "sum" or "none".

    Returns:
        [B] float32 (or x's shape for "none").
    """
    if reduce not in _REDUCTIONS:
        raise ValueError(f"reduce must be one of {_REDUCTIONS}, got {reduce!r}.")
    if x.ndim < 1:
        raise ValueError("x must have a batch dimension: expected shape [B, ...], got a 0-dim tensor.")
    std = _as_tensor(std, torch.float32, x.device)
    if not bool((std > 0).all()):
        raise ValueError(
            "The Gaussian std must be > 0 to have a log-density; a zero std (a=0, or t=0) is a "
            "deterministic step: use ode_step for it and do not train on its log-prob."
        )
    x = x.to(torch.float32)
    mean = mean.to(torch.float32)
    if torch.broadcast_shapes(x.shape, mean.shape, std.shape) != x.shape:
        raise ValueError(
            f"mean {tuple(mean.shape)} and std {tuple(std.shape)} must broadcast to the shape of "
            f"x {tuple(x.shape)}."
        )
    elementwise = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    if reduce == "none" or x.ndim == 1:
        return elementwise
    dims = tuple(range(1, x.ndim))
    return elementwise.mean(dim=dims) if reduce == "mean" else elementwise.sum(dim=dims)


# ----------------------------------------------------------------------------- steps


def ode_step(x: torch.Tensor, v: torch.Tensor, t: TimeLike, t_next: TimeLike) -> torch.Tensor:
    """One Euler step of the probability-flow ODE: x_{t+Δt} = x_t + v·Δt, Δt = t_next − t < 0.

    E-GRPO eq. 1 (spec e-grpo.md §1.1); the a → 0 limit of ``sde_step``'s mean. float32.

    Args:
        x, v: [B, ...].
        t, t_next: floats or per-sample tensors [B]; 0 ≤ t_next < t ≤ 1.

    Returns:
        x_next: [B, ...] float32.
    """
    if x.shape != v.shape:
        raise ValueError(f"x and v must have the same shape, got {tuple(x.shape)} and {tuple(v.shape)}.")
    t_b = _per_sample(t, x, "t")
    t_next_b = _per_sample(t_next, x, "t_next")
    _check_times(t_b, t_next_b)
    return x.to(torch.float32) + v.to(torch.float32) * (t_next_b - t_b)


def sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    t: TimeLike,
    t_next: TimeLike,
    a: float,
    noise: torch.Tensor | None = None,
    variant: str = "flow_grpo",
    sigma_t: TimeLike | None = None,
    reduce: str = "mean",
    prev_sample: torch.Tensor | None = None,
    t_at_one: TimeLike | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Euler–Maruyama step of the reverse SDE, with the step's log-probability.

    E-GRPO eq. 2, the Flow-GRPO sampler (Liu et al. 2025, ``sde_step_with_logprob``) reused
    unchanged (spec e-grpo.md §1.2):

        mean   = x + [v + σ_t²/(2t)·(x + (1−t)·v)]·Δt,      Δt = t_next − t < 0
        std    = σ_t·sqrt(|Δt|)
        x_next = mean + std·ε,                               ε ~ N(0, I)
        log_prob = gaussian_log_prob(x_next, mean, std, reduce)

    ``variant="dance_grpo"`` sets σ_t := a (DanceGRPO's η): its ``flux_step`` form
    mean = x + dσ·v − ½η²·score·dσ with score = −(x − (1−σ)·x̂0)/σ², x̂0 = x − σ·v, std
    η·sqrt(σ − σ_next), is algebraically this drift with σ_t² = η².

    A merged E-GRPO step over l grid intervals (E-GRPO §3.3.1, VisualGRPO
    ``merge_step``) is this same call with t = sigmas[i] and t_next = sigmas[i + l]:
    drift and σ are evaluated at the start point t_m, and the variance is
    σ_{t_m}²·(t_m − t_{m−l}).

    Re-evaluation: pass ``prev_sample`` (a stored x_next) to get its log-prob under the
    current v instead of sampling; with identical inputs the result equals the sampled
    log-prob bit for bit (ratio ≡ 1). The sample enters the log-prob detached, so the
    gradient flows through ``mean`` only (the policy-gradient score function). Everything
    is computed and returned in float32 regardless of input dtype; storing x_next in a
    lower precision changes its re-evaluated log-prob.

    Args:
        x: [B, ...] latent at time t.
        v: [B, ...] predicted velocity v(x, t).
        t, t_next: floats, 0-dim tensors or per-sample tensors [B] (broadcast over non-batch
            dims); 0 ≤ t_next < t ≤ 1.
        a: noise scale (flow_grpo "noise_level"/"eta", dance_grpo η); must be > 0 unless
            ``sigma_t`` is given.
        noise: [B, ...] ε; drawn with ``torch.randn_like`` when None. Not allowed together
            with ``prev_sample``.
        variant: key of ``SIGMA_VARIANTS`` ("flow_grpo" or "dance_grpo").
        sigma_t: override σ_t (float or [B]); skips ``sde_sigma``.
        reduce: "mean" (default, reference codebases), "sum" or "none"; see
            ``gaussian_log_prob``.
        prev_sample: [B, ...] a stored sample to score instead of drawing one.
        t_at_one: value replacing t in (1−t) where t == 1 (flow_grpo). Defaults to t_next,
            which is sigmas[1] for an unmerged first step, as in the reference code. For a
            merged step that starts at t=1 pass sigmas[1] explicitly to match that code.

    Returns:
        (x_next [B, ...], log_prob [B] (x's shape for reduce="none"), mean [B, ...],
        std broadcastable to x: [] or [B, 1, ..., 1]), all float32.
    """
    if x.shape != v.shape:
        raise ValueError(f"x and v must have the same shape, got {tuple(x.shape)} and {tuple(v.shape)}.")
    if noise is not None and prev_sample is not None:
        raise ValueError(
            "Pass either noise (to draw a new sample) or prev_sample (to score a stored one), not both."
        )
    for name, other in (("noise", noise), ("prev_sample", prev_sample)):
        if other is not None and other.shape != x.shape:
            raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(other.shape)}.")

    t_b = _per_sample(t, x, "t")
    t_next_b = _per_sample(t_next, x, "t_next")
    _check_times(t_b, t_next_b)
    if sigma_t is None:
        fix = t_next_b if t_at_one is None else _per_sample(t_at_one, x, "t_at_one")
        sigma = sde_sigma(t_b, a, t_next_at_one=fix, variant=variant)
    else:
        sigma = _per_sample(sigma_t, x, "sigma_t")
    # a = 0 (σ = 0) has no density; gaussian_log_prob rejects it and points to ode_step.

    x32 = x.to(torch.float32)
    v32 = v.to(torch.float32)
    dt = t_next_b - t_b  # < 0
    mean = x32 + (v32 + sigma**2 / (2 * t_b) * (x32 + (1 - t_b) * v32)) * dt
    std = sigma * torch.sqrt(-dt)

    if prev_sample is None:
        eps = torch.randn_like(x32) if noise is None else noise.to(torch.float32)
        x_next = mean + std * eps
    else:
        x_next = prev_sample.to(torch.float32)
    log_prob = gaussian_log_prob(x_next.detach(), mean, std, reduce=reduce)
    return x_next, log_prob, mean, std


# ----------------------------------------------------------------------------- entropy


def gaussian_entropy(std: TimeLike, dim: int = 1) -> torch.Tensor:
    """Differential entropy of N(μ, std²·I_d): h = d·(log std + ½·log(2πe))  (E-GRPO §3.2 eq. 5).

    ``dim=1`` (default) gives the per-dimension entropy h/d, the scale-free number the trainers log for any σ
    variant (``step_entropy`` covers the Flow-GRPO σ_t only, because τ is defined on it). ``std`` is a float or a
    tensor of positive values; returns float64 of its shape.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim is the number of Gaussian dimensions d (int >= 1), got {dim!r}.")
    std = _as_tensor(std, torch.float64)
    if not bool((std > 0).all()):
        raise ValueError("gaussian_entropy needs std > 0 (a deterministic ODE step has no entropy).")
    return dim * (torch.log(std) + 0.5 * math.log(_TWO_PI_E))


def _entropy_per_dim_exp(ratio_dt: torch.Tensor, a: float, dim: int | None) -> torch.Tensor:
    return _TWO_PI_E * a**2 * ratio_dt


def _entropy_differential(ratio_dt: torch.Tensor, a: float, dim: int | None) -> torch.Tensor:
    if dim is None or isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(
            f'definition="differential" needs dim, the number of latent dimensions d (int >= 1); got {dim!r}.'
        )
    return 0.5 * dim * torch.log(_TWO_PI_E * a**2 * ratio_dt)


def _entropy_proxy(ratio_dt: torch.Tensor, a: float, dim: int | None) -> torch.Tensor:
    return ratio_dt


ENTROPY_DEFINITIONS: dict[str, Callable[[torch.Tensor, float, int | None], torch.Tensor]] = {
    "per_dim_exp": _entropy_per_dim_exp,
    "differential": _entropy_differential,
    "proxy": _entropy_proxy,
}
"""Readings of E-GRPO's step entropy, by name; each maps (r(t)·|Δt|, a, d) to a value."""


def step_entropy(
    t: TimeLike,
    t_next: TimeLike,
    a: float,
    dim: int | None = None,
    definition: str = "per_dim_exp",
    t_at_one: TimeLike | None = None,
    at_one: str = "denominator",
) -> torch.Tensor:
    """Entropy of one (possibly merged) SDE step, E-GRPO §3.2 eqs. 5–11 (spec §1.3–1.4).

    The step's policy is N(mean, σ_t²·|Δt|·I) over d dims, σ_t² = a²·t/(1−t), so

    - ``"differential"``: h = d/2 · log(2πe·σ_t²·|Δt|)  (E-GRPO §3.2); needs ``dim``.
    - ``"per_dim_exp"`` (default): e^{2h/d} = 2πe·a²·t/(1−t)·|Δt|. This is the quantity the
      spec recommends comparing with τ = 2.2 [inferred, spec §1.4: the paper only gives
      proportionalities]; it reproduces the spec's values 8.19, 8.93, 4.56, 3.11, 2.38 at
      indices 0–4 for T=16, s=3, a=0.7 (index 0 only with ``at_one="ratio"``, see below).
    - ``"proxy"``: t/(1−t)·|Δt|  (E-GRPO eq. 11, the monotone proxy of e^h; no a).

    For a merged step t_next = t_{m−l}; the entropy grows with l. At t = 1 the ratio
    t/(1−t) uses the same fix as ``sde_sigma``: ``t_at_one`` (default t_next, i.e.
    sigmas[1] for an unmerged first step; ``merge_schedule`` passes sigmas[1]) replaces t
    in the denominator (``at_one="denominator"``, the reference sampler's σ, default) or in
    the whole ratio (``"ratio"``, the spec reproducer's reading: 8.19 instead of 8.37 at
    index 0).

    Computed in float64: this is schedule-level scalar math, and merge decisions near τ
    should not depend on the dtype the caller's grid happens to have.

    Args:
        t, t_next: floats or tensors of a common broadcast shape; 0 ≤ t_next < t ≤ 1.
        a: noise scale, ≥ 0 (a = 0 gives −inf for "differential").
        dim: d, the number of latent dimensions ("differential" only).
        definition: key of ``ENTROPY_DEFINITIONS``.
        t_at_one, at_one: the t = 1 fix, as above.

    Returns:
        float64 tensor of the broadcast shape of t and t_next.
    """
    if definition not in ENTROPY_DEFINITIONS:
        raise ValueError(
            f"Unknown entropy definition {definition!r}; choose one of {sorted(ENTROPY_DEFINITIONS)}."
        )
    if not a >= 0:
        raise ValueError(f"The noise scale a must be >= 0, got {a!r}.")
    t = _as_tensor(t, torch.float64)
    t_next = _as_tensor(t_next, torch.float64, t.device)
    _check_times(t, t_next)
    fix = t_next if t_at_one is None else t_at_one
    ratio_dt = _noise_ratio(t, fix, at_one) * (t - t_next)
    return ENTROPY_DEFINITIONS[definition](ratio_dt, a, dim)


# ----------------------------------------------------------------------------- merging


def _check_sigmas(sigmas: torch.Tensor | Sequence[float]) -> torch.Tensor:
    # float64 so merge decisions near τ do not depend on the caller's grid dtype
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64, device="cpu")
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D grid of T+1 >= 2 times, got shape {tuple(sigmas.shape)}.")
    if not bool((sigmas[1:] < sigmas[:-1]).all()) or sigmas[0] > 1 or sigmas[-1] < 0:
        raise ValueError(
            "sigmas must decrease strictly from <= 1 (noise) to >= 0 (data); build it with shifted_sigmas."
        )
    return sigmas


def _check_index(i: object, num_steps: int | None, what: str) -> int:
    if isinstance(i, bool) or not isinstance(i, int):
        raise TypeError(f"{what} must be an int, got {i!r} of type {type(i).__name__}.")
    if i < 0 or (num_steps is not None and i >= num_steps):
        bound = f"[0, {num_steps - 1}]" if num_steps is not None else ">= 0"
        raise ValueError(f"{what} {i} is out of range: step indices must be in {bound}.")
    return i


def merge_schedule(
    sigmas: torch.Tensor | Sequence[float],
    a: float,
    tau: float,
    active_steps: Sequence[int],
    definition: str = "per_dim_exp",
    max_merge: int | None = None,
    dim: int | None = None,
    at_one: str = "denominator",
) -> list[tuple[int, int]]:
    """E-GRPO entropy-driven adaptive step merging (§3.3.1; spec e-grpo.md §1.4).

    For each active index i, the merge length is the smallest l ≥ 1 with
    E(i, l) = step_entropy(sigmas[i], sigmas[i+l], a) ≥ τ, so each training step has a
    moderate entropy rather than a large one. Steps already ≥ τ keep l = 1; l is capped at
    len(sigmas) − 1 − i (the end of the schedule) and at ``max_merge``, and takes the cap
    when no l reaches τ. τ = 0 means no merging (all l = 1). The merged step then is
    ``sde_step(x, v, sigmas[i], sigmas[i+l], a, t_at_one=sigmas[1])``.

    Which entropy τ is compared with is not stated in the paper [inferred]: the default
    ``"per_dim_exp"`` is the spec's recommended reading; with τ=2.2, T=16, s=3, a=0.7 and
    active steps 0–7 it gives l = [1, 1, 1, 1, 1, 2, 2, 2]. At t=1 the ratio uses sigmas[1]
    (see ``step_entropy`` for ``at_one``; both conventions give the same lengths there).

    Args:
        sigmas: [T+1] grid from ``shifted_sigmas``.
        a: noise scale (0.7 in E-GRPO).
        tau: threshold τ ≥ 0 (2.2 in E-GRPO; ablations 0, 1.8, 2.0, 2.6).
        active_steps: schedule indices in [0, T−1] that get an SDE step.
        definition: key of ``ENTROPY_DEFINITIONS``; ``dim`` is needed for "differential".
        max_merge: optional upper bound on l (≥ 1).
        at_one: the t=1 convention, "denominator" (default) or "ratio".

    Returns:
        [(start_index, merge_len), ...] in the order of ``active_steps``.
    """
    sigmas = _check_sigmas(sigmas)
    num_steps = sigmas.numel() - 1
    if not tau >= 0:
        raise ValueError(f"tau must be >= 0 (0 disables merging), got {tau!r}.")
    bad_cap = isinstance(max_merge, bool) or not isinstance(max_merge, int) or max_merge < 1
    if max_merge is not None and bad_cap:
        raise ValueError(f"max_merge must be None or an int >= 1, got {max_merge!r}.")
    fix = sigmas[1]  # the reference code's stand-in for t=1 in t/(1-t)
    schedule = []
    for i in active_steps:
        i = _check_index(i, num_steps, "active step")
        cap = num_steps - i if max_merge is None else min(num_steps - i, max_merge)
        # E(i, l) grows with l (|Δt| grows, σ fixed at t_i), so the first hit is the smallest.
        ends = sigmas[i + 1 : i + cap + 1]  # [cap] candidate t_next for l = 1..cap
        energies = step_entropy(
            sigmas[i], ends, a, dim=dim, definition=definition, t_at_one=fix, at_one=at_one
        )
        hits = torch.nonzero(energies >= tau)
        merge_len = int(hits[0]) + 1 if hits.numel() else cap
        schedule.append((i, merge_len))
    return schedule


def explicit_schedule(
    active_steps: Sequence[int], merge_lens: Sequence[int], num_steps: int | None = None
) -> list[tuple[int, int]]:
    """Validate hand-written E-GRPO lists (VisualGRPO ``eta_step_list`` /
    ``eta_step_merge_list``) and return them as ``merge_schedule``'s structure.

    Args:
        active_steps: schedule indices that get an SDE step.
        merge_lens: merge length l ≥ 1 for each, same length as ``active_steps``.
        num_steps: T, when known; then every step must end inside the grid, i + l ≤ T.

    Returns:
        [(start_index, merge_len), ...].
    """
    active_steps, merge_lens = list(active_steps), list(merge_lens)
    if len(active_steps) != len(merge_lens):
        raise ValueError(
            f"active_steps has {len(active_steps)} entries but merge_lens has {len(merge_lens)}: "
            "give one merge length per active step."
        )
    schedule = []
    for i, length in zip(active_steps, merge_lens):
        i = _check_index(i, num_steps, "active step")
        if isinstance(length, bool) or not isinstance(length, int):
            raise TypeError(f"merge length for step {i} must be an int, got {length!r}.")
        if length < 1:
            raise ValueError(f"merge length for step {i} must be >= 1 (1 = no merging), got {length}.")
        if num_steps is not None and i + length > num_steps:
            raise ValueError(
                f"step {i} merged over {length} intervals ends at index {i + length}, past the last "
                f"index {num_steps}: use a merge length <= {num_steps - i}."
            )
        schedule.append((i, length))
    return schedule
