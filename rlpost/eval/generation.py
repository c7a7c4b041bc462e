"""Greedy-decoding evaluation with an exact checker, returning per-item correctness (Benchmark²'s item format)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

__all__ = ["exact_match_accuracy", "generate_greedy", "generate_texts"]


@torch.no_grad()
def generate_texts(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 8, batch_size: int = 64, progress: bool = False,
    **generate_kwargs,
) -> list[str]:
    """``model.generate`` over ``prompts`` in batches (left padding, eval mode, both restored afterwards); the new
    tokens of every returned sequence as text without special tokens (``num_return_sequences`` per prompt, in order).
    ``generate_kwargs`` go to ``generate`` (sampling settings)."""
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    outputs: list[str] = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="eval", disable=not progress, leave=False):
            batch = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                       **generate_kwargs)
            outputs.extend(tokenizer.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return outputs


def generate_greedy(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 8, batch_size: int = 64, progress: bool = False
) -> list[str]:
    """Decode each prompt greedily (left padding) and return the completion text without special tokens."""
    return generate_texts(model, tokenizer, prompts, max_new_tokens, batch_size, progress, do_sample=False)


def exact_match_accuracy(
    model,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str],
    normalize: Callable[[str], str] = str.strip,
    **generate_kwargs,
) -> tuple[float, list[bool]]:
    """Held-out accuracy under greedy decoding and the per-item correctness list (same order as ``prompts``)."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers: they must pair up one to one.")
    if not prompts:
        raise ValueError("No evaluation prompts: the held-out split is empty.")
    completions = generate_greedy(model, tokenizer, prompts, **generate_kwargs)
    correct = [normalize(c) == normalize(a) for c, a in zip(completions, answers)]
    return sum(correct) / len(correct), correct
