"""A judge run in-process with transformers: a causal LM with its tokenizer's chat template, or a vision-language
model with its processor when prompts carry images. Greedy by default, batched, safetensors only, no remote code
unless asked."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import torch

from rlpost.rewards.judges.base import BaseJudge, Message

__all__ = ["LocalJudge"]

logger = logging.getLogger(__name__)


class LocalJudge(BaseJudge):
    """Judge with a local transformers model.

    Args:
        model: a model id or folder (``tiny:qwen2`` builds rlpost's offline tiny model), or a loaded model.
        tokenizer: the tokenizer of a loaded causal LM; loaded from ``model`` when it is a path or id.
        processor: the processor of a loaded vision-language model (implies ``vision=True``).
        vision: load ``model`` with ``AutoModelForImageTextToText`` + ``AutoProcessor``, whose chat template
            takes image parts (``{"type": "image", "image": PIL.Image}``) inside message content.
        batch_size: prompts per ``generate`` call (left-padded).
        max_new_tokens: default answer length limit (``max_tokens`` in a call's ``**gen`` overrides it, as for
            :class:`~rlpost.rewards.judges.http.OpenAIJudge`).
        device: where to run; None keeps a loaded model where it is and loads a new one on CPU.
        dtype: torch dtype name for loading (``"bfloat16"``); None keeps the checkpoint's.
        trust_remote_code: allow code shipped with the checkpoint (off: judges load untrusted ids too).
        cache: / cache_dir: / system_prompt: see :class:`~rlpost.rewards.judges.base.BaseJudge`.
        model_id: the model's identity in cache keys; defaults to the path or id, or for a loaded model its
            ``config._name_or_path`` (else its class name: give a distinct ``model_id`` to share a ``cache_dir``
            between different in-memory models).

    A batch whose ``generate`` fails at run time (out of memory, a device error) yields None for its prompts and is
    counted in ``failures``; wrong generation arguments still raise, because they are configuration mistakes.
    There is no timeout: generation is bounded by ``max_new_tokens``.
    """

    def __init__(
        self,
        model: str | Path | Any,
        *,
        tokenizer: Any = None,
        processor: Any = None,
        vision: bool = False,
        batch_size: int = 8,
        max_new_tokens: int = 256,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        cache: bool = True,
        cache_dir: str | Path | None = None,
        system_prompt: str | None = None,
        model_id: str | None = None,
    ) -> None:
        super().__init__(cache=cache, cache_dir=cache_dir, system_prompt=system_prompt)
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"LocalJudge: batch_size and max_new_tokens must be >= 1, got {batch_size}, "
                             f"{max_new_tokens}.")
        self.vision = vision or processor is not None
        if isinstance(model, (str, Path)):
            self.model_id = str(model)
            self.model, self.tokenizer, self.processor = self._load(str(model), dtype, trust_remote_code)
        else:
            if processor is None and tokenizer is None:
                raise ValueError("LocalJudge got a loaded model without its tokenizer (or processor for a "
                                 "vision-language model); pass tokenizer=... or processor=....")
            tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", processor)
            self.model, self.tokenizer, self.processor = model, tokenizer, processor
            self.model_id = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        if device is not None:
            self.model.to(device)
        self.model.eval()
        if model_id is not None:
            self.model_id = model_id
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()  # one generate at a time: a model is not safe to share across threads

    def __repr__(self) -> str:
        return f"LocalJudge(model={self.model_id!r}, vision={self.vision})"

    def _load(self, name: str, dtype: str | None, trust_remote_code: bool) -> tuple[Any, Any, Any]:
        if self.vision:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            torch_dtype = getattr(torch, dtype) if dtype not in (None, "auto") else dtype
            model = AutoModelForImageTextToText.from_pretrained(
                name, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=torch_dtype
            )
            processor = AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
            return model, getattr(processor, "tokenizer", processor), processor
        from rlpost.models.factory import load_causal_lm, load_tokenizer

        tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code)
        model = load_causal_lm(name, tokenizer=tokenizer, trust_remote_code=trust_remote_code, torch_dtype=dtype)
        return model, tokenizer, None

    def _default_gen(self) -> dict[str, Any]:
        return {"max_tokens": self.max_new_tokens, "temperature": 0.0}

    def _generate_kwargs(self, gen: dict[str, Any]) -> dict[str, Any]:
        """OpenAI-style parameters -> ``model.generate`` arguments (one vocabulary for both judges)."""
        kwargs = dict(gen)
        max_tokens = kwargs.pop("max_tokens", self.max_new_tokens)
        kwargs.setdefault("max_new_tokens", max_tokens)  # a caller's own max_new_tokens wins
        temperature = kwargs.pop("temperature", 0.0)
        if temperature:
            kwargs.update(do_sample=True, temperature=temperature)
        else:
            kwargs["do_sample"] = False
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        kwargs.setdefault("pad_token_id", pad_id)
        return kwargs

    def _encode(self, conversations: list[list[Message]]) -> dict[str, torch.Tensor]:
        if self.processor is not None:
            return self.processor.apply_chat_template(
                conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
                processor_kwargs={"padding": True, "padding_side": "left"},
            )
        texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                 for c in conversations]
        # the chat template already holds the special tokens
        return self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)

    def _generate(self, conversations: list[list[Message]], gen: dict[str, Any]) -> list[str | None]:
        kwargs = self._generate_kwargs(gen)
        answers: list[str | None] = []
        for start in range(0, len(conversations), self.batch_size):
            batch = conversations[start : start + self.batch_size]
            self.stats.add("requests")
            try:
                with self._lock, torch.inference_mode():
                    inputs = {k: v.to(self.model.device) for k, v in self._encode(batch).items()}
                    output = self.model.generate(**inputs, **kwargs)
            except RuntimeError as error:  # out of memory, device errors: this batch fails, training goes on
                logger.warning("LocalJudge %s: generate failed for %d prompts: %s", self.model_id, len(batch), error)
                self.stats.add("failures", len(batch))
                answers += [None] * len(batch)
                continue
            new_tokens = output[:, inputs["input_ids"].shape[1] :]  # left padding: every prompt ends at one column
            answers += self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return answers
