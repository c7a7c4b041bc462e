"""Hand-derived checks of the PPO clip loss and KL estimators in rlpost.algorithms.losses."""

import math

import pytest
import torch

from rlpost.algorithms.losses import gaussian_mean_kl, kl_k3, ppo_clip_loss


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=0, atol=atol)


def test_on_policy_loss_is_minus_mean_advantage_and_nothing_clips():
    # ratio = exp(0) = 1 -> min(A, clip(1)·A) = A -> loss = -mean over tokens of A
    # per-sequence A = [1, -2, 0.5] broadcast over T = 4 tokens -> -(1 - 2 + 0.5)/3 = 1/6
    lp = torch.randn(3, 4)
    adv = torch.tensor([1.0, -2.0, 0.5])
    loss, stats = ppo_clip_loss(lp, lp.clone(), adv)
    close(loss, 1 / 6)
    close(stats["ratio_mean"], 1.0)
    for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
        close(stats[key], 0.0)


def test_on_policy_gradient_is_minus_advantage_over_token_count():
    # d/dlp of -(ratio·A) at ratio = 1 is -A; token_mean divides by 3·4 = 12 tokens
    lp = torch.zeros(3, 4, requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    loss, _ = ppo_clip_loss(lp, torch.zeros(3, 4), adv)
    loss.backward()
    close(lp.grad, (-adv / 12).unsqueeze(-1).expand(3, 4))


def test_high_ratio_with_positive_advantage_clips_to_1_2():
    # ratio = e^{0.5} = 1.6487 > 1.2, A = 2 > 0: min(1.6487·2, 1.2·2) = 2.4 -> loss -2.4, high-clipped
    loss, stats = ppo_clip_loss(torch.tensor([0.5]), torch.tensor([0.0]), torch.tensor([2.0]))
    close(loss, -2.4)
    close(stats["clip_ratio/high_mean"], 1.0)
    close(stats["clip_ratio/low_mean"], 0.0)
    close(stats["clip_ratio/region_mean"], 1.0)
    close(stats["ratio_mean"], math.exp(0.5))
    # DAPO clip-higher: ε_high = 0.28 -> 1.28·2 = 2.56
    loss, _ = ppo_clip_loss(torch.tensor([0.5]), torch.tensor([0.0]), torch.tensor([2.0]), epsilon_high=0.28)
    close(loss, -2.56)


def test_low_ratio_with_negative_advantage_clips_to_0_8():
    # ratio = e^{-0.5} = 0.6065 < 0.8, A = -1: min(-0.6065, -0.8) = -0.8 -> loss 0.8, low-clipped
    loss, stats = ppo_clip_loss(torch.tensor([-0.5]), torch.tensor([0.0]), torch.tensor([-1.0]))
    close(loss, 0.8)
    close(stats["clip_ratio/low_mean"], 1.0)
    close(stats["clip_ratio/high_mean"], 0.0)


def test_pessimistic_side_is_not_clipped():
    # ratio = e^{0.5}, A = -1: min(-1.6487, -1.2) = -1.6487 -> loss e^{0.5}, no clip counted
    loss, stats = ppo_clip_loss(torch.tensor([0.5]), torch.tensor([0.0]), torch.tensor([-1.0]))
    close(loss, math.exp(0.5))
    close(stats["clip_ratio/region_mean"], 0.0)


def test_padding_does_not_change_the_loss_or_gradient():
    torch.manual_seed(0)
    lp, old, adv = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    # append 2 padding tokens per sequence with wild values (exp overflows, -inf), masked out
    pad = torch.tensor([[100.0, 80.0], [-30.0, 0.0]])  # e^100 overflows fp32 to inf
    mask = torch.cat([torch.ones(2, 3), torch.zeros(2, 2)], dim=1)
    for aggregation in ("token_mean", "sequence_mean", "sum"):
        lp_ref = lp.clone().requires_grad_()
        ref, ref_stats = ppo_clip_loss(lp_ref, old, adv, aggregation=aggregation)
        ref.backward()
        lp_pad = torch.cat([lp, pad], 1).requires_grad_()
        old_pad = torch.cat([old, torch.tensor([[-50.0, -float("inf")], [0.0, 0.0]])], 1)
        padded, stats = ppo_clip_loss(lp_pad, old_pad, torch.cat([adv, pad], 1), mask, aggregation=aggregation)
        padded.backward()
        close(padded, ref)
        for key in ref_stats:
            close(stats[key], ref_stats[key])
        close(lp_pad.grad, torch.cat([lp_ref.grad, torch.zeros(2, 2)], 1))


def test_aggregation_variants_by_hand():
    # on-policy, per-token A; seq 0 has 1 valid token (A = a), seq 1 has 3 (b, c, d); per-token loss = -A
    a, b, c, d = 4.0, 1.0, 2.0, 6.0
    adv = torch.tensor([[a, 0.0, 0.0], [b, c, d]])
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    lp = torch.zeros(2, 3)
    # token_mean: -(4 + 1 + 2 + 6)/4 = -3.25
    close(ppo_clip_loss(lp, lp, adv, mask, aggregation="token_mean")[0], -3.25)
    # sequence_mean: -(4/1 + 9/3)/2 = -3.5
    close(ppo_clip_loss(lp, lp, adv, mask, aggregation="sequence_mean")[0], -3.5)
    # sum: -13
    close(ppo_clip_loss(lp, lp, adv, mask, aggregation="sum")[0], -13.0)
    with pytest.raises(ValueError, match="Unknown aggregation 'token_means'.*Did you mean 'token_mean'"):
        ppo_clip_loss(lp, lp, adv, aggregation="token_means")


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="advantages must be"):
        ppo_clip_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="same shape"):
        ppo_clip_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2))


def test_kl_k3_closed_form_nonnegative_and_zero_when_equal():
    # lp = 0, ref = ln 2: e^{ln 2} - ln 2 - 1 = 1 - ln 2 = 0.306853
    close(kl_k3(torch.tensor([0.0]), torch.tensor([math.log(2)])), [1 - math.log(2)])
    # lp = ln 2, ref = 0: e^{-ln 2} + ln 2 - 1 = ln 2 - 0.5 = 0.193147
    close(kl_k3(torch.tensor([math.log(2)]), torch.tensor([0.0])), [math.log(2) - 0.5])
    torch.manual_seed(0)
    lp, ref = torch.randn(4, 5), torch.randn(4, 5)
    assert (kl_k3(lp, ref) >= 0).all()
    close(kl_k3(lp, lp), torch.zeros(4, 5))


def test_gaussian_mean_kl_closed_form():
    # sample 0: μ - μ_ref = [1, 2], σ = 0.5: mean([1, 4]) / (2·0.25) = 2.5 / 0.5 = 5
    # sample 1: μ = μ_ref -> 0
    mean = torch.tensor([[1.0, 2.0], [3.0, 3.0]])
    ref = torch.tensor([[0.0, 0.0], [3.0, 3.0]])
    close(gaussian_mean_kl(mean, ref, 0.5), [5.0, 0.0])
    # per-sample std [B, 1]: sample 0 with σ = 1 -> 2.5 / 2 = 1.25
    close(gaussian_mean_kl(mean, ref, torch.tensor([[1.0], [2.0]])), [1.25, 0.0])
    # 4-D latents average over all non-batch dims: (μ-μ_ref)=1 everywhere, σ=1 -> 0.5
    close(gaussian_mean_kl(torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), 1.0), [0.5, 0.5])
