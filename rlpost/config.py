"""Recipes: YAML files validated into typed dataclasses before any model loads.

A recipe reads top to bottom: the model, where the data comes from, how to evaluate, then one or more training
stages (``sft`` then ``grpo`` in the quickstart). ``key=value`` overrides from the command line use dotted paths
(``stages.1.args.learning_rate=1e-4``) or the trainer name as a shorthand (``grpo.learning_rate=1e-4``).

Every key is checked: an unknown one fails with the closest valid name, a value of the wrong type fails naming the
key and the expected type, and each stage's ``args`` are checked against that trainer's config dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "LoraSpec", "Recipe", "RecyclingSpec", "apply_overrides", "load_recipe", "lora_config", "trainer_config_class"]


class ConfigError(ValueError):
    """A recipe or override is invalid; the message names the key and the fix."""


@dataclass
class LoraSpec:
    """Low-rank adapters (LoRA, Hu et al. 2021, arXiv 2106.09685) instead of full fine-tuning: peft's ``LoraConfig``.

    The update of a frozen weight W is ``ΔW = (alpha / r) · B A`` with rank ``r`` (LoRA eq. 3 and §4.1); only A and B
    train, and each stage's ``final/`` holds the adapter (``adapter_model.safetensors``), not the full model. All
    stages of a recipe train the same adapter (SFT then GRPO continue one another, like full fine-tuning does).
    """

    r: int = 16                                   # rank of A [r, in] and B [out, r]
    alpha: float = 32.0                           # scale alpha / r (peft's lora_alpha)
    dropout: float = 0.05                         # dropout on the adapter's input (peft's lora_dropout)
    target_modules: list[str] | str = "all-linear"  # module names, or peft's "all-linear" (every linear but the head)


@dataclass
class ModelSpec:
    """``name_or_path``: ``tiny:qwen2`` / ``tiny:llama`` (offline random init), a local folder, or a hub id.
    ``lora``: train LoRA adapters instead of all weights (:class:`LoraSpec`); absent or null = full fine-tuning."""

    name_or_path: str = "tiny:qwen2"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    seed: int = 0
    tokenizer_vocab_size: int = 64
    trust_remote_code: bool = False
    torch_dtype: str | None = None
    lora: LoraSpec | None = None


@dataclass
class DataSpec:
    """Either a built-in ``task`` (with ``task_options``) or local files (json/jsonl/csv/parquet)."""

    task: str | None = None
    task_options: dict[str, Any] = field(default_factory=dict)
    train_files: list[str] = field(default_factory=list)
    heldout_files: list[str] = field(default_factory=list)


@dataclass
class EvalSpec:
    """Held-out exact-match evaluation before training and after each stage (greedy decoding)."""

    enabled: bool = True
    max_new_tokens: int = 8
    batch_size: int = 64
    max_items: int | None = None


@dataclass
class TrackingSpec:
    wandb: str = "offline"
    project: str = "rlpost"
    plots: bool = True


@dataclass
class RewardSpec:
    """A reward module by registry name (or ``module.path:Class``), its weight and constructor options.
    ``options: {name: ...}`` names the instance (its metrics log as ``rewards/<name>/...``); two entries of one reward
    need distinct names."""

    name: str = ""
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EnvironmentSpec:
    """A multi-turn tool environment for a GRPO stage (TRL's ``environment_factory``), by name from
    ``rlpost.envs.TOOL_ENVS``; ``options`` go to its factory. The environment's ``get_reward`` is a reward of the
    stage, added to any ``rewards:`` listed."""

    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReasoningSpec:
    """ThinkRL-Edit's plan → generate → reflect loop around a ``flow_grpo`` stage's editor
    (:mod:`rlpost.trainers.reasoning_edit`; the stage ``args`` stay the editor's flow GRPO settings).

    ``planner``: the causal LM that rewrites each instruction (``tiny:qwen2`` or a local folder / hub id).
    ``reflector``: ``shapes`` (the shapes env's pixel judge), a judge's options (``{base_url, model, ...}`` for an
    OpenAI-compatible server, ``{model: ...}`` for a local one; :func:`rlpost.rewards.judges.build_judge`), or null
    for no reflection. ``pretrain_*``: a supervised warm start of the planner on the task records' reference
    rewrites (record field ``pretrain_target``, e.g. ``canonical`` in ``shapes_edit``); 0 steps skips it.
    ``args``: :class:`~rlpost.trainers.reasoning_edit.ReasoningEditConfig` fields (``max_steps``, ``num_candidates``...).
    """

    planner: ModelSpec = field(default_factory=ModelSpec)
    reflector: Any = None
    pretrain_steps: int = 0
    pretrain_target: str = "canonical"
    pretrain_learning_rate: float = 1e-3
    pretrain_batch_size: int = 32
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecyclingSpec:
    """MDAgent2's low-reward trajectory recycling for a GRPO stage (:mod:`rlpost.envs.recycling`): prompts whose
    group reward (``group_reduce`` over its completions) of reward ``reward`` is below ``threshold`` come back, with
    their failure context, as a ``mix_ratio`` share of later prompts. The stage then streams its data
    (``recycling_dataset``), so it needs ``args.max_steps``. Defaults are :class:`~rlpost.envs.RecyclingBuffer`'s."""

    reward: str | None = None  # instance name of the reward whose scores decide (default: the stage's first reward)
    capacity: int = 256
    threshold: float = 0.5
    mix_ratio: float = 0.25
    template: str | None = None  # None: rlpost.envs.recycling.DEFAULT_TEMPLATE
    group_reduce: str = "max"
    prompt_key: str = "prompt"
    context_keys: list[str] = field(default_factory=lambda: ["error", "penalty"])
    max_context_chars: int = 1000


@dataclass
class StageSpec:
    trainer: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    rewards: list[RewardSpec] = field(default_factory=list)
    environment: EnvironmentSpec | None = None  # grpo only: rollouts are multi-turn episodes in this environment
    recycling: RecyclingSpec | None = None  # grpo only: MDAgent2's low-reward prompt recycling
    reasoning: ReasoningSpec | None = None  # flow_grpo only: wrap the editor in ThinkRL-Edit's reasoning loop
    split: str | None = None  # which task split feeds this stage; default by trainer (sft -> "sft", grpo -> "rl")


@dataclass
class Recipe:
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs/run"
    resume: bool = False
    torch_threads: int | None = None  # torch intra-op threads; None keeps torch's default
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    stages: list[StageSpec] = field(default_factory=list)


TRAINERS = ("sft", "grpo", "flow_grpo", "chord")


def trainer_config_class(trainer: str):
    """The config dataclass a stage's ``args`` are checked against."""
    if trainer == "chord":  # a per-scene optimiser (CHORD), not a trainer of model weights
        from rlpost.envs.chord import ChordConfig

        return ChordConfig
    from rlpost.trainers import FlowGRPOConfig, GRPOConfig, SFTConfig

    classes = {"sft": SFTConfig, "grpo": GRPOConfig, "flow_grpo": FlowGRPOConfig}
    if trainer not in classes:
        raise ConfigError(_unknown("trainer", trainer, list(classes)))
    return classes[trainer]


# -- loading and validation -------------------------------------------------------------------------------------------
def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply ``key=value`` overrides, and validate everything (no model is loaded)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Recipe {str(path)!r} does not exist. `rlpost list recipes` shows the bundled ones.")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"Recipe {path} must be a YAML mapping at the top level.")
    raw = apply_overrides(raw, overrides or [])
    recipe = _build(Recipe, raw, "")
    _validate_recipe(recipe)
    return recipe


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a raw recipe dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} must look like key=value (e.g. grpo.learning_rate=1e-4).")
        key, _, text = item.partition("=")
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError as error:
            where = getattr(error, "problem", None) or "unparsable"
            raise ConfigError(f"Override {key.strip()!r}: the value is not valid YAML ({where}: {text!r}); quote the "
                              "whole override for the shell, e.g. 'grpo.advantage_options={\"clip\": 5}'.") from None
        parts = key.strip().split(".")
        stages = raw.setdefault("stages", [])
        if parts[0] in TRAINERS and parts[0] not in raw:  # shorthand: grpo.lr -> stages[i].args.lr
            matches = [i for i, s in enumerate(stages) if s.get("trainer") == parts[0]]
            if len(matches) != 1:
                raise ConfigError(
                    f"Override {key!r}: the recipe has {len(matches)} '{parts[0]}' stages; use stages.N.args.<key>."
                )
            rest = parts[1:]
            if rest and rest[0] not in ("args", "rewards", "split", "environment", "recycling", "reasoning"):
                rest = ["args", *rest]
            parts = ["stages", str(matches[0]), *rest]
        node: Any = raw
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"Override {key!r}: {'.'.join(parts[: depth + 1])} is not a valid list index.")
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"Override {key!r}: {last!r} is not a valid list index.")
            node[int(last)] = value
        else:
            node[last] = value
    return raw


def _build(cls, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'recipe'} must be a mapping, got {type(raw).__name__}: {raw!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConfigError(_unknown(path, key, list(fields)))
        kwargs[key] = _coerce(typing.get_type_hints(cls)[key], value, path)
    return cls(**kwargs)


def _coerce(hint, value, path: str):
    """Check ``value`` against a type hint, converting the YAML-ambiguous cases (int -> float, '1e-4' -> float)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(option, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}.")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, got {value!r}.")
        (item,) = typing.get_args(hint) or (Any,)
        return [_coerce(item, v, f"{path}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}.")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{path} must be one of {list(typing.get_args(hint))}, got {value!r}.")
        return value
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be true or false, got {value!r}.")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 1e-4 (no dot) as a string
            except ValueError:
                pass
        raise ConfigError(f"{path} must be a number, got {value!r}.")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be an integer, got {value!r}.")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path} must be a string, got {value!r}.")
    return value


_MAX_LISTED = 12  # a trainer config has ~200 fields: past this many, list only the nearest names


def _unknown(path: str, key: str, valid: list[str]) -> str:
    """``Unknown key 'a.b'. Did you mean 'c'?``; with no close match, the valid names (or the nearest few)."""
    close = difflib.get_close_matches(key, valid, n=1)
    if close:
        return f"Unknown key {path!r}. Did you mean {close[0]!r}?"
    if len(valid) <= _MAX_LISTED:
        return f"Unknown key {path!r}. Valid keys here: {', '.join(sorted(valid))}."
    nearest = difflib.get_close_matches(key, valid, n=5, cutoff=0.3)
    listed = f" Nearest valid keys: {', '.join(nearest)}." if nearest else ""
    return f"Unknown key {path!r} (not one of the {len(valid)} valid keys here).{listed}"


def _validate_recipe(recipe: Recipe) -> None:
    from rlpost.rewards import list_rewards

    if not recipe.stages:
        raise ConfigError("The recipe has no stages: add at least one `stages: - trainer: sft|grpo`.")
    # flow prompts may sit inline in args.prompts; a CHORD stage reads no dataset
    flow = any(stage.trainer in ("flow_grpo", "chord") for stage in recipe.stages)
    if recipe.data.task is None and not recipe.data.train_files and not flow:
        raise ConfigError("data needs either `task` (a built-in task) or `train_files` (local json/jsonl/csv/parquet).")
    if recipe.data.task is not None:
        from rlpost.envs import TASKS

        if recipe.data.task not in TASKS:
            raise ConfigError(_unknown("data.task", recipe.data.task, list(TASKS)))
        task_cls = TASKS[recipe.data.task]
        if dataclasses.is_dataclass(task_cls):  # typed task options: same errors as every other key
            _build(task_cls, recipe.data.task_options, "data.task_options")
    _validate_lora(recipe)
    known_rewards = list_rewards()
    for i, stage in enumerate(recipe.stages):
        where = f"stages.{i}"
        if stage.trainer not in TRAINERS:
            raise ConfigError(_unknown(f"{where}.trainer", stage.trainer, list(TRAINERS)))
        check_trainer_args(stage.trainer, stage.args, f"{where}.args")
        if stage.environment is not None:
            from rlpost.envs import TOOL_ENVS

            if stage.trainer != "grpo":
                raise ConfigError(f"{where}.environment: only grpo stages run multi-turn environments.")
            if stage.environment.name not in TOOL_ENVS:
                raise ConfigError(_unknown(f"{where}.environment.name", stage.environment.name, list(TOOL_ENVS)))
        elif stage.trainer in ("grpo", "flow_grpo") and not stage.rewards:
            raise ConfigError(f"{where}: a {stage.trainer} stage needs `rewards:` (e.g. - name: exact_match) or, for "
                              "grpo, an `environment:` whose episodes are rewarded.")
        if stage.recycling is not None:
            _validate_recycling(stage, where)
        if stage.reasoning is not None:
            _validate_reasoning(stage, where)
        seen: dict[str, int] = {}  # instance name -> index of the entry that took it
        for j, reward in enumerate(stage.rewards):
            if ":" not in reward.name and reward.name not in known_rewards:
                raise ConfigError(_unknown(f"{where}.rewards.{j}.name", reward.name, list(known_rewards)))
            rename = reward.options.get("name")
            if rename is not None and (not isinstance(rename, str) or not rename):
                raise ConfigError(f"{where}.rewards.{j}.options.name must be a non-empty string (the instance's "
                                  f"metric name), got {rename!r}.")
            # Early, before any model loads: a registered reward's instance name is its registry name unless
            # renamed (an import path's name is known only once imported; rlpost.rewards.build_rewards checks those).
            name = rename or (reward.name if ":" not in reward.name else None)
            if name in seen:
                raise ConfigError(f"{where}.rewards.{j}: reward name {name!r} is already used by rewards.{seen[name]}; "
                                  f"their metrics would mix. Give one of them `options: {{name: ...}}`.")
            if name is not None:
                seen[name] = j


def _validate_recycling(stage: StageSpec, where: str) -> None:
    spec = stage.recycling
    if stage.trainer != "grpo":
        raise ConfigError(f"{where}.recycling: only grpo stages recycle low-reward prompts; remove it.")
    if not isinstance(stage.args.get("max_steps"), int) or stage.args["max_steps"] <= 0:
        raise ConfigError(f"{where}.recycling streams the stage's data without end: set {where}.args.max_steps "
                          "(a positive number of steps).")
    if not stage.rewards:
        raise ConfigError(f"{where}.recycling needs a reward in `rewards:` whose scores decide what is recycled.")
    names = [r.options.get("name") or r.name for r in stage.rewards]
    if spec.reward is not None and spec.reward not in names:
        raise ConfigError(_unknown(f"{where}.recycling.reward", spec.reward, names))
    if spec.capacity < 1 or not 0.0 <= spec.mix_ratio < 1.0 or spec.group_reduce not in ("max", "mean"):
        raise ConfigError(f"{where}.recycling: capacity must be >= 1, mix_ratio in [0, 1) and group_reduce "
                          f"'max' or 'mean'; got {spec.capacity}, {spec.mix_ratio}, {spec.group_reduce!r}.")
    if spec.template is not None and "{prompt}" not in spec.template:
        raise ConfigError(f"{where}.recycling.template needs a {{prompt}} placeholder for the original prompt.")


def _validate_reasoning(stage: StageSpec, where: str) -> None:
    from rlpost.trainers.reasoning_edit import ReasoningEditConfig

    spec = stage.reasoning
    if stage.trainer != "flow_grpo":
        raise ConfigError(f"{where}.reasoning: the reasoning loop wraps a flow editor; only flow_grpo stages take it.")
    if stage.args.get("mode", "flow_grpo") == "e_grpo":
        raise ConfigError(f"{where}.reasoning: every candidate follows its own plan, so there is no shared E-GRPO "
                          "anchor; set args.mode to flow_grpo or dance_grpo.")
    if spec.planner.lora is not None:
        raise ConfigError(f"{where}.reasoning.planner.lora: LoRA is not supported for the planner yet; remove it.")
    if spec.pretrain_steps < 0 or spec.pretrain_batch_size < 1 or spec.pretrain_learning_rate <= 0:
        raise ConfigError(f"{where}.reasoning: pretrain_steps must be >= 0, pretrain_batch_size >= 1 and "
                          "pretrain_learning_rate > 0.")
    if not (spec.reflector is None or spec.reflector == "shapes" or isinstance(spec.reflector, dict)):
        raise ConfigError(f"{where}.reasoning.reflector must be 'shapes', a judge's options ({{base_url, model}} or "
                          f"{{model}}) or null, got {spec.reflector!r}.")
    check_dataclass_args(ReasoningEditConfig, spec.args, f"{where}.reasoning.args")


def check_trainer_args(trainer: str, args: dict, where: str) -> None:
    """Check stage ``args`` against the trainer's config dataclass: names (with suggestion) and basic types."""
    check_dataclass_args(trainer_config_class(trainer), args, where)


def check_dataclass_args(cls: type, args: dict, where: str) -> None:
    """Check ``args`` (a free-form recipe dict) against the fields of dataclass ``cls``: unknown names fail with the
    closest valid one, values are coerced to the field types in place."""
    fields = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in args.items():
        if key not in fields:
            raise ConfigError(_unknown(f"{where}.{key}", key, list(fields)))
        args[key] = _coerce(hints[key], value, f"{where}.{key}")


def _validate_lora(recipe: Recipe) -> None:
    lora = recipe.model.lora
    if lora is None:
        return
    if lora.r < 1:
        raise ConfigError(f"model.lora.r must be a positive integer (the adapter rank), got {lora.r}.")
    if lora.alpha <= 0:
        raise ConfigError(f"model.lora.alpha must be > 0 (the update is scaled by alpha / r), got {lora.alpha}.")
    if not 0.0 <= lora.dropout < 1.0:
        raise ConfigError(f"model.lora.dropout must be in [0, 1), got {lora.dropout}.")
    if isinstance(lora.target_modules, list) and not lora.target_modules:
        raise ConfigError("model.lora.target_modules is empty; list module names (e.g. [q_proj, v_proj]) or use "
                          "'all-linear'.")
    flow = [i for i, stage in enumerate(recipe.stages) if stage.trainer not in ("sft", "grpo")]
    if flow:
        raise ConfigError(f"model.lora applies to sft and grpo stages only; stage {flow[0]} is "
                          f"'{recipe.stages[flow[0]].trainer}'. Remove model.lora or that stage.")


def lora_config(spec: LoraSpec):
    """peft's ``LoraConfig`` for a causal LM from a validated :class:`LoraSpec`."""
    from peft import LoraConfig

    return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                      target_modules=spec.target_modules, task_type="CAUSAL_LM")
