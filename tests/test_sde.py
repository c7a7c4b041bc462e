"""Tests for rlpost.algorithms.sde (Flow-GRPO / DanceGRPO / E-GRPO SDE math).

Expected values are derived by hand in the comments; the grid used throughout is
T=16, shift 3: t_k = 3·t̂/(1 + 2·t̂), t̂ = 1 − k/16, so
t_0 = 1, t_1 = 45/46, t_2 = 21/22, t_3 = 13/14, t_4 = 9/10, t_5 = 33/38, t_6 = 5/6, t_7 = 27/34.
"""

import math

import pytest
import torch

from rlpost.algorithms.sde import (
    ENTROPY_DEFINITIONS,
    SIGMA_VARIANTS,
    explicit_schedule,
    gaussian_entropy,
    gaussian_log_prob,
    merge_schedule,
    ode_step,
    sde_sigma,
    sde_step,
    shifted_sigmas,
    step_entropy,
)

TWO_PI_E = 2 * math.pi * math.e
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def assert_close(actual, expected, rtol=1e-6, atol=1e-6):
    """One tolerance for the file: float32 round-off, nothing looser."""
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


@pytest.fixture
def sigmas():
    return shifted_sigmas(16, shift=3.0)


@pytest.fixture
def sigmas64():
    # t/(1-t) near t=1 amplifies float32 grid round-off ~50x; entropy values are
    # compared against exact fractions, so build the grid in double precision.
    return shifted_sigmas(16, shift=3.0, dtype=torch.float64)


# ----------------------------------------------------------------------------- schedule


def test_shifted_sigmas_hand_values():
    # T=4: t̂ = 1, .75, .5, .25, 0 -> 3t̂/(1+2t̂) = 1, 2.25/2.5=.9, 1.5/2=.75, .75/1.5=.5, 0
    assert_close(shifted_sigmas(4, shift=3.0), [1.0, 0.9, 0.75, 0.5, 0.0])
    # shift 1 leaves linspace unchanged
    assert_close(shifted_sigmas(4, shift=1.0), [1.0, 0.75, 0.5, 0.25, 0.0])


def test_shifted_sigmas_matches_closed_form_grid(sigmas):
    assert sigmas.shape == (17,)
    assert sigmas[0].item() == 1.0 and sigmas[-1].item() == 0.0
    assert_close(sigmas[:8], [1, 45 / 46, 21 / 22, 13 / 14, 9 / 10, 33 / 38, 5 / 6, 27 / 34])


@pytest.mark.parametrize("kwargs", [{"num_steps": 0}, {"num_steps": 2.0}, {"num_steps": 4, "shift": 0.0}])
def test_shifted_sigmas_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        shifted_sigmas(**kwargs)


# ----------------------------------------------------------------------------- sigma


def test_sde_sigma_flow_grpo_values():
    # a=0.7: t=0.5 -> 0.7·sqrt(1) = 0.7; t=0.8 -> 0.7·sqrt(4) = 1.4; t=0 -> 0
    assert_close(sde_sigma(torch.tensor([0.5, 0.8, 0.0]), 0.7), [0.7, 1.4, 0.0])


def test_sde_sigma_t_one_fix_conventions():
    # t=1, fix 0.9: denominator -> 0.7·sqrt(1/0.1) = 0.7·sqrt(10); ratio -> 0.7·sqrt(0.9/0.1) = 2.1
    assert_close(sde_sigma(1.0, 0.7, t_next_at_one=0.9), 0.7 * math.sqrt(10))
    assert_close(sde_sigma(1.0, 0.7, t_next_at_one=0.9, at_one="ratio"), 2.1)
    # the fix only touches t == 1 entries
    assert_close(sde_sigma(torch.tensor([1.0, 0.5]), 0.7, t_next_at_one=0.9), [0.7 * math.sqrt(10), 0.7])


def test_sde_sigma_t_one_without_fix_raises():
    with pytest.raises(ValueError, match="t_next_at_one"):
        sde_sigma(1.0, 0.7)


def test_sde_sigma_dance_grpo_is_constant():
    assert_close(sde_sigma(torch.tensor([1.0, 0.5, 0.1]), 0.3, variant="dance_grpo"), [0.3, 0.3, 0.3])
    assert set(SIGMA_VARIANTS) == {"flow_grpo", "dance_grpo"}
    with pytest.raises(ValueError, match="Unknown SDE variant"):
        sde_sigma(0.5, 0.7, variant="ddim")


# ----------------------------------------------------------------------------- sde_step


def test_sde_step_hand_derived_single_element():
    # x=1, v=2, t=.5, t_next=.25, a=.7: σ²=.49·(.5/.5)=.49, Δt=-.25
    # drift = v + σ²/(2t)·(x + (1-t)v) = 2 + .49·(1 + 1) = 2.98; mean = 1 - .25·2.98 = .255
    # std = .7·sqrt(.25) = .35; noise=1 -> x_next = .605
    # log p = -(.35)²/(2·.35²) - log .35 - log sqrt(2π) = -.5 - log .35 - log sqrt(2π)
    x, v = torch.tensor([[1.0]]), torch.tensor([[2.0]])
    x_next, log_prob, mean, std = sde_step(x, v, 0.5, 0.25, 0.7, noise=torch.ones(1, 1))
    assert_close(mean, [[0.255]])
    assert_close(std, 0.35)
    assert_close(x_next, [[0.605]])
    assert_close(log_prob, [-0.5 - math.log(0.35) - LOG_SQRT_2PI])


def test_sde_step_first_step_uses_t_next_in_denominator(sigmas):
    # t=1 -> σ² = a²/(1-t_1), std² = σ²·(1-t_1) = a², so std = a = 0.7 exactly;
    # drift at t=1: v + σ²/2·(x + 0·v)
    x, v = torch.tensor([[1.0]]), torch.tensor([[2.0]])
    _, _, mean, std = sde_step(x, v, 1.0, sigmas[1], 0.7, noise=torch.zeros(1, 1))
    sigma2 = 0.49 * 46  # 1/(1 - 45/46) = 46
    assert_close(std, 0.7)
    assert_close(mean, [[1.0 + (2.0 + sigma2 / 2 * 1.0) * (45 / 46 - 1)]])


def test_sde_step_merged_first_step_t_at_one(sigmas):
    # merged from t=1 to t_2: the reference code keeps sigmas[1] in the denominator,
    # std = 0.7·sqrt(1/(1-45/46))·sqrt(1-21/22) = 0.7·sqrt(46/22)
    x = v = torch.zeros(1, 2)
    _, _, _, std = sde_step(x, v, 1.0, sigmas[2], 0.7, t_at_one=sigmas[1])
    assert_close(std, 0.7 * math.sqrt(46 / 22))
    # default falls back to t_next = t_2: 0.7·sqrt(1/(1-21/22))·sqrt(1/22) = 0.7
    _, _, _, std_default = sde_step(x, v, 1.0, sigmas[2], 0.7)
    assert_close(std_default, 0.7)


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_sde_step_log_prob_matches_torch_normal(sigmas, reduce):
    torch.manual_seed(0)
    x, v = torch.randn(3, 2, 5), torch.randn(3, 2, 5)
    x_next, log_prob, mean, std = sde_step(x, v, sigmas[3], sigmas[4], 0.7, reduce=reduce)
    elementwise = torch.distributions.Normal(mean, std).log_prob(x_next)  # [3, 2, 5]
    expected = elementwise.mean(dim=(1, 2)) if reduce == "mean" else elementwise.sum(dim=(1, 2))
    assert log_prob.shape == (3,)
    assert_close(log_prob, expected)


def test_log_prob_sum_is_mean_times_dims(sigmas):
    torch.manual_seed(1)
    x, v, noise = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    _, lp_mean, _, _ = sde_step(x, v, sigmas[5], sigmas[6], 0.7, noise=noise)
    _, lp_sum, _, _ = sde_step(x, v, sigmas[5], sigmas[6], 0.7, noise=noise, reduce="sum")
    _, lp_none, _, _ = sde_step(x, v, sigmas[5], sigmas[6], 0.7, noise=noise, reduce="none")
    assert lp_none.shape == (2, 3, 4)
    assert_close(lp_sum, lp_mean * 12)


def test_sde_step_zero_noise_returns_mean(sigmas):
    torch.manual_seed(2)
    x, v = torch.randn(2, 4), torch.randn(2, 4)
    x_next, log_prob, mean, std = sde_step(x, v, sigmas[2], sigmas[3], 0.7, noise=torch.zeros(2, 4))
    assert torch.equal(x_next, mean)
    # at the mean every element has log p = -log std - log sqrt(2π)
    assert_close(log_prob, (-torch.log(std) - LOG_SQRT_2PI).expand(2))


def test_sde_step_zero_noise_scale_is_rejected(sigmas):
    # a=0 -> σ=0 -> std 0: deterministic, no density; the error points to ode_step
    x = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="ode_step"):
        sde_step(x, x, sigmas[2], sigmas[3], 0.0)
    with pytest.raises(ValueError, match="ode_step"):
        gaussian_log_prob(x, x, 0.0)


def test_dance_grpo_variant_matches_its_own_formula(sigmas):
    # DanceGRPO flux_step, written out independently:
    #   x̂0 = x - σv; score = -(x - (1-σ)x̂0)/σ²
    #   mean = x + dσ·v - ½η²·score·dσ; std = η·sqrt(σ - σ_next)
    torch.manual_seed(3)
    eta = 0.3
    x, v, noise = torch.randn(2, 6), torch.randn(2, 6), torch.randn(2, 6)
    for i in (0, 3, 10):
        s, s_next = sigmas[i].item(), sigmas[i + 1].item()
        d_sigma = s_next - s
        x0_hat = x - s * v
        score = -(x - (1 - s) * x0_hat) / s**2
        mean_ref = x + d_sigma * v - 0.5 * eta**2 * score * d_sigma
        std_ref = eta * math.sqrt(s - s_next)
        x_next, log_prob, mean, std = sde_step(x, v, s, s_next, eta, noise=noise, variant="dance_grpo")
        assert_close(mean, mean_ref, rtol=1e-5, atol=1e-5)
        assert_close(std, std_ref)
        log_prob_ref = (
            -((x_next - mean_ref) ** 2) / (2 * std_ref**2) - math.log(std_ref) - LOG_SQRT_2PI
        ).mean(dim=1)
        assert_close(log_prob, log_prob_ref, rtol=1e-5, atol=1e-5)


def test_merged_step_variance(sigmas):
    # merge l=3 from index 6: t_m = 5/6, t_{m-l} = sigmas[9] = 0.7 (t̂=7/16 -> (21/16)/(30/16))
    # Σ = σ²·(t_m - t_{m-l}) with σ² = .49·(5/6)/(1/6) = 2.45 -> var = 2.45·(5/6 - .7) = 0.326667
    t, t_next = sigmas[6], sigmas[9]
    expected_var = 2.45 * (5 / 6 - 0.7)
    n = 200_000
    x, v = torch.full((n, 1), 0.3), torch.full((n, 1), -0.2)
    torch.manual_seed(4)
    x_next, _, mean, std = sde_step(x, v, t, t_next, 0.7)
    assert_close(std**2, expected_var)
    # sampling error of a variance estimate: rel. sd sqrt(2/n) ≈ 0.3%, so 2% is ~6 sd
    empirical = x_next.var().item()
    assert abs(empirical / expected_var - 1) < 0.02


def test_merged_step_drift_is_frozen_at_start(sigmas):
    # a merged step evaluates the drift at t_m, so (mean - x)/Δt is the same for l = 1, 2, 3
    torch.manual_seed(5)
    x, v = torch.randn(2, 3), torch.randn(2, 3)
    i = 7
    slopes = []
    for length in (1, 2, 3):
        _, _, mean, _ = sde_step(x, v, sigmas[i], sigmas[i + length], 0.7, noise=torch.zeros(2, 3))
        slopes.append((mean - x) / (sigmas[i + length] - sigmas[i]))
    assert_close(slopes[1], slopes[0], rtol=1e-5, atol=1e-5)
    assert_close(slopes[2], slopes[0], rtol=1e-5, atol=1e-5)


def test_per_sample_times_equal_scalar_loop(sigmas):
    torch.manual_seed(6)
    x, v, noise = torch.randn(3, 2, 4), torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    starts, ends = [0, 5, 10], [1, 7, 11]
    t, t_next = sigmas[starts], sigmas[ends]
    x_next, log_prob, mean, std = sde_step(x, v, t, t_next, 0.7, noise=noise)
    assert std.shape == (3, 1, 1)
    for b, (i, j) in enumerate(zip(starts, ends)):
        xb, lpb, mb, sb = sde_step(
            x[b : b + 1], v[b : b + 1], float(sigmas[i]), float(sigmas[j]), 0.7, noise=noise[b : b + 1]
        )
        assert torch.equal(x_next[b : b + 1], xb)
        assert torch.equal(mean[b : b + 1], mb)
        assert torch.equal(log_prob[b : b + 1], lpb)
        assert_close(std[b].flatten(), sb.flatten(), rtol=0, atol=0)


def test_reevaluated_log_prob_is_bitwise_equal(sigmas):
    torch.manual_seed(7)
    x = torch.randn(4, 3, 2).to(torch.bfloat16)
    v = torch.randn(4, 3, 2, requires_grad=True)
    with torch.no_grad():
        x_next, old_log_prob, _, _ = sde_step(x, v, sigmas[4], sigmas[6], 0.7)
    assert x_next.dtype == torch.float32 and old_log_prob.dtype == torch.float32
    _, new_log_prob, _, _ = sde_step(x, v, sigmas[4], sigmas[6], 0.7, prev_sample=x_next)
    assert torch.equal(new_log_prob.detach(), old_log_prob)
    assert torch.all(torch.exp(new_log_prob.detach() - old_log_prob) == 1.0)
    # gradient reaches v through the mean
    new_log_prob.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_low_precision_inputs_are_computed_in_float32(sigmas):
    torch.manual_seed(8)
    x, v, noise = torch.randn(2, 5), torch.randn(2, 5), torch.randn(2, 5)
    x16, v16 = x.to(torch.bfloat16), v.to(torch.bfloat16)
    out_low = sde_step(x16, v16, sigmas[3], sigmas[4], 0.7, noise=noise)
    out_f32 = sde_step(x16.float(), v16.float(), sigmas[3], sigmas[4], 0.7, noise=noise)
    for low, ref in zip(out_low, out_f32):
        assert low.dtype == torch.float32
        assert torch.equal(low, ref)


def test_sde_step_validates_inputs(sigmas):
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="t_next"):
        sde_step(x, x, 0.5, 0.6, 0.7)  # t_next > t: wrong direction
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        sde_step(x, x, 0.0, 0.0, 0.7)
    with pytest.raises(ValueError, match="per-sample"):
        sde_step(x, x, torch.tensor([0.5, 0.4, 0.3]), 0.2, 0.7)
    with pytest.raises(ValueError, match="not both"):
        sde_step(x, x, 0.5, 0.4, 0.7, noise=x, prev_sample=x)
    with pytest.raises(ValueError, match="same shape"):
        sde_step(x, torch.zeros(2, 4), 0.5, 0.4, 0.7)


# ----------------------------------------------------------------------------- ode_step


def test_ode_step_closed_form():
    # x + v·Δt: 1 + 2·(.25 - .5) = .5 ; per-sample t: row 2 gets 3 + (-1)·(.1 - .9) = 3.8
    x, v = torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [-1.0]])
    assert_close(ode_step(x, v, torch.tensor([0.5, 0.9]), torch.tensor([0.25, 0.1])), [[0.5], [3.8]])
    assert_close(ode_step(x[:1], v[:1], 0.5, 0.25), [[0.5]])


# ----------------------------------------------------------------------------- entropy


def test_step_entropy_golden_values(sigmas64):
    # spec e-grpo.md §1.4: per-dim exp entropy at indices 0-4 ≈ 8.19, 8.93, 4.56, 3.11, 2.38.
    # index 1 by hand: r(45/46) = 45, Δt = 45/46 - 21/22 = 6/253 -> 2πe·.49·270/253 = 8.931
    # index 0 reproduces 8.19 only when the whole ratio is evaluated at sigmas64[1]:
    #   "ratio":       2πe·.49·(45/46)·(1/46)·46 = 2πe·.49·45/46 = 8.187
    #   "denominator": 2πe·.49·(1/(1/46))·(1/46) = 2πe·.49      = 8.369 (the sampler's σ)
    golden = torch.tensor([8.19, 8.93, 4.56, 3.11, 2.38], dtype=torch.float64)
    ratio = step_entropy(sigmas64[:5], sigmas64[1:6], 0.7, t_at_one=sigmas64[1], at_one="ratio")
    assert (ratio - golden).abs().max() < 0.01
    assert_close(ratio[1], TWO_PI_E * 0.49 * 270 / 253)
    assert_close(ratio[0], TWO_PI_E * 0.49 * 45 / 46)
    default = step_entropy(sigmas64[:5], sigmas64[1:6], 0.7, t_at_one=sigmas64[1])
    assert_close(default[0], TWO_PI_E * 0.49)
    assert_close(default[1:], ratio[1:], rtol=0, atol=0)


def test_step_entropy_definitions(sigmas64):
    # index 1: proxy = r·Δt = 270/253; differential with d=4: 4/2·log(2πe·.49·270/253)
    proxy = 270 / 253
    assert_close(step_entropy(sigmas64[1], sigmas64[2], 0.7, definition="proxy"), proxy)
    differential = step_entropy(sigmas64[1], sigmas64[2], 0.7, dim=4, definition="differential")
    assert_close(differential, 2 * math.log(TWO_PI_E * 0.49 * proxy))
    assert set(ENTROPY_DEFINITIONS) == {"per_dim_exp", "differential", "proxy"}
    with pytest.raises(ValueError, match="needs dim"):
        step_entropy(sigmas64[1], sigmas64[2], 0.7, definition="differential")
    with pytest.raises(ValueError, match="Unknown entropy definition"):
        step_entropy(sigmas64[1], sigmas64[2], 0.7, definition="renyi")


def test_gaussian_entropy_matches_torch_normal():
    std = torch.tensor([0.05, 0.3, 1.0, 2.5], dtype=torch.float64)
    expected = torch.distributions.Normal(torch.zeros_like(std), std).entropy()  # ½·log(2πe·std²) per dimension
    assert_close(gaussian_entropy(std), expected, rtol=1e-12, atol=1e-12)
    assert_close(gaussian_entropy(std, dim=7), 7 * expected, rtol=1e-12, atol=1e-12)
    # the merged step's Gaussian: per-dim h of std σ_t·sqrt(Δt) is ½·log of step_entropy's e^{2h/d}
    t, t_next, a = 0.9, 0.8, 0.7
    sigma = a * math.sqrt(t / (1 - t))
    assert_close(gaussian_entropy(sigma * math.sqrt(t - t_next)), 0.5 * math.log(step_entropy(t, t_next, a)))
    with pytest.raises(ValueError, match="std > 0"):
        gaussian_entropy(0.0)
    with pytest.raises(ValueError, match="int >= 1"):
        gaussian_entropy(1.0, dim=0)


def test_step_entropy_first_step_defaults_to_t_next(sigmas64):
    # unmerged first step: the default fix (t_next = sigmas64[1]) equals passing sigmas64[1]
    explicit = step_entropy(1.0, sigmas64[1], 0.7, t_at_one=sigmas64[1])
    assert_close(step_entropy(1.0, sigmas64[1], 0.7), explicit, rtol=0, atol=0)


# ----------------------------------------------------------------------------- merging


@pytest.mark.parametrize("at_one", ["denominator", "ratio"])
def test_merge_schedule_golden(sigmas, at_one):
    # spec §1.4: τ=2.2, first 8 steps -> l = [1,1,1,1,1,2,2,2]
    # index 5 by hand: r(33/38) = 33/5 = 6.6; E(5,1) = 8.369·6.6·(33/38-5/6 = 8/228) = 1.938 < 2.2,
    # E(5,2) = 8.369·6.6·(33/38-27/34 = 96/1292) = 4.10 >= 2.2 -> l=2; index 4: E = 2.38 >= 2.2 -> l=1
    schedule = merge_schedule(sigmas, 0.7, 2.2, range(8), at_one=at_one)
    assert schedule == [(i, l) for i, l in zip(range(8), [1, 1, 1, 1, 1, 2, 2, 2])]
    assert all(type(i) is int and type(l) is int for i, l in schedule)


def test_merge_schedule_tau_zero_means_no_merging(sigmas):
    assert merge_schedule(sigmas, 0.7, 0.0, range(16)) == [(i, 1) for i in range(16)]


def test_merge_schedule_monotone_in_tau(sigmas):
    taus = [0.0, 0.5, 1.0, 1.8, 2.0, 2.2, 2.6, 5.0, 20.0]
    lengths = [[l for _, l in merge_schedule(sigmas, 0.7, tau, range(16))] for tau in taus]
    for shorter, longer in zip(lengths, lengths[1:]):
        assert all(a <= b for a, b in zip(shorter, longer))
    assert lengths[-1] != lengths[0]  # the sweep does change something


def test_merge_schedule_caps(sigmas):
    # τ beyond any entropy: every step merges to the end of the grid, i + l = 16
    schedule = merge_schedule(sigmas, 0.7, 1e9, range(16))
    assert schedule == [(i, 16 - i) for i in range(16)]
    capped = merge_schedule(sigmas, 0.7, 1e9, [0, 14, 15], max_merge=3)
    assert capped == [(0, 3), (14, 2), (15, 1)]


def test_merge_schedule_validates(sigmas):
    with pytest.raises(ValueError, match="out of range"):
        merge_schedule(sigmas, 0.7, 2.2, [16])
    with pytest.raises(ValueError, match="decrease strictly"):
        merge_schedule(sigmas.flip(0), 0.7, 2.2, [0])
    with pytest.raises(ValueError, match="tau"):
        merge_schedule(sigmas, 0.7, -1.0, [0])
    with pytest.raises(ValueError, match="max_merge"):
        merge_schedule(sigmas, 0.7, 2.2, [0], max_merge=0)


def test_explicit_schedule_roundtrip_and_errors():
    assert explicit_schedule([1, 2, 3], [1, 2, 2], num_steps=16) == [(1, 1), (2, 2), (3, 2)]
    with pytest.raises(ValueError, match="one merge length per active step"):
        explicit_schedule([1, 2], [1])
    with pytest.raises(ValueError, match="out of range"):
        explicit_schedule([-1], [1])
    with pytest.raises(ValueError, match="out of range"):
        explicit_schedule([16], [1], num_steps=16)
    with pytest.raises(ValueError, match=">= 1"):
        explicit_schedule([3], [0])
    with pytest.raises(ValueError, match="past the last index"):
        explicit_schedule([14], [3], num_steps=16)
    with pytest.raises(TypeError):
        explicit_schedule([1.5], [1])
