"""Built-in text rewards: answer checks against a dataset column, format checks, a length shaping term.

All are pointwise and cheap (stdlib ``re`` only), so they run in the caller's thread. A completion given as chat
messages is read as the text of its last assistant message (:func:`rlpost.rewards.as_text`). A ``None`` answer means
"not applicable" and scores ``None``; an empty completion scores the same as a wrong one.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from rlpost.rewards.base import RewardModule
from rlpost.rewards.registry import register_reward

__all__ = ["ExactMatch", "FormatRegex", "LengthPenalty", "NumericMatch", "extract_last_number", "normalize_answer"]

_ANSWER_MARKER = re.compile(r"answer:", re.IGNORECASE)
# integers with optional thousands separators, decimals, exponents; "1,234.5" -> 1234.5 once commas are removed
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


def normalize_answer(text: str) -> str:
    """Strip, lowercase, collapse whitespace to one space, drop trailing periods: ``" The  Cat. "`` -> ``"the cat"``."""
    text = re.sub(r"\s+", " ", text.strip().lower())
    return text.rstrip(".").strip()


def extract_last_number(text: str) -> float | None:
    """The last number written in ``text`` (``"1,234"`` reads as 1234), or None when there is none."""
    for match in reversed(_NUMBER.findall(text)):
        try:
            return float(match.replace(",", ""))
        except ValueError:  # e.g. "1e" left over from "1e-" followed by a non-digit
            continue
    return None


@register_reward("exact_match")
class ExactMatch(RewardModule):
    r"""1.0 when the answer extracted from the completion equals the ``answer`` field, else 0.0.

    Extraction: with ``pattern`` (a regex with exactly one group) the group of its *last* match; otherwise the text
    after the last ``Answer:`` (matched case-insensitively, a choice of ours) or, without one, the whole completion.
    A completion where ``pattern`` finds nothing is malformed and scores 0.0.

    Args:
        pattern: extraction regex with one capturing group, e.g. ``r"\\boxed\{([^}]*)\}"``.
        normalize: compare after :func:`normalize_answer` (default True); False compares stripped strings.
        **options: ``field_map``, ``name``, ... of :class:`RewardModule`.
    """

    description = "1.0 if the extracted answer equals the `answer` field (normalized), else 0.0."
    requires = ("completion", "answer")

    def __init__(self, pattern: str | None = None, normalize: bool = True, **options: Any) -> None:
        self.pattern = re.compile(pattern, re.DOTALL) if pattern is not None else None
        if self.pattern is not None and self.pattern.groups != 1:
            raise ValueError(
                f"exact_match pattern {pattern!r} has {self.pattern.groups} capturing groups; it needs exactly one "
                f"around the answer, e.g. r'Answer: (.*)'. Use (?:...) for other groups."
            )
        self.normalize = normalize
        super().__init__(**options)

    def extract(self, completion: str) -> str | None:
        """The answer part of ``completion``, or None when ``pattern`` does not match."""
        if self.pattern is not None:
            matches = list(self.pattern.finditer(completion))
            return matches[-1].group(1) if matches else None
        markers = list(_ANSWER_MARKER.finditer(completion))
        return completion[markers[-1].end() :] if markers else completion

    def _canonical(self, text: str) -> str:
        return normalize_answer(text) if self.normalize else text.strip()

    def score_one(self, sample: dict[str, Any]) -> float | None:
        answer = sample["answer"]
        if answer is None:
            return None
        completion = sample["completion"]
        if not completion.strip():
            return 0.0
        extracted = self.extract(completion)
        if extracted is None:
            return 0.0
        return float(self._canonical(extracted) == self._canonical(str(answer)))


@register_reward("numeric_match")
class NumericMatch(RewardModule):
    """1.0 when the last number in the completion equals the ``answer`` number within tolerance, else 0.0.

    The answer may be a number or a string whose last number counts (GSM8K's ``"... #### 72"`` reads as 72); an
    answer string without a number is a data error and raises, so the failure policy counts it. A completion with
    no number scores 0.0. Equality is ``math.isclose(pred, answer, rel_tol, abs_tol)``.

    Args:
        rel_tol: relative tolerance (default 1e-6).
        abs_tol: absolute tolerance (default 0.0; raise it when answers can be 0).
    """

    description = "1.0 if the last number in the completion equals the `answer` number (relative tolerance), else 0.0."
    requires = ("completion", "answer")

    def __init__(self, rel_tol: float = 1e-6, abs_tol: float = 0.0, **options: Any) -> None:
        if rel_tol < 0 or abs_tol < 0:
            raise ValueError(f"numeric_match tolerances must be >= 0, got rel_tol={rel_tol}, abs_tol={abs_tol}.")
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol
        super().__init__(**options)

    def score_one(self, sample: dict[str, Any]) -> float | None:
        answer = sample["answer"]
        if answer is None:
            return None
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            target = float(answer)
        else:
            target = extract_last_number(str(answer))
            if target is None:
                raise ValueError(
                    f"numeric_match: answer {answer!r} contains no number; fix the dataset's answer column."
                )
        predicted = extract_last_number(sample["completion"])
        if predicted is None:
            return 0.0
        return float(math.isclose(predicted, target, rel_tol=self.rel_tol, abs_tol=self.abs_tol))


@register_reward("format_regex")
class FormatRegex(RewardModule):
    """1.0 when the whole completion matches ``pattern`` (``re.fullmatch``), else 0.0.

    Args:
        pattern: the required format, e.g. ``r"<think>.*?</think>\\s*Answer: .+"``.
        flags: ``re`` flags; default ``re.DOTALL`` so ``.`` spans lines, as reasoning traces do.
    """

    description = "1.0 if the completion fully matches a given regex, else 0.0."
    requires = ("completion",)

    def __init__(self, pattern: str | None = None, flags: int = re.DOTALL, **options: Any) -> None:
        if pattern is None:
            raise ValueError(
                "format_regex needs a `pattern`, e.g. get_reward('format_regex', pattern=r'<think>.*</think>.*')."
            )
        self.pattern = re.compile(pattern, flags)
        super().__init__(**options)

    def score_one(self, sample: dict[str, Any]) -> float | None:
        return 1.0 if self.pattern.fullmatch(sample["completion"]) else 0.0


@register_reward("length_penalty")
class LengthPenalty(RewardModule):
    """Score = −min(|L − target| / target, max_penalty): 0 at the target length, more negative away from it.

    Args:
        target: desired length (> 0) in ``unit``.
        unit: ``"chars"`` (len of the completion text) or ``"tokens"`` (len of ``completion_ids``).
        max_penalty: clip of the penalty (default 1.0), so the score lies in [−max_penalty, 0].
    """

    description = "-|len - target| / target, clipped: a length shaping term (chars or tokens)."
    requires = ("completion",)

    def __init__(
        self,
        target: int | None = None,
        unit: Literal["chars", "tokens"] = "chars",
        max_penalty: float = 1.0,
        **options: Any,
    ) -> None:
        if target is None or target <= 0:
            raise ValueError(f"length_penalty needs a target length > 0, got target={target!r}.")
        if unit not in ("chars", "tokens"):
            raise ValueError(f"length_penalty unit must be 'chars' or 'tokens', got {unit!r}.")
        if max_penalty <= 0:
            raise ValueError(f"length_penalty max_penalty must be > 0, got {max_penalty}.")
        self.target, self.unit, self.max_penalty = target, unit, max_penalty
        self.requires = ("completion",) if unit == "chars" else ("completion_ids",)
        super().__init__(**options)

    def score_one(self, sample: dict[str, Any]) -> float | None:
        length = len(sample["completion"]) if self.unit == "chars" else len(sample["completion_ids"])
        return -min(abs(length - self.target) / self.target, self.max_penalty)
