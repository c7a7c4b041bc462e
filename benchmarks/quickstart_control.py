"""Does GRPO beat the baselines a practitioner would try at equal compute? The quickstart's learning claim, over seeds.

    python benchmarks/quickstart_control.py [--seeds 0 1 2] [--out runs/quickstart_control] [key=value ...]

For each seed (model init, training order and sampling; the held-out split is the task's own), from one run of the
quickstart recipe (EAFT SFT warm-up, then GRPO) and its SFT checkpoint, for the wall-clock time the GRPO stage took:
  - more SFT: the warm-up continued on the same demonstrations (steps = GRPO seconds / SFT seconds-per-step);
  - RS-SFT (rejection-sampling SFT): sample from the SFT model, keep what the GRPO stage's checker accepts, train
    on it, repeat from the new model until the time is spent (:func:`rlpost.eval.controls.rejection_sampling_sft`).
All three arms come from :func:`rlpost.eval.controls.quickstart_controls`, the code path ``tests/test_learning.py``
asserts on. Prints held-out exact-match accuracy per seed and mean ± sd, and writes ``<out>/summary.json``.
Wall-clock equality is only as good as the machine is quiet: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rlpost.console import quiet_third_party, quiet_training_imports

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"
ARMS = ("after_sft", "after_grpo", "after_more_sft", "after_rs_sft")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/quickstart_control")
    parser.add_argument("overrides", nargs="*", help="extra recipe overrides applied to every arm")
    args = parser.parse_args()
    quiet_third_party()
    quiet_training_imports()
    from rlpost.eval.controls import quickstart_controls

    out = Path(args.out)
    table = []
    for seed in args.seeds:
        row = quickstart_controls(RECIPE, seed, out / f"seed{seed}", args.overrides)
        table.append(row)
        print(json.dumps(row), flush=True)

    print(f"\n{'seed':>4} {'after SFT':>10} {'+GRPO':>8} {'+more SFT':>10} {'+RS-SFT':>8} {'GRPO s':>7} "
          f"{'more-SFT steps':>15} {'RS rounds':>10} {'RS kept/sampled':>16}")
    for r in table:
        print(f"{r['seed']:>4} {r['after_sft']:>10.3f} {r['after_grpo']:>8.3f} {r['after_more_sft']:>10.3f} "
              f"{r['after_rs_sft']:>8.3f} {r['grpo_seconds']:>7.1f} {r['extra_sft_steps']:>15} "
              f"{r['rs_sft_rounds']:>10} {r['rs_accepted']:>7}/{r['rs_sampled']:<8}")
    summary = {}
    for key in ARMS:
        values = [r[key] for r in table]
        summary[key] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    print("mean ± sd: " + ", ".join(f"{k} {m:.3f} ± {s:.3f}" for k, (m, s) in summary.items()))
    for control in ("after_more_sft", "after_rs_sft"):
        gaps = [r["after_grpo"] - r[control] for r in table]
        print(f"GRPO minus {control.removeprefix('after_')}: {statistics.mean(gaps):+.3f} (min {min(gaps):+.3f})")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"rows": table, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
