"""Fill in the missing line of a short LAMMPS script: a toy task family for the MD-GRPO learning check (issue 6 item 7).

Every task is one small Lennard-Jones melt (108 or 256 atoms, 10-30 steps, LJ units) with ONE line replaced by a
``<MISSING>`` marker. The prompt shows that script and ends with ``answer:``; the completion is the missing line.
Columns:

- ``prompt``: the script with the marker, then ``\\nanswer:``;
- ``answer``: the reference line (exact match is a strict lower bound: any line that makes the script run sanely
  is correct, e.g. another velocity seed, which is why the execution reward means more than exact match);
- ``script_template``: the script with the ``<MISSING>`` marker, for :class:`rlpost.rewards.lammps_fill.LammpsFillReward`
  to rebuild the full script from a completion;
- ``item``: a stable task id (held-out split, Benchmark²'s item column).

Removable lines are ``mass``, ``velocity``, ``pair_style``, ``pair_coeff``, ``fix`` and ``run``; their parameters
(mass, temperature, seed, cutoff, run length) vary across tasks, and tasks are split by parameter set, so held-out
tasks carry parameter combinations (and velocity seeds) never seen in training.

SFT demonstrations can come from an imperfect teacher, as :class:`rlpost.envs.arithmetic.AdditionTask` does:
``teacher_error`` is the probability that the teacher drops the last argument of the line (``fix 1 all`` for
``fix 1 all nve``, ``velocity all create 1.5`` without its seed), which LAMMPS rejects. Above 0.5 the teacher's
most likely line is broken for every line type, so SFT learns the mistake; GRPO with the execution reward can learn
past it. The default 0.0 is a perfect teacher.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from datasets import Dataset

from rlpost.rewards.lammps_fill import MISSING, fill_script  # envs may use rewards, not the reverse

__all__ = ["MISSING", "REMOVABLE", "LammpsFillTask", "fill_script"]

PROMPT_SUFFIX = "\nanswer:"

# One LJ melt; {placeholders} vary per task. The first word names the line type.
_LINES = (
    "lattice fcc {density}",
    "region box block 0 {n} 0 {n} 0 {n}",
    "create_box 1 box",
    "create_atoms 1 box",
    "mass 1 {mass}",
    "velocity all create {temp} {seed}",
    "pair_style lj/cut {cutoff}",
    "pair_coeff 1 1 1.0 1.0 {cutoff}",
    "fix 1 all nve",
    "thermo 10",
    "run {steps}",
)
REMOVABLE = ("mass", "velocity", "pair_style", "pair_coeff", "fix", "run")

# Parameter grid: 2 x 2 x 2 x 4 x 2 x 3 = 192 parameter sets, each with every removable line -> 1,152 tasks.
_GRID = {
    "n": (3, 4),  # 4 n^3 atoms: 108 or 256
    "density": ("0.8442", "0.9"),
    "mass": ("1.0", "2.0"),
    "temp": ("1.0", "1.5", "2.0", "3.0"),
    "cutoff": ("2.5", "3.0"),
    "steps": ("10", "20", "30"),
}


@dataclass(frozen=True)
class LammpsFillTask:
    """Missing-line tasks over a grid of LJ-melt parameters (see the module docstring).

    Args:
        num_heldout: parameter sets kept out of every training split (each gives one task per removable line, so
            the held-out split has ``num_heldout`` tasks with the removed line drawn per set).
        teacher_error: probability that an SFT demonstration drops the line's last argument (a broken line).
        seed: seeds the split, the velocity seeds and the teacher's errors.
    """

    num_heldout: int = 48
    teacher_error: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.teacher_error <= 1.0:
            raise ValueError(f"teacher_error must lie in [0, 1], got {self.teacher_error}.")
        total = len(list(itertools.product(*_GRID.values())))
        if not 0 < self.num_heldout < total:
            raise ValueError(f"num_heldout={self.num_heldout} must lie in (0, {total}): the grid has {total} "
                             "parameter sets.")

    def _parameter_sets(self) -> tuple[list[dict], list[dict]]:
        rng = random.Random(self.seed)
        sets = [dict(zip(_GRID, values)) for values in itertools.product(*_GRID.values())]
        for params in sets:  # drawn per set, so held-out tasks carry velocity seeds never seen in training
            params["seed"] = str(rng.randint(10000, 99999))
        rng.shuffle(sets)
        return sets[self.num_heldout:], sets[: self.num_heldout]

    @staticmethod
    def _task(params: dict, removed: str) -> dict:
        lines = [line.format(**params) for line in _LINES]
        index = next(i for i, line in enumerate(lines) if line.split()[0] == removed)
        answer = lines[index]
        template = "\n".join([*lines[:index], MISSING, *lines[index + 1:]])
        return {"prompt": template + PROMPT_SUFFIX, "answer": answer, "script_template": template}

    def corpus(self) -> list[str]:
        """Texts to train an offline tokenizer on: every task's prompt with its answer."""
        train, heldout = self._parameter_sets()
        return [t["prompt"] + t["answer"] for p in train + heldout for t in (self._task(p, r) for r in REMOVABLE)]

    def split(self, name: str) -> Dataset:
        """``"sft"``, ``"rl"`` or ``"heldout"``."""
        splits = {"sft": self.sft_dataset, "rl": self.rl_dataset, "heldout": self.heldout_dataset}
        if name not in splits:
            raise ValueError(f"LammpsFillTask has splits {sorted(splits)}, not {name!r}.")
        return splits[name]()

    def sft_dataset(self) -> Dataset:
        """Prompt-completion pairs from the (possibly imperfect) teacher, every removable line of every train set."""
        train, _ = self._parameter_sets()
        rng = random.Random(self.seed + 1)
        rows = []
        for params in train:
            for removed in REMOVABLE:
                task = self._task(params, removed)
                line = task["answer"]
                if rng.random() < self.teacher_error:
                    line = line.rsplit(" ", 1)[0]  # the teacher drops the last argument
                rows.append({"prompt": task["prompt"], "completion": line})
        return Dataset.from_list(rows)

    def rl_dataset(self) -> Dataset:
        """Prompts with their script templates (for the execution reward) and reference lines."""
        train, _ = self._parameter_sets()
        return Dataset.from_list([self._task(p, r) for p in train for r in REMOVABLE])

    def heldout_dataset(self) -> Dataset:
        """One task per held-out parameter set, the removed line cycling through ``REMOVABLE`` (balanced types)."""
        _, heldout = self._parameter_sets()
        rows = []
        for i, params in enumerate(heldout):
            removed = REMOVABLE[i % len(REMOVABLE)]
            rows.append({**self._task(params, removed), "item": f"{i}:{removed}"})
        return Dataset.from_list(rows)
