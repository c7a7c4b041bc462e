"""Does GRPO beat more SFT at equal compute? The quickstart's learning claim, with its control, over several seeds.

    python benchmarks/quickstart_control.py [--seeds 0 1 2] [--out runs/quickstart_control]

For each seed (model init + training order; the held-out split is fixed):
  A. the quickstart recipe: EAFT SFT warm-up, then GRPO;
  B. from the same SFT checkpoint, *more EAFT SFT* for the same wall-clock time GRPO took in A
     (steps = GRPO train_runtime / SFT seconds-per-step, both measured in this run).
Prints held-out exact-match accuracy after the warm-up, after GRPO and after the extra SFT, per seed and as
mean ± sd, and writes them to <out>/summary.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rlpost.config import load_recipe
from rlpost.logging import read_metrics
from rlpost.pipeline import run_recipe

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"
QUIET = ["sft.disable_tqdm=true", "grpo.disable_tqdm=true", "tracking.wandb=disabled", "tracking.plots=false"]


def _runtime(run_dir: Path, stage: str) -> tuple[float, int]:
    rows = [r for r in read_metrics(run_dir) if r["stage"] == stage and "train_runtime" in r]
    return float(rows[-1]["train_runtime"]), int(rows[-1]["step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/quickstart_control")
    parser.add_argument("overrides", nargs="*", help="extra recipe overrides applied to both arms")
    args = parser.parse_args()
    out = Path(args.out)
    table = []
    for seed in args.seeds:
        seeded = [f"seed={seed}", f"model.seed={seed}", *QUIET, *args.overrides]
        run_dir = out / f"seed{seed}"
        grpo = run_recipe(load_recipe(RECIPE, [f"output_dir={run_dir}", *seeded]))
        grpo_seconds, _ = _runtime(run_dir, "1-grpo")
        sft_seconds, sft_steps = _runtime(run_dir, "0-sft")
        extra_steps = max(1, round(grpo_seconds / (sft_seconds / sft_steps)))

        # Same run directory with resume=true: stage 0 (the SFT warm-up) is loaded from its final checkpoint.
        control = load_recipe(RECIPE, [f"output_dir={run_dir}", *seeded, "resume=true"])
        control.stages[1] = type(control.stages[0])(
            trainer="sft", args={**control.stages[0].args, "max_steps": extra_steps}
        )
        more_sft = run_recipe(control)
        row = {
            "seed": seed,
            "after_sft": grpo["accuracy"]["after SFT"],
            "after_grpo": grpo["accuracy"]["after GRPO"],
            "after_more_sft": more_sft["accuracy"]["after SFT #2"],
            "grpo_seconds": grpo_seconds,
            "extra_sft_steps": extra_steps,
        }
        table.append(row)
        print(json.dumps(row), flush=True)

    def stat(key):
        values = [r[key] for r in table]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return statistics.mean(values), sd

    print(f"\n{'seed':>4} {'after SFT':>10} {'+GRPO':>8} {'+more SFT':>10} {'GRPO s':>8} {'extra SFT steps':>16}")
    for r in table:
        print(f"{r['seed']:>4} {r['after_sft']:>10.3f} {r['after_grpo']:>8.3f} {r['after_more_sft']:>10.3f} "
              f"{r['grpo_seconds']:>8.1f} {r['extra_sft_steps']:>16}")
    summary = {k: stat(k) for k in ("after_sft", "after_grpo", "after_more_sft")}
    print("mean ± sd: " + ", ".join(f"{k} {m:.3f} ± {s:.3f}" for k, (m, s) in summary.items()))
    gains = [r["after_grpo"] - r["after_sft"] for r in table]
    print(f"GRPO gain over the SFT checkpoint: {statistics.mean(gains):+.3f} (min {min(gains):+.3f}); "
          f"GRPO minus equal-time extra SFT: {statistics.mean(r['after_grpo'] - r['after_more_sft'] for r in table):+.3f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"rows": table, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
