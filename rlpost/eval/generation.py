"""Greedy-decoding evaluation with an exact checker, returning per-item correctness (Benchmark²'s item format)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

__all__ = ["exact_match_accuracy", "generate_greedy"]


@torch.no_grad()
def generate_greedy(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 8, batch_size: int = 64, progress: bool = False
) -> list[str]:
    """Decode each prompt greedily (left padding) and return the completion text without special tokens."""
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    outputs: list[str] = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="eval", disable=not progress, leave=False):
        batch = tokenizer(list(prompts[start : start + batch_size]), return_tensors="pt", padding=True)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        generated = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        outputs.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    tokenizer.padding_side = side
    model.train(was_training)
    return outputs


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
