"""Policy-gradient and fine-tuning losses: PPO clip, KL estimators, EAFT and its ablations.

Pure tensor functions (torch only): no optimizer, accelerator, config object or logging.
Variants (loss aggregation, EAFT entropy / normalizer / gate) are small named functions
chosen through registry dicts, never string branches in a trainer.

Shapes: B batch, T tokens, V vocabulary, H hidden size, N valid (label != ignore) tokens.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from rlpost.algorithms.advantages import _lookup

__all__ = [
    "EAFT_CODE_NORMALIZER",
    "ppo_clip_loss",
    "kl_k3",
    "gaussian_mean_kl",
    "eaft_entropy",
    "eaft_weights",
    "eaft_loss",
    "chunked_eaft_loss",
    "confident_conflict_mask",
    "masked_sft_loss",
]

EAFT_CODE_NORMALIZER = 3.0
"""Constant the EAFT authors' code (LlamaFactory ``eaft_loss_func``) divides the top-20 entropy by."""


# --------------------------------------------------------------------------- PPO clip


def _token_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    """Sum over all masked tokens / number of masked tokens (TRL loss_type "bnpo"/"dapo")."""
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def _sequence_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    """Mean over each sequence's masked tokens, then mean over sequences (TRL loss_type "grpo")."""
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def _masked_sum(per_token: Tensor, mask: Tensor) -> Tensor:
    """Plain sum over masked tokens (the caller divides by a global token count)."""
    return (per_token * mask).sum()


_AGGREGATIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "token_mean": _token_mean,
    "sequence_mean": _sequence_mean,
    "sum": _masked_sum,
}


def ppo_clip_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    aggregation: str = "token_mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate loss, with DAPO's decoupled clip range.

    PPO (Schulman et al. 2017, arXiv 1707.06347) eq. 7; decoupled ε_low/ε_high from DAPO
    (Yu et al. 2025, arXiv 2503.14476) eq. 8::

        ρ_t = exp(log π_θ(a_t) - log π_old(a_t))
        ℓ_t = -min(ρ_t · A_t, clip(ρ_t, 1 - ε_low, 1 + ε_high) · A_t)

    On-policy (ρ ≡ 1) the loss is exactly ``-mean(A)`` under ``"token_mean"``.

    Args:
        log_probs: ``[B, T]`` per-token log-probs under the current policy (or ``[B]`` per sample,
            as for flow-model SDE steps).
        old_log_probs: same shape, from the rollout policy (no gradient is taken through it).
        advantages: ``[B]`` (broadcast over tokens) or the shape of ``log_probs``.
        mask: ``[B, T]`` (or ``[B]``), 1/True for tokens that count (treated as boolean); None = all count.
        epsilon_low: lower clip range ε_low.
        epsilon_high: upper clip range ε_high; None means ε_high = ε_low (symmetric PPO).
        aggregation: ``"token_mean"`` (sum over masked tokens / their count), ``"sequence_mean"``
            (per-sequence token mean, then mean over sequences), or ``"sum"``.

    Returns:
        ``(loss, stats)``: scalar loss and detached scalar stats ``ratio_mean``,
        ``clip_ratio/low_mean``, ``clip_ratio/high_mean``, ``clip_ratio/region_mean`` (TRL's
        names; token means over the mask; low = ρ < 1-ε_low with A < 0, high = ρ > 1+ε_high with A > 0).
    """
    aggregate = _lookup(_AGGREGATIONS, aggregation, "aggregation")
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    if log_probs.shape != old_log_probs.shape:
        raise ValueError(
            f"log_probs {list(log_probs.shape)} and old_log_probs {list(old_log_probs.shape)} must have the same shape."
        )
    if log_probs.ndim not in (1, 2):
        raise ValueError(f"log_probs must be [B, T] or [B], got {list(log_probs.shape)}.")
    lp = log_probs if log_probs.ndim == 2 else log_probs.unsqueeze(-1)  # [B, T]
    old = old_log_probs.reshape(lp.shape).detach()
    if advantages.shape == log_probs.shape:
        adv = advantages.reshape(lp.shape)
    elif advantages.shape == lp.shape[:1]:
        adv = advantages.unsqueeze(-1)  # [B, 1]: one advantage per sequence
    else:
        raise ValueError(
            f"advantages must be [B]={list(lp.shape[:1])} or match log_probs {list(log_probs.shape)}, "
            f"got {list(advantages.shape)}."
        )
    if mask is None:
        keep = torch.ones_like(lp, dtype=torch.bool)
    elif mask.shape == log_probs.shape:
        keep = mask.reshape(lp.shape).bool()
    else:
        raise ValueError(f"mask must match log_probs {list(log_probs.shape)}, got {list(mask.shape)}.")
    m = keep.to(lp.dtype)
    # Zero padded entries *before* exp: padding may hold -inf/huge log-probs, and a masked
    # multiply of an inf (or its backward) yields NaN that would reach the model's gradients.
    lp = torch.where(keep, lp, 0.0)
    old = torch.where(keep, old, 0.0)
    adv = torch.where(keep, adv.to(lp.dtype).detach(), 0.0)

    ratio = torch.exp(lp - old)  # [B, T]
    clipped = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)  # [B, T]
    loss = aggregate(per_token, m)

    with torch.no_grad():
        low = ((ratio < 1 - epsilon_low) & (adv < 0)).to(lp.dtype)
        high = ((ratio > 1 + epsilon_high) & (adv > 0)).to(lp.dtype)
        stats = {
            "ratio_mean": _token_mean(ratio, m),
            "clip_ratio/low_mean": _token_mean(low, m),
            "clip_ratio/high_mean": _token_mean(high, m),
            "clip_ratio/region_mean": _token_mean(torch.clamp(low + high, max=1), m),
        }
    return loss, stats


# --------------------------------------------------------------------------- KL


def kl_k3(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(π_θ || π_ref), per token.

    J. Schulman, "Approximating KL Divergence" (2020); GRPO (arXiv 2402.03300) eq. 4::

        k3 = exp(log π_ref - log π_θ) - (log π_ref - log π_θ) - 1   (>= 0, = 0 iff equal)

    Args:
        log_probs, ref_log_probs: same shape (e.g. ``[B, T]``), log-probs of the sampled tokens.

    Returns:
        per-token estimates, same shape.
    """
    delta = ref_log_probs - log_probs
    return torch.exp(delta) - delta - 1


def gaussian_mean_kl(mean: Tensor, ref_mean: Tensor, std: Tensor | float) -> Tensor:
    """Closed-form KL between two Gaussians sharing a diagonal std, averaged over elements.

    KL(N(μ, σ²I) || N(μ_ref, σ²I)) per element = (μ - μ_ref)² / (2σ²). Flow-GRPO
    (Liu et al. 2025, arXiv 2505.05470, §4 "KL regularization"; code ``train_sd3.py``) uses the
    **mean** over non-batch dims, matching its mean-over-dims log-probs.

    Args:
        mean, ref_mean: ``[B, ...]`` step means of the policy and reference SDE steps.
        std: scalar or tensor broadcastable to ``mean`` (e.g. ``[B, 1, 1, 1]``), the step std σ_t·sqrt(|Δt|).

    Returns:
        ``[B]`` KL per sample.
    """
    per_element = (mean - ref_mean) ** 2 / (2 * torch.as_tensor(std, dtype=mean.dtype, device=mean.device) ** 2)
    return per_element.reshape(mean.shape[0], -1).mean(-1)


# --------------------------------------------------------------------------- EAFT pieces


def _upcast(x: Tensor) -> Tensor:
    """At least fp32 (bf16/fp16 logits lose the entropy tail); fp64 stays fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _top_k_entropy(logits: Tensor, top_k: int) -> tuple[Tensor, int]:
    """Entropy of the softmax renormalized over the K largest logits (EAFT eq. 3); returns (H, K_eff)."""
    k = min(top_k, logits.shape[-1])
    return _entropy(logits.topk(k, dim=-1).values), k


def _full_entropy(logits: Tensor, top_k: int) -> tuple[Tensor, int]:
    """Full-vocabulary entropy; the ``ln_k`` normalizer then uses ln |V|."""
    return _entropy(logits), logits.shape[-1]


def _entropy(logits: Tensor) -> Tensor:
    logp = logits.log_softmax(-1)
    p = logp.exp()
    # p·log p -> 0 as p -> 0; written out so -inf logits (masked vocab) give 0, not NaN.
    return -torch.where(p > 0, p * logp, 0.0).sum(-1)


_ENTROPIES: dict[str, Callable[[Tensor, int], tuple[Tensor, int]]] = {
    "top_k": _top_k_entropy,
    "full": _full_entropy,
}

_NORMALIZERS: dict[str, Callable[[int], float]] = {
    "ln_k": math.log,  # EAFT paper: H^{top-K} <= ln K, so H̃ in [0, 1]
    "constant": lambda k: EAFT_CODE_NORMALIZER,  # authors' released code
    "none": lambda k: 1.0,  # axolotl's default (unnormalized)
}


def _power_gate(h: Tensor, alpha: float) -> Tensor:
    """w = H̃^α. EAFT eq. 2 (α=1); α ∈ {2, 3} are the paper's polynomial ablations (EAFT², EAFT³, §5.1)."""
    # Rounding can put H̃ a hair below 0, and a fractional power of a negative number is NaN.
    return h.clamp(min=0).pow(alpha)


def _sigmoid_gate(h: Tensor, alpha: float, scale: float = 30.0, beta: float = 0.17) -> Tensor:
    """w = σ(scale · (H̃ - β)); EAFT ablation (§5.1) with scale=30, β=0.17."""
    if alpha != 1.0:
        raise ValueError(
            "alpha is the exponent of the 'power' gate; the 'sigmoid' gate takes "
            "gate_options={'scale': ..., 'beta': ...} instead. Leave alpha at 1.0."
        )
    return torch.sigmoid(scale * (h - beta))


def _hard_gate(h: Tensor, alpha: float, quantile: float = 0.15) -> Tensor:
    """w = 1[H̃ > τ_q], τ_q the q-quantile of H̃ over the tokens passed in (EAFT hard-mask ablation, §2.2)."""
    if alpha != 1.0:
        raise ValueError("alpha only applies to the 'power' gate; the 'hard' gate takes gate_options={'quantile': q}.")
    if h.numel() == 0:
        return h.clone()
    tau = torch.quantile(h.flatten(), quantile)
    return (h > tau).to(h.dtype)


_GATES: dict[str, Callable[..., Tensor]] = {
    "power": _power_gate,
    "sigmoid": _sigmoid_gate,
    "hard": _hard_gate,
}


def _normalizer_value(normalizer: str | float, k: int) -> float:
    if isinstance(normalizer, (int, float)) and not isinstance(normalizer, bool):
        value = float(normalizer)
    else:
        value = _lookup(_NORMALIZERS, normalizer, "EAFT normalizer")(k)
    if not value > 0:
        raise ValueError(
            f"EAFT normalizer {normalizer!r} gives {value} for K={k}; it must be positive. "
            "With normalizer='ln_k' use top_k >= 2 (and a vocabulary of at least 2)."
        )
    return value


def eaft_entropy(logits: Tensor, top_k: int = 20, normalizer: str | float = "ln_k", entropy: str = "top_k") -> Tensor:
    """Normalized token entropy H̃_t used by EAFT, detached, in at least fp32 (fp64 stays fp64).

    EAFT (arXiv 2601.02151) eq. 3: ``H̃_t = H_t^{top-K} / ln K`` with K=20, where the
    top-K entropy uses the softmax renormalized over the K largest logits.

    Args:
        logits: ``[..., V]``; upcast to fp32, no gradient.
        top_k: K (clamped to V).
        normalizer: ``"ln_k"`` (paper; ln K, or ln |V| for ``entropy="full"``), ``"constant"``
            (3.0, the authors' code), ``"none"``, or a positive float.
        entropy: ``"top_k"`` (paper) or ``"full"`` (full-vocabulary entropy).

    Returns:
        ``[...]`` normalized entropies.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}.")
    entropy_fn = _lookup(_ENTROPIES, entropy, "EAFT entropy")
    with torch.no_grad():
        h, k = entropy_fn(_upcast(logits.detach()), top_k)
        return h / _normalizer_value(normalizer, k)


def eaft_weights(
    logits: Tensor,
    top_k: int = 20,
    alpha: float = 1.0,
    normalizer: str | float = "ln_k",
    entropy: str = "top_k",
    gate: str = "power",
    gate_options: dict[str, Any] | None = None,
) -> Tensor:
    """EAFT per-token loss weights w_t = gate(H̃_t), detached (stop-gradient), in at least fp32.

    EAFT (arXiv 2601.02151) eq. 2 with the paper's linear gate: ``w_t = H̃_t`` (α = 1). With
    ``normalizer="ln_k"`` and the power gate, weights lie in [0, 1]; 1 only for a uniform top-K.

    Args:
        logits: ``[..., V]``.
        top_k, normalizer, entropy: see :func:`eaft_entropy`.
        alpha: exponent of the ``"power"`` gate (paper default 1; ablations 2, 3).
        gate: ``"power"`` (H̃^α), ``"sigmoid"`` (σ(scale·(H̃-β)), scale=30, β=0.17), or ``"hard"``
            (1[H̃ > q-quantile of the batch], q=0.15). The masked-SFT ablation, which also looks
            at the gold-token probability, is :func:`masked_sft_loss`.
        gate_options: extra keyword arguments of the gate (``scale``/``beta``; ``quantile``).

    Returns:
        ``[...]`` weights (``logits.shape[:-1]``), no gradient.
    """
    gate_fn = _lookup(_GATES, gate, "EAFT gate")
    h = eaft_entropy(logits, top_k=top_k, normalizer=normalizer, entropy=entropy)
    with torch.no_grad():
        return gate_fn(h, alpha, **(gate_options or {}))


def _shift_and_select(
    x: Tensor, labels: Tensor, ignore_index: int, shift_labels: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """HF causal-LM convention: position t predicts labels[t+1]. Returns (x[N, ...], labels[N], mask[B, T'])."""
    if x.shape[:-1] != labels.shape:
        raise ValueError(
            f"labels {list(labels.shape)} must match the leading dims of logits/hidden states {list(x.shape[:-1])}."
        )
    if shift_labels:
        x, labels = x[..., :-1, :], labels[..., 1:]
    mask = labels != ignore_index
    return x[mask], labels[mask], mask


def _denominator(num_items_in_batch: int | Tensor | None, mask: Tensor, like: Tensor) -> Tensor:
    """num_items_in_batch if given (gradient accumulation), else the valid-token count. Never the weight sum."""
    if num_items_in_batch is None:
        return mask.sum().clamp(min=1).to(like.dtype)
    return torch.as_tensor(num_items_in_batch, device=like.device).to(like.dtype)


def _weighted_ce_sum(logits: Tensor, labels: Tensor, weight_fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Σ_t w_t · CE_t over rows of ``logits[N, V]`` (upcast to >= fp32), w from ``weight_fn`` (detached)."""
    logits = _upcast(logits)
    ce = F.cross_entropy(logits, labels, reduction="none")  # [N]
    return (weight_fn(logits) * ce).sum()


def eaft_loss(
    logits: Tensor,
    labels: Tensor,
    top_k: int = 20,
    alpha: float = 1.0,
    ignore_index: int = -100,
    num_items_in_batch: int | Tensor | None = None,
    normalizer: str | float = "ln_k",
    entropy: str = "top_k",
    gate: str = "power",
    shift_labels: bool = True,
    gate_options: dict[str, Any] | None = None,
) -> Tensor:
    """Entropy-Adaptive Fine-Tuning loss: token cross-entropy weighted by detached normalized entropy.

    EAFT (arXiv 2601.02151) eqs. 2-3, LlamaFactory semantics (``eaft_loss_func``)::

        L = Σ_t w_t · (-log p_θ(y_t | y_<t)) / D,    w_t = gate(H̃_t) computed without gradient

    where D = ``num_items_in_batch`` if given (token count over the gradient-accumulation batch,
    as HF passes it), else the number of valid tokens. D is **not** Σ w_t: EAFT lowers the
    effective learning rate on confident tokens, as in the paper. Where paper and code differ,
    the default follows the paper: H̃ = H / ln 20 (ln 20 ≈ 2.9957); the authors' code divides by
    3.0 (``normalizer="constant"``), which scales every weight by 0.9986.

    Args:
        logits: ``[B, T, V]`` (any float dtype; upcast to fp32).
        labels: ``[B, T]`` token ids, ``ignore_index`` for positions without loss. Unshifted when
            ``shift_labels`` (logits[:, t] predicts labels[:, t+1]); already aligned otherwise.
        top_k, alpha, normalizer, entropy, gate, gate_options: see :func:`eaft_weights`.
        ignore_index: label value excluded from the loss and from the token count.
        num_items_in_batch: denominator override for gradient accumulation.
        shift_labels: apply the causal-LM shift.

    Returns:
        scalar loss (fp32).
    """
    rows, targets, mask = _shift_and_select(logits, labels, ignore_index, shift_labels)  # [N, V], [N]
    weight_fn = partial(
        eaft_weights,
        top_k=top_k,
        alpha=alpha,
        normalizer=normalizer,
        entropy=entropy,
        gate=gate,
        gate_options=gate_options,
    )
    total = _weighted_ce_sum(rows, targets, weight_fn)
    return total / _denominator(num_items_in_batch, mask, total)


_EAFT_OPTIONS = ", ".join(list(inspect.signature(eaft_weights).parameters)[1:])


def _chunk_weighted_ce(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, weight_fn: Callable[[Tensor], Tensor]
) -> Tensor:
    return _weighted_ce_sum(F.linear(hidden, weight, bias), labels, weight_fn)  # logits [chunk, V]


def chunked_eaft_loss(
    hidden_states: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    chunk_size: int = 1024,
    lm_head_bias: Tensor | None = None,
    ignore_index: int = -100,
    num_items_in_batch: int | Tensor | None = None,
    shift_labels: bool = True,
    **weight_options: Any,
) -> Tensor:
    """:func:`eaft_loss` computed from hidden states without materializing ``[B, T, V]`` logits.

    Same equation as :func:`eaft_loss` with logits = hidden_states @ W^T + b. Valid positions
    (label != ignore_index after the shift) are processed in chunks of ``chunk_size`` tokens; each
    chunk runs under ``torch.utils.checkpoint`` (non-reentrant) so forward and backward hold only
    one ``[chunk_size, V]`` logits block at a time (recomputed in backward). The "power" and
    "sigmoid" gates are per-token, so chunking does not change them; the "hard" gate takes its
    quantile per chunk and so differs from :func:`eaft_loss`.

    Args:
        hidden_states: ``[B, T, H]`` final hidden states (before the LM head).
        lm_head_weight: ``[V, H]``; lm_head_bias: optional ``[V]``.
        labels: ``[B, T]``.
        chunk_size: tokens per chunk (>= 1).
        ignore_index, num_items_in_batch, shift_labels: as in :func:`eaft_loss`.
        **weight_options: ``top_k``, ``alpha``, ``normalizer``, ``entropy``, ``gate``, ``gate_options``
            of :func:`eaft_weights` (same defaults as :func:`eaft_loss`).

    Returns:
        scalar loss (fp32), equal to ``eaft_loss(lm_head(hidden_states), labels, ...)``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    if lm_head_weight.ndim != 2 or lm_head_weight.shape[1] != hidden_states.shape[-1]:
        raise ValueError(
            f"lm_head_weight must be [V, H] with H={hidden_states.shape[-1]}, got {list(lm_head_weight.shape)}."
        )
    try:  # fail now, not inside a checkpointed chunk (or never, when no token is valid)
        inspect.signature(eaft_weights).bind(None, **weight_options)
    except TypeError as err:
        raise TypeError(f"chunked_eaft_loss: {err}; valid EAFT options: {_EAFT_OPTIONS}.") from None
    rows, targets, mask = _shift_and_select(hidden_states, labels, ignore_index, shift_labels)  # [N, H], [N]
    weight_fn = partial(eaft_weights, **weight_options)
    use_checkpoint = torch.is_grad_enabled()
    # Empty sum: 0, but attached to the graph, so backward() works when no token is valid.
    total = _upcast(rows[:0]).sum()
    for start in range(0, rows.shape[0], chunk_size):
        args = (rows[start : start + chunk_size], lm_head_weight, lm_head_bias, targets[start : start + chunk_size])
        if use_checkpoint:
            part = checkpoint(_chunk_weighted_ce, *args, weight_fn, use_reentrant=False)
        else:
            part = _chunk_weighted_ce(*args, weight_fn)
        total = total + part
    return total / _denominator(num_items_in_batch, mask, total)


# --------------------------------------------------------------------------- masked-SFT ablation


def confident_conflict_mask(entropy: Tensor, gold_prob: Tensor, quantile: float = 0.15) -> Tensor:
    """Mark "confident conflict" tokens: bottom ``quantile`` of BOTH entropy and gold-token probability.

    EAFT (arXiv 2601.02151) §3 pilot study / masked-SFT ablation. A token is in the bottom q of a
    ranking when its value is <= the q-quantile of that ranking (``torch.quantile``, linear
    interpolation, over the tokens passed in). The exact tie/interpolation rule is not stated in
    the paper [inferred].

    Args:
        entropy, gold_prob: ``[N]`` per valid token.
        quantile: q in (0, 1); paper 0.15.

    Returns:
        ``[N]`` bool, True = drop.
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}.")
    if entropy.numel() == 0:
        return torch.zeros_like(entropy, dtype=torch.bool)
    low_entropy = entropy <= torch.quantile(_upcast(entropy), quantile)
    low_prob = gold_prob <= torch.quantile(_upcast(gold_prob), quantile)
    return low_entropy & low_prob


def masked_sft_loss(
    logits: Tensor,
    labels: Tensor,
    quantile: float = 0.15,
    ignore_index: int = -100,
    num_items_in_batch: int | Tensor | None = None,
    top_k: int = 20,
    entropy: str = "top_k",
    shift_labels: bool = True,
) -> Tensor:
    """Masked SFT (EAFT ablation): plain CE on every valid token except confident conflicts.

    EAFT (arXiv 2601.02151) §3: drop tokens in the bottom 15% of both the entropy and the
    gold-token probability rankings (per batch, see :func:`confident_conflict_mask`)::

        L = Σ_t 1[t kept] · CE_t / D

    with the same denominator D as :func:`eaft_loss` (dropped tokens still count in D, i.e. they
    act as weight 0). The entropy is the top-K entropy by default [inferred: the paper's pilot
    ranks by entropy without saying which].

    Args:
        logits: ``[B, T, V]``; labels: ``[B, T]``.
        quantile: fraction q for both rankings.
        top_k, entropy: entropy used for the ranking (see :func:`eaft_entropy`).
        ignore_index, num_items_in_batch, shift_labels: as in :func:`eaft_loss`.

    Returns:
        scalar loss (fp32).
    """
    rows, targets, mask = _shift_and_select(logits, labels, ignore_index, shift_labels)

    def keep_weight(lg: Tensor) -> Tensor:
        with torch.no_grad():
            h = eaft_entropy(lg, top_k=top_k, normalizer="none", entropy=entropy)
            gold = lg.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1).exp()
            return (~confident_conflict_mask(h, gold, quantile)).to(lg.dtype)

    total = _weighted_ce_sum(rows, targets, keep_weight)
    return total / _denominator(num_items_in_batch, mask, total)
