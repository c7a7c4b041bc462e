"""ThinkRL-Edit's reasoning loop (plan → edit → reflect, RL on planner and editor) against the same wall time of
supervised training on the reference plans, from one warm start per seed; held-out reward of the whole loop.

Per seed, :func:`rlpost.flow_pipeline.build_flow_run` builds ``recipes/thinkrl_edit/reasoning_tiny.yaml`` (editor
and planner warm starts included) once. From that state:

- **rl**: the recipe's reasoning-loop RL for ``--iterations`` iterations (its wall time is the budget);
- **supervised** (the control at equal compute): planner and editor restored to the warm start, then alternating
  chunks of more planner SFT (instruction + scene → reference rewrite, TRL) and more editor flow-matching training
  (source + reference plan → target) at the warm starts' learning rates, until the RL arm's wall time is used;
- **none**: the warm start itself.

Each is scored on the task's held-out split by the whole loop (greedy plan, ODE sample, one reflection round):
checklist, consistency, quality, and ``plan_exact`` (greedy plan == reference rewrite); ``editor_alone`` is the
editor reading the raw indirect instruction.

Usage (CPU; about 8 minutes per seed with the defaults, one thread)::

    OMP_NUM_THREADS=1 python benchmarks/bench_reasoning.py --seeds 0 1 [--iterations 40] [--chunk-steps 50]
        [--override KEY=VALUE ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from rlpost.flow_pipeline import FlowRun, build_flow_run
from rlpost.models.flow_edit import pretrain_editor
from rlpost.trainers.reasoning_edit import pretrain_planner

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "thinkrl_edit" / "reasoning_tiny.yaml"
KEYS = ("heldout_reasoning/shapes_checklist", "heldout_reasoning/shapes_consistency",
        "heldout_reasoning/shapes_quality", "heldout_reasoning/plan_exact", "heldout/shapes_checklist")


def _editor(run: FlowRun) -> torch.nn.Module:
    return run.trainer.accelerator.unwrap_model(run.trainer.model)


def _snapshot(run: FlowRun) -> dict:
    return {"planner": copy.deepcopy(run.reasoning.planner.state_dict()),
            "editor": copy.deepcopy(_editor(run).state_dict())}


def _restore(run: FlowRun, snapshot: dict) -> None:
    run.reasoning.planner.load_state_dict(snapshot["planner"])
    _editor(run).load_state_dict(snapshot["editor"])


def supervised_for(run: FlowRun, seconds: float, chunk_steps: int, seed: int) -> dict:
    """Alternate planner SFT and editor flow-matching chunks of ``chunk_steps`` until ``seconds`` have passed."""
    spec, task = run.recipe.stages[0].reasoning, run.task
    tasks = run.reasoning.tasks
    targets = [r[spec.pretrain_target] for r in tasks]
    editor_records = [r for r in run.warm_records if isinstance(r, dict)]

    class Codec:  # pretrain_editor encodes images with the trainer's image encoder, as the recipe's warm start does
        encode = staticmethod(run.image_encoder)

    start, chunks, steps = time.perf_counter(), 0, {"planner": 0, "editor": 0}
    while time.perf_counter() - start < seconds:
        if chunks % 2 == 0:
            pretrain_planner(run.reasoning, tasks, targets, chunk_steps, batch_size=spec.pretrain_batch_size,
                             learning_rate=spec.pretrain_learning_rate, seed=seed + chunks,
                             output_dir=tempfile.mkdtemp(prefix="bench_reasoning_sft_"))
            steps["planner"] += chunk_steps
        else:
            pretrain_editor(_editor(run), editor_records, run.prompt_encoder, Codec, steps=chunk_steps,
                            batch_size=task.pretrain_batch_size, learning_rate=task.pretrain_learning_rate,
                            seed=seed + chunks, adapter="qwen_image_edit")
            steps["editor"] += chunk_steps
        chunks += 1
    return {"seconds": time.perf_counter() - start, **{f"{k}_steps": v for k, v in steps.items()}}


def run_seed(seed: int, args: argparse.Namespace) -> dict:
    overrides = [f"seed={seed}", f"model.seed={seed}", f"stages.0.reasoning.planner.seed={seed}",
                 f"stages.0.reasoning.args.max_steps={args.iterations}",
                 f"output_dir={tempfile.mkdtemp(prefix='bench_reasoning_')}", *args.override]
    run = build_flow_run(RECIPE, overrides)
    snapshot = _snapshot(run)
    none = run.evaluate()
    start = time.perf_counter()
    run.reasoning.train()
    rl_seconds = time.perf_counter() - start
    rl = run.evaluate()
    _restore(run, snapshot)
    assert run.evaluate() == none, "restoring the warm start must reproduce its evaluation exactly"
    budget = supervised_for(run, rl_seconds, args.chunk_steps, seed)
    supervised = run.evaluate()
    return {"seed": seed, "rl_seconds": rl_seconds, "supervised": budget,
            "none": {k: none[k] for k in KEYS}, "rl": {k: rl[k] for k in KEYS},
            "supervised_eval": {k: supervised[k] for k in KEYS}}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--chunk-steps", type=int, default=50, help="steps per supervised chunk")
    parser.add_argument("--override", nargs="*", default=[], help="recipe overrides, e.g. data.task_options.num_train=64")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = [run_seed(seed, args) for seed in args.seeds]
    print(f"\nheld-out, whole loop (RL {args.iterations} iterations vs the same wall time of supervised training)")
    print(f"{'seed':>4} {'arm':>10} {'checklist':>9} {'consist.':>8} {'quality':>7} {'plan_exact':>10} "
          f"{'editor_alone':>12}")
    for r in results:
        for arm, values in (("none", r["none"]), ("rl", r["rl"]), ("supervised", r["supervised_eval"])):
            print(f"{r['seed']:>4} {arm:>10} " + " ".join(f"{values[k]:>{w}.3f}" for k, w in zip(KEYS, (9, 8, 7, 10, 12))))
        s = r["supervised"]
        print(f"     budget: RL {r['rl_seconds']:.0f} s; supervised {s['seconds']:.0f} s = {s['planner_steps']} planner "
              f"+ {s['editor_steps']} editor steps")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
