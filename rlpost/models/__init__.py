"""Offline model and tokenizer factories, and the loaders that also take hub ids or local paths."""

from rlpost.models.factory import (
    CHATML_TEMPLATE,
    load_causal_lm,
    load_tokenizer,
    tiny_causal_lm,
    tiny_tokenizer,
)

__all__ = ["CHATML_TEMPLATE", "load_causal_lm", "load_tokenizer", "tiny_causal_lm", "tiny_tokenizer"]
