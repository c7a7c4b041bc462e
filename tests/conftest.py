"""Shared fixtures: offline environment, a session cache for tiny models, and a tiny model + tokenizer."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models are far faster on one intra-op thread on a 2-core machine (no oversubscription). Per test, since a
    recipe's ``torch_threads`` may change it."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Tiny models and tokenizers are cached once per test session, never in the user's cache."""
    if "RLPOST_CACHE" not in os.environ:
        os.environ["RLPOST_CACHE"] = str(tmp_path_factory.mktemp("rlpost-cache"))
    yield


@pytest.fixture(scope="session")
def addition_task():
    from rlpost.envs import AdditionTask

    return AdditionTask(max_operand=9, num_heldout=20, seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(addition_task, _session_cache):
    from rlpost.models import tiny_tokenizer

    return tiny_tokenizer(vocab_size=64, corpus=addition_task.corpus())


@pytest.fixture
def tiny_model(tiny_tokenizer):
    from rlpost.models import tiny_causal_lm

    return tiny_causal_lm(tokenizer=tiny_tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0)
