"""Environments and tasks: data, rollouts and checkers. Envs may use rewards/ and models/, never trainers/."""

from rlpost.envs.arithmetic import AdditionTask
from rlpost.envs.conflict import ConflictTask
from rlpost.envs.recycling import RecyclingBuffer, recycling_dataset

# Built-in single-turn tasks usable from a recipe's `data.task`. Each has `split(name)` and `corpus()`.
TASKS = {"addition": AdditionTask, "conflict": ConflictTask}

__all__ = ["TASKS", "AdditionTask", "ConflictTask", "RecyclingBuffer", "recycling_dataset"]
