"""``rlpost bench-quality``: audit benchmarks with Benchmark² (arXiv 2601.03986).

Inputs (any combination, at least one of the first two):

- ``--scores long.csv`` (or the positional SCORES): ``benchmark, model, score[, domain]``
  on the 0–1 scale -> CBRC and DS.
- ``--items items.csv``: ``benchmark, model, item, correct`` (what rlpost eval runs export
  via :func:`rlpost.eval.tables.write_item_correctness`). Benchmarks absent from
  ``--scores`` get their scores from per-model accuracy. With ``--families`` this adds
  CAD, BQS, stability and the selective subset.
- ``--families families.csv``: ``model, family, size``.

Outputs: a printed table per benchmark with the paper's bands, ``--subset-out`` (the
selected items), ``--plot`` (τ of the subset ranking vs the full ranking against subset
ratio) and ``--json-out`` (all numbers).

Domains come from the scores table's ``domain`` column; without it (or for benchmarks
only in ``--items``) every benchmark is in domain "all". A benchmark alone in its domain
has no CBRC, and so no BQS ("n/a"). ``--seed`` drives the stability draws, the random
tie-break among equally scored items, and the random baseline in the plot.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

# numpy/scipy/pandas are imported inside the functions that use them: rlpost.cli imports
# this module to build its parser, and scipy.stats + pandas would add ~2 s to every command.

__all__ = ["add_arguments", "run", "main"]

_DEFAULT_RATIOS = "0.05,0.1,0.15,0.2,0.25,0.35,0.5,0.75,1.0"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bench-quality options to ``parser``."""
    parser.add_argument("scores_file", nargs="?", metavar="SCORES", help="long scores table; same as --scores")
    parser.add_argument("--scores", help="long table benchmark,model,score[,domain] (.csv/.parquet), 0-1 scale")
    parser.add_argument("--items", help="per-item table benchmark,model,item,correct (.csv/.jsonl/.parquet)")
    parser.add_argument("--families", help="family table model,family,size (.csv/.parquet); needed for CAD")
    parser.add_argument("--eps", type=float, default=0.02, help="DS pair-separation threshold, 0-1 scale (paper: 0.02)")
    parser.add_argument("--lam", type=float, default=12.0, help="CAD lambda (paper: 12)")
    parser.add_argument("--ratio", type=float, default=0.35, help="selective-subset share of items (paper: 0.35)")
    parser.add_argument("--cad-threshold", type=float, default=0.15, help="instance-level CAD pre-filter (paper: 0.15)")
    parser.add_argument(
        "--item-score", default="pair_disagreement", help="item discriminability proxy (benchmark2.ITEM_SCORES)"
    )
    parser.add_argument(
        "--stability-k", type=int, default=100, help="bootstrap samples for stability (paper: 100); 0 skips"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for bootstrap draws, tie-breaks and random baselines")
    parser.add_argument("--subset-out", help="write the selected items (CSV) here")
    parser.add_argument("--plot", help="write the ranking-agreement vs subset-ratio plot (PNG) here")
    parser.add_argument("--plot-ratios", default=_DEFAULT_RATIOS, help="comma-separated ratios for --plot")
    parser.add_argument("--json-out", help="write every computed number (JSON) here")


def _load(args):
    """-> (benchmark×model scores, domain per benchmark, item table or None, families or None)."""
    import pandas as pd

    from rlpost.eval import tables

    if args.scores_file and args.scores and args.scores_file != args.scores:
        raise ValueError("give the scores table once: either SCORES or --scores")
    scores_path = args.scores or args.scores_file
    if not scores_path and not args.items:
        raise ValueError("nothing to audit: pass --scores long.csv and/or --items items.csv")
    items = tables.read_item_correctness(args.items) if args.items else None
    long = tables.read_scores(scores_path) if scores_path else None
    if items is not None:
        from_items = tables.scores_from_items(items)
        if long is not None:
            from_items = from_items[~from_items["benchmark"].isin(set(long["benchmark"]))]
            if "domain" in long.columns:
                from_items = from_items.assign(domain="all")
            long = pd.concat([long, from_items], ignore_index=True)
        else:
            long = from_items
    mat, domains = tables.scores_matrix(long, scores_path or args.items)
    families = tables.read_families(args.families) if args.families else None
    return mat, domains, items, families


def _item_metrics(correct, families: dict, args) -> dict:
    """CAD, stability and the selective subset for one benchmark's item×model DataFrame."""
    from rlpost.eval import benchmark2 as b2

    c = correct.to_numpy()
    models = list(correct.columns)
    inv, n_pairs = b2.item_inversions(c, families, models)
    out = {"n_items": int(c.shape[0]), "inv_rate": float(inv.sum() / (inv.size * n_pairs)), "pairs_per_item": n_pairs}
    out["cad"] = b2.cad_from_rate(out["inv_rate"], args.lam)
    subset = b2.select_subset(
        c, families, args.ratio, args.cad_threshold, args.item_score, args.lam, models, seed=args.seed
    )
    out["subset"] = subset
    out["subset_size"] = int(subset.size)
    out["subset_tau"] = b2.ranking_agreement(c, subset)
    out["subset_ds"] = b2.discriminability(c[subset].mean(axis=0), args.eps)
    if args.stability_k >= 2:
        # Equal sample sizes make the two numbers comparable: the full benchmark is resampled
        # at the subset's size, the subset at its own size (spec §4.6: samples of r·|B|).
        out["stability_full"] = b2.stability(c, ratio=args.ratio, k=args.stability_k, seed=args.seed)
        out["stability_subset"] = b2.stability(
            c[subset], k=args.stability_k, seed=args.seed, sample_size=int(round(args.ratio * c.shape[0]))
        )
    return out


def _ratios(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(
            f"--plot-ratios must be comma-separated numbers in (0, 1], e.g. {_DEFAULT_RATIOS}; got {text!r}"
        ) from None


def _subset_rows(bench: str, correct, subset, families: dict, args) -> list[dict]:
    """One output row per selected item, with the per-item numbers that selected it."""
    from rlpost.eval import benchmark2 as b2

    c = correct.to_numpy()
    icad = b2.item_cad(c, families, args.lam, list(correct.columns))
    iscore = b2.ITEM_SCORES[args.item_score](c)
    return [
        {
            "benchmark": bench,
            "item": correct.index[q],
            "item_cad": round(float(icad[q]), 6),
            "item_score": round(float(iscore[q]), 6),
            "n_correct": int(c[q].sum()),
        }
        for q in subset
    ]


def _fmt(x, metric: str | None = None) -> str:
    from rlpost.eval.benchmark2 import band

    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    s = f"{x:.2f}"
    return f"{s} ({band(metric, x)})" if metric else s


def _write_subset(path: str, rows: list[dict]) -> None:
    import pandas as pd

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cols = ["benchmark", "item", "item_cad", "item_score", "n_correct"]
    pd.DataFrame(rows, columns=cols).to_csv(path, index=False)


def _plot(path: str, curves: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, cv) in enumerate(curves.items()):
        color = f"C{i % 10}"
        ax.plot(cv["ratio"], cv["selected"], "o-", color=color, label=f"{name} (CAD+DS)")
        ax.plot(cv["ratio"], cv["random_mean"], "--", color=color, alpha=0.6, label=f"{name} (random ±1 sd)")
        lo, hi = cv["random_mean"] - cv["random_std"], cv["random_mean"] + cv["random_std"]
        ax.fill_between(cv["ratio"], lo, hi, color=color, alpha=0.12, linewidth=0)
    ax.set_xlabel("subset ratio")
    ax.set_ylabel("Kendall τ-b vs full ranking")
    ax.set_title("Ranking agreement of Benchmark² subsets")
    ax.set_ylim(-1.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> int:
    """Run the audit for parsed ``args``; returns 0 on success, 2 on an input error."""
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"bench-quality: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from rlpost.eval import benchmark2 as b2
    from rlpost.eval import tables

    mat, domains, items, families = _load(args)
    if items is not None and families is None:
        print("note: pass --families to add CAD, BQS, stability and the selective subset", file=sys.stderr)
    if (args.subset_out or args.plot) and (items is None or families is None):
        raise ValueError("--subset-out and --plot need per-item results: pass --items and --families")
    cb = b2.cbrc(mat, domains.tolist())
    ds = b2.discriminability(mat, args.eps)
    report = {}
    subset_rows, curves = [], {}
    bench_in_items = set(items["benchmark"]) if items is not None else set()
    for i, bench in enumerate(mat.index):
        r = {"domain": domains.iloc[i], "n_models": int(mat.shape[1]), "cbrc": float(cb[i]), "ds": float(ds[i])}
        if bench in bench_in_items and families is not None:
            correct = tables.correctness_matrix(items, bench)
            m = _item_metrics(correct, families, args)
            subset = m.pop("subset")
            r.update(m)
            r["bqs"] = b2.bqs(r["cbrc"], r["ds"], r["cad"]) if math.isfinite(r["cbrc"]) else float("nan")
            subset_rows += _subset_rows(bench, correct, subset, families, args)
            if args.plot:
                curves[bench] = b2.agreement_curve(
                    correct.to_numpy(), families, _ratios(args.plot_ratios), cad_threshold=args.cad_threshold,
                    item_score=args.item_score, lam=args.lam, models=list(correct.columns), seed=args.seed,
                )
        report[bench] = r
    _print_table(report)
    if args.subset_out:
        _write_subset(args.subset_out, subset_rows)
        print(f"wrote {len(subset_rows)} selected items to {args.subset_out}")
    if args.plot:
        _plot(args.plot, curves)
        print(f"wrote ranking-agreement plot to {args.plot}")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        # JSON has no NaN: undefined metrics (e.g. CBRC of a lone benchmark) become null.
        clean = {
            b: {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
            for b, r in report.items()
        }
        Path(args.json_out).write_text(json.dumps(clean, indent=2, default=float))
    return 0


def _print_table(report: dict) -> None:
    head = ["benchmark", "domain", "CBRC", "DS", "CAD", "BQS", "stab full", "stab sub", "τ sub", "DS sub", "subset"]
    rows = []
    for bench, r in report.items():
        items = f"{r['subset_size']}/{r['n_items']}" if "n_items" in r else "n/a"
        rows.append(
            [
                str(bench),
                str(r["domain"]),
                _fmt(r["cbrc"], "cbrc"),
                _fmt(r["ds"], "ds"),
                _fmt(r.get("cad"), "cad"),
                _fmt(r.get("bqs")),
                _fmt(r.get("stability_full"), "stability"),
                _fmt(r.get("stability_subset"), "stability"),
                _fmt(r.get("subset_tau")),
                _fmt(r.get("subset_ds"), "ds"),
                items,
            ]
        )
    widths = [max(len(h), *(len(row[k]) for row in rows)) for k, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(x.ljust(w) for x, w in zip(row, widths)))


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m rlpost.eval.bench_quality``)."""
    parser = argparse.ArgumentParser(prog="rlpost bench-quality", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
