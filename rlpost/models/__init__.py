"""Offline model and tokenizer factories, and the loaders that also take hub ids or local paths."""

from rlpost.models.factory import (
    CHATML_TEMPLATE,
    load_causal_lm,
    load_tokenizer,
    tiny_causal_lm,
    tiny_tokenizer,
)
from rlpost.models.flow import (
    FlowAdapter,
    LatentRGBDecoder,
    PipelinePromptEncoder,
    PrecomputedPromptEncoder,
    PromptEmbeds,
    RandomPromptEncoder,
    VAEDecoder,
    get_flow_adapter,
    list_flow_adapters,
    load_flow_transformer,
    register_flow_adapter,
    tiny_autoencoder,
    tiny_flow_transformer,
)

__all__ = [
    "CHATML_TEMPLATE",
    "FlowAdapter",
    "LatentRGBDecoder",
    "PipelinePromptEncoder",
    "PrecomputedPromptEncoder",
    "PromptEmbeds",
    "RandomPromptEncoder",
    "VAEDecoder",
    "get_flow_adapter",
    "list_flow_adapters",
    "load_causal_lm",
    "load_flow_transformer",
    "load_tokenizer",
    "register_flow_adapter",
    "tiny_autoencoder",
    "tiny_causal_lm",
    "tiny_flow_transformer",
    "tiny_tokenizer",
]
