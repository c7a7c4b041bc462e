"""Conflicting string tasks for small-scale forgetting experiments (EAFT, arXiv 2601.02151).

Task A: ``"abc>" -> "cba"`` (reverse three digits) and ``"abc=" -> "abc"`` (copy). Two operators, so the
model learns to read the operator.
Task B: the copy rule under a new operator, ``"abc<" -> "abc"``, **plus** *conflict* items ``"abc>" -> "abc"``
on inputs A was trained on: A's prompt with a label that disagrees with what an A-trained model
confidently predicts for the first and last digit. These are the paper's "confident conflicts" (§3):
low entropy, low probability of the gold token. B is mostly a new format of a known skill, as target
data mostly is for a pretrained model; the conflicts are the part that contradicts the model.

Every 3-digit string (1,000 of them) has one role, split by seed:

* ``a_train``: A's training inputs (each with both A operators); ``b_conflict`` re-labels
  ``num_conflict`` of their ``abc>`` items with the copy rule.
* ``a_heldout``: A items never trained on, in either phase: A *retention* is measured here.
* ``b_train``: ``num_b_train`` new-operator items plus the conflict items.
* ``b_heldout``: new-operator items never trained on: B *accuracy* is measured here.

The rules are learnable by a 2-layer model from a few hundred examples, so held-out accuracy measures
the rule, not memorization.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from datasets import Dataset

__all__ = ["ConflictTask"]

# Operator -> rule. Phase A teaches two operators, so the model learns to read the operator; phase B adds a third.
RULES = {
    ">": lambda d: d[::-1],  # A: reverse
    "=": lambda d: d,  # A: copy
    "<": lambda d: d,  # B: copy under a new operator
}
A_OPERATORS = (">", "=")
B_OPERATOR = "<"
CONFLICT_OPERATOR = ">"  # conflict items: A's reverse prompt ...
CONFLICT_RULE = "="  # ... labelled with the copy rule (a plausible, known alternative, as a teacher's style would be)


@dataclass(frozen=True)
class ConflictTask:
    """Task A (``abc>`` reverse, ``abc=`` copy), then task B (``abc<`` copy) plus conflicting re-labels of A items.

    Splits: ``a_train`` (both A operators), ``a_heldout`` (A items never trained on: retention),
    ``b_train`` (new-operator items + conflicts), ``b_heldout`` (new-operator items never trained on:
    B accuracy), ``b_conflict`` (the conflict items alone, ``abc>`` labelled ``abc``), and for a
    recipe's defaults ``sft`` (= ``a_train``) and ``heldout`` (A then B held-out items, ``item``
    prefixed ``A:`` / ``B:``).

    Args:
        num_a_train: A training inputs (each appears with both A operators).
        num_a_heldout: A inputs kept out of all training (retention), each with both A operators.
        num_b_train: new-operator B training items (conflicts come on top).
        num_b_heldout: new-operator B items kept out of training (B accuracy).
        num_conflict: A training inputs whose ``abc>`` item is re-labelled ``abc`` inside ``b_train``.
        uncertain_b_prior: ``a_train`` also shows B's operator, ``abc<``, on each A training input with random
            digits as the label, so the A model is *uncertain* (high entropy) on B's format instead of confidently
            wrong, as a pretrained LM is on genuinely new content [design choice, not from the paper]. Default off;
            ``benchmarks/forgetting_eaft.py`` turns it on for its main setting.
        seed: seeds every split.
    """

    num_a_train: int = 500
    num_a_heldout: int = 150
    num_b_train: int = 200
    num_b_heldout: int = 150
    num_conflict: int = 100
    uncertain_b_prior: bool = False
    seed: int = 0

    def __post_init__(self):
        needed = self.num_a_train + self.num_a_heldout + self.num_b_train + self.num_b_heldout
        if needed > 1000:
            raise ValueError(
                f"ConflictTask needs {needed} distinct 3-digit inputs but there are 1000; lower num_a_train, "
                "num_a_heldout, num_b_train or num_b_heldout."
            )
        if self.num_conflict > self.num_a_train:
            raise ValueError(f"num_conflict={self.num_conflict} exceeds num_a_train={self.num_a_train}: conflicts "
                             "re-label A training inputs.")

    @staticmethod
    def answer(operator: str, digits: str) -> str:
        """The label of ``digits + operator`` under the rule of ``operator``."""
        return RULES[operator](digits)

    def _inputs(self) -> dict[str, list[str]]:
        strings = [f"{i:03d}" for i in range(1000)]
        random.Random(self.seed).shuffle(strings)
        sizes = {"a_train": self.num_a_train, "a_heldout": self.num_a_heldout, "b_train": self.num_b_train,
                 "b_heldout": self.num_b_heldout}
        parts, start = {}, 0
        for name, size in sizes.items():
            parts[name] = strings[start : start + size]
            start += size
        # Only inputs where the conflicting label differs from A's (no palindromes): each one is a real conflict.
        candidates = [s for s in parts["a_train"]
                      if self.answer(CONFLICT_OPERATOR, s) != self.answer(CONFLICT_RULE, s)]
        parts["b_conflict"] = random.Random(self.seed + 1).sample(candidates, min(self.num_conflict, len(candidates)))
        return parts

    def corpus(self) -> list[str]:
        """Texts to train an offline tokenizer on: every operator on every input."""
        return [f"{i:03d}{op}{i:03d}" for i in range(1000) for op in RULES]

    def split(self, name: str) -> Dataset:
        """One of ``a_train``, ``a_heldout``, ``b_train``, ``b_heldout``, ``b_conflict``, ``sft``, ``heldout``."""
        parts = self._inputs()

        def item(digits: str, operator: str, rule: str, tag: str) -> dict:
            return {"prompt": digits + operator, "answer": self.answer(rule, digits),
                    "item": f"{tag}:{digits}{operator}"}

        def a_items(inputs: list[str]) -> list[dict]:
            return [item(s, op, op, "A") for op in A_OPERATORS for s in inputs]

        def noise_items(inputs: list[str]) -> list[dict]:
            rng = random.Random(self.seed + 2)
            return [{"prompt": s + B_OPERATOR, "answer": "".join(rng.choice("0123456789") for _ in s),
                     "item": f"N:{s}{B_OPERATOR}"} for s in inputs]

        rows = {
            "a_train": lambda: a_items(parts["a_train"])
            + (noise_items(parts["a_train"]) if self.uncertain_b_prior else []),
            "a_heldout": lambda: a_items(parts["a_heldout"]),
            "b_train": lambda: [item(s, B_OPERATOR, B_OPERATOR, "B") for s in parts["b_train"]] + rows["b_conflict"](),
            "b_heldout": lambda: [item(s, B_OPERATOR, B_OPERATOR, "B") for s in parts["b_heldout"]],
            "b_conflict": lambda: [item(s, CONFLICT_OPERATOR, CONFLICT_RULE, "C") for s in parts["b_conflict"]],
        }
        rows["sft"] = rows["a_train"]
        rows["heldout"] = lambda: rows["a_heldout"]() + rows["b_heldout"]()
        if name not in rows:
            raise ValueError(f"ConflictTask has splits {sorted(rows)}, not {name!r}.")
        data = rows[name]()
        if name in ("a_train", "b_train", "sft"):
            # SFT columns: TRL trains on the completion only (prompt-completion format).
            return Dataset.from_list([{"prompt": r["prompt"], "completion": r["answer"]} for r in data])
        return Dataset.from_list(data)
