"""Hand-derived checks of EAFT (arXiv 2601.02151) in rlpost.algorithms.losses."""

import math

import pytest
import torch
import torch.nn.functional as F

from rlpost.algorithms.losses import (
    chunked_eaft_loss,
    confident_conflict_mask,
    eaft_entropy,
    eaft_loss,
    eaft_weights,
    masked_sft_loss,
)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=0, atol=atol)


def _uniform_top_k(k=20, vocab=50, fill=-1e9):
    """Logits with the first k equal and the rest at ``fill``: the top-k softmax is uniform, H = ln k."""
    logits = torch.full((vocab,), fill)
    logits[:k] = 0.0
    return logits


def _binary_entropy(p):
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


# ------------------------------------------------------------------ weights


def test_weights_lie_in_unit_interval_detached_and_fp32():
    torch.manual_seed(0)
    logits = (3 * torch.randn(2, 5, 64)).to(torch.bfloat16).requires_grad_()
    w = eaft_weights(logits)
    assert w.shape == (2, 5) and w.dtype == torch.float32 and not w.requires_grad
    # top-20 entropy <= ln 20, and equals it only for a uniform top-20
    assert (w >= 0).all() and (w < 1).all()


def test_peaked_logits_give_zero_weight():
    # one logit 1e4 above the rest: p̃ = [1, e^-1e4, ...] -> H = 0 -> w = 0
    logits = torch.zeros(100)
    logits[3] = 1e4
    close(eaft_weights(logits), 0.0)


@pytest.mark.parametrize("fill", [-1e9, -float("inf")])
def test_uniform_top_k_gives_weight_one_under_ln_k(fill):
    # p̃ uniform over K = 20: H = ln 20 -> H̃ = ln 20 / ln 20 = 1
    logits = _uniform_top_k(fill=fill)
    close(eaft_weights(logits), 1.0)
    # authors' code divides by 3.0: w = ln 20 / 3 = 0.998577
    close(eaft_weights(logits, normalizer="constant"), math.log(20) / 3)
    # unnormalized (axolotl default) and a float normalizer
    close(eaft_weights(logits, normalizer="none"), math.log(20))
    close(eaft_weights(logits, normalizer=2.0), math.log(20) / 2)
    # full-vocabulary entropy of the same logits: still ln 20, but normalized by ln |V| = ln 50
    close(eaft_weights(logits, entropy="full"), math.log(20) / math.log(50))


def test_top_k_larger_than_vocab_uses_the_whole_vocab():
    # V = 4 uniform, K = 20 -> K_eff = 4, H = ln 4, normalizer ln 4 -> 1
    close(eaft_weights(torch.zeros(4), top_k=20), 1.0)


def test_power_gate_alpha_and_sigmoid_gate():
    # top-2 of [ln 3, 0, -1e9]: p̃ = [3/4, 1/4] -> H̃ = h(1/4)/ln 2 = 0.811278
    logits = torch.tensor([math.log(3), 0.0, -1e9])
    h = _binary_entropy(0.25) / math.log(2)
    close(eaft_weights(logits, top_k=2), h)
    close(eaft_weights(logits, top_k=2, alpha=3.0), h**3)  # EAFT³
    # sigmoid gate at H̃ = β gives σ(0) = 0.5. Uniform top-2 has H = ln 2; normalizing by
    # ln 2 / 0.17 puts H̃ exactly at the default β = 0.17.
    uniform2 = torch.tensor([0.0, 0.0, -1e9])
    close(eaft_weights(uniform2, top_k=2, normalizer=math.log(2) / 0.17, gate="sigmoid"), 0.5)
    close(eaft_weights(uniform2, top_k=2, gate="sigmoid", gate_options={"beta": 1.0}), 0.5)
    # H̃ = 0.811278 with scale 30, β = 0.17: σ(30 · 0.641278) = σ(19.238) = 1 - 4.4e-9
    close(eaft_weights(logits, top_k=2, gate="sigmoid"), 1 / (1 + math.exp(-30 * (h - 0.17))))
    with pytest.raises(ValueError, match="alpha is the exponent of the 'power' gate"):
        eaft_weights(logits, alpha=2.0, gate="sigmoid")


def test_hard_gate_keeps_tokens_above_the_entropy_quantile():
    # H̃ of 4 tokens: [0, 1, h(1/4)/ln2 = 0.811, 1] under top-2; q = 0.3 quantile (linear) of
    # sorted [0, .811, 1, 1] sits at position 0.9 -> 0.73; tokens above it: 1, 2, 3
    logits = torch.tensor([[1e4, 0.0], [0.0, 0.0], [math.log(3), 0.0], [0.0, 0.0]])
    w = eaft_weights(logits, top_k=2, gate="hard", gate_options={"quantile": 0.3})
    close(w, [0.0, 1.0, 1.0, 1.0])


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="Unknown EAFT gate 'sigmod'.*Did you mean 'sigmoid'"):
        eaft_weights(torch.zeros(3), gate="sigmod")
    with pytest.raises(ValueError, match="Unknown EAFT normalizer"):
        eaft_weights(torch.zeros(3), normalizer="ln_v")
    with pytest.raises(ValueError, match="top_k >= 2"):
        eaft_weights(torch.zeros(3), top_k=1)


# ------------------------------------------------------------------ loss


def _two_token_example():
    # B=1, T=3, V=3, labels unshifted (HF convention): logits[:, t] predicts labels[:, t+1]
    logits = torch.tensor([[[0.0, 0.0, -1e9], [math.log(3), 0.0, -1e9], [5.0, 5.0, 5.0]]])
    labels = torch.tensor([[-100, 0, 1]])
    return logits, labels


def test_eaft_loss_two_token_hand_example():
    # with top_k = 2 (normalizer ln 2):
    # token 1 (row 0 -> label 0): p̃ = [.5, .5], H̃ = 1, w = 1; CE = -ln(1/2) = 0.693147
    # token 2 (row 1 -> label 1): p̃ = [.75, .25], H̃ = 0.811278; CE = -ln(1/4) = 1.386294; w·CE = 1.124669
    # row 2 has no next label and is dropped.  L = (0.693147 + 1.124669) / 2 = 0.908908
    logits, labels = _two_token_example()
    h = _binary_entropy(0.25) / math.log(2)
    expected = (math.log(2) + h * math.log(4)) / 2
    close(eaft_loss(logits, labels, top_k=2), expected)
    # the same without the shift: pass aligned rows and labels
    close(eaft_loss(logits[:, :2], labels[:, 1:], top_k=2, shift_labels=False), expected)
    # num_items_in_batch replaces the token count: (0.693147 + 1.124669) / 4
    close(eaft_loss(logits, labels, top_k=2, num_items_in_batch=torch.tensor(4)), expected / 2)
    # denominator is the token count, not Σw: α = 2 gives (0.693147 + 0.811278² · 1.386294) / 2
    close(eaft_loss(logits, labels, top_k=2, alpha=2.0), (math.log(2) + h**2 * math.log(4)) / 2)


def test_eaft_gradient_is_weight_times_ce_gradient():
    # w is stop-gradient, so dL/dz_t = w_t · (softmax(z_t) - onehot(y_t)) / N with N = 2:
    # row 0: 1 · ([.5, .5, 0] - [1, 0, 0]) / 2 = [-.25, .25, 0]
    # row 1: 0.811278 · ([.75, .25, 0] - [0, 1, 0]) / 2 = 0.811278 · [.375, -.375, 0]
    # row 2: no label -> 0
    logits, labels = _two_token_example()
    logits.requires_grad_()
    eaft_loss(logits, labels, top_k=2).backward()
    h = _binary_entropy(0.25) / math.log(2)
    expected = torch.tensor([[[-0.25, 0.25, 0.0], [0.375 * h, -0.375 * h, 0.0], [0.0, 0.0, 0.0]]])
    close(logits.grad, expected)


def test_eaft_loss_all_tokens_ignored_is_zero_not_nan():
    logits = torch.randn(2, 4, 8, requires_grad=True)
    loss = eaft_loss(logits, torch.full((2, 4), -100))
    close(loss, 0.0)
    loss.backward()
    close(logits.grad, torch.zeros(2, 4, 8))


def test_bf16_logits_are_upcast():
    logits, labels = _two_token_example()
    loss = eaft_loss(logits.to(torch.bfloat16), labels, top_k=2)
    assert loss.dtype == torch.float32
    # ln 3 rounds in bf16, so only a loose check that the value is the same loss
    close(loss, eaft_loss(logits, labels, top_k=2), atol=1e-2)


def test_gradient_accumulation_invariance():
    # two micro-batches divided by the global token count sum to the full-batch mean-over-tokens loss
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 32, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 32, (4, 6))
    labels[0, 3:] = -100  # sequences of different lengths
    labels[2, :4] = -100
    total_tokens = (labels[:, 1:] != -100).sum()
    full = eaft_loss(logits, labels)
    (g_full,) = torch.autograd.grad(full, logits)
    parts = [eaft_loss(logits[i : i + 2], labels[i : i + 2], num_items_in_batch=total_tokens) for i in (0, 2)]
    (g_acc,) = torch.autograd.grad(sum(parts), logits)
    close(sum(parts), full, atol=1e-12)
    close(g_acc, g_full, atol=1e-12)


# ------------------------------------------------------------------ chunked


def _lm_problem(dtype, bias):
    torch.manual_seed(1)
    b, t, hdim, vocab = 2, 9, 16, 40
    hidden = torch.randn(b, t, hdim, dtype=dtype, requires_grad=True)
    weight = (0.5 * torch.randn(vocab, hdim, dtype=dtype)).requires_grad_()
    lm_bias = torch.randn(vocab, dtype=dtype, requires_grad=True) if bias else None
    labels = torch.randint(0, vocab, (b, t))
    labels[0, :3] = -100  # 13 valid tokens after the shift: no chunk size below divides it
    labels[1, 5] = -100
    return hidden, weight, lm_bias, labels


@pytest.mark.parametrize(
    "dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-6)], ids=["fp64", "fp32"]
)
@pytest.mark.parametrize("chunk_size", [1, 3, 5, 1024])
def test_chunked_equals_unchunked_value_and_gradients(dtype, atol, chunk_size):
    hidden, weight, lm_bias, labels = _lm_problem(dtype, bias=chunk_size == 5)
    params = [hidden, weight] + ([lm_bias] if lm_bias is not None else [])
    options = dict(alpha=2.0, top_k=7) if chunk_size == 3 else {}
    ref = eaft_loss(F.linear(hidden, weight, lm_bias), labels, **options)
    ref_grads = torch.autograd.grad(ref, params)
    got = chunked_eaft_loss(hidden, weight, labels, chunk_size=chunk_size, lm_head_bias=lm_bias, **options)
    got_grads = torch.autograd.grad(got, params)
    close(got, ref, atol=atol)
    for g, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=atol, atol=atol)


def test_chunked_full_entropy_and_no_grad():
    hidden, weight, _, labels = _lm_problem(torch.float64, bias=False)
    ref = eaft_loss(hidden @ weight.T, labels, entropy="full", num_items_in_batch=20)
    with torch.no_grad():
        got = chunked_eaft_loss(hidden, weight, labels, chunk_size=4, entropy="full", num_items_in_batch=20)
    close(got, ref, atol=1e-12)


# ------------------------------------------------------------------ masked SFT


def _masked_sft_example():
    # V = 2, logits [d, 0]; 10 valid tokens + 1 ignored. q = 0.15 of 10 values sits at sorted
    # position 0.15 · 9 = 1.35, so the two smallest of each ranking are "bottom 15%".
    #   tok 0: d = 5,   label 1 -> p_gold = σ(-5) = 0.0067, low entropy      (confident conflict)
    #   tok 1: d = 6,   label 0 -> p_gold = σ(6) = 0.9975, lowest entropy     (confident, correct)
    #   tok 2: d = 0.5, label 1 -> p_gold = σ(-0.5) = 0.378, high entropy    (unsure, wrong)
    #   tok 3..9: d in [0, 1.5], label 0 -> p_gold >= 0.5, high entropy
    # entropy bottom-2 = {1, 0}; probability bottom-2 = {0, 2}; both -> drop only token 0
    d = [5.0, 6.0, 0.5, 0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 3.0]
    y = [1, 0, 1, 0, 0, 0, 0, 0, 0, 0, -100]
    logits = torch.tensor([[[di, 0.0] for di in d]], dtype=torch.float64)
    labels = torch.tensor([y])
    # CE with logits [d, 0]: label 0 -> log(1 + e^{-d}); label 1 -> log(1 + e^{d})
    ce = [math.log1p(math.exp(-di if yi == 0 else di)) for di, yi in zip(d, y)]
    return logits, labels, ce


def test_confident_conflict_mask_hand_case():
    logits, labels, _ = _masked_sft_example()
    rows, y = logits[0, :10], labels[0, :10]
    p = rows.softmax(-1)
    h = -(p * p.log()).sum(-1)
    gold = p.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    expected = torch.zeros(10, dtype=torch.bool)
    expected[0] = True
    assert torch.equal(confident_conflict_mask(h, gold), expected)


def test_masked_sft_loss_drops_exactly_the_conflict_token():
    logits, labels, ce = _masked_sft_example()
    # kept tokens 1..9, denominator = 10 valid tokens (the dropped one counts as weight 0)
    expected = sum(ce[1:10]) / 10
    close(masked_sft_loss(logits, labels, shift_labels=False), expected, atol=1e-12)
    # q = 0.01 sits at sorted position 0.09: only the single smallest of each ranking is "bottom"
    # (entropy: token 1, probability: token 0), they differ, nothing is dropped -> plain CE
    close(masked_sft_loss(logits, labels, shift_labels=False, quantile=0.01), sum(ce[:10]) / 10, atol=1e-12)


def test_eaft_entropy_matches_closed_form():
    # top-2 of [ln 3, 0, -1e9] -> H = h(1/4) = 0.562335 nats, unnormalized
    close(eaft_entropy(torch.tensor([math.log(3), 0.0, -1e9]), top_k=2, normalizer="none"), _binary_entropy(0.25))


def test_chunked_keeps_no_vocab_sized_tensor_for_backward():
    # Record every tensor autograd saves during the forward. Checkpointing must leave none with a
    # vocabulary-sized last dim (V = 97, distinct from H = 4 and N = 13); the plain loss, as a
    # check that the probe sees such tensors at all, saves its [13, 97] log-softmax.
    torch.manual_seed(0)
    n, hdim, vocab = 13, 4, 97
    hidden = torch.randn(1, n + 1, hdim, requires_grad=True)
    weight = torch.randn(vocab, hdim, requires_grad=True)
    labels = torch.randint(0, vocab, (1, n + 1))

    def saved_last_dims(fn):
        dims = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: (dims.append(t.shape[-1:]), t)[1], lambda t: t):
            fn().backward()
        return dims

    assert (vocab,) in saved_last_dims(lambda: eaft_loss(hidden @ weight.T, labels))
    assert (vocab,) not in saved_last_dims(lambda: chunked_eaft_loss(hidden, weight, labels, chunk_size=5))


def test_chunked_rejects_unknown_option_eagerly():
    hidden, weight, _, _ = _lm_problem(torch.float32, bias=False)
    with pytest.raises(TypeError, match="valid EAFT options: top_k, alpha"):
        chunked_eaft_loss(hidden, weight, torch.full((2, 9), -100), topk=20)


def test_chunked_all_tokens_ignored_is_zero_and_differentiable():
    hidden, weight, _, _ = _lm_problem(torch.float32, bias=False)
    loss = chunked_eaft_loss(hidden, weight, torch.full((2, 9), -100), chunk_size=4)
    close(loss, 0.0)
    loss.backward()  # a trainer calls backward unconditionally
    close(hidden.grad, torch.zeros_like(hidden))
