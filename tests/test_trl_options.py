"""No silent TRL option: scale_rewards / multi_objective_aggregation with rlpost's advantages, and datasets TRL takes
(an IterableDataset without column names)."""

import pytest
import torch
import trl
from datasets import Dataset, IterableDataset

from grpo_helpers import digit_count_reward, grpo_args
from rlpost.algorithms.advantages import decoupled_normalized
from rlpost.rewards import MissingFieldError, get_reward
from rlpost.trainers import GRPOTrainer
from rlpost.trainers.grpo import dataset_columns, resolve_advantage


def _batch(task, n_prompts, num_generations):
    rows = task.rl_dataset().select(range(n_prompts))
    return [dict(row) for row in rows for _ in range(num_generations)]


def parity_reward(completions, completion_ids, **kwargs):
    """A second reward on another scale, so per-function normalization differs from normalizing the sum."""
    return [float(len(ids) * 3 + ids[0] % 2) for ids in completion_ids]


def _advantages(tmp_path, model, tokenizer, task, reward_funcs, **options):
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=grpo_args(tmp_path, **options),
                          train_dataset=task.rl_dataset(), processing_class=tokenizer)
    torch.manual_seed(0)
    return trainer._generate_and_score_completions(_batch(task, 2, 4))["advantages"], trainer


@pytest.mark.parametrize("scale", ["none", "batch", False])
def test_scale_rewards_is_honoured_and_equals_trls_own(tmp_path, tiny_model, tiny_tokenizer, addition_task, scale):
    ours, trainer = _advantages(tmp_path, tiny_model, tiny_tokenizer, addition_task, digit_count_reward,
                                scale_rewards=scale)
    rewards = trainer._last_rewards_per_func[:, 0]
    assert rewards.std() > 0, "the reward must vary, or the comparison is trivial"
    theirs, _ = _advantages(tmp_path, tiny_model, tiny_tokenizer, addition_task, digit_count_reward,
                            scale_rewards=scale, advantage="trl")
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    if scale in ("none", False):  # Dr. GRPO: mean-centred only, so advantages keep the reward's units
        centred = rewards - rewards.view(-1, 4).mean(1).repeat_interleave(4)
        torch.testing.assert_close(ours, centred, rtol=0, atol=1e-6)


def test_normalize_then_sum_is_gdpo_and_equals_trls_own(tmp_path, tiny_model, tiny_tokenizer, addition_task):
    funcs = [digit_count_reward, parity_reward]
    ours, trainer = _advantages(tmp_path, tiny_model, tiny_tokenizer, addition_task, funcs,
                                multi_objective_aggregation="normalize_then_sum", reward_weights=[1.0, 0.5])
    theirs, _ = _advantages(tmp_path, tiny_model, tiny_tokenizer, addition_task, funcs, advantage="trl",
                            multi_objective_aggregation="normalize_then_sum", reward_weights=[1.0, 0.5])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    summed, _ = _advantages(tmp_path, tiny_model, tiny_tokenizer, addition_task, funcs, reward_weights=[1.0, 0.5])
    assert not torch.allclose(ours, summed, atol=1e-3), "GDPO must differ from normalizing the weighted sum here"


def test_decoupled_normalized_closed_form():
    # Per function and group, two distinct values normalize to -+1/sqrt(2) (unbiased std, eps 0); equal ones to 0.
    # Weighted sums (w = 1, 2): [-1, 1, -1 - 2, 1 + 2] / sqrt(2); then one z-score over the batch.
    rewards = torch.tensor([[0.0, 5.0], [1.0, 5.0], [2.0, 1.0], [4.0, 3.0]])
    adv = decoupled_normalized(rewards, [0, 0, 1, 1], torch.tensor([1.0, 2.0]), eps=0.0)
    s = torch.tensor([-1.0, 1.0, -3.0, 3.0]) * 2 ** -0.5
    torch.testing.assert_close(adv, (s - s.mean()) / s.std())
    nan_row = torch.tensor([[0.0, 1.0], [1.0, 0.0], [float("nan"), float("nan")], [2.0, 2.0]])
    assert decoupled_normalized(nan_row, [0, 0, 1, 1], torch.ones(2))[2] == 0.0  # unscorable: advantage 0


def test_the_default_grpo_advantage_maps_scale_rewards_to_std(tmp_path):
    assert resolve_advantage(grpo_args(tmp_path))[1] == {"eps": 1e-4}  # "group": the estimator's unbiased std
    assert resolve_advantage(grpo_args(tmp_path, scale_rewards="batch"))[1]["std"] == "batch"
    assert resolve_advantage(grpo_args(tmp_path, scale_rewards=False))[1]["std"] == "none"
    assert resolve_advantage(grpo_args(tmp_path, advantage="dr_grpo", scale_rewards="none"))[1] == {"eps": 1e-4}
    with pytest.raises(ValueError, match="uses std='population'"):
        grpo_args(tmp_path, advantage="grpo_population", scale_rewards="none")


def _stream(rows):
    def generate():
        yield from rows

    return IterableDataset.from_generator(generate)  # no features: column_names is None


def test_iterable_dataset_without_column_names_is_checked_and_trains(tmp_path, tiny_model, tiny_tokenizer):
    rows = [{"prompt": f"{a}+{a}=", "answer": str(2 * a)} for a in range(8)]
    stream = _stream(rows)
    assert stream.column_names is None and dataset_columns(stream) == ["prompt", "answer"]
    args = grpo_args(tmp_path, max_steps=2, shuffle_dataset=False)
    trainer = GRPOTrainer(model=tiny_model, reward_funcs=[get_reward("exact_match")], args=args,
                          train_dataset=stream, processing_class=tiny_tokenizer)
    trainer.train()
    assert trainer.state.global_step == 2
    with pytest.raises(MissingFieldError, match="answer"):  # a missing column still fails before training
        GRPOTrainer(model=tiny_model, reward_funcs=[get_reward("exact_match")], args=args,
                    train_dataset=_stream([{"prompt": "1+1="}]), processing_class=tiny_tokenizer)


def test_recycling_stream_of_plain_records_knows_its_columns():
    from rlpost.envs.recycling import RecyclingBuffer, recycling_dataset

    stream = recycling_dataset([{"prompt": "1+1=", "answer": "2"}], RecyclingBuffer(), epochs=1)
    assert stream.column_names == ["prompt", "answer"]
    assert dataset_columns(recycling_dataset(Dataset.from_list([{"prompt": "p", "x": 1}]), RecyclingBuffer())) == [
        "prompt", "x"]
    assert trl.__version__ == "1.16.0"
