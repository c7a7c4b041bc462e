"""A small verifiable task for the quickstart and the learning tests: addition of two integers.

The prompt is ``"a+b="`` and the answer is the decimal sum; an exact checker scores it. Problems are split by
operand pair, so the held-out split contains sums the model never saw during SFT or GRPO.

SFT demonstrations can be made *noisy* (``label_noise``: a share of demonstrations carry a wrong last digit), the
common situation of a teacher that is right most of the time: SFT imitates the teacher's mistakes, while GRPO with
an exact checker can learn past them.
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
        label_noise: share of SFT demonstrations whose answer's last digit is replaced by a wrong one.
        seed: seeds the split and the noise.
    """

    max_operand: int = 49
    num_heldout: int = 200
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
        """Prompt-completion pairs for SFT, with ``label_noise`` of them wrong."""
        train, _ = self.problems()
        rng = random.Random(self.seed + 1)
        rows = []
        for a, b in train:
            answer = str(a + b)
            if rng.random() < self.label_noise:
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
