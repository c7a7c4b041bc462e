"""Judges shared by every judge-based reward: a local transformers model or any OpenAI-compatible server.

Every judge follows one :class:`Judge` protocol - ``complete(prompts, **gen) -> list[str | None]`` plus
``ask_json`` / ``ask_yes_no`` / ``ask_score`` - and keeps :class:`JudgeStats` counters (requests, retries,
failures, timeouts, cache_hits, parse_failures) for reward modules to log. A judge that is down, slow or answers
garbage yields None for the affected prompts and counts it; it never raises for that and never hangs.

    judge = OpenAIJudge("http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-7B-Instruct", timeout_s=30)
    verdicts = judge.ask_yes_no(["Is the sky red? Answer yes or no."])   # [False]
    metrics = judge.stats.reset()                                        # per-step counters

The structured-output parsers live in :mod:`rlpost.rewards.judges.parsing` and work on any text.
"""

from rlpost.rewards.judges.base import BaseJudge, Judge, JudgeStats, Prompt, ResponseCache, to_messages
from rlpost.rewards.judges.http import OpenAIJudge
from rlpost.rewards.judges.local import LocalJudge
from rlpost.rewards.judges.parsing import extract_json, extract_score, extract_yes_no, repair_json

__all__ = [
    "build_judge",
    "judge_callable",
    "BaseJudge",
    "Judge",
    "JudgeStats",
    "LocalJudge",
    "OpenAIJudge",
    "Prompt",
    "ResponseCache",
    "extract_json",
    "extract_score",
    "extract_yes_no",
    "repair_json",
    "to_messages",
]


def build_judge(spec):
    """A judge from a recipe value: a Judge passes through; a dict of options builds an ``OpenAIJudge`` when it has
    ``base_url`` (any OpenAI-compatible server, e.g. vLLM), else a ``LocalJudge`` (``model`` = path or id)."""
    if isinstance(spec, dict):
        return OpenAIJudge(**spec) if "base_url" in spec else LocalJudge(**spec)
    if not hasattr(spec, "complete"):
        raise TypeError(f"A judge needs complete(prompts, **gen) or a dict of options, got {type(spec).__name__}.")
    return spec


def judge_callable(spec, **gen):
    """``judge(prompt) -> str | None`` from a callable, a Judge, or a dict of options (see :func:`build_judge`)."""
    if callable(spec) and not hasattr(spec, "complete"):
        return spec
    judge = build_judge(spec)
    return lambda prompt: judge.complete([prompt], **gen)[0]
