"""Contract with TRL's internals that rlpost.trainers.GRPOTrainer / SFTTrainer wrap.

If TRL is upgraded and one of these fails, the hooks in rlpost/trainers/grpo.py or sft.py must be revisited: do not
loosen the test.
"""

import collections
import inspect

import pytest
import torch
import trl

from grpo_helpers import digit_count_reward, grpo_args
from rlpost.algorithms.advantages import group_normalized
from rlpost.trainers import GRPOTrainer


def test_trl_version_is_the_pinned_one():
    assert trl.__version__ == "1.16.0", "rlpost's GRPO/SFT hooks are verified against trl 1.16.0 only"


def test_wrapped_method_signatures():
    sig = inspect.signature(trl.GRPOTrainer._calculate_rewards)
    assert list(sig.parameters) == ["self", "inputs", "prompts", "completions", "completion_ids_list"]
    sig = inspect.signature(trl.GRPOTrainer._generate_and_score_completions)
    assert list(sig.parameters) == ["self", "inputs"]
    sig = inspect.signature(trl.SFTTrainer.compute_loss)
    assert list(sig.parameters)[:5] == ["self", "model", "inputs", "return_outputs", "num_items_in_batch"]


def _batch(task, n_prompts, num_generations):
    rows = task.rl_dataset().select(range(n_prompts))
    return [dict(row) for row in rows for _ in range(num_generations)]


def test_grpo_advantage_matches_trl_and_is_what_loss_and_logs_see(tmp_path, tiny_model, tiny_tokenizer, addition_task):
    trainer = GRPOTrainer(
        model=tiny_model, reward_funcs=digit_count_reward, args=grpo_args(tmp_path),
        train_dataset=addition_task.rl_dataset(), processing_class=tiny_tokenizer,
    )
    torch.manual_seed(0)
    # TRL's own method: fills the stashed rewards through our _calculate_rewards and returns TRL's advantages.
    trl_output = trl.GRPOTrainer._generate_and_score_completions(trainer, _batch(addition_task, 2, 4))
    assert isinstance(trainer._logs["advantages"], collections.deque)
    rewards = trainer._last_rewards_per_func[:, 0]
    assert trainer._last_group_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    ours = group_normalized(rewards, trainer._last_group_ids, std="unbiased", eps=1e-4)
    torch.testing.assert_close(trl_output["advantages"], ours, rtol=0, atol=1e-6)
    assert rewards.std() > 0, "test reward must vary, or the comparison is trivial"

    # Through rlpost's override the loss input and the logged advantages are the same tensor's values.
    torch.manual_seed(0)
    output = trainer._generate_and_score_completions(_batch(addition_task, 2, 4))
    expected = group_normalized(trainer._last_rewards_per_func[:, 0], trainer._last_group_ids, eps=1e-4)
    torch.testing.assert_close(output["advantages"], expected, rtol=0, atol=1e-6)
    assert list(trainer._logs["advantages"])[-8:] == pytest.approx(expected.tolist(), abs=1e-6)


def test_generation_output_has_the_keys_the_loss_reads(tmp_path, tiny_model, tiny_tokenizer, addition_task):
    trainer = GRPOTrainer(
        model=tiny_model, reward_funcs=digit_count_reward, args=grpo_args(tmp_path),
        train_dataset=addition_task.rl_dataset(), processing_class=tiny_tokenizer,
    )
    output = trainer._generate_and_score_completions(_batch(addition_task, 2, 4))
    for key in ("prompt_ids", "completion_ids", "completion_mask", "advantages"):
        assert key in output
    assert output["advantages"].shape == (8,)
