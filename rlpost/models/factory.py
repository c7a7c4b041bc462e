"""Offline model and tokenizer factories.

Tests, recipes and the quickstart never touch a model hub: they build tiny random-init models from a config and a
byte-level BPE tokenizer trained in memory. Both are cached with ``save_pretrained`` so a second call (or a second
process of a DDP job) loads the same weights instead of re-initialising.

The same entry point, :func:`load_causal_lm`, also takes any hub id or local path, so a recipe switches from
``tiny:qwen2`` to ``Qwen/Qwen3-8B`` by changing one string.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

__all__ = [
    "ADAPTER_CONFIG",
    "BASE_MODEL_DIR",
    "CHATML_RESPONSE_TEMPLATE",
    "CHATML_TEMPLATE",
    "TINY_PREFIX",
    "default_cache_dir",
    "enable_tool_calling",
    "load_causal_lm",
    "load_tokenizer",
    "tiny_causal_lm",
    "tiny_tokenizer",
]

TINY_PREFIX = "tiny:"

# ChatML, as used by Qwen; `{% generation %}` markers let TRL's assistant_only_loss find the assistant tokens.
# Tool calling follows Qwen2.5/Qwen3's layout, shortened for tiny models: with `tools`, a system block lists their
# JSON schemas (merged into the first system message when there is one); an assistant turn renders its `tool_calls`
# as `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` after its content; a `tool` message becomes a user
# turn `<tool_response>\n...\n</tool_response>` (one per message; Qwen groups consecutive ones). Without `tools`,
# `tool_calls` or tool messages the output is byte-for-byte the plain ChatML rlpost had before tool support
# (pinned by tests/test_models.py: the quickstart's numbers depend on it).
CHATML_TEMPLATE = (
    "{% set ns = namespace(skip_first=false) %}"
    "{% if tools %}"
    "{{ '<|im_start|>system\n' }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] + '\n\n' }}{% set ns.skip_first = true %}"
    "{% endif %}"
    "{{ '# Tools\nYou may call these functions; their signatures are in <tools></tools>:\n<tools>' }}"
    "{% for tool in tools %}{{ '\n' + (tool | tojson) }}{% endfor %}"
    "{{ '\n</tools>\nTo call one, answer with <tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call><|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if not (loop.first and ns.skip_first) %}"
    "{% if message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\n<tool_response>\n' + message['content'] + '\n</tool_response><|im_end|>\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] or '' }}"
    "{% if message['tool_calls'] %}"
    "{% for call in message['tool_calls'] %}"
    "{% set fn = call['function'] if call['function'] is defined else call %}"
    "{% if message['content'] or not loop.first %}{{ '\n' }}{% endif %}"
    "{{ '<tool_call>\n{\"name\": \"' + fn['name'] + '\", \"arguments\": ' }}"
    "{{ fn['arguments'] if fn['arguments'] is string else (fn['arguments'] | tojson) }}"
    "{{ '}\n</tool_call>' }}"
    "{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# How transformers' `parse_response` reads an assistant turn of CHATML_TEMPLATE back into a message (the
# `response_template` format of transformers >= 5.13, the same shape as TRL 1.16's `qwen3_template` minus thinking):
# each `<tool_call>` block is JSON {"name", "arguments"}, the text before them is the content.
CHATML_RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {
            "open": "<tool_call>",
            "close_pattern": r"</tool_call>\s*",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A small built-in corpus: enough to give the BPE sensible merges for English words, digits and arithmetic.
_DEFAULT_CORPUS = [
    "What is 12 + 7? Answer: 19",
    "Compute 45 + 38. The answer is 83.",
    "user assistant system question answer problem solve the following",
    "The quick brown fox jumps over the lazy dog.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 + - * / = ( ) ? . , :",
    "Reward models score completions. Policies are trained with group relative advantages.",
]


def default_cache_dir() -> Path:
    """Where tiny models and tokenizers are cached (``RLPOST_CACHE`` or ``~/.cache/rlpost``)."""
    return Path(os.environ.get("RLPOST_CACHE", Path.home() / ".cache" / "rlpost"))


def _key(payload: dict) -> str:
    return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def tiny_tokenizer(
    vocab_size: int = 512,
    corpus: list[str] | None = None,
    cache_dir: str | Path | None = None,
    split_digits: bool = True,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained offline, with a ChatML chat template.

    Args:
        vocab_size: target vocabulary size, special tokens included.
        corpus: training texts; a small built-in corpus when None.
        cache_dir: cache root; the tokenizer is saved under ``<cache>/tokenizers/<hash>``.
        split_digits: pre-tokenize every digit on its own, as Qwen and Llama-3 do, so numbers are digit sequences.
    """
    corpus = list(corpus) if corpus is not None else list(_DEFAULT_CORPUS)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / "tokenizers" / _key({"v": vocab_size, "c": corpus, "d": split_digits, "fmt": 1})
    with _build_lock(path):
        if not (path / "tokenizer.json").exists():
            _save_atomically(_train_tokenizer(vocab_size, corpus, split_digits), path)
    # PreTrainedTokenizerFast, not AutoTokenizer: a folder tagged qwen2 would come back as a Qwen2 tokenizer with a
    # different digit split (see ENVIRONMENT.md).
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    # The template is code, not trained state: set the current one, so a tokenizer cached before a template change
    # (tool support) still renders tools. Non-tool conversations render the same with either.
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def enable_tool_calling(tokenizer):
    """Let transformers' ``parse_response`` (and so TRL's tool loop) read tool calls back out of a tiny tokenizer's
    generations: sets ``response_template`` to :data:`CHATML_RESPONSE_TEMPLATE` when the tokenizer uses
    :data:`CHATML_TEMPLATE` and has none yet; any other tokenizer is returned untouched (TRL 1.16's
    ``add_response_schema`` knows the real Qwen/Llama/... templates itself).

    Not set by :func:`tiny_tokenizer`: with a ``response_template``, TRL decodes *every* conversational completion
    through ``parse_response`` instead of ``batch_decode(skip_special_tokens=True)``, which would change what the
    rewards of non-tool runs (the quickstart) see. :class:`rlpost.trainers.GRPOTrainer` calls this when it is given
    ``tools`` or an ``environment_factory``.
    """
    if getattr(tokenizer, "chat_template", None) == CHATML_TEMPLATE and getattr(tokenizer, "response_template",
                                                                                  None) is None:
        tokenizer.response_template = CHATML_RESPONSE_TEMPLATE
    return tokenizer


def _train_tokenizer(vocab_size: int, corpus: list[str], split_digits: bool) -> PreTrainedTokenizerFast:

    tokenizer = Tokenizer(models.BPE())
    pieces = [pre_tokenizers.ByteLevel(add_prefix_space=False)]
    if split_digits:
        pieces.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(pieces)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


_ARCHS = {
    "qwen2": dict(model_type="qwen2", intermediate_mult=2, extra=dict(use_sliding_window=False)),
    "llama": dict(model_type="llama", intermediate_mult=2, extra=dict()),
}


def tiny_causal_lm(
    arch: str = "qwen2",
    tokenizer: PreTrainedTokenizerFast | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 256,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> PreTrainedModel:
    """A random-init causal LM (Qwen2 or Llama) built from config, cached with safetensors.

    The weights depend only on the arguments and the seed, so every process of a multi-process job gets the same model.
    """
    if arch not in _ARCHS:
        raise ValueError(f"Unknown tiny architecture {arch!r}; choose one of {sorted(_ARCHS)}.")
    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer(cache_dir=cache_dir)
    spec = _ARCHS[arch]
    config = AutoConfig.for_model(
        spec["model_type"],
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * spec["intermediate_mult"],
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        **spec["extra"],
    )
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = root / "models" / _key({"cfg": config.to_diff_dict(), "seed": seed, "fmt": 1})
    with _build_lock(path):
        if not (path / "config.json").exists():
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = AutoModelForCausalLM.from_config(config)
            model.generation_config.pad_token_id = tokenizer.pad_token_id
            model.generation_config.eos_token_id = tokenizer.eos_token_id
            _save_atomically(model, path)
    return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)


def _save_atomically(obj, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    obj.save_pretrained(tmp)
    os.replace(tmp, path)


@contextlib.contextmanager
def _build_lock(path: Path):
    """An exclusive file lock per cache entry: the processes of a DDP job build it once and all load that copy.

    The entry is written into a temp folder and renamed, so a reader that does not take the lock (or a process
    killed mid-write) never leaves half a checkpoint behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _parse_tiny(spec: str) -> dict:
    """``tiny:qwen2`` or ``tiny:llama?hidden_size=128&num_layers=4`` -> builder kwargs."""
    body = spec[len(TINY_PREFIX) :]
    arch, _, query = body.partition("?")
    kwargs: dict = {"arch": arch or "qwen2"}
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        kwargs[key] = int(value)
    return kwargs


ADAPTER_CONFIG = "adapter_config.json"  # what marks a peft adapter folder (a LoRA stage's final/)
BASE_MODEL_DIR = "base_model"  # where rlpost keeps a copy of a tiny (random-init, cache-only) base beside its adapter


def _adapter_base(folder: Path) -> str:
    """The base model of adapter ``folder``: its ``base_model/`` copy if present, else ``base_model_name_or_path``."""
    if (folder / BASE_MODEL_DIR / "config.json").exists():
        return str(folder / BASE_MODEL_DIR)
    base = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path") or ""
    # A path-like base that is gone (e.g. a cache folder on another machine) would fail as a malformed hub id.
    missing = base.startswith(("/", ".", "~")) and not Path(base).expanduser().exists()
    if not base or missing:
        raise ValueError(f"Adapter folder {folder}: its base model {base!r} (base_model_name_or_path in "
                         f"{ADAPTER_CONFIG}) is not available. Set it to the base's hub id or local path, or put the "
                         f"base model (config.json + weights) in {folder / BASE_MODEL_DIR}.")
    return base


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, **tiny_kwargs) -> PreTrainedTokenizerFast:
    """``tiny:...`` builds the offline tokenizer; anything else goes to ``AutoTokenizer.from_pretrained``. An adapter
    folder without tokenizer files falls back to its base model's tokenizer."""
    if name_or_path.startswith(TINY_PREFIX):
        return tiny_tokenizer(**tiny_kwargs)
    from transformers import AutoTokenizer

    path = Path(name_or_path)
    if (path / ADAPTER_CONFIG).exists() and not (path / "tokenizer_config.json").exists():
        name_or_path = _adapter_base(path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerFast | None = None,
    trust_remote_code: bool = False,
    torch_dtype: str | None = None,
    merge_adapter: bool = False,
    **tiny_kwargs,
) -> PreTrainedModel:
    """Load a causal LM from ``tiny:<arch>[?k=v&...]``, a local folder or a hub id (safetensors only).

    A peft adapter folder (``adapter_config.json``, e.g. a LoRA stage's ``final/``) loads its base model (see
    :func:`_adapter_base`) with the adapter attached: a ``PeftModel`` in eval mode, whose outputs are the trained
    model's exactly, or with ``merge_adapter=True`` a plain model with the adapter merged into the weights (faster;
    equal up to float rounding).
    """
    if name_or_path.startswith(TINY_PREFIX):
        kwargs = {**_parse_tiny(name_or_path), **tiny_kwargs}
        return tiny_causal_lm(tokenizer=tokenizer, **kwargs)
    path = Path(name_or_path)
    if path.is_dir() and not (path / "config.json").exists() and not (path / ADAPTER_CONFIG).exists():
        # caught here: transformers would fail deep inside with a message about hub ids
        raise ValueError(f"{path} is neither a model folder (config.json) nor a LoRA adapter folder "
                         f"({ADAPTER_CONFIG}); point to a stage's final/ (or a checkpoint) folder.")
    if (path / ADAPTER_CONFIG).exists():
        from peft import PeftModel

        base = load_causal_lm(_adapter_base(path), trust_remote_code=trust_remote_code, torch_dtype=torch_dtype)
        model = PeftModel.from_pretrained(base, path).eval()
        return model.merge_and_unload() if merge_adapter else model
    dtype = getattr(torch, torch_dtype) if torch_dtype not in (None, "auto") else torch_dtype
    return AutoModelForCausalLM.from_pretrained(
        name_or_path, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=dtype
    )
