"""Group-relative advantage estimators (GRPO family) and their registry.

Pure tensor functions: rewards and group ids in, advantages out. No I/O, no config
objects. Trainers pick an estimator by name through :func:`get_advantage`, so new
estimators (e.g. ThinkRL-Edit's UCPG) plug in with :func:`register_advantage`
instead of a string branch inside a trainer.

Conventions shared by every function here:

* ``group_ids`` holds one id per sample (tensor or sequence). Ids are arbitrary
  (any ints, or any hashables for a Python sequence) and groups need not be
  contiguous: they are mapped to ``0..G-1`` with ``torch.unique(return_inverse=True)``.
* A NaN reward means "not applicable" (a reward module returned ``None``, or a
  judge timed out). It is left out of every group statistic and its advantage is
  exactly 0, so it neither shifts its group's baseline nor gets pushed up or down.
  This matches TRL's treatment of unscorable completions.
* A group whose valid rewards are all equal (including a group with a single valid
  sample) carries no ranking signal and gets advantage exactly 0. The test is
  ``max == min`` inside the group, not ``std < tol``: the latter lets rounding in
  the mean turn a constant group into ``±1e-9 / 1e-8`` sized advantages.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "STD_MODES",
    "AdvantageFn",
    "group_normalized",
    "multi_step_group_normalized",
    "decoupled_normalized",
    "rloo",
    "register_advantage",
    "get_advantage",
    "check_advantage_options",
    "list_advantages",
    "zero_std_fraction",
    "per_function_scores",
    "ucpg",
]

AdvantageFn = Callable[..., Tensor]
"""``fn(rewards: Tensor[N], group_ids: Tensor[N], **options) -> Tensor[N]``; every registered
estimator accepts at least the options ``eps`` and ``clip``."""

STD_MODES = ("unbiased", "population", "none", "batch")


# --------------------------------------------------------------------------- helpers


def _lookup(registry: Mapping[str, Any], name: str, kind: str) -> Any:
    """Return ``registry[name]`` or raise a ValueError naming valid choices and the closest one.

    Shared by every name-keyed registry in ``rlpost.algorithms``.
    """
    if isinstance(name, str) and name in registry:
        return registry[name]
    raise _unknown_name(name, registry, kind)


def _unknown_name(name: Any, valid_names: Sequence[str] | Mapping[str, Any], kind: str) -> ValueError:
    valid = sorted(valid_names)
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"Unknown {kind} {name!r}. Valid names: {', '.join(valid)}.{hint}")


def _group_index(group_ids: Tensor | Sequence[Any], n: int, device: torch.device) -> tuple[Tensor, int]:
    """Map arbitrary group ids to contiguous ``inverse[N]`` in ``0..G-1``; return ``(inverse, G)``."""
    if isinstance(group_ids, Tensor):
        ids = group_ids.to(device)
    else:
        try:
            ids = torch.as_tensor(group_ids, device=device)
        except (TypeError, ValueError, RuntimeError):
            # Non-numeric ids (e.g. prompt strings): number them in first-seen order.
            table: dict[Any, int] = {}
            ids = torch.tensor([table.setdefault(g, len(table)) for g in group_ids], device=device)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise ValueError(
            f"group_ids must hold one id per sample: expected shape [{n}], got {list(ids.shape)}. "
            "Pass a 1-D tensor or sequence with the same length as rewards."
        )
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=device), 0
    unique, inverse = torch.unique(ids, return_inverse=True)
    return inverse, unique.numel()


def _as_rewards_2d(rewards: Tensor, expected_ndim: int, name: str) -> tuple[Tensor, torch.dtype]:
    """Validate ``rewards`` and return it as ``[N, S]`` in a float working dtype, plus the output dtype."""
    rewards = torch.as_tensor(rewards)
    if rewards.ndim != expected_ndim:
        shape = "[N]" if expected_ndim == 1 else "[N, S]"
        raise ValueError(f"{name}: rewards must have shape {shape}, got {list(rewards.shape)}.")
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.get_default_dtype()
    # bf16/fp16 rewards would lose the small differences that advantages are made of.
    work = rewards.to(torch.promote_types(out_dtype, torch.float32))
    return (work if work.ndim == 2 else work.unsqueeze(1)), out_dtype


def _check_clip(clip: float | None) -> None:
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be a positive number or None, got {clip!r}.")


def _group_moments(r: Tensor, inverse: Tensor, num_groups: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-(group, column) statistics of the valid (non-NaN) entries of ``r[N, S]``.

    Returns ``valid[N, S]``, ``count[G, S]``, ``total[G, S]`` and ``constant[N, S]``,
    where ``constant`` marks samples whose group-column has all valid rewards equal.
    """
    valid = ~torch.isnan(r)
    shape = (num_groups, r.shape[1])
    count = r.new_zeros(shape).index_add_(0, inverse, valid.to(r.dtype))
    total = r.new_zeros(shape).index_add_(0, inverse, torch.where(valid, r, 0.0))
    index = inverse.unsqueeze(1).expand_as(r)
    inf = float("inf")
    hi = r.new_full(shape, -inf).scatter_reduce(0, index, torch.where(valid, r, -inf), "amax")
    lo = r.new_full(shape, inf).scatter_reduce(0, index, torch.where(valid, r, inf), "amin")
    constant = (hi == lo)[inverse]  # [N, S]
    return valid, count, total, constant


def _normalize(
    r: Tensor, inverse: Tensor, num_groups: int, std: str, eps: float, clip: float | None
) -> Tensor:
    """Core of the group-normalized estimators on ``r[N, S]`` (each column independently)."""
    if std not in STD_MODES:
        raise _unknown_name(std, STD_MODES, "std mode")
    _check_clip(clip)
    valid, count, total, constant = _group_moments(r, inverse, num_groups)
    mean = total / count.clamp(min=1)  # [G, S]
    centered = torch.where(valid, r - mean[inverse], 0.0)  # [N, S]

    if std == "none":
        scale = torch.ones_like(r)
    elif std == "batch":
        # One std per column over every valid reward in the batch (raw rewards, not the
        # group-centered ones), unbiased: TRL's scale_rewards="batch" / nanstd.
        n_valid = valid.sum(0)  # [S]
        col_mean = torch.where(valid, r, 0.0).sum(0) / n_valid.clamp(min=1)
        dev2 = torch.where(valid, (r - col_mean) ** 2, 0.0).sum(0)
        scale = (dev2 / (n_valid - 1).clamp(min=1)).sqrt().expand_as(r) + eps
    else:
        ddof = 1 if std == "unbiased" else 0
        sq = r.new_zeros(count.shape).index_add_(0, inverse, centered**2)
        # count - ddof <= 0 only for groups with <= 1 valid sample, which `constant` zeroes below.
        scale = (sq / (count - ddof).clamp(min=1)).sqrt()[inverse] + eps

    adv = torch.where(valid & ~constant, centered / scale, 0.0)
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return adv


# --------------------------------------------------------------------------- estimators


def group_normalized(
    rewards: Tensor,
    group_ids: Tensor | Sequence[Any],
    std: str = "unbiased",
    eps: float = 1e-8,
    clip: float | None = None,
) -> Tensor:
    """Group-normalized advantage of GRPO.

    DeepSeekMath (Shao et al., 2024, arXiv 2402.03300) §4.1.2, outcome supervision::

        A_i = (r_i - mean_{j in g(i)} r_j) / (std_{j in g(i)} r_j + eps)

    Args:
        rewards: ``[N]`` float rewards; NaN = not applicable (excluded, advantage 0).
        group_ids: ``[N]`` group id per sample (tensor or sequence); groups need not be contiguous.
        std: how the centered reward is scaled.
            ``"unbiased"``: per-group std with ddof=1 (TRL ``scale_rewards="group"``, E-GRPO, DanceGRPO).
            ``"population"``: per-group std with ddof=0 (numpy default; Flow-GRPO's tracker).
            ``"none"``: mean-centering only (Dr.GRPO, Liu et al. 2025, arXiv 2503.20783 §3.1).
            ``"batch"``: one unbiased std over all valid rewards in the batch (TRL ``scale_rewards="batch"``).
        eps: added to the std before dividing (TRL uses 1e-4, E-GRPO 1e-8).
        clip: if set, advantages are clamped to ``[-clip, clip]`` (Flow-GRPO / E-GRPO use 5).

    Returns:
        ``[N]`` advantages in the rewards' float dtype. Groups with all-equal valid rewards
        (including size-1 groups) and NaN rewards give exactly 0.
    """
    r, out_dtype = _as_rewards_2d(rewards, 1, "group_normalized")
    inverse, num_groups = _group_index(group_ids, r.shape[0], r.device)
    return _normalize(r, inverse, num_groups, std, eps, clip).squeeze(1).to(out_dtype)


def multi_step_group_normalized(
    rewards: Tensor,
    group_ids: Tensor | Sequence[Any],
    std: str = "unbiased",
    eps: float = 1e-8,
    clip: float | None = None,
) -> Tensor:
    """Multi-step group-normalized advantage of E-GRPO, one normalization per (group, step).

    E-GRPO (arXiv 2601.00423) §3.3.2, Alg. 1: each prompt group branches one SDE step at each
    active timestep t_n, and the reward of that branch is normalized only within its column::

        A^{(i)}_{t_n} = (R^{(i)}_{t_n} - mean_j R^{(j)}_{t_n}) / (std_j R^{(j)}_{t_n} + eps)

    The released code uses the unbiased std + 1e-8 and then clamps to ±5; ``clip`` defaults
    to None here and the E-GRPO caller passes 5.

    Args:
        rewards: ``[N, S]`` rewards for N samples at S active steps. NaN entries are excluded
            from their column's group statistics and get advantage 0.
        group_ids: ``[N]`` group (prompt) id per sample.
        std, eps, clip: as in :func:`group_normalized`; ``std="batch"`` uses one std per step
            column over the whole batch.

    Returns:
        ``[N, S]`` advantages.
    """
    r, out_dtype = _as_rewards_2d(rewards, 2, "multi_step_group_normalized")
    inverse, num_groups = _group_index(group_ids, r.shape[0], r.device)
    return _normalize(r, inverse, num_groups, std, eps, clip).to(out_dtype)


def rloo(
    rewards: Tensor, group_ids: Tensor | Sequence[Any], eps: float = 0.0, clip: float | None = None
) -> Tensor:
    """REINFORCE leave-one-out advantage: the baseline is the mean of the *other* group members.

    Kool et al. 2019 ("Buy 4 REINFORCE samples, get a baseline for free"); Ahmadian et al. 2024
    (arXiv 2402.14740) eq. 6::

        A_i = r_i - 1/(n-1) * sum_{j != i} r_j  =  n/(n-1) * (r_i - mean_g r)

    with n the number of valid (non-NaN) rewards in i's group. Groups with fewer than two
    valid rewards, and NaN rewards, give 0.

    Args:
        rewards: ``[N]`` (or ``[N, S]``, columns treated independently).
        group_ids: ``[N]`` group id per sample.
        eps: unused (RLOO divides by no std); accepted because every registered estimator
            takes the same ``eps``/``clip`` options, so a trainer can pass one option set.
        clip: optional symmetric clamp.

    Returns:
        advantages with the shape of ``rewards``.
    """
    _check_clip(clip)
    rewards = torch.as_tensor(rewards)
    r, out_dtype = _as_rewards_2d(rewards, 2 if rewards.ndim == 2 else 1, "rloo")
    inverse, num_groups = _group_index(group_ids, r.shape[0], r.device)
    valid, count, total, _ = _group_moments(r, inverse, num_groups)
    n = count[inverse]  # [N, S]
    others_mean = (total[inverse] - torch.where(valid, r, 0.0)) / (n - 1).clamp(min=1)
    adv = torch.where(valid & (n > 1), r - others_mean, 0.0)
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return (adv.squeeze(1) if rewards.ndim == 1 else adv).to(out_dtype)


def decoupled_normalized(
    rewards_per_func: Tensor,
    group_ids: Tensor | Sequence[Any],
    weights: Tensor,
    std: str = "unbiased",
    eps: float = 1e-4,
) -> Tensor:
    """Group reward-decoupled normalization (GDPO; TRL ``multi_objective_aggregation="normalize_then_sum"``).

    GDPO (arXiv 2601.05242) normalizes each reward function within its group first, sums the normalized rewards with
    their weights, then normalizes the sum over the batch::

        Â_i^k = (r_i^k - mean_{j in g(i)} r_j^k) / (std_{j in g(i)} r_j^k + eps)     (per reward function k)
        s_i   = sum_k w_k Â_i^k
        A_i   = (s_i - mean_j s_j) / (std_j s_j + eps)                              (over the whole batch)

    Args:
        rewards_per_func: ``[N, D]`` one column per reward function; NaN = not applicable (that term counts as 0 in
            the sum, as TRL's ``nansum``); a row that is NaN in every column gets advantage 0.
        group_ids: ``[N]`` group id per sample.
        weights: ``[D]`` reward weights.
        std: the per-group scaling of each column, as in :func:`group_normalized` (TRL: ``"unbiased"``).
        eps: added to both stds (TRL: 1e-4).

    Returns:
        ``[N]`` advantages. Unlike TRL, a column whose group is constant contributes exactly 0 (TRL: ``0 / eps``
        rounding residue), and groups may be non-contiguous.
    """
    r, out_dtype = _as_rewards_2d(rewards_per_func, 2, "decoupled_normalized")
    inverse, num_groups = _group_index(group_ids, r.shape[0], r.device)
    per_func = _normalize(r, inverse, num_groups, std, eps, None)  # NaN entries are 0 here
    weights = torch.as_tensor(weights, dtype=r.dtype, device=r.device)
    summed = (per_func * weights.unsqueeze(0)).sum(1)
    scorable = ~torch.isnan(r).all(1)
    if scorable.sum() < 2:
        return torch.zeros_like(summed).to(out_dtype)
    values = summed[scorable]
    adv = torch.where(scorable, (summed - values.mean()) / (values.std() + eps), 0.0)
    return adv.to(out_dtype)


# --------------------------------------------------------------------------- registry

_ADVANTAGES: dict[str, AdvantageFn] = {}


def register_advantage(name: str, *, overwrite: bool = False) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator registering ``fn(rewards[N], group_ids[N], **options) -> advantages[N]`` under ``name``.

    Raises ValueError if ``name`` is taken by another function, unless ``overwrite=True``.
    """

    def decorator(fn: AdvantageFn) -> AdvantageFn:
        existing = _ADVANTAGES.get(name)
        if existing is not None and existing is not fn and not overwrite:
            raise ValueError(
                f"Advantage estimator {name!r} is already registered ({existing.__qualname__}). "
                "Pick another name or pass overwrite=True."
            )
        _ADVANTAGES[name] = fn
        return fn

    return decorator


def get_advantage(name: str) -> AdvantageFn:
    """Return the estimator registered as ``name``; ValueError lists valid names and the closest match."""
    return _lookup(_ADVANTAGES, name, "advantage estimator")


def check_advantage_options(name: str, options: Mapping[str, Any]) -> None:
    """Bind ``options`` to estimator ``name``'s signature (after ``rewards, group_ids``), so a misspelled or
    colliding option fails before training; ValueError naming the option and the ones the estimator takes."""
    import inspect

    parameters = list(inspect.signature(get_advantage(name)).parameters.values())
    inputs = [p.name for p in parameters[:2]]
    accepted = [p.name for p in parameters[2:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    for key in options:
        if key in inputs:
            raise ValueError(f"advantage_options.{key}: {key!r} is the estimator's input, not an option; remove it "
                             f"(advantage {name!r} takes: {', '.join(accepted)}).")
    try:
        inspect.signature(get_advantage(name)).bind(None, None, **options)
    except TypeError:
        unknown = [k for k in options if k not in accepted]
        key = unknown[0] if unknown else next(iter(options), "?")
        close = difflib.get_close_matches(str(key), accepted, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"advantage_options.{key}: advantage {name!r} takes no option {key!r}.{hint} Its options: "
                         f"{', '.join(accepted)}.") from None


def list_advantages() -> list[str]:
    """Sorted names of the registered advantage estimators."""
    return sorted(_ADVANTAGES)


def _group_normalized_with(default_std: str, description: str) -> AdvantageFn:
    """A registry entry: :func:`group_normalized` with ``std`` defaulting to ``default_std``.

    The signature is explicit (not ``**options``) so that a recipe's ``advantage_options`` can be bound to it before
    training starts, and so ``std`` given as an option replaces the default instead of colliding with it.
    """

    def estimator(
        rewards: Tensor,
        group_ids: Tensor | Sequence[Any],
        std: str = default_std,
        eps: float = 1e-8,
        clip: float | None = None,
    ) -> Tensor:
        return group_normalized(rewards, group_ids, std=std, eps=eps, clip=clip)

    estimator.__doc__ = description
    estimator.__qualname__ = estimator.__name__ = f"group_normalized[std={default_std!r}]"
    return estimator


for _name, _std, _description in (
    ("grpo", "unbiased", "GRPO: group mean and unbiased group std (TRL default)."),
    ("grpo_population", "population", "GRPO with the population (ddof=0) group std (Flow-GRPO's numpy convention)."),
    ("dr_grpo", "none", "Dr.GRPO: group mean-centering without std scaling."),
    ("batch_std", "batch", 'Group mean-centering scaled by one batch-wide std (TRL scale_rewards="batch").'),
):
    register_advantage(_name)(_group_normalized_with(_std, _description))

register_advantage("rloo")(rloo)


def zero_std_fraction(rewards: Tensor, group_ids: Tensor | Sequence[Any]) -> float:
    """Share of samples whose group has identical rewards (max == min), i.e. no GRPO learning signal.

    TRL's ``frac_reward_zero_std`` for arbitrary (non-contiguous) groups; NaN rewards are ignored.
    rewards: [N]; group_ids: [N].
    """
    values = rewards.detach().reshape(-1)
    inverse, num_groups = _group_index(group_ids, values.shape[0], values.device)
    if num_groups == 0:
        return 0.0
    finite = ~torch.isnan(values)
    high = torch.full((num_groups,), -torch.inf, dtype=values.dtype, device=values.device)
    low = torch.full((num_groups,), torch.inf, dtype=values.dtype, device=values.device)
    high = high.scatter_reduce(0, inverse[finite], values[finite], "amax")
    low = low.scatter_reduce(0, inverse[finite], values[finite], "amin")
    flat = (high <= low) | torch.isinf(high)  # all-NaN groups count as flat too
    return flat[inverse].float().mean().item()


def per_function_scores(rewards_per_func: Tensor, weights: Tensor) -> Tensor:
    """The ``[N, D]`` matrix a multi-dimensional estimator (UCPG) sees: one column per reward function.

    A zero weight drops its column and a negative one flips it to higher-is-better; magnitudes are not used, since
    UCPG's point is to not trade dimensions against each other. rewards_per_func: [N, D]; weights: [D].
    """
    weights = weights.to(rewards_per_func.device)
    keep = weights != 0
    return rewards_per_func[:, keep] * weights[keep].sign().to(rewards_per_func.dtype)


from rlpost.algorithms.ucpg import ucpg  # noqa: E402  (registers "ucpg"; ucpg.py builds on the helpers above)
