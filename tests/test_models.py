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
