"""The validation pass every recipe gets before any model loads (``rlpost train --check RECIPE`` runs only this).

:func:`rlpost.config.load_recipe` checks the recipe's keys and value types. :func:`check_recipe` then checks what
would otherwise fail only when a stage starts, possibly after an hour of an earlier stage:

- every reward's ``options`` bound to its constructor's signature (nothing is built: no weights, no executors);
- every environment's ``options`` bound to its factory;
- each stage's config actually constructed as the stage will construct it (:func:`rlpost.recipe_runner.stage_config`
  / :func:`~rlpost.recipe_runner.flow_stage_config`), so TRL's own ``__post_init__`` checks run (e.g. a generation
  batch not divisible by ``num_generations``), and with them rlpost's advantage checks: the estimator's name, its
  options bound to its signature, TRL's ``scale_rewards`` / ``multi_objective_aggregation`` honoured or refused;
- a flow stage's advantage options, its reasoning loop's config, and ``resume``.

Every problem is a :class:`~rlpost.config.ConfigError` naming the key, the problem and the fix; ``rlpost`` prints it
on one line and exits with status 2. Nothing is written: no run directory, no wandb run.
"""

from __future__ import annotations

import inspect

from rlpost.config import ConfigError, Recipe

__all__ = ["check_recipe"]


def check_recipe(recipe: Recipe) -> str:
    """Run the validation pass on a loaded recipe; returns a one-line summary of what would run."""
    from rlpost.recipe_runner import default_report_to, init_process_state

    report_to = default_report_to(recipe)
    flow = [i for i, stage in enumerate(recipe.stages) if stage.trainer == "flow_grpo"]
    if not flow:  # TrainingArguments touch the process state: set it up as the LM pipeline does (a flow trainer
        init_process_state()  # sets up its own from its use_cpu, so a flow check leaves it alone)
    if flow and len(recipe.stages) != 1:
        raise ConfigError(f"stages.{flow[0]}: a flow recipe has exactly one stage (`trainer: flow_grpo`); split the "
                          "other stages into their own recipe.")
    chord = [i for i, stage in enumerate(recipe.stages) if stage.trainer == "chord"]
    if chord and len(chord) != len(recipe.stages):
        other = next(i for i, stage in enumerate(recipe.stages) if stage.trainer != "chord")
        raise ConfigError(f"stages.{other}: a CHORD recipe runs only `trainer: chord` stages; put the "
                          f"{recipe.stages[other].trainer!r} stage in its own recipe.")
    if chord:
        _check_chord_teacher(recipe)
    parts = []
    for index, stage in enumerate(recipe.stages):
        where = f"stages.{index}"
        _check_rewards(stage, where)
        if stage.environment is not None:
            _check_environment(stage, where)
        if stage.trainer == "chord":  # its args were constructed as a ChordConfig by load_recipe
            steps = stage.args.get("iterations", "default")
        elif stage.trainer == "flow_grpo":
            steps = _check_flow_stage(recipe, where)
        else:
            steps = _check_lm_stage(recipe, index, stage, where, report_to)
        rewards = "+".join(r.options.get("name") or r.name for r in stage.rewards)
        parts.append(f"{index}-{stage.trainer} {steps} steps" + (f" ({rewards})" if rewards else ""))
    data = recipe.data.task or ", ".join(recipe.data.train_files) or "inline prompts"
    return (f"OK {recipe.name}: {'; '.join(parts)}; model {recipe.model.name_or_path}; data {data}; "
            f"output {recipe.output_dir}")


def _check_chord_teacher(recipe: Recipe) -> None:
    from rlpost.envs.chord.recipe import check_chord_teacher

    try:
        check_chord_teacher(recipe.model)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _check_rewards(stage, where: str) -> None:
    from rlpost.rewards import check_reward_options

    for j, reward in enumerate(stage.rewards):
        options = {k: v for k, v in reward.options.items() if k != "name"}  # `name` renames every instance
        try:
            check_reward_options(reward.name, options)
        except ImportError as error:
            raise ConfigError(f"{where}.rewards.{j}.name: {error}. Install the extra it needs (pip install "
                              "'rlpost[all]') or pick another reward.") from None
        except (TypeError, ValueError, AttributeError) as error:
            raise ConfigError(f"{where}.rewards.{j}.options: {error}") from None


def _check_environment(stage, where: str) -> None:
    from rlpost.envs import TOOL_ENVS

    factory = TOOL_ENVS[stage.environment.name]
    try:
        inspect.signature(factory).bind(**stage.environment.options)
    except TypeError as error:
        raise ConfigError(f"{where}.environment.options: {stage.environment.name!r} {error}; its options: "
                          f"{inspect.signature(factory)}.") from None


# Fixes for TRL's own config errors whose message names only the problem.
_FIXES = {
    "must be divisible by num_generations": "Make per_device_train_batch_size x processes x steps_per_generation "
                                            "(the generation batch) a multiple of num_generations.",
}


def _first_paragraph(error: Exception) -> str:
    return str(error).strip().split("\n\n")[0].replace("\n", " ")


def _check_lm_stage(recipe: Recipe, index: int, stage, where: str, report_to: list[str]) -> int | str:
    from rlpost.recipe_runner import stage_config

    try:
        args = stage_config(recipe, index, stage, report_to)
    except (TypeError, ValueError) as error:
        message = _first_paragraph(error)
        for problem, fix in _FIXES.items():
            if problem in message:
                message += f" {fix}"
        if message.startswith("advantage_options."):  # rlpost's own messages start with the key
            raise ConfigError(f"{where}.args.{message}") from None
        raise ConfigError(f"{where}.args ({stage.trainer} config): {message}") from None
    if stage.trainer == "grpo":
        expected = len(stage.rewards) + (stage.environment is not None)
        if args.reward_weights is not None and len(args.reward_weights) != expected:
            raise ConfigError(f"{where}.args.reward_weights has {len(args.reward_weights)} weights for {expected} "
                              "reward functions; give one per reward (or set each reward's `weight:` instead).")
    return args.max_steps if args.max_steps > 0 else f"{args.num_train_epochs:g} epochs of"


def _check_flow_stage(recipe: Recipe, where: str) -> int:
    from rlpost.algorithms.advantages import check_advantage_options
    from rlpost.recipe_runner import flow_stage_config

    try:
        args = flow_stage_config(recipe)
    except (TypeError, ValueError) as error:
        key = "resume" if str(error).startswith("resume") else f"{where}.args"
        raise ConfigError(f"{key}: {_first_paragraph(error)}") from None
    options = {"eps": args.advantage_eps, "clip": args.adv_clip_max, **args.advantage_options}
    try:
        check_advantage_options(args.advantage, options)
    except ValueError as error:
        message = _first_paragraph(error)
        key = f"{where}.args." if message.startswith("advantage_options.") else f"{where}.args.advantage: "
        raise ConfigError(key + message) from None
    spec = recipe.stages[0].reasoning
    if spec is not None:
        from rlpost.trainers.reasoning_edit import ReasoningEditConfig

        try:
            ReasoningEditConfig(**{"output_dir": args.output_dir, "seed": recipe.seed, **spec.args})
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}.reasoning.args: {_first_paragraph(error)}") from None
    return args.max_steps
