"""Environments and tasks: data, rollouts and checkers. Envs may use rewards/ and models/, never trainers/."""

from rlpost.envs.arithmetic import AdditionTask
from rlpost.envs.conflict import ConflictTask
from rlpost.envs.lammps_fill import LammpsFillTask
from rlpost.envs.md_runtime import MDRuntimeEnv, MDToolEnv, md_tool_env_factory
from rlpost.envs.recycling import RecyclingBuffer, recycling_dataset
from rlpost.envs.shapes_edit import ShapesEditTask

# Built-in single-turn tasks usable from a recipe's `data.task`. Each has `split(name)` and `corpus()`.
TASKS = {"addition": AdditionTask, "conflict": ConflictTask, "lammps_fill": LammpsFillTask,
         "shapes_edit": ShapesEditTask}

# Multi-turn environments (reset / step).
ENVS = {"md_runtime": MDRuntimeEnv}

# Factories of TRL ``environment_factory`` tool environments, for a GRPO stage's `environment:` in a recipe.
TOOL_ENVS = {"md_runtime": md_tool_env_factory}

__all__ = [
    "ENVS",
    "TASKS",
    "TOOL_ENVS",
    "AdditionTask",
    "ConflictTask",
    "LammpsFillTask",
    "MDRuntimeEnv",
    "MDToolEnv",
    "RecyclingBuffer",
    "ShapesEditTask",
    "md_tool_env_factory",
    "recycling_dataset",
]
