"""Environments and tasks: data, rollouts and checkers. Envs may use rewards/ and models/, never trainers/."""

from rlpost.envs.arithmetic import AdditionTask

# Built-in single-turn tasks usable from a recipe's `data.task`. Each has `split(name)` and `corpus()`.
TASKS = {"addition": AdditionTask}

__all__ = ["TASKS", "AdditionTask"]
