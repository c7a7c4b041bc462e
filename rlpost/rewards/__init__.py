"""Reward modules: one contract for LM trainers, flow trainers, eval runs and scripts.

``get_reward(name, **options)`` builds a registered module (``list_rewards()`` shows them), ``to_trl(module)`` turns
one into a TRL reward function and ``from_trl(fn)`` goes the other way. Only stdlib-backed modules are imported
here; modules with heavy optional dependencies (LAMMPS, diffusers, judge models) register lazily through
:func:`register_lazy_reward` and are imported on first use.
"""

from rlpost.rewards.base import (
    ALWAYS_AVAILABLE_FIELDS,
    FAILURE_METRICS,
    MissingFieldError,
    RewardError,
    RewardLengthError,
    RewardModule,
    RewardOutput,
    TRLRewardFunction,
    WeightedSum,
    as_text,
    from_trl,
    to_trl,
    validate_fields,
)
from rlpost.rewards.registry import (
    UnknownRewardError,
    build_rewards,
    check_reward_options,
    get_reward,
    list_rewards,
    register_lazy_reward,
    register_reward,
    reward_signature,
)
from rlpost.rewards.runner import CallResult, run_calls
from rlpost.rewards import text as _text  # noqa: F401  (registers the built-in text rewards)
from rlpost.rewards.sets import set_exact_match, set_f1  # registers epiqal_f1 / epiqal_em (stdlib only)

# Heavy or optional-dependency rewards: listed now, imported on first use.
register_lazy_reward("image_target", "rlpost.rewards.image:ImageTarget", "Offline: -MSE between the image and a target colour or target image (no weights).")
register_lazy_reward("prompt_color", "rlpost.rewards.image:PromptColor", "Offline: -MSE between the image and the colour named in the prompt (None if no colour word).")
register_lazy_reward("clip_score", "rlpost.rewards.image:ClipScore", "CLIP image-text cosine similarity (transformers CLIPModel by local path or hub id).")
register_lazy_reward("pickscore", "rlpost.rewards.image:PickScore", "PickScore (CLIP-H preference model; load by local path or hub id).")
register_lazy_reward("hpsv2", "rlpost.rewards.image:HPSv2", "HPSv2.1 human-preference score (open_clip ViT-H-14 + HPS checkpoint by path).")
register_lazy_reward("md_execution", "rlpost.rewards.md_execution:MDExecutionReward", "MDAgent2 LAMMPS reward: extract, sandboxed run, physics checks, optional judge rubric (0-1).")
register_lazy_reward("lammps_fill", "rlpost.rewards.lammps_fill:LammpsFillReward", "Missing-line LAMMPS tasks: insert the completion, run sandboxed, score launch/run/physics.")
register_lazy_reward("checklist", "rlpost.rewards.checklist:ChecklistReward", "ThinkRL-Edit checklist: a judge writes yes/no questions per prompt, score = fraction answered yes.")
register_lazy_reward("image_reward", "rlpost.rewards.image:ImageRewardScore", "ImageReward preference score (image-reward package; load by path).")
register_lazy_reward("shapes_checklist", "rlpost.envs.shapes_edit:ShapesChecklist", "Shapes env checklist: pixel-reading ShapesJudge questions/answers, score = fraction answered yes.")
register_lazy_reward("shapes_consistency", "rlpost.envs.shapes_edit:ShapesConsistency", "Shapes env: unedited cells preserved, 1 - mean|edited - source| / tolerance outside the edit.")
register_lazy_reward("shapes_quality", "rlpost.envs.shapes_edit:ShapesQuality", "Shapes env: pixels near a clean palette colour, mean max(0, 1 - distance / tolerance).")

__all__ = [
    "ALWAYS_AVAILABLE_FIELDS",
    "FAILURE_METRICS",
    "CallResult",
    "MissingFieldError",
    "RewardError",
    "RewardLengthError",
    "RewardModule",
    "RewardOutput",
    "TRLRewardFunction",
    "UnknownRewardError",
    "WeightedSum",
    "check_reward_options",
    "reward_signature",
    "as_text",
    "build_rewards",
    "from_trl",
    "get_reward",
    "list_rewards",
    "register_lazy_reward",
    "register_reward",
    "run_calls",
    "set_exact_match",
    "set_f1",
    "to_trl",
    "validate_fields",
]
