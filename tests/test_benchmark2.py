"""Benchmark² metrics (rlpost.eval.benchmark2): closed forms, hand-made tables, properties.

Golden numbers come from the paper (arXiv 2601.03986, Table 1 and §3.3) or are derived by
hand in the comments; none come from the code under test.
"""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from rlpost.eval import benchmark2 as b2


def close(actual, expected, tol=1e-9):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol)


# --------------------------------------------------------------------------- CAD transform


@pytest.mark.parametrize(
    "rate, published",
    # Benchmark² §3.3 reference mapping for lambda = 12.
    [(0.02, 0.787), (0.05, 0.549), (0.10, 0.301), (0.15, 0.165), (0.25, 0.050)],
)
def test_cad_mapping_table_matches_paper(rate, published):
    assert round(b2.cad_from_rate(rate), 3) == published


def test_cad_from_rate_is_strictly_decreasing_and_bounded():
    cads = b2.cad_from_rate(np.linspace(0, 1, 101))
    assert cads[0] == 1.0  # no inversions -> perfect alignment
    assert np.all(np.diff(cads) < 0)
    assert cads[-1] > 0


def test_cad_from_rate_rejects_rates_outside_unit_interval():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        b2.cad_from_rate(1.5)


# --------------------------------------------------------------------------- BQS

TABLE1 = [  # benchmark, CBRC, DS, CAD, published BQS (Benchmark² Table 1)
    ("AIME 2024", 0.52, 0.74, 0.85, 0.79),
    ("OmniMath", 0.76, 0.79, 0.61, 0.75),
    ("OlympiadBench", 0.75, 0.76, 0.61, 0.73),
    ("AMC 22-24", 0.70, 0.36, 0.46, 0.55),
    ("MATH-500", 0.70, 0.16, 0.62, 0.55),
    ("ARC", 0.79, 0.11, 0.87, 0.65),
    ("BBH", 0.75, 0.25, 0.66, 0.60),
    ("DROP", 0.71, 0.20, 0.61, 0.56),
    ("CommonsenseQA", 0.75, 0.17, 0.57, 0.54),
    ("SIQA", 0.73, 0.17, 0.23, 0.40),
    ("IFEval", 0.75, 0.23, 0.63, 0.58),
    ("EQ-Bench", 0.75, 0.27, 0.53, 0.56),
    ("IFBench", 0.71, 0.31, 0.51, 0.55),
    ("SuperGPQA", 0.79, 0.34, 0.43, 0.55),
    ("MMLU-Pro", 0.65, 0.40, 0.36, 0.51),
]


def test_bqs_closed_forms_from_spec():
    # AIME: 0.3*(1.52/2) + 0.3*0.74 + 0.4*0.85 = 0.228 + 0.222 + 0.340 = 0.790
    close(b2.bqs(0.52, 0.74, 0.85), 0.79, 1e-12)
    # SIQA: 0.3*0.865 + 0.3*0.17 + 0.4*0.23 = 0.2595 + 0.051 + 0.092 = 0.4025 -> 0.40
    close(b2.bqs(0.73, 0.17, 0.23), 0.4025, 1e-12)
    # MATH-500: 0.3*0.85 + 0.3*0.16 + 0.4*0.62 = 0.255 + 0.048 + 0.248 = 0.551 -> 0.55
    close(b2.bqs(0.70, 0.16, 0.62), 0.551, 1e-12)


@pytest.mark.parametrize("name, c, d, a, published", TABLE1)
def test_bqs_reproduces_table1_within_rounding(name, c, d, a, published):
    # Inputs are rounded to 0.005, so BQS can move by at most
    # 0.3*0.005/2 + 0.3*0.005 + 0.4*0.005 = 0.00425, plus 0.005 from rounding the output.
    assert abs(b2.bqs(c, d, a) - published) <= 0.00425 + 0.005 + 1e-12, name


def test_bqs_is_elementwise_over_arrays():
    out = b2.bqs(np.array([0.52, 0.73]), np.array([0.74, 0.17]), np.array([0.85, 0.23]))
    close(out, [0.79, 0.4025], 1e-12)


# --------------------------------------------------------------------------- DS


def test_ds_three_evenly_spaced_models():
    # mean 0.4, population sigma = sqrt((0.04 + 0 + 0.04)/3) -> sigma/mean = 1/sqrt(6);
    # every pair differs by >= 0.2 > eps -> share 1 -> DS = 1/sqrt(6)
    close(b2.discriminability([0.2, 0.4, 0.6]), 1 / math.sqrt(6))


def test_ds_uses_population_sigma():
    # [0, 1]: mean 0.5, population sigma 0.5 (ddof=1 would give 0.707), one pair separated
    close(b2.discriminability([0.0, 1.0]), 1.0)


def test_ds_uses_sqrt_of_separated_share():
    # [0.3, 0.3, 0.9]: mean 0.5, sigma = sqrt((0.04+0.04+0.16)/3) = sqrt(0.08);
    # pairs: (0.3,0.3) tied, two pairs differ by 0.6 -> share 2/3 -> DS = sqrt(0.08)/0.5*sqrt(2/3)
    # (without the sqrt it would be 0.377, not 0.462)
    close(b2.discriminability([0.3, 0.3, 0.9]), math.sqrt(0.08) / 0.5 * math.sqrt(2 / 3))


def test_ds_pairs_within_eps_do_not_count():
    # [0.50, 0.51, 0.70, 0.70]: mean 0.6025; squared deviations
    # 0.01050625 + 0.00855625 + 0.00950625 + 0.00950625 = 0.038075 -> sigma = sqrt(0.038075/4).
    # pairs > 0.02 apart: (0.50,0.70)x2, (0.51,0.70)x2 -> 4 of 6.
    expected = math.sqrt(0.038075 / 4) / 0.6025 * math.sqrt(4 / 6)
    close(b2.discriminability([0.50, 0.51, 0.70, 0.70]), expected)


def test_ds_pair_exactly_eps_apart_is_not_separated():
    # |0.52 - 0.50| == eps (0.020000000000000018 in floats) must not count: share 0 -> DS 0
    assert b2.discriminability([0.50, 0.52]) == 0.0
    # but with a smaller eps the pair counts: sigma/mean = 0.01/0.51, share 1
    close(b2.discriminability([0.50, 0.52], eps=0.01), 0.01 / 0.51)


@pytest.mark.parametrize("value", [0.0, 0.37, 1.0])
def test_ds_identical_scores_give_zero(value):
    assert b2.discriminability([value] * 5) == 0.0


def test_ds_matrix_and_dataframe_give_per_benchmark_values():
    mat = np.array([[0.2, 0.4, 0.6], [0.5, 0.5, 0.5]])
    close(b2.discriminability(mat), [1 / math.sqrt(6), 0.0])
    df = pd.DataFrame(mat, index=["b1", "b2"], columns=["m1", "m2", "m3"])
    close(b2.discriminability(df), [1 / math.sqrt(6), 0.0])


def test_ds_is_invariant_to_model_order():
    rng = np.random.default_rng(0)
    s = rng.random(9)
    close(b2.discriminability(s), b2.discriminability(s[rng.permutation(9)]), 1e-12)


@pytest.mark.parametrize(
    "scores, message",
    [
        ([0.5], "at least 2 models"),
        ([0.5, float("nan"), 0.2], "NaN"),
        ([49.0, 87.0], "0–1 scale"),
    ],
)
def test_ds_input_errors(scores, message):
    with pytest.raises(ValueError, match=message):
        b2.discriminability(scores)


# --------------------------------------------------------------------------- CBRC

CBRC_SCORES = np.array(
    [
        [0.9, 0.5, 0.1],  # A: order m0 > m1 > m2
        [0.8, 0.6, 0.2],  # A: same order
        [0.1, 0.5, 0.9],  # A: reversed
        [0.5, 0.5, 0.9],  # B: m0 = m1 < m2
        [0.1, 0.5, 0.9],  # B: m0 < m1 < m2
        [0.3, 0.2, 0.1],  # C: alone in its domain
    ]
)
CBRC_DOMAINS = ["A", "A", "A", "B", "B", "C"]


def test_cbrc_hand_made_domains():
    out = b2.cbrc(CBRC_SCORES, CBRC_DOMAINS)
    # A: tau(b0,b1)=1, tau(b0,b2)=-1, tau(b1,b2)=-1 -> b0: (1-1)/2=0, b1: 0, b2: (-1-1)/2=-1
    # B: pairs (m0,m1): tied in b3 -> 0; (m0,m2), (m1,m2): concordant -> P-Q = 2;
    #    untied pairs 2 (b3) and 3 (b4) -> tau_b = 2/sqrt(6) for both
    # C: no other benchmark in the domain -> NaN
    close(out[:5], [0.0, 0.0, -1.0, 2 / math.sqrt(6), 2 / math.sqrt(6)])
    assert math.isnan(out[5])


def test_cbrc_ignores_benchmarks_of_other_domains():
    base = b2.cbrc(CBRC_SCORES, CBRC_DOMAINS)
    changed = CBRC_SCORES.copy()
    changed[3:5] = changed[3:5, ::-1]  # reverse both B benchmarks
    out = b2.cbrc(changed, CBRC_DOMAINS)
    close(out[:3], base[:3])  # domain A untouched


def test_cbrc_without_domains_uses_all_other_benchmarks():
    s = CBRC_SCORES[:3]
    close(b2.cbrc(s), [0.0, 0.0, -1.0])


def test_cbrc_accepts_dataframe_and_checks_domain_length():
    df = pd.DataFrame(CBRC_SCORES[:3], index=["x", "y", "z"], columns=["m0", "m1", "m2"])
    close(b2.cbrc(df, ["A", "A", "A"]), [0.0, 0.0, -1.0])
    with pytest.raises(ValueError, match="one label per benchmark"):
        b2.cbrc(df, ["A", "A"])


def test_kendall_tau_b_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, size=(6, 7)).astype(float)  # small range -> many ties
    mat = b2.kendall_tau_b(x)
    for i in range(6):
        for j in range(6):
            ref = kendalltau(x[i], x[j], variant="b").statistic
            if np.isnan(ref):
                assert np.isnan(mat[i, j])
            else:
                close(mat[i, j], ref, 1e-12)
    close(b2.kendall_tau_b(x[0], x[1]), kendalltau(x[0], x[1]).statistic, 1e-12)


# --------------------------------------------------------------------------- CAD

# Families: A = models 0 > 1 > 2 (largest first), B = models 3 > 4 -> 3 + 1 = 4 pairs per item.
CAD_CORRECT = np.array(
    [
        # A        B
        [0, 1, 1, 1, 0],  # A: (0,1) inv, (0,2) inv, (1,2) no -> 2; B: big right -> 0.  total 2
        [1, 1, 1, 0, 1],  # A: 0; B: big wrong, small right -> 1.                       total 1
        [1, 0, 1, 0, 0],  # A: (1,2) inv -> 1; B: 0.                                      total 1
    ],
    dtype=bool,
)
CAD_FAMILIES = [[0, 1, 2], [3, 4]]


def test_item_inversions_hand_made():
    inv, n_pairs = b2.item_inversions(CAD_CORRECT, CAD_FAMILIES)
    assert inv.tolist() == [2, 1, 1]
    assert n_pairs == 4


def test_cad_hand_made():
    # 4 inversions / (3 items * 4 pairs) = 1/3 -> CAD = exp(-12/3) = exp(-4)
    close(b2.inversion_rate(CAD_CORRECT, CAD_FAMILIES), 1 / 3)
    close(b2.cad(CAD_CORRECT, CAD_FAMILIES), math.exp(-4))
    close(b2.cad(CAD_CORRECT, CAD_FAMILIES, lam=3), math.exp(-1))


def test_item_cad_hand_made():
    # exp(-12 * inv / 4): inv 2 -> exp(-6), inv 1 -> exp(-3)
    close(b2.item_cad(CAD_CORRECT, CAD_FAMILIES), [math.exp(-6), math.exp(-3), math.exp(-3)])


def test_cad_by_family_hand_made():
    # A: 3 inversions / (3 items * 3 pairs) -> exp(-4); B: 1 / (3 * 1) -> exp(-4); singleton: NaN
    out = b2.cad_by_family(CAD_CORRECT, [[0, 1, 2], [3, 4], [2]])
    close(out[:2], [math.exp(-4), math.exp(-4)])
    assert math.isnan(out[2])


def test_cad_family_mapping_orders_by_size_regardless_of_column_order():
    # Same data as CAD_CORRECT, columns shuffled; sizes decide the order within a family.
    models = ["b7", "a1.5", "a70", "b1", "a8"]
    perm = [3, 2, 0, 4, 1]  # column of CAD_CORRECT for each name above
    families = {"a70": ("A", 70), "a8": ("A", 8), "a1.5": ("A", 1.5), "b7": ("B", 7), "b1": ("B", 1)}
    shuffled = CAD_CORRECT[:, perm]
    close(b2.cad(shuffled, families, models=models), math.exp(-4))
    df = pd.DataFrame(shuffled, columns=models)
    close(b2.cad(df, families), math.exp(-4))


def test_cad_a_perfectly_aligned_benchmark_scores_one():
    # larger models right on a superset of what smaller ones get right -> no inversions
    correct = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=bool)
    assert b2.cad(correct, [[0, 1, 2]]) == 1.0


def test_more_inversions_never_raise_cad():
    # Random walk on 2-model families (big, small): setting an item to (wrong, right) adds one
    # inversion unless it already was one, and touches no other pair -> CAD never increases,
    # and strictly drops whenever the inversion is new.
    rng = np.random.default_rng(3)
    correct = rng.random((30, 6)) < 0.6
    families = [[0, 1], [2, 3], [4, 5]]
    prev = b2.cad(correct, families)
    for _ in range(40):
        q, f = rng.integers(30), families[rng.integers(3)]
        new = not (not correct[q, f[0]] and correct[q, f[1]])
        correct[q, f[0]], correct[q, f[1]] = False, True
        cur = b2.cad(correct, families)
        assert cur < prev if new else cur == prev
        prev = cur


def test_cad_errors_name_the_problem():
    families = {"big": ("F", 7), "small": ("F", 1)}
    with pytest.raises(ValueError, match=r"\['orphan'\].*family table"):
        b2.cad(np.ones((2, 3), bool), families, models=["big", "small", "orphan"])
    with pytest.raises(ValueError, match="same size"):
        b2.cad(np.ones((2, 2), bool), {"x": ("F", 7), "y": ("F", 7)}, models=["x", "y"])
    with pytest.raises(ValueError, match="no family has 2 or more models"):
        b2.cad(np.ones((2, 2), bool), [[0], [1]])
    with pytest.raises(ValueError, match="needs the model names"):
        b2.cad(np.ones((2, 2), bool), families)
    with pytest.raises(ValueError, match="0/1 or booleans"):
        b2.cad(np.full((2, 2), 2), [[0, 1]])
    with pytest.raises(ValueError, match="outside"):
        b2.cad(np.ones((2, 2), bool), [[0, 5]])


# --------------------------------------------------------------------------- bands


@pytest.mark.parametrize(
    "metric, value, label",
    [
        ("cbrc", 0.71, "high"),
        ("cbrc", 0.70, "moderate"),  # bands are strict: > 0.7 is high
        ("cbrc", 0.39, "low"),
        ("ds", 0.41, "good"),
        ("ds", 0.30, "moderate"),
        ("ds", 0.16, "minimal"),
        ("cad", 0.85, "good"),
        ("cad", 0.50, "acceptable"),
        ("cad", 0.23, "significant issues"),
        ("stability", 0.69, "moderate"),
        ("cad", float("nan"), "n/a"),
    ],
)
def test_bands(metric, value, label):
    assert b2.band(metric, value) == label


# --------------------------------------------------------------------------- stability


def test_stability_is_one_when_every_sample_ranks_alike():
    # m0 and m1 always right (tied in every sample), m2 never right -> every sample has the
    # same order and tie pattern -> every pairwise tau_b is 1.
    correct = np.tile(np.array([[1, 1, 0]], dtype=bool), (20, 1))
    assert b2.stability(correct, ratio=0.5, k=10, seed=0) == 1.0


def test_stability_is_seeded_and_in_range():
    rng = np.random.default_rng(0)
    correct = rng.random((50, 5)) < np.linspace(0.3, 0.7, 5)
    a = b2.stability(correct, ratio=0.35, k=30, seed=7)
    assert a == b2.stability(correct, ratio=0.35, k=30, seed=7)
    assert -1.0 <= a <= 1.0


def test_stability_more_items_per_sample_is_more_stable():
    # Models 0.2 apart in accuracy: samples of 200 items rank them far more consistently
    # than samples of 5 items (each sample's accuracy noise shrinks like 1/sqrt(n)).
    rng = np.random.default_rng(0)
    correct = rng.random((400, 4)) < np.array([0.2, 0.4, 0.6, 0.8])
    small = b2.stability(correct, sample_size=5, k=50, seed=0)
    large = b2.stability(correct, sample_size=200, k=50, seed=0)
    assert large > small + 0.2


def test_stability_errors():
    with pytest.raises(ValueError, match="k >= 2"):
        b2.stability(np.ones((4, 2), bool), k=1)
    with pytest.raises(ValueError, match="at least 2 models"):
        b2.stability(np.ones((4, 1), bool))


# --------------------------------------------------------------------------- subset

# Families A = (0 > 1), B = (2 > 3): 2 pairs per item; item CAD = exp(-12*inv/2), so one
# inversion gives exp(-6) < 0.15 and drops the item. pair_disagreement = 2*nc*(4-nc)/12.
SUBSET_CORRECT = np.array(
    [
        [1, 1, 1, 1],  # q0 inv 0, nc 4 -> 0
        [1, 0, 1, 0],  # q1 inv 0, nc 2 -> 8/12
        [0, 1, 1, 0],  # q2 inv 1 -> filtered (would score 8/12)
        [1, 0, 0, 0],  # q3 inv 0, nc 1 -> 6/12
        [1, 1, 1, 0],  # q4 inv 0, nc 3 -> 6/12
        [0, 0, 0, 0],  # q5 inv 0, nc 0 -> 0
        [1, 0, 1, 1],  # q6 inv 0, nc 3 -> 6/12
        [0, 0, 1, 0],  # q7 inv 0, nc 1 -> 6/12
    ],
    dtype=bool,
)
SUBSET_FAMILIES = [[0, 1], [2, 3]]


def test_pair_disagreement_hand_made():
    close(b2.pair_disagreement(SUBSET_CORRECT), np.array([0, 8, 8, 6, 6, 0, 6, 6]) / 12)


@pytest.mark.parametrize(
    "ratio, expected",
    [
        (0.25, [1, 3]),  # target 2: q1, then the first of the 6/12 ties (item order)
        (0.5, [1, 3, 4, 6]),  # target 4
        (1.0, [0, 1, 3, 4, 5, 6, 7]),  # target 8 but only 7 survive the CAD filter
    ],
)
def test_select_subset_hand_made(ratio, expected):
    assert b2.select_subset(SUBSET_CORRECT, SUBSET_FAMILIES, ratio).tolist() == expected


def test_select_subset_without_cad_filter_is_ds_only():
    # q1 and q2 tie at 8/12; q2 is no longer filtered out
    assert b2.select_subset(SUBSET_CORRECT, SUBSET_FAMILIES, 0.25, cad_threshold=None).tolist() == [1, 2]


def test_select_subset_random_tie_break_keeps_the_best_item():
    for seed in range(5):
        out = b2.select_subset(SUBSET_CORRECT, SUBSET_FAMILIES, 0.25, seed=seed).tolist()
        assert len(out) == 2 and out[0] == 1 and out[1] in (3, 4, 6, 7)


def test_select_subset_paper_families_keep_at_most_one_inversion():
    # Paper families: sizes 3, 2, 3, 3 -> 3 + 1 + 3 + 3 = 10 pairs per item. With lambda 12:
    # 1 inversion -> exp(-1.2) = 0.30 > 0.15 (kept), 2 -> exp(-2.4) = 0.09 (dropped).
    families = [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9, 10]]
    one = np.ones(11, bool)
    one[3] = False  # Llama big wrong, small right -> exactly 1 inversion
    two = one.copy()
    two[0] = False  # DeepSeek largest wrong, two smaller right -> 2 more inversions
    correct = np.stack([one, two])
    assert b2.item_inversions(correct, families)[0].tolist() == [1, 3]
    assert b2.select_subset(correct, families, ratio=1.0).tolist() == [0]


def test_select_subset_callable_score_and_errors():
    # score = item index -> highest indices among survivors win
    out = b2.select_subset(SUBSET_CORRECT, SUBSET_FAMILIES, 0.25, item_score=lambda c: np.arange(len(c)))
    assert out.tolist() == [6, 7]
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
        b2.select_subset(SUBSET_CORRECT, SUBSET_FAMILIES, 0.0)
    with pytest.raises(ValueError, match="unknown item_score"):
        b2.select_subset(SUBSET_CORRECT, SUBSET_FAMILIES, item_score="entropy")


def test_ranking_agreement_and_curve():
    rng = np.random.default_rng(0)
    correct = rng.random((60, 5)) < np.array([0.2, 0.35, 0.5, 0.65, 0.8])
    assert b2.ranking_agreement(correct, np.arange(60)) == 1.0
    curve = b2.agreement_curve(correct, [[4, 3], [2, 1, 0]], [0.5, 1.0], cad_threshold=None, n_random=3)
    assert curve["ratio"].tolist() == [0.5, 1.0]
    # at ratio 1 with no filter the subset is the whole benchmark; so is every random draw
    assert curve["selected"][1] == 1.0 and curve["random_mean"][1] == 1.0 and curve["random_std"][1] == 0.0
    with pytest.raises(ValueError, match="empty"):
        b2.ranking_agreement(correct, [])


def _irt_benchmark(n_items, seed):
    """11 models in 4 families (sizes 3/2/3/3, largest first), 2PL IRT items, 15 % noisy items
    whose discrimination is near zero (mislabelled or contaminated)."""
    rng = np.random.default_rng(seed)
    ability = np.array([1.5, 0.6, -0.6, 1.3, 0.0, 1.6, 0.5, -0.7, 1.8, 0.8, -0.3])
    difficulty = rng.normal(0, 1.5, n_items)
    disc = rng.lognormal(0, 0.4, n_items)
    noisy = rng.random(n_items) < 0.15
    disc[noisy] = rng.normal(0, 0.3, noisy.sum())
    p = 1 / (1 + np.exp(-disc[:, None] * (ability[None, :] - difficulty[:, None])))
    return rng.random(p.shape) < p, [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9, 10]]


def test_selected_subset_is_more_discriminative_and_aligned_than_the_full_benchmark():
    # By construction step 1 drops inversion-heavy items (CAD up) and step 2 keeps items
    # near p = 0.5 (DS up); the ranking must stay close to the full one.
    correct, families = _irt_benchmark(400, seed=0)
    sub = b2.select_subset(correct, families, 0.35, seed=0)
    assert sub.size == 140
    assert b2.cad(correct[sub], families) > b2.cad(correct, families)
    assert b2.discriminability(correct[sub].mean(0)) > b2.discriminability(correct.mean(0))
    assert b2.ranking_agreement(correct, sub) > 0.8
