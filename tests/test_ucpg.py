"""Hand-derived checks of rlpost.algorithms.ucpg (ThinkRL-Edit's UCPG, reconstructed in specs/thinkrl-edit.md §3.4)."""

import math

import pytest
import torch

from rlpost.algorithms.advantages import get_advantage, group_normalized, list_advantages
from rlpost.algorithms.ucpg import chain_positions, preference_chain, ucpg

NAN = float("nan")


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=0, atol=atol, equal_nan=True)


def test_fully_ordered_group_is_one_chain():
    # sorted by dominance: idx0 (.1,.2) < idx2 (.3,.3) < idx1 (.5,.4) < idx3 (.9,.8) -> positions s = [0, 2, 1, 3]
    r = torch.tensor([[0.1, 0.2], [0.5, 0.4], [0.3, 0.3], [0.9, 0.8]])
    assert preference_chain(r) == [[0], [2], [1], [3]]
    # mean 1.5; population var = (2.25 + .25 + .25 + 2.25) / 4 = 1.25, std = 1.118034
    d = math.sqrt(1.25)
    close(ucpg(r, [0, 0, 0, 0]), [-1.5 / d, 0.5 / d, -0.5 / d, 1.5 / d])


def test_group_with_no_consistent_pair_gives_zero():
    # an antichain: every pair disagrees on one dimension, so the longest chain has one class -> no signal
    r = torch.tensor([[0.0, 3.0], [1.0, 2.0], [2.0, 1.0], [3.0, 0.0]])
    # all chains have length 1 and spread 0; the tie-break keeps the smallest sample index
    assert preference_chain(r) == [[0]]
    pos = chain_positions(r, [5, 5, 5, 5])
    assert pos[0].item() == 0.0 and torch.isnan(pos[1:]).all()
    assert torch.equal(ucpg(r, [5, 5, 5, 5]), torch.zeros(4))


def test_ties_share_a_position_and_spread_breaks_equal_lengths():
    # classes A = (1,1) x2 [idx 0, 1], B = (0,0) [idx 2], C = (2,0) [idx 3]. A > B and C > B; A, C incomparable.
    # Two chains of length 2: B->A and B->C. Average ranks: dim0 [2.5, 2.5, 1, 4], dim1 [3.5, 3.5, 1.5, 1.5];
    # rank sums A 6, B 2.5, C 5.5 -> spread B->A 3.5 > B->C 3.0, so the chain is B->A with both tied A samples.
    r = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    assert preference_chain(r) == [[2], [0, 1]]
    # s = [1, 1, 0, off]; mean 2/3, population var = (1/9 + 1/9 + 4/9) / 3 = 2/9, std = 0.471405
    sd = math.sqrt(2 / 9)
    close(ucpg(r, [0, 0, 0, 0]), [(1 / 3) / sd, (1 / 3) / sd, (-2 / 3) / sd, 0.0])


def test_equal_spread_falls_back_to_smallest_top_index():
    # idx0 (0,0) is below both (1,2) and (2,1); rank sums 2, 5, 5 -> equal spread, smaller top index 1 wins
    r = torch.tensor([[0.0, 0.0], [1.0, 2.0], [2.0, 1.0]])
    assert preference_chain(r) == [[0], [1]]
    # same vectors listed in the other order: the chain follows the index, not the values
    assert preference_chain(r[[0, 2, 1]]) == [[0], [1]]


def test_longest_chain_beats_a_shorter_chain_through_an_outlier():
    # a(0,0) < b(1,1) < c(2,2) < e(4,4) has 4 classes; a < d(0,3) < e only 3; f(9,-1) dominates nothing useful
    r = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [0.0, 3.0], [4.0, 4.0], [9.0, -1.0]])
    assert preference_chain(r) == [[0], [1], [2], [4]]
    pos = chain_positions(r, [0] * 6)
    close(pos, [0.0, 1.0, 2.0, NAN, 3.0, NAN])


def test_one_dimension_reduces_to_ranked_grpo():
    # [N] rewards: the chain is the sorted distinct values 1 < 2 < 3, every sample on it, positions [2, 0, 1, 1]
    r = torch.tensor([3.0, 1.0, 2.0, 2.0])
    close(chain_positions(r, [0] * 4), [2.0, 0.0, 1.0, 1.0])
    # mean 1; population var = (1 + 1 + 0 + 0) / 4 = 0.5 -> A = ±1 / sqrt(0.5) = ±1.414214
    s = 1 / math.sqrt(0.5)
    close(ucpg(r, [0] * 4), [s, -s, 0.0, 0.0])
    # the same numbers through group_normalized on the positions (the documented reduction)
    close(ucpg(r, [0] * 4), group_normalized(torch.tensor([2.0, 0.0, 1.0, 1.0]), [0] * 4, std="population"))


def test_invariant_to_monotone_per_dimension_rescaling():
    # the "unbiased" property: any strictly increasing map of one dimension keeps the chain and the advantages
    gen = torch.Generator().manual_seed(0)
    r = torch.randint(0, 4, (24, 3), generator=gen).double()  # small integers: many ties and partial orders
    groups = torch.arange(24) // 6
    base = ucpg(r, groups)
    warped = torch.stack([torch.exp(r[:, 0]), 100 * r[:, 1] - 7, r[:, 2] ** 3], 1)
    close(ucpg(warped, groups), base, atol=1e-12)
    # and advantages sum to zero inside every group (z-scored over the chain, 0 off it)
    sums = torch.zeros(4, dtype=base.dtype).index_add_(0, groups, base)
    close(sums, [0.0] * 4, atol=1e-9)


def test_zscore_score_keeps_gaps_and_linear_scale_spans_minus_one_to_one():
    r = torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 3.0]], dtype=torch.float64)
    # position: s = [0, 1, 2], population std sqrt(2/3) -> ±1.224745, 0
    close(ucpg(r, [0, 0, 0]), [-1.224745, 0.0, 1.224745])
    # zscore: per dim mean 4/3, deviations [-4/3, -1/3, 5/3], population std sqrt(42/27) = 1.247219
    # -> z = [-1.069045, -0.267261, 1.336306] (same in both dims); it is already standardized, so A = z
    close(ucpg(r, [0, 0, 0], score="zscore"), [-1.069045, -0.267261, 1.336306])
    # linear: positions 0, 1, 2 -> -1, 0, 1; zscore scores (-1.069, -0.267, 1.336) -> -1, -0.333333, 1
    close(ucpg(r, [0, 0, 0], scale="linear"), [-1.0, 0.0, 1.0])
    close(ucpg(r, [0, 0, 0], score="zscore", scale="linear"), [-1.0, 2 * (0.8017837 / 2.4053512) - 1, 1.0])


def test_nan_columns_and_samples_and_group_layout():
    # group 7 (idx 0, 2, 4): dimension 1 is NaN for every member -> ignored, chain on dim 0: 0 < 1 < 2
    # group 3 (idx 1, 3, 5): idx 5 has one NaN -> off the chain (advantage 0); idx 1 (1,1) > idx 3 (0,0)
    r = torch.tensor([[2.0, NAN], [1.0, 1.0], [0.0, NAN], [0.0, 0.0], [1.0, NAN], [5.0, NAN]])
    pos = chain_positions(r, [7, 3, 7, 3, 7, 3])
    close(pos, [2.0, 1.0, 0.0, 0.0, 1.0, NAN])
    a = ucpg(r, torch.tensor([7, 3, 7, 3, 7, 3]))
    g = 1 / math.sqrt(2 / 3)  # positions 0,1,2: population std sqrt(2/3)
    # group 3: positions [1, 0], mean 0.5, population std 0.5 -> ±1
    close(a, [g, 1.0, -g, -1.0, 0.0, 0.0])
    # a group whose samples all have NaN, and a size-one group, carry no signal
    close(ucpg(torch.tensor([[NAN, NAN], [NAN, NAN], [1.0, 2.0]]), [0, 0, 1]), [0.0, 0.0, 0.0])


def test_registry_contract_and_options():
    assert "ucpg" in list_advantages() and get_advantage("ucpg") is ucpg
    assert ucpg.wants_per_function_rewards is True
    r = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    # every registered estimator takes eps and clip: eps = 1 shrinks, clip = 1 clamps ±1.224745
    close(get_advantage("ucpg")(r, [0, 0, 0], eps=1.0), [-1 / (math.sqrt(2 / 3) + 1), 0.0, 1 / (math.sqrt(2 / 3) + 1)])
    close(get_advantage("ucpg")(r, [0, 0, 0], clip=1.0), [-1.0, 0.0, 1.0])
    # output follows the input dtype and device; integer rewards give the default float dtype
    assert ucpg(r.double(), [0, 0, 0]).dtype == torch.float64
    assert ucpg(torch.tensor([0, 1, 2]), [0, 0, 0]).dtype == torch.get_default_dtype()
    assert ucpg(torch.zeros(0, 2), []).shape == (0,)


def test_errors_name_the_problem():
    r = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="Did you mean 'position'"):
        ucpg(r, [0, 0, 0], score="positon")
    with pytest.raises(ValueError, match="ucpg scale"):
        ucpg(r, [0, 0, 0], scale="minmax")
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        ucpg(torch.zeros(2, 2, 2), [0, 0])
    with pytest.raises(ValueError, match="one id per sample"):
        ucpg(r, [0, 0])
    with pytest.raises(ValueError, match="clip"):
        ucpg(r, [0, 0, 0], clip=0.0)
    with pytest.raises(ValueError, match="finite"):
        preference_chain(torch.tensor([[NAN, 1.0]]))


def _all_chains(vectors):
    """Every chain of distinct vectors under strict dominance, by exhaustive depth-first search (small groups)."""
    distinct = sorted(set(vectors))
    above = {v: [w for w in distinct if w != v and all(a >= b for a, b in zip(w, v))] for v in distinct}

    def extend(chain):
        yield chain
        for w in above[chain[-1]]:
            yield from extend(chain + [w])

    for v in distinct:
        yield from extend([v])


def test_chain_matches_exhaustive_search_on_random_small_groups():
    # the DP against brute force: same chain length, each class strictly dominating the one before, tie classes
    # complete, and the endpoints the spread rule picks among all longest chains
    gen = torch.Generator().manual_seed(1)
    for _ in range(40):
        r = torch.randint(0, 3, (7, 2), generator=gen).double()
        vectors = [tuple(row) for row in r.tolist()]
        chain = preference_chain(r)
        longest = max(len(c) for c in _all_chains(vectors))
        assert len(chain) == longest
        for lower, upper in zip(chain, chain[1:]):
            lo, hi = vectors[lower[0]], vectors[upper[0]]
            assert lo != hi and all(b >= a for a, b in zip(lo, hi))
        for tie_class in chain:
            assert tie_class == [i for i, v in enumerate(vectors) if v == vectors[tie_class[0]]]
        # mean-rank spread of the ends, from scipy-style average ranks written out per dimension
        def rank_sum(v):
            return sum(sum(w[k] < v[k] for w in vectors) + (sum(w[k] == v[k] for w in vectors) + 1) / 2
                       for k in range(2))
        best_spread = max(rank_sum(c[-1]) - rank_sum(c[0]) for c in _all_chains(vectors) if len(c) == longest)
        assert rank_sum(vectors[chain[-1][0]]) - rank_sum(vectors[chain[0][0]]) == best_spread
