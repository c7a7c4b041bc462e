"""A small verifiable task for the quickstart and the learning tests: addition of two integers.

The prompt is ``"a+b="`` and the answer is the decimal sum; an exact checker scores it. Problems are split by
operand pair, so the held-out split contains sums the model never saw during SFT or GRPO.

SFT demonstrations can come from an imperfect teacher, the common situation when demonstrations are distilled from
a weaker model:

- ``carry_error``: on problems whose ones digits carry (e.g. 17+25), the teacher forgets the carry with this
  probability (17+25 -> 32). Above 0.5 the teacher's *most likely* answer is wrong on every carry problem, so SFT,
  however long, learns the mistake; GRPO with an exact checker can learn past it.
- ``label_noise``: a share of demonstrations carry a random wrong last digit (unsystematic noise).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from datasets import Dataset

__all__ = ["AdditionTask"]


@dataclass(frozen=True)
class AdditionTask:
    """Addition problems ``a+b=`` with ``0 <= a, b <= max_operand``.

    Args:
        max_operand: largest operand.
        num_heldout: problems kept out of every training split.
        carry_error: probability that the teacher drops the carry on a problem whose ones digits carry.
        label_noise: share of SFT demonstrations whose answer's last digit is replaced by a wrong one.
        seed: seeds the split and the noise.
    """

    max_operand: int = 49
    num_heldout: int = 200
    carry_error: float = 0.0
    label_noise: float = 0.0
    seed: int = 0

    def problems(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        pairs = [(a, b) for a in range(self.max_operand + 1) for b in range(self.max_operand + 1)]
        if self.num_heldout >= len(pairs):
            raise ValueError(
                f"num_heldout={self.num_heldout} leaves no training problems out of {len(pairs)}; lower it or raise "
                "max_operand."
            )
        random.Random(self.seed).shuffle(pairs)
        return pairs[self.num_heldout :], pairs[: self.num_heldout]

    @staticmethod
    def prompt(a: int, b: int) -> str:
        return f"{a}+{b}="

    def corpus(self) -> list[str]:
        """Texts to train an offline tokenizer on: every problem with its answer."""
        return [f"{self.prompt(a, b)}{a + b}" for a in range(self.max_operand + 1) for b in range(self.max_operand + 1)]

    def split(self, name: str) -> Dataset:
        """``"sft"``, ``"rl"`` or ``"heldout"``."""
        splits = {"sft": self.sft_dataset, "rl": self.rl_dataset, "heldout": self.heldout_dataset}
        if name not in splits:
            raise ValueError(f"AdditionTask has splits {sorted(splits)}, not {name!r}.")
        return splits[name]()

    def sft_dataset(self) -> Dataset:
        """Prompt-completion pairs for SFT from the imperfect teacher (``carry_error``, ``label_noise``)."""
        train, _ = self.problems()
        rng = random.Random(self.seed + 1)
        rows = []
        for a, b in train:
            answer = str(a + b)
            if (a % 10) + (b % 10) >= 10 and rng.random() < self.carry_error:
                answer = str(a + b - 10)  # the carry into the tens digit is forgotten
            elif rng.random() < self.label_noise:
                wrong = rng.choice([d for d in "0123456789" if d != answer[-1]])
                answer = answer[:-1] + wrong
            rows.append({"prompt": self.prompt(a, b), "completion": answer})
        return Dataset.from_list(rows)

    def rl_dataset(self) -> Dataset:
        """Prompts with their exact answers for GRPO (the ``answer`` column feeds ``exact_match``)."""
        train, _ = self.problems()
        return Dataset.from_list([{"prompt": self.prompt(a, b), "answer": str(a + b)} for a, b in train])

    def heldout_dataset(self) -> Dataset:
        _, heldout = self.problems()
        return Dataset.from_list(
            [{"prompt": self.prompt(a, b), "answer": str(a + b), "item": f"{a}+{b}"} for a, b in heldout]
        )
