"""GRPO for causal LMs: ``trl.GRPOTrainer`` plus pluggable advantages and data-driven grouping.

A step runs as TRL runs it (generate -> reward -> advantage -> clipped policy loss); rlpost changes two stages:

1. **Grouping.** TRL groups ``num_generations`` consecutive completions. rlpost can instead group by a dataset column
   (``group_key``), as verl does with its ``uid`` column, and hands every reward function the group ids
   (``group_id`` keyword), so group-relative judges do not have to guess the layout.
2. **Advantage.** The advantage function is a name from :mod:`rlpost.algorithms.advantages`' registry. The advantages
   rlpost computes are the ones the loss uses *and* the ones logged (TRL's completions table included).

Both hooks wrap, rather than copy, two TRL methods: ``_calculate_rewards`` (to attach group ids and keep the gathered
per-function rewards) and ``_generate_and_score_completions`` (to swap in the advantages). Everything else - loss
types, KL, PEFT, DeepSpeed, vLLM - is TRL's. ``tests/test_trl_contract.py`` fails loudly if those internals move.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import trl

from rlpost.algorithms.advantages import (
    check_advantage_options,
    decoupled_normalized,
    get_advantage,
    per_function_scores,
    zero_std_fraction,
)
from rlpost.rewards import RewardModule, to_trl, validate_fields

__all__ = ["GRPOConfig", "GRPOTrainer", "dataset_columns", "resolve_advantage"]

# Fields the trainer itself hands to every reward function, beyond the dataset's columns.
TRAINER_FIELDS = ("prompt", "completion", "completion_ids", "group_id")


@dataclass
class GRPOConfig(trl.GRPOConfig):
    """TRL's ``GRPOConfig`` plus rlpost's advantage and grouping hooks. Every TRL field keeps its meaning.

    Args:
        advantage: name in the advantage registry (``rlpost list advantages``). ``"grpo"`` is DeepSeekMath's
            group-normalized advantage (Shao et al. 2024, eq. in §4.1.2); ``"trl"`` leaves TRL's own computation
            untouched. TRL's ``scale_rewards`` and ``multi_objective_aggregation`` are honoured by the registry
            estimators or refused at construction, never ignored (:func:`resolve_advantage`): ``scale_rewards``
            ``"batch"`` / ``"none"`` select the estimator's ``std`` (``"batch"`` / ``"none"``, i.e. Dr. GRPO), and
            ``"normalize_then_sum"`` runs GDPO's per-reward normalization with that std.
        advantage_options: keyword options for the advantage function (e.g. ``{"std": "population", "clip": 5}``),
            bound to its signature when the config is built, so a misspelled option fails before training.
        advantage_eps: added to the group std; 1e-4 matches TRL so ``advantage="grpo"`` reproduces TRL's numbers.
        group_key: dataset column whose value defines the group (e.g. a problem id shared by paraphrased prompts).
            None groups ``num_generations`` consecutive completions, as TRL does.
    """

    advantage: str = field(default="grpo", metadata={"help": "Advantage function name from the registry, or 'trl'."})
    advantage_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "Options for the advantage."})
    advantage_eps: float = field(default=1e-4, metadata={"help": "Epsilon added to the group std (TRL: 1e-4)."})
    group_key: str | None = field(default=None, metadata={"help": "Dataset column that defines groups."})

    def __post_init__(self):
        super().__post_init__()
        resolve_advantage(self)  # unknown estimator, bad options, a TRL option it cannot honour: fail here


# TRL's scale_rewards -> the ``std`` of rlpost's group-normalized estimators ("group" is TRL's default).
SCALE_REWARDS_STD = {"group": "unbiased", "batch": "batch", "none": "none"}


def resolve_advantage(args: "GRPOConfig") -> tuple[Callable | None, dict[str, Any]]:
    """``(estimator, options)`` the trainer calls, from ``advantage``, ``advantage_options``, ``advantage_eps`` and
    TRL's ``scale_rewards`` / ``multi_objective_aggregation``; ``(None, {})`` for ``advantage="trl"``.

    Raises ValueError (naming the option and the fix) for an unknown estimator, an option its signature does not
    take, and a TRL option the estimator would otherwise silently ignore:

    - ``scale_rewards`` other than ``"group"`` sets ``std`` for ``advantage="grpo"`` (``"batch"`` -> batch std,
      ``"none"`` -> no scaling, Dr. GRPO); another estimator must already use that std (``dr_grpo`` + ``"none"``,
      ``batch_std`` + ``"batch"``), and an explicit ``advantage_options.std`` must agree with it.
    - ``multi_objective_aggregation="normalize_then_sum"`` is honoured for the std-scaled estimators (GDPO,
      :func:`rlpost.algorithms.advantages.decoupled_normalized`) and refused for the others.
    """
    if args.advantage == "trl":
        if args.advantage_options:
            raise ValueError(f"advantage_options {sorted(args.advantage_options)} do nothing with advantage='trl' "
                             "(TRL's own computation); remove them or pick a registry advantage.")
        return None, {}
    fn = get_advantage(args.advantage)
    parameters = inspect.signature(fn).parameters
    options = {"eps": args.advantage_eps, **args.advantage_options}
    check_advantage_options(args.advantage, options)
    takes_std = "std" in parameters
    default_std = parameters["std"].default if takes_std else None
    scale = args.scale_rewards
    if scale != "group":
        wanted = SCALE_REWARDS_STD.get(scale)
        if wanted is None:
            raise ValueError(f"scale_rewards={scale!r}: TRL takes 'group', 'batch', 'none', true or false.")
        current = options.get("std", default_std)
        if not takes_std:
            raise ValueError(f"scale_rewards={scale!r} does not apply to advantage={args.advantage!r} (it scales by "
                             "no std); remove scale_rewards, or use advantage: grpo (or trl) to scale by it.")
        if "std" in args.advantage_options and current != wanted:
            raise ValueError(f"scale_rewards={scale!r} means std={wanted!r}, but advantage_options.std is "
                             f"{current!r}; keep one of the two.")
        if args.advantage == "grpo":
            options["std"] = wanted
        elif current != wanted:
            raise ValueError(f"scale_rewards={scale!r} means std={wanted!r}, but advantage={args.advantage!r} uses "
                             f"std={current!r}; use advantage: grpo with scale_rewards, or drop scale_rewards.")
    if args.multi_objective_aggregation not in ("sum_then_normalize", "normalize_then_sum"):
        raise ValueError(f"multi_objective_aggregation={args.multi_objective_aggregation!r}: TRL takes "
                         "'sum_then_normalize' or 'normalize_then_sum'.")
    if args.multi_objective_aggregation == "normalize_then_sum":
        if not takes_std or getattr(fn, "wants_per_function_rewards", False):
            raise ValueError(f"multi_objective_aggregation='normalize_then_sum' (GDPO) needs a std-scaled estimator; "
                             f"advantage={args.advantage!r} is not one. Use advantage: grpo (or trl).")
        extra = sorted(set(options) - {"std", "eps"})
        if extra:
            raise ValueError(f"multi_objective_aggregation='normalize_then_sum' takes only std and eps; "
                             f"advantage_options.{extra[0]} does not apply to it.")
        return _gdpo, {"std": options.get("std", default_std), "eps": options["eps"]}
    return fn, options


def _gdpo(rewards_per_func, group_ids, *, weights, std, eps):
    return decoupled_normalized(rewards_per_func, group_ids, weights, std=std, eps=eps)


def _stable_group_id(value: Any) -> int:
    """Hash a group-key value to a 63-bit int that is identical on every process (Python's hash() is salted)."""
    digest = hashlib.blake2b(repr(value).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class GRPOTrainer(trl.GRPOTrainer):
    """``trl.GRPOTrainer`` with registry advantages, ``group_key`` grouping and rlpost reward modules.

    ``reward_funcs`` may mix TRL reward callables (or model ids) and :class:`rlpost.rewards.RewardModule` objects;
    modules are adapted with :func:`rlpost.rewards.to_trl`, and the dataset is checked up front for every field a
    module requires, so a missing column fails before the first generation rather than mid-run.
    """

    def __init__(
        self,
        model,
        reward_funcs: Any,
        args: GRPOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        **kwargs,
    ):
        args = args if args is not None else GRPOConfig(output_dir="runs/grpo")
        if not isinstance(args, GRPOConfig):
            raise TypeError(f"args must be rlpost.trainers.GRPOConfig, got {type(args).__name__}.")
        _check_dataset(train_dataset, "train_dataset")
        reward_funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        modules = [f for f in reward_funcs if isinstance(f, RewardModule)]
        columns = dataset_columns(train_dataset) if modules or args.group_key is not None else None
        if modules and columns is not None:
            validate_fields(modules, columns + list(TRAINER_FIELDS))
        if args.group_key is not None and columns is not None and args.group_key not in columns:
            raise ValueError(
                f"group_key={args.group_key!r} is not a column of the training dataset "
                f"(columns: {columns}). Add the column or unset group_key."
            )
        self.advantage_fn, self.advantage_options = resolve_advantage(args)
        reward_funcs = [
            to_trl(f, num_generations=args.num_generations) if isinstance(f, RewardModule) else f
            for f in reward_funcs
        ]
        if kwargs.get("tools") or kwargs.get("environment_factory"):
            # TRL parses tool calls with the tokenizer's response template; the offline tiny tokenizer's ChatML has
            # none TRL knows, so supply it (a no-op for every other tokenizer).
            from rlpost.models.factory import enable_tool_calling

            enable_tool_calling(kwargs.get("processing_class"))
        super().__init__(
            model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
            **kwargs,
        )
        self._last_rewards_per_func: torch.Tensor | None = None
        self._last_group_ids: torch.Tensor | None = None

    # -- grouping -------------------------------------------------------------------------------------------------
    def _group_ids_for(self, inputs: Sequence[dict]) -> list[int]:
        """Group id of each local sample; consistent across processes so gathered ids line up."""
        if self.args.group_key is not None:
            return [_stable_group_id(example[self.args.group_key]) for example in inputs]
        num_generations = self.num_generations if self.model.training else self.num_generations_eval
        offset = self.accelerator.process_index * len(inputs)
        return [(offset + i) // num_generations for i in range(len(inputs))]

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        group_ids = self._group_ids_for(inputs)
        for example, group_id in zip(inputs, group_ids, strict=True):
            example["group_id"] = group_id  # becomes the `group_id` keyword of every reward function
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        local = torch.tensor(group_ids, dtype=torch.long, device=rewards_per_func.device)
        self._last_group_ids = self.accelerator.gather(local)
        self._last_rewards_per_func = rewards_per_func  # already gathered by TRL
        return rewards_per_func

    # -- advantages -----------------------------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.advantage_fn is None:
            return output
        rewards_per_func, group_ids = self._last_rewards_per_func, self._last_group_ids
        weights = self.reward_weights.to(rewards_per_func.device)
        rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan  # unscorable: excluded, advantage 0
        scores, options = rewards, self.advantage_options
        if self.advantage_fn is _gdpo:  # normalize_then_sum: each reward function normalized in its group first
            scores, options = rewards_per_func, {**options, "weights": weights}
        elif getattr(self.advantage_fn, "wants_per_function_rewards", False):
            # Multi-dimensional advantages (UCPG) see each reward function as a dimension: [N, D].
            scores = per_function_scores(rewards_per_func, weights)
        advantages = torch.nan_to_num(self.advantage_fn(scores, group_ids, **options), nan=0.0)

        local_n = output["advantages"].shape[0]
        start = self.accelerator.process_index * local_n
        output["advantages"] = advantages[start : start + local_n].to(output["advantages"])
        self._replace_logged_advantages(advantages, rewards, group_ids)
        return output

    def _replace_logged_advantages(self, advantages, rewards, group_ids) -> None:
        """Make the completions table and metrics show the advantages the loss actually uses."""
        logged = self._logs["advantages"]
        for _ in range(min(len(advantages), len(logged))):
            logged.pop()
        logged.extend(advantages.tolist())
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        if self.args.group_key is not None and metrics["frac_reward_zero_std"]:
            metrics["frac_reward_zero_std"][-1] = zero_std_fraction(rewards, group_ids)
        metrics["advantages/mean"].append(advantages.mean().item())
        metrics["advantages/abs_mean"].append(advantages.abs().mean().item())


def dataset_columns(dataset) -> list[str] | None:
    """The column names of a training dataset, for checking reward fields before training starts.

    A ``datasets.Dataset`` knows them; an ``IterableDataset`` knows them when it has ``features`` (the recycling
    stream keeps its base data's), otherwise the first row is read (one row of a fresh iteration; training starts its
    own). None when neither is possible (e.g. a plain iterable), in which case nothing is checked up front.
    """
    if dataset is None:
        return None
    names = getattr(dataset, "column_names", None)
    if names is not None:
        return list(names)
    features = getattr(dataset, "features", None)
    if features is not None:
        return list(features)
    try:
        import datasets

        if isinstance(dataset, datasets.IterableDataset):
            first = next(iter(dataset.take(1)), None)
            return list(first) if isinstance(first, dict) else None
    except ImportError:
        pass
    return None


def _check_dataset(dataset, name: str) -> None:
    if dataset is not None and hasattr(dataset, "__len__") and len(dataset) == 0:
        raise ValueError(f"{name} is empty: GRPO needs at least one prompt. Check the data path and split filters.")
