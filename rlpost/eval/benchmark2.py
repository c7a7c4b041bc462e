"""Benchmark² quality metrics and the selective-subset procedure (arXiv 2601.03986).

Pure numpy/scipy: arrays in, arrays or floats out; no I/O, no config objects.
Loaders for CSV/JSONL/parquet tables live in :mod:`rlpost.eval.tables`, and the
``rlpost bench-quality`` command in :mod:`rlpost.eval.bench_quality`.

Shapes used throughout
----------------------
- ``scores``: float array ``[n_benchmarks, n_models]`` on the 0–1 scale (one row per
  benchmark), or a pandas DataFrame with benchmarks as the index and models as columns.
  A single benchmark may be given as a 1-D ``[n_models]`` array where noted.
- ``domains``: one label per benchmark, ``[n_benchmarks]``.
- ``correct``: bool array ``[n_items, n_models]`` (item ``q`` answered correctly by model
  ``j``), or a DataFrame with items as the index and models as columns.
- ``families``: either a list of families, each an ordered sequence of model column
  indices **largest model first**; or a mapping ``model name -> (family, size)``, in
  which case the model names come from ``models=`` or from the DataFrame's columns.

Tags in docstrings follow the project spec (``/work/shared/specs/benchmark2.md`` §4):
"[I]" marks a choice the paper leaves open; every such choice is an argument whose
default is the documented reconstruction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import kendalltau

__all__ = [
    "BANDS",
    "ITEM_SCORES",
    "agreement_curve",
    "band",
    "bqs",
    "cad",
    "cad_by_family",
    "cad_from_rate",
    "cbrc",
    "discriminability",
    "inversion_rate",
    "item_cad",
    "item_inversions",
    "kendall_tau_b",
    "pair_disagreement",
    "ranking_agreement",
    "resolve_families",
    "select_subset",
    "stability",
]

# Quality bands from the paper (§3.1–3.4): (lower bound, label), checked top-down.
# DS has no published label between 0.2 and 0.4, so that band is called "moderate".
BANDS: dict[str, tuple[tuple[float, str], ...]] = {
    "cbrc": ((0.7, "high"), (0.4, "moderate"), (-np.inf, "low")),
    "ds": ((0.4, "good"), (0.2, "moderate"), (-np.inf, "minimal")),
    "cad": ((0.6, "good"), (0.4, "acceptable"), (-np.inf, "significant issues")),
    "stability": ((0.7, "high"), (0.5, "moderate"), (-np.inf, "low")),
}


def band(metric: str, value: float) -> str:
    """Paper band label for ``metric`` in {"cbrc", "ds", "cad", "stability"}.

    Thresholds are strict lower bounds: CBRC > 0.7 high, 0.4–0.7 moderate, < 0.4 low;
    DS > 0.4 good, < 0.2 minimal; CAD > 0.6 good, 0.4–0.6 acceptable, < 0.4 significant
    issues; stability > 0.7 high, 0.5–0.7 moderate, < 0.5 low. NaN gives "n/a".
    """
    if metric not in BANDS:
        raise ValueError(f"unknown metric {metric!r} for band(); use one of {sorted(BANDS)}")
    if value is None or not np.isfinite(value):
        return "n/a"
    for lower, label in BANDS[metric]:
        if value > lower:
            return label
    return BANDS[metric][-1][1]


# --------------------------------------------------------------------------- helpers


def _as_matrix(x: Any, name: str, *, dtype=float) -> tuple[np.ndarray, list | None, list | None]:
    """Return (array, row labels, column labels) from an array or a DataFrame."""
    rows = cols = None
    if hasattr(x, "to_numpy") and hasattr(x, "columns"):
        rows, cols = list(x.index), list(x.columns)
        x = x.to_numpy()
    arr = np.asarray(x)
    if dtype is bool:
        if arr.dtype != bool:
            if not np.isin(arr, (0, 1)).all():
                raise ValueError(
                    f"{name} must hold only 0/1 or booleans; found other values. "
                    "Map each answer to correct (1) or wrong (0) first."
                )
            arr = arr.astype(bool)
    else:
        arr = arr.astype(float)
    return arr, rows, cols


def _check_scores(s: np.ndarray, name: str = "scores") -> None:
    if s.shape[-1] < 2:
        raise ValueError(
            f"{name} has {s.shape[-1]} model(s); Benchmark² metrics need at least 2 models per benchmark."
        )
    if np.isnan(s).any():
        bad = np.argwhere(np.isnan(np.atleast_2d(s)))[:5].tolist()
        raise ValueError(
            f"{name} contains NaN at [benchmark, model] {bad}; fill in the missing scores "
            "or drop those models/benchmarks."
        )
    if (s < 0).any() or (s > 1).any():
        raise ValueError(
            f"{name} must be on the 0–1 scale (the paper's eps=0.02 assumes it); got range "
            f"[{s.min():g}, {s.max():g}]. Divide percentages by 100."
        )


def _pair_signs(values: np.ndarray) -> np.ndarray:
    """sign(x_a - x_b) for every model pair a < b.  [..., m] -> [..., m(m-1)/2]."""
    a, b = np.triu_indices(values.shape[-1], k=1)
    return np.sign(values[..., a] - values[..., b])


def kendall_tau_b(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray | float:
    """Kendall τ-b between rankings, vectorised over many rankings at once.

    τ_b = (P − Q) / sqrt((n₀ − n₁)(n₀ − n₂)), where P − Q = Σ_{a<b} sign(x_a−x_b)·sign(y_a−y_b)
    and n₀ − n₁ is the number of pairs not tied in x (Kendall 1945); equal to
    ``scipy.stats.kendalltau(x, y).statistic`` (variant "b").

    Args:
        x: ``[m]`` or ``[K, m]`` scores (higher = better; only the order matters).
        y: ``[m]``; if given, returns τ_b(x, y) (a float for 1-D x, ``[K]`` otherwise).
            If None, x must be ``[K, m]`` and the result is the ``[K, K]`` matrix of
            pairwise τ_b between its rows.

    Returns:
        τ_b; NaN where one ranking ties every model (τ_b is undefined there).
    """
    sx = _pair_signs(np.asarray(x, dtype=float))
    if y is None:
        if sx.ndim != 2:
            raise ValueError("kendall_tau_b(x) without y needs x of shape [K, m]")
        num = sx @ sx.T  # [K, K]
        nz = np.count_nonzero(sx, axis=1).astype(float)  # untied pairs per ranking
        den = np.sqrt(np.outer(nz, nz))
    else:
        sy = _pair_signs(np.asarray(y, dtype=float))
        num = (sx * sy).sum(-1)
        den = np.sqrt(np.count_nonzero(sx, axis=-1) * np.count_nonzero(sy, axis=-1).astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return float(tau) if np.ndim(tau) == 0 else tau


def resolve_families(
    families: Sequence[Sequence[int]] | Mapping[str, tuple[str, float]],
    models: Sequence[str] | None = None,
    n_models: int | None = None,
) -> list[np.ndarray]:
    """Turn ``families`` into a list of int index arrays, each ordered largest model first.

    Args:
        families: a list of index sequences (already ordered largest first), or a mapping
            ``model -> (family, size)``; sizes order each family (largest first).
        models: model names of the columns of ``correct``; required with a mapping.
        n_models: number of columns, to range-check index lists.

    Raises:
        ValueError: a model of ``models`` has no family entry, two models of one family
            share a size (the order would be ambiguous), or an index is out of range.
    """
    if isinstance(families, Mapping):
        if models is None:
            raise ValueError(
                "families given as a mapping model -> (family, size) needs the model names: "
                "pass models=[...] or pass correct as a DataFrame with model columns."
            )
        missing = [m for m in models if m not in families]
        if missing:
            raise ValueError(
                f"model(s) {missing} have no row in the family table; add a row "
                "'model,family,size' for each (a family of its own is fine)."
            )
        groups: dict[str, list[tuple[float, int, str]]] = {}
        for j, m in enumerate(models):
            fam, size = families[m]
            groups.setdefault(str(fam), []).append((float(size), j, m))
        out = []
        for fam, members in groups.items():
            sizes = [s for s, _, _ in members]
            if len(set(sizes)) != len(sizes):
                raise ValueError(
                    f"family {fam!r} has two models of the same size {sorted(members)}; "
                    "CAD needs a strict largest-first order. Give distinct sizes or split the family."
                )
            members.sort(key=lambda t: -t[0])
            out.append(np.array([j for _, j, _ in members], dtype=int))
        return out
    out = []
    for f in families:
        idx = np.asarray(list(f), dtype=int)
        if n_models is not None and idx.size and (idx.min() < 0 or idx.max() >= n_models):
            raise ValueError(f"family {idx.tolist()} has a model index outside 0..{n_models - 1}")
        if len(set(idx.tolist())) != idx.size:
            raise ValueError(f"family {idx.tolist()} lists a model twice")
        out.append(idx)
    return out


def _correct_and_families(correct, families, models) -> tuple[np.ndarray, list[np.ndarray]]:
    c, _, cols = _as_matrix(correct, "correct", dtype=bool)
    if c.ndim != 2:
        raise ValueError(f"correct must be 2-D [n_items, n_models]; got shape {c.shape}")
    if c.shape[0] == 0:
        raise ValueError("correct has no items")
    fams = resolve_families(families, models if models is not None else cols, n_models=c.shape[1])
    return c, fams


# --------------------------------------------------------------------------- CBRC


def cbrc(scores, domains: Sequence[str] | None = None) -> np.ndarray:
    """Cross-benchmark ranking consistency (Benchmark² §3.1, Eq. 1).

    CBRC(B_i) = 1/(n−1) · Σ_{j≠i} τ(r_i, r_j), the mean Kendall τ-b between the model
    ranking of B_i and that of every *other benchmark of the same domain* (the paper
    uses 3 domains × 5 benchmarks, so n − 1 = 4).

    Args:
        scores: ``[n_benchmarks, n_models]`` array or benchmark×model DataFrame (0–1).
        domains: ``[n_benchmarks]`` domain labels; None puts every benchmark in one domain.

    Returns:
        ``[n_benchmarks]`` CBRC in [−1, 1]. [I] NaN for a benchmark that is alone in its
        domain, and pairs whose τ-b is undefined (one benchmark ties every model) are
        left out of the mean (NaN if none remain).
        τ-b via ``scipy.stats.kendalltau`` (handles ties); the paper's Table 1 CBRC is
        not exactly reproducible from its per-model tables (spec §4.2).
    """
    s, _, _ = _as_matrix(scores, "scores")
    s = np.atleast_2d(s)
    _check_scores(s)
    n = s.shape[0]
    dom = np.asarray(["all"] * n if domains is None else list(domains), dtype=object)
    if dom.shape != (n,):
        raise ValueError(f"domains has {dom.size} labels for {n} benchmarks; give one label per benchmark")
    out = np.full(n, np.nan)
    for i in range(n):
        taus = [
            kendalltau(s[i], s[j], variant="b").statistic
            for j in range(n)
            if j != i and dom[j] == dom[i]
        ]
        taus = [t for t in taus if np.isfinite(t)]
        if taus:
            out[i] = float(np.mean(taus))
    return out


# --------------------------------------------------------------------------- DS


def discriminability(scores, eps: float = 0.02) -> np.ndarray | float:
    """Discriminability score (Benchmark² §3.2, Eq. 2).

    DS(B_i) = (σ_i / s̄_i) · sqrt( 1/C(m,2) · Σ_{j<k} 1[|s_ij − s_ik| > ε] ),

    σ_i the **population** std (ddof=0) and s̄_i the mean over the m models, ε = 0.02 on
    the 0–1 scale. The sqrt and ddof=0 are not in the PDF text; they are what reproduces
    14 of the 15 published DS values from Tables 11–13 (spec §4.3, [V-num]).

    Args:
        scores: ``[n_models]`` (one benchmark) or ``[n_benchmarks, n_models]`` / DataFrame.
        eps: difference a pair of models must exceed to count as separated.

    Returns:
        float for 1-D input, else ``[n_benchmarks]``. DS = 0 when all scores are equal
        (including all-zero, where σ/s̄ is 0/0).
    """
    s, _, _ = _as_matrix(scores, "scores")
    if s.ndim not in (1, 2):
        raise ValueError(f"scores must be [n_models] or [n_benchmarks, n_models]; got shape {s.shape}")
    _check_scores(s)
    sigma = s.std(axis=-1, ddof=0)
    mean = s.mean(axis=-1)
    a, b = np.triu_indices(s.shape[-1], k=1)
    # A pair exactly eps apart must not count ("> eps"); the tiny slack absorbs float
    # noise such as 0.52 - 0.50 = 0.020000000000000018.
    separated = (np.abs(s[..., a] - s[..., b]) > eps + 1e-12).mean(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = np.where(sigma > 0, sigma / np.where(mean > 0, mean, 1.0), 0.0)
    ds = cv * np.sqrt(separated)
    return float(ds) if ds.ndim == 0 else ds


# --------------------------------------------------------------------------- CAD


def item_inversions(correct, families, models: Sequence[str] | None = None) -> tuple[np.ndarray, int]:
    """Within-family inversions per item (Benchmark² §3.3).

    For a family F = {M_1 ≻ … ≻ M_k} (largest first) and item q, pair j < l is an
    inversion when ¬c_jq ∧ c_lq (the larger model wrong, the smaller right).

    Args:
        correct: ``[n_items, n_models]`` bool.
        families: see module docstring.

    Returns:
        (``[n_items]`` int inversion counts summed over all families,
         number of within-family pairs per item = Σ_f C(k_f, 2)).
    """
    c, fams = _correct_and_families(correct, families, models)
    inv = np.zeros(c.shape[0], dtype=int)
    n_pairs = 0
    for f in fams:
        cf = c[:, f]  # [n_items, k], largest first
        j, l = np.triu_indices(len(f), k=1)
        inv += (~cf[:, j] & cf[:, l]).sum(axis=1)
        n_pairs += j.size
    if n_pairs == 0:
        raise ValueError(
            "no family has 2 or more models, so there are no within-family pairs and CAD "
            "is undefined; the family table needs at least one family with two sizes."
        )
    return inv, n_pairs


def inversion_rate(correct, families, models: Sequence[str] | None = None) -> float:
    """inv_rate(B) = Σ_f inv_F(B) / Σ_f comp_F(B), comp_F = |Q|·C(k, 2) (§3.3; comp is [I])."""
    inv, n_pairs = item_inversions(correct, families, models)
    return float(inv.sum() / (inv.size * n_pairs))


def cad_from_rate(rate, lam: float = 12.0):
    """CAD = exp(−λ · inv_rate), λ = 12 (Benchmark² §3.3, App. B).

    Reference values: 0.02 → 0.787, 0.05 → 0.549, 0.10 → 0.301, 0.15 → 0.165, 0.25 → 0.050.
    """
    r = np.asarray(rate, dtype=float)
    if ((r < 0) | (r > 1)).any():
        raise ValueError(f"inversion rate must be in [0, 1]; got {rate}")
    out = np.exp(-lam * r)
    return float(out) if out.ndim == 0 else out


def cad(correct, families, lam: float = 12.0, models: Sequence[str] | None = None) -> float:
    """Capability alignment deviation (Benchmark² §3.3, Eq. 3–4): exp(−λ·inv_rate(B)).

    Args:
        correct: ``[n_items, n_models]`` bool (or item×model DataFrame).
        families: list of index lists (largest first) or mapping model -> (family, size).
        lam: λ, 12 in the paper.
        models: column names when ``families`` is a mapping and ``correct`` an array.

    Returns:
        CAD in (0, 1]; higher means larger models more reliably beat their smaller siblings.
    """
    return cad_from_rate(inversion_rate(correct, families, models), lam)


def cad_by_family(correct, families, lam: float = 12.0, models: Sequence[str] | None = None) -> list[float]:
    """CAD of each family on its own (the paper's Table 7), in the order of ``resolve_families``.

    Families with one model give NaN (no pairs).
    """
    c, fams = _correct_and_families(correct, families, models)
    out = []
    for f in fams:
        if len(f) < 2:
            out.append(float("nan"))
            continue
        out.append(cad(c[:, f], [list(range(len(f)))], lam))
    return out


def item_cad(correct, families, lam: float = 12.0, models: Sequence[str] | None = None) -> np.ndarray:
    """Instance-level CAD_q = exp(−λ · inv_q / n_pairs)  [I] (spec §4.7 step 1).  -> ``[n_items]``."""
    inv, n_pairs = item_inversions(correct, families, models)
    return np.exp(-lam * inv / n_pairs)


# --------------------------------------------------------------------------- BQS


def bqs(cbrc, ds, cad):
    """Benchmark quality score (Benchmark² App. C): 0.3·(CBRC+1)/2 + 0.3·DS + 0.4·CAD.

    Elementwise over arrays. E.g. AIME 2024 (0.52, 0.74, 0.85) -> 0.79.
    """
    out = 0.3 * (np.asarray(cbrc, dtype=float) + 1.0) / 2.0 + 0.3 * np.asarray(ds, dtype=float) + 0.4 * np.asarray(
        cad, dtype=float
    )
    return float(out) if out.ndim == 0 else out


# --------------------------------------------------------------------------- stability


def stability(
    correct,
    ratio: float = 1.0,
    k: int = 100,
    seed: int | None = None,
    replace: bool = True,
    sample_size: int | None = None,
) -> float:
    """Ranking stability under resampling (Benchmark² §3.4, Eq. 5).

    Draw K samples of r·|B| items, rank the models by accuracy on each, and average
    the pairwise Kendall τ-b: Stability = 2/(K(K−1)) · Σ_{i<j} τ(r_i, r_j).

    Args:
        correct: ``[n_items, n_models]`` bool.
        ratio: r, the sample size as a share of ``n_items`` (rounded, at least 1).
        k: K, number of samples (100 in the paper).
        seed: seed for the item draws.
        replace: [I] "bootstrap" is read as sampling with replacement (default True);
            False draws without replacement (needs ratio < 1 to vary).
        sample_size: absolute sample size overriding ``ratio``.

    Returns:
        Mean pairwise τ-b; pairs where a sample ties every model are left out (NaN if all).
    """
    c, _, _ = _as_matrix(correct, "correct", dtype=bool)
    if c.ndim != 2 or c.shape[1] < 2:
        raise ValueError(f"correct must be [n_items, n_models] with at least 2 models; got shape {c.shape}")
    if k < 2:
        raise ValueError(f"stability needs k >= 2 samples to form pairs; got k={k}")
    n = c.shape[0]
    size = sample_size if sample_size is not None else max(1, int(round(ratio * n)))
    if size < 1 or (not replace and size > n):
        raise ValueError(f"sample size {size} is invalid for {n} items (replace={replace})")
    rng = np.random.default_rng(seed)
    if replace:
        idx = rng.integers(0, n, size=(k, size))
    else:
        idx = np.stack([rng.choice(n, size=size, replace=False) for _ in range(k)])
    acc = c[idx].mean(axis=1)  # [k, n_models]
    tau = kendall_tau_b(acc)  # [k, k]
    upper = tau[np.triu_indices(k, k=1)]
    upper = upper[np.isfinite(upper)]
    return float(upper.mean()) if upper.size else float("nan")


# --------------------------------------------------------------------------- subset


def pair_disagreement(correct: np.ndarray) -> np.ndarray:
    """Item discriminability proxy [I] (spec §4.7 step 2): the share of model pairs that
    disagree on the item, 2·n_correct·n_wrong / (m(m−1)) ∝ p(1−p).  ``[n_items, m]`` -> ``[n_items]``."""
    c = np.asarray(correct, dtype=bool)
    m = c.shape[1]
    nc = c.sum(axis=1)
    return 2.0 * nc * (m - nc) / (m * (m - 1))


ITEM_SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"pair_disagreement": pair_disagreement}


def select_subset(
    correct,
    families,
    ratio: float = 0.35,
    cad_threshold: float | None = 0.15,
    item_score: str | Callable[[np.ndarray], np.ndarray] = "pair_disagreement",
    lam: float = 12.0,
    models: Sequence[str] | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """Benchmark² selective subset (§4.4; per-item scores reconstructed, spec §4.7 [I]).

    1. Pre-filter: keep item q if CAD_q = exp(−λ·inv_q/n_pairs) > ``cad_threshold``
       (with the paper's 10 pairs and λ = 12: at most 1 inversion). None skips the filter.
    2. Rank survivors by ``item_score`` (descending) and keep the top
       round(ratio · n_items) — a share of the *original* size. If fewer items survive
       the filter, all survivors are returned.

    Args:
        correct: ``[n_items, n_models]`` bool (or DataFrame).
        families: see module docstring (not used when ``cad_threshold`` is None).
        ratio: target share of the original items, (0, 1].
        cad_threshold: instance-level CAD threshold (0.15 in the paper).
        item_score: a name in ``ITEM_SCORES`` or a callable ``[n_items, m] -> [n_items]``.
        lam: λ for the instance-level CAD.
        seed: [I] tie-break among equal item scores: None keeps item order (deterministic),
            an int breaks ties at random (avoids favouring items listed first).

    Returns:
        Sorted int indices ``[n_selected]`` into the rows of ``correct``.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1]; got {ratio}")
    c, _, cols = _as_matrix(correct, "correct", dtype=bool)
    if c.ndim != 2 or c.shape[1] < 2:
        raise ValueError(f"correct must be [n_items, n_models] with at least 2 models; got shape {c.shape}")
    n = c.shape[0]
    if cad_threshold is None:
        keep = np.arange(n)
    else:
        keep = np.flatnonzero(item_cad(c, families, lam, models if models is not None else cols) > cad_threshold)
    if callable(item_score):
        score_fn = item_score
    elif item_score in ITEM_SCORES:
        score_fn = ITEM_SCORES[item_score]
    else:
        raise ValueError(f"unknown item_score {item_score!r}; use one of {sorted(ITEM_SCORES)} or a callable")
    scores = np.asarray(score_fn(c[keep]), dtype=float)
    if scores.shape != keep.shape:
        raise ValueError(f"item_score returned shape {scores.shape}, expected {keep.shape}")
    target = max(1, int(round(ratio * n)))
    order = np.arange(keep.size)
    if seed is not None:
        order = np.random.default_rng(seed).permutation(keep.size)
    # lexsort: last key is primary -> descending score, ties by `order`.
    ranked = np.lexsort((order, -scores))
    return np.sort(keep[ranked[:target]])


def ranking_agreement(correct, subset: Sequence[int]) -> float:
    """Kendall τ-b between model accuracies on ``subset`` rows and on all rows of ``correct``."""
    c, _, _ = _as_matrix(correct, "correct", dtype=bool)
    sub = np.asarray(subset, dtype=int)
    if sub.size == 0:
        raise ValueError("subset is empty; ranking agreement is undefined")
    return kendall_tau_b(c[sub].mean(axis=0), c.mean(axis=0))


def agreement_curve(
    correct,
    families,
    ratios: Sequence[float],
    *,
    cad_threshold: float | None = 0.15,
    item_score: str | Callable[[np.ndarray], np.ndarray] = "pair_disagreement",
    lam: float = 12.0,
    models: Sequence[str] | None = None,
    n_random: int = 20,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """τ(subset ranking, full ranking) against subset ratio (the paper's Fig. 2 sweep).

    Returns:
        dict with ``ratio`` ``[R]``, ``selected`` ``[R]`` (τ of ``select_subset`` at each
        ratio), ``random_mean`` / ``random_std`` ``[R]`` (τ of ``n_random`` uniform random
        subsets of the same size, the paper's "random" baseline).
    """
    c, _, cols = _as_matrix(correct, "correct", dtype=bool)
    rng = np.random.default_rng(seed)
    n = c.shape[0]
    sel, rmean, rstd = [], [], []
    for r in ratios:
        idx = select_subset(
            c, families, r, cad_threshold, item_score, lam, models if models is not None else cols, seed=seed
        )
        sel.append(ranking_agreement(c, idx))
        size = max(1, int(round(r * n)))
        taus = np.array([ranking_agreement(c, rng.choice(n, size, replace=False)) for _ in range(n_random)])
        rmean.append(np.nanmean(taus) if np.isfinite(taus).any() else np.nan)
        rstd.append(np.nanstd(taus) if np.isfinite(taus).any() else np.nan)
    return {
        "ratio": np.asarray(ratios, dtype=float),
        "selected": np.asarray(sel),
        "random_mean": np.asarray(rmean),
        "random_std": np.asarray(rstd),
    }
