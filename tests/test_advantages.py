"""Hand-derived checks of rlpost.algorithms.advantages."""

import math

import pytest
import torch

from rlpost.algorithms.advantages import (
    get_advantage,
    group_normalized,
    list_advantages,
    multi_step_group_normalized,
    register_advantage,
    rloo,
)

NAN = float("nan")


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=0, atol=atol)


def test_unbiased_single_group_closed_form():
    # r = [1, 0, 0, 1]: mean 0.5; unbiased var = 4 * 0.25 / 3 = 1/3, std = sqrt(1/3) = 0.57735
    # A = ±0.5 / 0.57735 = ±0.866025
    a = group_normalized(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 0, 0]))
    s = 0.5 / math.sqrt(1 / 3)
    close(a, [s, -s, -s, s])


def test_population_and_none_and_batch_closed_forms():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    # population var = 1 * 0.25 = 0.25, std 0.5 -> A = ±1
    close(group_normalized(r, [0, 0, 0, 0], std="population"), [1.0, -1.0, -1.0, 1.0])
    # Dr.GRPO: mean-centering only -> ±0.5
    close(group_normalized(r, [0, 0, 0, 0], std="none"), [0.5, -0.5, -0.5, 0.5])
    # batch std: groups {0,1} means 0.5 and 2.5 for r = [0, 1, 2, 3];
    # batch mean 1.5, unbiased batch var = (2.25 + .25 + .25 + 2.25) / 3 = 5/3
    # centered [-.5, .5, -.5, .5] / sqrt(5/3) = ±0.387298
    b = group_normalized(torch.tensor([0.0, 1.0, 2.0, 3.0]), [0, 0, 1, 1], std="batch")
    s = 0.5 / math.sqrt(5 / 3)
    close(b, [-s, s, -s, s])


def test_non_contiguous_group_ids_match_contiguous():
    # groups interleaved and with arbitrary ids: {7: [1, 3], -2: [0, 10]}
    # group 7: mean 2, unbiased std sqrt(2) -> ∓1/sqrt(2); group -2: mean 5, std sqrt(50) -> ∓1/sqrt(2)
    a = group_normalized(torch.tensor([1.0, 0.0, 3.0, 10.0]), torch.tensor([7, -2, 7, -2]))
    h = 1 / math.sqrt(2)
    close(a, [-h, -h, h, h])
    # string ids in a Python list work too
    close(group_normalized(torch.tensor([1.0, 0.0, 3.0, 10.0]), ["p", "q", "p", "q"]), [-h, -h, h, h])


def test_zero_std_and_size_one_groups_give_exact_zero():
    # group 0 constant (0.1 is not exact in binary, so a std-based test could leak ~1e-9/eps)
    # group 1 has a single member (unbiased std undefined)
    # In float64, (0.1 + 0.1 + 0.1) / 3 = 0.10000000000000002 != 0.1, so r - mean = -1.4e-17 and
    # std = 1.6e-17: dividing would give ~1e-9, not 0.
    r = torch.tensor([0.1, 0.1, 0.1, 5.0, 1.0, 2.0], dtype=torch.float64)
    g = torch.tensor([0, 0, 0, 1, 2, 2])
    for std in ("unbiased", "population", "none", "batch"):
        a = group_normalized(r, g, std=std)
        assert torch.equal(a[:4], torch.zeros(4, dtype=torch.float64)), std
        assert a[4] < 0 < a[5], std


def test_advantages_sum_to_zero_per_group():
    torch.manual_seed(0)
    r = torch.randn(24, dtype=torch.float64)
    g = torch.randint(0, 5, (24,))
    for name in ("grpo", "grpo_population", "dr_grpo", "batch_std", "rloo"):
        a = get_advantage(name)(r, g)
        sums = torch.zeros(5, dtype=torch.float64).index_add_(0, g, a)
        close(sums, torch.zeros(5), atol=1e-12)


def test_clip_is_symmetric():
    # r = [0]*9 + [1] in one group: mean 0.1, unbiased std = sqrt((9*.01 + .81)/9) = sqrt(0.1) = 0.316228
    # A_top = 0.9 / 0.316228 = 2.846; A_rest = -0.1 / 0.316228 = -0.316
    r = torch.tensor([0.0] * 9 + [1.0])
    a = group_normalized(r, [0] * 10, clip=2.0)
    close(a[-1], 2.0)
    close(a[0], -0.1 / math.sqrt(0.1))
    # negative side: flip the rewards
    close(group_normalized(-r, [0] * 10, clip=2.0)[-1], -2.0)
    with pytest.raises(ValueError, match="clip"):
        group_normalized(r, [0] * 10, clip=0.0)


def test_nan_rewards_are_excluded_and_get_zero():
    # group 0 = [1, NaN, 3]: stats over {1, 3}: mean 2, unbiased std sqrt(2) -> ∓0.7071, NaN -> 0
    # group 1 = [NaN, NaN]: all invalid -> 0
    r = torch.tensor([1.0, NAN, 3.0, NAN, NAN])
    a = group_normalized(r, [0, 0, 0, 1, 1])
    h = 1 / math.sqrt(2)
    close(a, [-h, 0.0, h, 0.0, 0.0])
    assert not torch.isnan(a).any()


def test_multi_step_normalizes_each_column_within_each_group():
    # groups: samples {0, 1, 2} and {3, 4}; S = 2 steps
    # group 0 col 0: [1, 2, 3] mean 2, unbiased std 1 -> [-1, 0, 1]
    # group 0 col 1: [10, 10, NaN] constant over the valid ones -> [0, 0, 0]
    # group 1 col 0: [0, 4] mean 2, std sqrt(8) -> ∓0.7071
    # group 1 col 1: [5, 1] mean 3, std sqrt(8) -> ±0.7071
    r = torch.tensor([[1.0, 10.0], [2.0, 10.0], [3.0, NAN], [0.0, 5.0], [4.0, 1.0]])
    a = multi_step_group_normalized(r, torch.tensor([0, 0, 0, 1, 1]))
    h = 1 / math.sqrt(2)
    close(a, [[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [-h, h], [h, -h]])
    # a single column equals the 1-D estimator; clip applies elementwise
    close(multi_step_group_normalized(r[:, :1], [0, 0, 0, 1, 1])[:, 0], group_normalized(r[:, 0], [0, 0, 0, 1, 1]))
    close(multi_step_group_normalized(r, [0, 0, 0, 1, 1], clip=0.5)[0, 0], -0.5)
    with pytest.raises(ValueError, match=r"\[N, S\]"):
        multi_step_group_normalized(r[:, 0], [0, 0, 0, 1, 1])


def test_rloo_closed_form():
    # group [1, 0, 0, 1]: A_0 = 1 - (0 + 0 + 1)/3 = 2/3; A_1 = 0 - (1 + 0 + 1)/3 = -2/3
    # group [4, NaN]: one valid reward -> 0; NaN -> 0
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 4.0, NAN])
    close(rloo(r, [0, 0, 0, 0, 1, 1]), [2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.0, 0.0])


def test_registry_names_and_unknown_name_error():
    assert {"grpo", "grpo_population", "dr_grpo", "batch_std", "rloo"} <= set(list_advantages())
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    close(get_advantage("grpo")(r, [0] * 4, eps=0.0), group_normalized(r, [0] * 4, eps=0.0))
    close(get_advantage("dr_grpo")(r, [0] * 4), [0.5, -0.5, -0.5, 0.5])
    with pytest.raises(ValueError, match=r"Unknown advantage estimator 'gpro'.*Valid names:.*Did you mean 'grpo'"):
        get_advantage("gpro")


def test_every_registered_estimator_takes_eps_and_clip():
    # the GRPO trainer passes one option set (eps, clip) to whichever estimator is configured
    r = torch.tensor([0.0, 0.0, 0.0, 3.0])
    for name in list_advantages():
        a = get_advantage(name)(r, [0, 0, 0, 0], eps=1e-4, clip=0.5)
        assert a.shape == (4,) and a.abs().max() <= 0.5, name
        close(a[-1], 0.5)  # the top reward is clipped under every estimator here


def test_register_advantage_rejects_silent_overwrite():
    @register_advantage("_test_double")
    def double(rewards, group_ids, **options):
        return 2 * rewards

    try:
        assert get_advantage("_test_double") is double
        with pytest.raises(ValueError, match="already registered"):
            register_advantage("_test_double")(lambda rewards, group_ids: rewards)
    finally:
        from rlpost.algorithms import advantages

        advantages._ADVANTAGES.pop("_test_double")


def test_bad_inputs_have_clear_errors():
    with pytest.raises(ValueError, match="Unknown std mode 'unbiassed'.*Did you mean 'unbiased'"):
        group_normalized(torch.zeros(2), [0, 0], std="unbiassed")
    with pytest.raises(ValueError, match="one id per sample"):
        group_normalized(torch.zeros(3), [0, 0])


def test_dtype_is_preserved():
    r = torch.tensor([1.0, 0.0], dtype=torch.bfloat16)
    assert group_normalized(r, [0, 0]).dtype == torch.bfloat16
    assert group_normalized(torch.tensor([1, 0]), [0, 0]).dtype == torch.get_default_dtype()


def test_zero_std_fraction_counts_samples_in_flat_groups():
    from rlpost.algorithms.advantages import zero_std_fraction

    # groups: 7 -> [1, 1] flat; 3 -> [0, 1] not flat; 5 -> [2] (size 1) flat; 9 -> [nan, 4] flat over finite values
    rewards = torch.tensor([1.0, 0.0, 1.0, 2.0, 1.0, float("nan"), 4.0])
    groups = torch.tensor([7, 3, 7, 5, 3, 9, 9])
    assert zero_std_fraction(rewards, groups) == pytest.approx(5 / 7)  # 2 (group 7) + 1 (group 5) + 2 (group 9)
