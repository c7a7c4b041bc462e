"""Set-valued answers (multi-answer multiple choice): the EpiQAL metrics, the answer parser and their rewards.

EpiQAL (arXiv 2601.03471; ``specs/epiqal.md`` §1.5) scores a predicted set of option indices A against the reference
set O (index strings, deduplicated) with

    F1 = 2·|O ∩ A| / (|O| + |A|)          (README "Evaluation Metrics")
    EM = 1[A = O]                          (exact set equality)

computed in the released ``evaluation.py`` as precision = |∩|/|A| (0 when A is empty), recall = |∩|/|O| (0 when O is
empty), F1 = 2PR/(P+R) (0 when P+R = 0). The two agree except when both sets are empty, where the code gives F1 = 0
and EM = 1; :func:`set_f1` follows the code (no released item has an empty reference).

The model answers with a JSON object ``{"results": ["0", "2"]}``. :func:`parse_results` reads it as the released
code does - text after the last ``</think>``, the last ``{...}`` object in the reply - with two robustness additions:
the last object that *holds* a ``results`` key wins (a trailing ``{}`` or an echoed example after the answer does
not erase it), and near-JSON (single quotes, trailing commas, fences) is repaired. An unreadable reply is ``None``;
the reward then scores 0, like the paper's ``[]`` after failed attempts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rlpost.rewards.base import RewardModule, as_text
from rlpost.rewards.judges.parsing import iter_json_objects
from rlpost.rewards.registry import register_reward

__all__ = ["EpiQALEM", "EpiQALF1", "as_index_set", "parse_results", "set_exact_match", "set_f1", "strip_think"]

THINK_END = "</think>"


def as_index_set(values: Iterable[Any]) -> set[str]:
    """Values as a set of stripped strings (``[1, "1", " 2"]`` -> ``{"1", "2"}``); the paper casts with ``str``."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"expected a collection of option indices, got the string {values!r}; wrap it in a list.")
    out = set()
    for value in values:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 1.0 from a lenient JSON writer names option 1
        out.add(str(value).strip())
    return out


def set_f1(pred: Iterable[Any], gold: Iterable[Any]) -> float:
    """EpiQAL's F1 between a predicted and a reference set of option indices (``specs/epiqal.md`` §1.5).

    ``2·|pred ∩ gold| / (|pred| + |gold|)`` after casting to deduplicated strings; 0.0 when both are empty (the
    released code's precision/recall form). Examples: ``set_f1(["1"], ["1", "2"]) == 2/3``; ``set_f1([], ["1"]) == 0``.
    """
    a, o = as_index_set(pred), as_index_set(gold)
    if not a or not o:
        return 0.0
    return 2.0 * len(a & o) / (len(a) + len(o))


def set_exact_match(pred: Iterable[Any], gold: Iterable[Any]) -> float:
    """1.0 when the deduplicated string sets are equal (EpiQAL's EM), else 0.0."""
    return float(as_index_set(pred) == as_index_set(gold))


def strip_think(text: str) -> str:
    """The text after the last ``</think>`` (the whole text when there is none), as the released evaluation does."""
    return text.rsplit(THINK_END, 1)[-1]


def _results_value(value: Any) -> list[str] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, str)):
        value = [value]  # a lone index ("results": "2") is an answer of one option
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, (int, str, float)) and not isinstance(v, bool) for v in value):
        return None
    if any(isinstance(v, float) and not v.is_integer() for v in value):
        return None
    return sorted(as_index_set(value))


def parse_results(text: str | None, key: str = "results") -> list[str] | None:
    """The option indices a reply selects, as sorted strings, or None when the reply holds no readable answer.

    Reads the text after the last ``</think>``, then the last JSON object there (repaired if near-JSON) that has
    ``key``; its value must be a list of indices (strings or integers; one bare index is read as a list of one).
    An empty list is a valid answer ("no option is correct").
    """
    if text is None:
        return None
    for obj in reversed(list(iter_json_objects(strip_think(str(text))))):
        if key in obj:
            return _results_value(obj[key])
    return None


class _SetAnswerReward(RewardModule):
    """Shared body of the set rewards: parse the completion, compare with the ``ref_answers`` field."""

    requires = ("completion", "ref_answers")
    metric = staticmethod(set_f1)

    def __init__(self, key: str = "results", **options: Any) -> None:
        self.key = key
        super().__init__(**options)

    def score_one(self, sample: dict[str, Any]) -> float | None:
        gold = sample["ref_answers"]
        if gold is None:
            return None
        if isinstance(gold, str):  # a JSON-encoded list in a csv/parquet column
            parsed = parse_results('{"r": ' + gold + "}", key="r")
            if parsed is None:
                raise ValueError(f"ref_answers {gold!r} is not a list of option indices; store e.g. [\"0\", \"2\"].")
            gold = parsed
        pred = parse_results(as_text(sample["completion"]), key=self.key)
        return 0.0 if pred is None else self.metric(pred, gold)


@register_reward("epiqal_f1")
class EpiQALF1(_SetAnswerReward):
    """EpiQAL's set F1 of the ``{"results": [...]}`` answer against ``ref_answers`` (dense; the default reward).

    Args:
        key: JSON key holding the selected indices (default ``"results"``, the benchmark's contract).
        **options: ``field_map``, ``name``, ... of :class:`RewardModule` (e.g. ``field_map={"ref_answers": "gold"}``).
    """

    description = "EpiQAL set F1 of the {\"results\": [...]} JSON answer against `ref_answers` (0 if unreadable)."
    metric = staticmethod(set_f1)


@register_reward("epiqal_em")
class EpiQALEM(_SetAnswerReward):
    """EpiQAL's exact set match of the ``{"results": [...]}`` answer against ``ref_answers`` (sparse)."""

    description = "EpiQAL exact set match of the {\"results\": [...]} JSON answer against `ref_answers` (0/1)."
    metric = staticmethod(set_exact_match)
