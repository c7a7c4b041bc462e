"""The ``rlpost`` command: train, list, report, eval, bench-quality.

    rlpost train recipes/quickstart.yaml grpo.max_steps=50 seed=1
    rlpost train --check recipes/quickstart.yaml grpo.num_generations=7    # only the validation pass
    rlpost list recipes|rewards|envs|advantages
    rlpost report runs/quickstart
    rlpost eval recipes/quickstart.yaml --model runs/quickstart/1-grpo/final    # a LoRA final/ too (base + adapter)
    rlpost bench-quality --scores scores.csv
    rlpost md run "Simulate an LJ liquid at T*=1.5" --model PATH --potentials-dir DIR

Under ``accelerate launch -m rlpost.cli train ...`` every process runs the same recipe (DDP / DeepSpeed).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rlpost.console import quiet_third_party, quiet_training_imports

__all__ = ["main"]

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def _env_defaults() -> None:
    # Nothing in rlpost needs an account or a hub: offline unless the user says otherwise.
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cmd_train(args) -> int:
    from rlpost.config import load_recipe
    from rlpost.recipe_check import check_recipe
    from rlpost.recipe_runner import is_main_process

    if not args.verbose:
        quiet_training_imports()
    recipe = load_recipe(args.recipe, args.overrides)  # keys and types
    summary = check_recipe(recipe)  # rewards, advantages, TRL's own config checks; before any model loads
    if args.check:
        print(summary)
        return 0
    if any(stage.trainer == "chord" for stage in recipe.stages):
        from rlpost.envs.chord.recipe import run_chord_recipe

        summary = run_chord_recipe(recipe)
        print(f"centroid shift (x, y, z): {', '.join(f'{v:+.3f}' for v in summary['centroid_shift'])}")
        print(f"run directory: {summary['run_dir']}")
        return 0
    if any(stage.trainer == "flow_grpo" for stage in recipe.stages):
        from rlpost.flow_pipeline import run_flow_recipe

        run_dir = run_flow_recipe(args.recipe, args.overrides)["run_dir"]
        if is_main_process():
            print(f"results: {run_dir}")
        return 0
    from rlpost.pipeline import run_recipe

    try:
        results = run_recipe(recipe, verbose=args.verbose)
    finally:
        _destroy_process_group()
    if not is_main_process():
        return 0
    accuracy = results["accuracy"]
    if accuracy:
        print("\nheld-out accuracy: " + " | ".join(f"{k}: {v:.3f}" for k, v in accuracy.items()))
    print(f"results: {results['run_dir']} (metrics.jsonl, results.json, plots/; `rlpost report` redraws the plots)")
    return 0


def _destroy_process_group() -> None:
    # Multi-process runs: tear the group down explicitly, or rank 0 occasionally aborts at interpreter exit.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def cmd_list(args) -> int:
    if args.what == "recipes":
        for path in sorted(RECIPES_DIR.rglob("*.yaml")):
            if "accelerate" in path.parts:
                continue
            print(f"{path.relative_to(RECIPES_DIR)}: {_recipe_summary(path)}")
    elif args.what == "rewards":
        from rlpost.rewards import list_rewards

        for name, description in sorted(list_rewards().items()):
            print(f"{name}: {description}")
    elif args.what == "envs":
        from rlpost.envs import ENVS, TASKS

        for name, cls in sorted({**TASKS, **ENVS}.items()):
            print(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
    elif args.what == "advantages":
        from rlpost.algorithms.advantages import list_advantages

        for name in list_advantages():
            print(name)
    return 0


def _recipe_summary(path: Path) -> str:
    """First comment line of a recipe file."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def cmd_report(args) -> int:
    from rlpost.logging import write_report

    paths = write_report(args.run_dir, args.out)
    if not paths:
        print(f"No plottable metrics in {args.run_dir}/metrics.jsonl.", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


def cmd_eval(args) -> int:
    from rlpost.config import load_recipe
    from rlpost.eval.generation import exact_match_accuracy
    from rlpost.models import load_causal_lm, load_tokenizer
    from rlpost.recipe_runner import build_task, heldout_split

    recipe = load_recipe(args.recipe, args.overrides)
    heldout = heldout_split(recipe, build_task(recipe))
    if heldout is None:
        print("The recipe has no held-out data (data.task or data.heldout_files).", file=sys.stderr)
        return 2
    # A model folder, a hub id, or a LoRA stage's final/ (adapter_config.json): its base model + the adapter.
    spec = recipe.model
    try:
        model = load_causal_lm(args.model, trust_remote_code=spec.trust_remote_code, torch_dtype=spec.torch_dtype,
                               merge_adapter=args.merge)
        tokenizer = load_tokenizer(args.model, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as error:
        print(f"rlpost eval: cannot load --model {args.model}: {error}", file=sys.stderr)
        return 2
    accuracy, correct = exact_match_accuracy(
        model, tokenizer, heldout["prompt"], heldout["answer"], max_new_tokens=recipe.eval.max_new_tokens,
        batch_size=recipe.eval.batch_size, progress=True,
    )
    print(f"held-out accuracy: {accuracy:.3f} ({sum(correct)}/{len(correct)})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlpost", description="RL post-training toolkit (GRPO / SFT / EAFT).")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run a recipe (YAML) with key=value overrides")
    train.add_argument("recipe")
    train.add_argument("overrides", nargs="*", help="dotted key=value, e.g. grpo.learning_rate=1e-4")
    train.add_argument("--check", action="store_true",
                       help="only validate the recipe (rewards, advantages, trainer configs); load and write nothing")
    train.add_argument("--verbose", action="store_true",
                       help="show third-party warnings, library logs and TRL's completion tables")
    train.set_defaults(func=cmd_train)

    listing = sub.add_parser("list", help="list registered recipes, rewards, envs or advantages")
    listing.add_argument("what", choices=["recipes", "rewards", "envs", "advantages"])
    listing.set_defaults(func=cmd_list)

    report = sub.add_parser("report", help="draw PNG plots from a run directory (offline)")
    report.add_argument("run_dir")
    report.add_argument("--out", default=None, help="output folder (default RUN_DIR/plots)")
    report.set_defaults(func=cmd_report)

    evaluate = sub.add_parser("eval", help="held-out exact-match accuracy of a model on a recipe's data")
    evaluate.add_argument("recipe")
    evaluate.add_argument("overrides", nargs="*")
    evaluate.add_argument("--model", required=True, help="local folder, hub id, or a LoRA adapter folder (final/)")
    evaluate.add_argument("--merge", action="store_true",
                          help="merge a LoRA adapter into its base before generating (faster; equal up to rounding)")
    evaluate.set_defaults(func=cmd_eval)

    from rlpost.eval import bench_quality

    quality = sub.add_parser("bench-quality", help="Benchmark² quality metrics (CBRC, DS, CAD, BQS) and subsets")
    bench_quality.add_arguments(quality)
    quality.set_defaults(func=bench_quality.run)

    from rlpost.envs import md_cli

    md = sub.add_parser("md", help="MDAgent2 LAMMPS runtime: generate, check, run, evaluate, revise")
    md_cli.add_arguments(md)
    md.set_defaults(func=md_cli.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    _env_defaults()
    args = build_parser().parse_args(argv)
    if not getattr(args, "verbose", False):
        quiet_third_party()
    from rlpost.config import ConfigError

    try:
        return args.func(args)
    except ConfigError as e:
        print(f"rlpost: invalid recipe: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
