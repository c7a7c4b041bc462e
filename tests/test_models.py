"""Offline model factory: tokenizer behaviour, deterministic cached weights, local-path loading."""

import torch

from rlpost.models import CHATML_TEMPLATE, load_causal_lm, load_tokenizer, tiny_causal_lm, tiny_tokenizer


def test_tokenizer_splits_digits_and_has_chatml(tiny_tokenizer):
    tokens = tiny_tokenizer.tokenize("12+7=19")
    assert tokens == ["1", "2", "+", "7", "=", "1", "9"]
    assert tiny_tokenizer.chat_template == CHATML_TEMPLATE
    text = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "2+2="}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\n2+2=<|im_end|>\n<|im_start|>assistant\n"
    assert tiny_tokenizer.eos_token == "<|im_end|>" and tiny_tokenizer.pad_token == "<|endoftext|>"


def test_tokenizer_is_cached_and_deterministic(addition_task, tiny_tokenizer):
    from rlpost.models import tiny_tokenizer as build

    second = build(vocab_size=64, corpus=addition_task.corpus())
    assert second.get_vocab() == tiny_tokenizer.get_vocab()


def test_same_seed_same_weights_different_seed_different(tiny_tokenizer):
    a = tiny_causal_lm(tokenizer=tiny_tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=3)
    b = tiny_causal_lm(tokenizer=tiny_tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=3)
    c = tiny_causal_lm(tokenizer=tiny_tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=4)
    wa, wb, wc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)
    assert a.config.vocab_size == len(tiny_tokenizer)


def test_tiny_spec_string_and_local_path_round_trip(tmp_path, tiny_tokenizer):
    model = load_causal_lm("tiny:llama?hidden_size=32&num_layers=1&num_heads=2", tokenizer=tiny_tokenizer)
    assert model.config.model_type == "llama" and model.config.hidden_size == 32
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    # The real user path: a local folder, safetensors only, no remote code.
    loaded = load_causal_lm(str(tmp_path / "m"))
    tok = load_tokenizer(str(tmp_path / "m"))
    assert (tmp_path / "m" / "model.safetensors").exists()
    ids = torch.tensor([tok.encode("3+4=")])
    assert torch.allclose(loaded(ids).logits, model(ids).logits)


def test_unknown_arch_is_a_clear_error(tiny_tokenizer):
    import pytest

    with pytest.raises(ValueError, match="Unknown tiny architecture 'gpt9'"):
        tiny_causal_lm(arch="gpt9", tokenizer=tiny_tokenizer)


# The ChatML template before tool support, verbatim: what every non-tool conversation must still render to.
_PLAIN_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_non_tool_conversations_render_exactly_as_before(tiny_tokenizer):
    conversations = [
        [{"role": "user", "content": "2+2="}],
        [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}],
        [{"role": "system", "content": "Add."}, {"role": "user", "content": "1+2="},
         {"role": "assistant", "content": "3"}, {"role": "user", "content": "3+4="}],
    ]
    assert tiny_tokenizer.apply_chat_template(conversations[2], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nAdd.<|im_end|>\n<|im_start|>user\n1+2=<|im_end|>\n<|im_start|>assistant\n3<|im_end|>\n"
        "<|im_start|>user\n3+4=<|im_end|>\n<|im_start|>assistant\n")
    for conversation in conversations:
        for generation_prompt in (False, True):
            new = tiny_tokenizer.apply_chat_template(conversation, add_generation_prompt=generation_prompt,
                                                     return_dict=True, return_assistant_tokens_mask=True)
            old = tiny_tokenizer.apply_chat_template(conversation, add_generation_prompt=generation_prompt,
                                                     return_dict=True, return_assistant_tokens_mask=True,
                                                     chat_template=_PLAIN_CHATML)
            assert new["input_ids"] == old["input_ids"]
            assert new["assistant_masks"] == old["assistant_masks"]  # TRL's assistant_only_loss sees the same tokens


def run_lammps(script: str) -> str:
    """Run a LAMMPS script.

    Args:
        script: The complete script.
    """
    return "ok"


def test_chat_template_does_tool_calling_the_way_trl_needs(tiny_tokenizer):
    from trl.chat_template_utils import is_chat_template_prefix_preserving, parse_response, supports_tool_calling

    from rlpost.models.factory import CHATML_RESPONSE_TEMPLATE, enable_tool_calling

    # TRL 1.16 GRPOTrainer refuses a template that drops tool calls or tool messages, and needs prefix preservation
    # to splice tool results into a rollout without re-tokenizing it.
    assert supports_tool_calling(tiny_tokenizer) and is_chat_template_prefix_preserving(tiny_tokenizer)
    script = 'units lj\nprint "a<b & c"\nrun 10'
    call = {"type": "function", "function": {"name": "run_lammps", "arguments": {"script": script}}}
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Run it."},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "name": "run_lammps", "content": "it ran"}]
    text = tiny_tokenizer.apply_chat_template(messages, tools=[run_lammps], tokenize=False)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")  # the system prompt is merged, not repeated
    assert text.count("<|im_start|>system") == 1 and '"name": "run_lammps"' in text
    assert text.endswith(
        '<|im_start|>assistant\n<tool_call>\n{"name": "run_lammps", "arguments": {"script": '
        '"units lj\\nprint \\"a<b & c\\"\\nrun 10"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nit ran\n</tool_response><|im_end|>\n")

    # What the model would generate after the prompt parses back into the same call (and plain text stays text).
    assert getattr(tiny_tokenizer, "response_template", None) is None  # off by default: non-tool runs untouched
    from rlpost.models import tiny_tokenizer as build

    tok = enable_tool_calling(build(vocab_size=64))  # a fresh instance: the session fixture stays as it was
    assert tok.response_template == CHATML_RESPONSE_TEMPLATE
    prefix = tok.apply_chat_template(messages[:2], tools=[run_lammps], add_generation_prompt=True, return_dict=False)
    head = "<|im_start|>assistant\n"
    generated = text[text.index(head) + len(head):text.index("\n<|im_start|>user\n<tool_response>")]
    parsed = parse_response(tok, tok(generated)["input_ids"], prefix=prefix, tools=[run_lammps])
    assert parsed["tool_calls"] == [call] and parsed["content"] == ""
    assert parse_response(tok, tok("4<|im_end|>")["input_ids"], prefix=prefix) == {"role": "assistant", "content": "4"}


def test_enable_tool_calling_leaves_other_templates_alone(tiny_tokenizer):
    from rlpost.models import tiny_tokenizer as build
    from rlpost.models.factory import enable_tool_calling

    tok = build(vocab_size=64)
    tok.chat_template = _PLAIN_CHATML  # not rlpost's template: TRL's own add_response_schema decides
    assert getattr(enable_tool_calling(tok), "response_template", None) is None
