"""W-RFSDS math (CHORD Eq. 2-4) and the Fenwick temporal store (Eq. 10-11): closed forms and invariants."""

import math

import pytest
import torch

from rlpost.algorithms import fenwick
from rlpost.algorithms.rfsds import (
    annealed_taus,
    cfg_velocity,
    chord_weight,
    inverse_cdf,
    linear_weight,
    noised_latent,
    rf_denoising_loss,
    rfsds_loss,
    sample_taus,
    shifted_uniform_weight,
    uniform_weight,
)


# -- RFSDS surrogate ------------------------------------------------------------------------------------------------
def test_surrogate_gradient_equals_closed_form():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(z.shape, generator=g, dtype=torch.float64)
    v_hat = torch.randn(z.shape, generator=g, dtype=torch.float64)
    w = torch.tensor([0.5, 2.0], dtype=torch.float64)
    rfsds_loss(z, v_hat, eps, weight=w).backward()
    # closed form (Eq. 2): w (v_hat - eps + z), per sample weight broadcast over [C, H, W]
    expected = w.view(2, 1, 1, 1) * (v_hat - eps + z.detach())
    torch.testing.assert_close(z.grad, expected, rtol=0, atol=1e-12)

    z.grad = None
    rfsds_loss(z, v_hat, eps, weight=w, reduction="mean").backward()
    torch.testing.assert_close(z.grad, expected / z.numel(), rtol=0, atol=1e-12)


def test_perfect_teacher_gives_zero_gradient():
    # a teacher that predicts exactly eps - z has nothing to teach: g = 0
    z = torch.randn(1, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    eps = torch.randn_like(z)
    rfsds_loss(z, (eps - z).detach(), eps).backward()
    assert torch.count_nonzero(z.grad) == 0


def test_no_gradient_reaches_the_teacher():
    teacher_out = torch.randn(1, 2, 3, requires_grad=True)
    z = torch.randn(1, 2, 3, requires_grad=True)
    rfsds_loss(z, teacher_out, torch.zeros(1, 2, 3)).backward()
    assert teacher_out.grad is None and z.grad is not None


def test_surrogate_flows_through_a_renderer_chain():
    # z = a * theta: dL/dtheta = a * g (chain rule through the differentiable generator)
    theta = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    z = 3.0 * theta
    eps, v = torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64)
    rfsds_loss(z, v, eps).backward()
    # g = v - eps + z = [1 - 0.5 + 3, 0 - 0.5 - 6] = [3.5, -6.5]; grad = 3 g
    torch.testing.assert_close(theta.grad, torch.tensor([10.5, -19.5], dtype=torch.float64))


def test_nan_teacher_output_is_zeroed():
    z = torch.zeros(1, 2, requires_grad=True)
    rfsds_loss(z, torch.tensor([[float("nan"), 1.0]]), torch.zeros(1, 2)).backward()
    torch.testing.assert_close(z.grad, torch.tensor([[0.0, 1.0]]))


def test_noise_cfg_and_rf_loss():
    z, eps = torch.full((1, 2), 2.0), torch.full((1, 2), -1.0)
    torch.testing.assert_close(noised_latent(z, eps, 0.25), torch.full((1, 2), 0.75 * 2 - 0.25))
    torch.testing.assert_close(noised_latent(z, eps, torch.tensor([1.0])), eps)
    vu, vc = torch.tensor([1.0]), torch.tensor([3.0])
    torch.testing.assert_close(cfg_velocity(vu, vc, 1.0), vc)
    torch.testing.assert_close(cfg_velocity(vu, vc, 4.5), torch.tensor([1.0 + 4.5 * 2.0]))
    # v_hat - (eps - z) = 1 - (-1 - 2) = 4 -> squared 16
    torch.testing.assert_close(rf_denoising_loss(z, torch.ones(1, 2), eps), torch.tensor([16.0]))


# -- tau schedules --------------------------------------------------------------------------------------------------
def test_annealed_uniform_is_the_closed_form():
    taus = annealed_taus(uniform_weight, 9, tau_min=0.0, tau_max=1.0)
    torch.testing.assert_close(taus, 1 - torch.arange(1, 10, dtype=torch.float64) / 10, rtol=0, atol=1e-6)


def test_annealed_linear_matches_its_inverse_cdf():
    # w ∝ tau: h(tau) = tau^2 -> h^-1(q) = sqrt(q)
    taus = annealed_taus(linear_weight, 7, tau_min=0.0, tau_max=1.0)
    q = 1 - torch.arange(1, 8, dtype=torch.float64) / 8
    torch.testing.assert_close(taus, q.sqrt(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("weight", [chord_weight, shifted_uniform_weight, linear_weight])
def test_annealed_schedule_is_monotone_and_clamped(weight):
    taus = annealed_taus(weight, 200)
    assert taus.max() <= 0.98 and taus.min() >= 0.02
    assert torch.all(taus[1:] <= taus[:-1])
    inner = (taus > 0.02) & (taus < 0.98)
    assert torch.all(taus[1:][inner[1:] & inner[:-1]] < taus[:-1][inner[1:] & inner[:-1]])


def test_shifted_uniform_inverse_cdf_is_the_shift_map():
    # tau = s u / (1 + (s - 1) u) is the quantile function of this density
    u = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    expected = 5 * u / (1 + 4 * u)
    torch.testing.assert_close(inverse_cdf(shifted_uniform_weight, u), expected, rtol=0, atol=1e-5)


def test_chord_weight_is_finite_and_positive_inside():
    tau = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    w = chord_weight(tau)
    assert torch.all(torch.isfinite(w)) and torch.all(w > 0)
    # hand value at tau = 0.5: logit 0 -> pdf = 1 / (sqrt(2 pi) * 0.25), times 0.5/0.5 = 1
    torch.testing.assert_close(chord_weight(torch.tensor([0.5], dtype=torch.float64)),
                               torch.tensor([4 / math.sqrt(2 * math.pi)], dtype=torch.float64))


def test_importance_sampling_identity():
    # E_U[w f] = Z * E_{w_hat}[f]   (Eq. 3's justification), f(tau) = tau^2, w = tau: Z = 1/2, E_U[tau^3] = 1/4
    taus = sample_taus(linear_weight, 200_000, torch.Generator().manual_seed(0), tau_min=0.0, tau_max=1.0)
    assert abs(0.5 * (taus**2).mean().item() - 0.25) < 3e-3


# -- Fenwick store --------------------------------------------------------------------------------------------------
def test_prefix_sets():
    assert fenwick.prefix_nodes(6) == [6, 4]
    assert fenwick.prefix_nodes(7) == [7, 6, 4]
    assert fenwick.prefix_nodes(8) == [8]
    assert fenwick.prefix_nodes(0) == []
    assert max(len(fenwick.prefix_nodes(t)) for t in range(1, 41)) == 5
    assert list(fenwick.node_frames(6)) == [5, 6] and list(fenwick.node_frames(4)) == [1, 2, 3, 4]
    with pytest.raises(ValueError):
        fenwick.prefix_nodes(-1)


def test_prefix_sets_partition_the_frames():
    # the intervals of BIT(t) tile frames 1..t exactly once: that is what makes the query a prefix sum
    for t in range(1, 65):
        covered = sorted(f for j in fenwick.prefix_nodes(t) for f in fenwick.node_frames(j))
        assert covered == list(range(1, t + 1))


def test_query_equals_cumulative_increments_and_round_trips():
    g = torch.Generator().manual_seed(1)
    increments = torch.randn(13, 3, generator=g, dtype=torch.float64)
    increments[0] = 0  # frame 0 frozen
    frames = increments.cumsum(0)
    nodes = fenwick.from_frames(frames)
    torch.testing.assert_close(fenwick.query_all(nodes), frames)
    assert torch.count_nonzero(fenwick.query(nodes, 0)) == 0


def test_gradient_of_a_frame_reaches_only_its_prefix_nodes():
    nodes = torch.zeros(9, 2, requires_grad=True)
    fenwick.query(nodes, 7).sum().backward()
    touched = sorted(torch.nonzero(nodes.grad.abs().sum(1)).flatten().tolist())
    assert touched == [4, 6, 7]
