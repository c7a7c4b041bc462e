"""EpiQAL scoring of a model's replies: the released evaluation loop (``evaluation.py``), model-agnostic.

``generate`` is any function from a list of chat prompts to a list of replies (a local model through
:func:`chat_generate`, a vLLM or API client in a user's code). A reply is read with
:func:`rlpost.rewards.sets.parse_results`; an unreadable one, or one naming indices that are not options, is asked
again up to ``attempts`` times in all (released code: 3) with the problem appended to the system prompt, and scores
``[]`` after the last. Items whose reference is the sentinel ``["-1"]`` are left out of the means, as in the code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rlpost.envs.epiqal import epiqal_messages
from rlpost.rewards.sets import parse_results, set_exact_match, set_f1

__all__ = ["chat_generate", "evaluate_epiqal", "reply_problem"]

Generate = Callable[[list[list[dict[str, str]]]], list[str]]


def reply_problem(reply: str | None, n_options: int) -> tuple[list[str] | None, str | None]:
    """``(indices, None)`` for a usable reply, ``(None, what is wrong)`` otherwise."""
    pred = parse_results(reply)
    if pred is None:
        return None, 'The reply held no JSON object {"results": [...]} with a list of index strings.'
    valid = {str(i) for i in range(n_options)}
    unknown = [p for p in pred if p not in valid]
    if unknown:
        return None, f"The indices {unknown} are not options; the options are indexed {sorted(valid, key=int)}."
    return pred, None


def evaluate_epiqal(generate: Generate, records: Sequence[dict[str, Any]], cot: bool = False,
                    attempts: int = 3) -> dict[str, Any]:
    """EM and F1 means over ``records`` (from :func:`rlpost.envs.epiqal.load_epiqal`) and the per-item answers."""
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}.")
    answers: list[list[str] | None] = [None] * len(records)
    problems: dict[int, str | None] = {i: None for i in range(len(records))}
    for _ in range(attempts):
        pending = sorted(problems)
        if not pending:
            break
        prompts = [epiqal_messages(records[i], cot=cot, retry_error=problems[i]) for i in pending]
        replies = generate(prompts)
        if len(replies) != len(prompts):
            raise ValueError(f"generate returned {len(replies)} replies for {len(prompts)} prompts.")
        for i, reply in zip(pending, replies):
            pred, problem = reply_problem(reply, len(records[i]["choices"]))
            if problem is None:
                answers[i] = pred
                del problems[i]
            else:
                problems[i] = problem
    rows = []
    for record, pred in zip(records, answers):
        final = pred if pred is not None else []
        rows.append({"idx": record["idx"], "subset": record["subset"], "pred": final, "gold": record["ref_answers"],
                     "parsed": pred is not None, "em": set_exact_match(final, record["ref_answers"]),
                     "f1": set_f1(final, record["ref_answers"])})
    scored = [r for r in rows if r["gold"] != ["-1"]]
    n = len(scored)
    return {"em": sum(r["em"] for r in scored) / n if n else float("nan"),
            "f1": sum(r["f1"] for r in scored) / n if n else float("nan"),
            "n": n, "parse_failures": sum(not r["parsed"] for r in rows), "items": rows}


def chat_generate(model: Any, tokenizer: Any, max_new_tokens: int = 512, temperature: float = 0.3,
                  batch_size: int = 4) -> Generate:
    """A ``generate`` for a local transformers chat model (the released setting samples at temperature 0.3;
    0 decodes greedily)."""
    from rlpost.eval.generation import generate_texts

    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}

    def generate(prompts: list[list[dict[str, str]]]) -> list[str]:
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        return generate_texts(model, tokenizer, texts, max_new_tokens, batch_size, **sampling)

    return generate
