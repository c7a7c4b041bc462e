"""``rlpost md run "task"``: MDAgent2's runtime loop from the command line (issue 6 item 5).

    rlpost md run "Simulate liquid copper at 1500 K with EAM" --model Qwen/Qwen3-8B \\
        --potentials-dir potentials/ --judge-url http://127.0.0.1:8000/v1 --max-rounds 5 --out runs/md

The code model is ``--model`` (a local folder, hub id or ``tiny:qwen2``, run with transformers) or
``--generator-url`` (any OpenAI-compatible server, e.g. ``vllm serve``). ``--judge-url`` adds MDAgent2's rubric
evaluator. Each round prints its stage and error; the trajectory is written to ``OUT/trajectory.json``.
Exit status: 0 when the script succeeded, 1 when every round failed (a clean report, not a crash), 2 for bad
arguments. Module imports stay light: torch, transformers and LAMMPS load only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``md`` subcommands (``run``) to ``parser`` (the ``rlpost md`` parser)."""
    sub = parser.add_subparsers(dest="md_command", required=True)
    p = sub.add_parser("run", help="generate, check, run and revise a LAMMPS script for one task")
    p.add_argument("task", help="the task in words (or @FILE to read it from a file)")
    gen = p.add_argument_group("code model (one of)")
    gen.add_argument("--model", default=None, help="local folder, hub id or tiny:qwen2 (transformers, in process)")
    gen.add_argument("--generator-url", default=None, help="OpenAI-compatible API root serving the code model")
    gen.add_argument("--generator-model", default="default", help="model name sent to --generator-url")
    gen.add_argument("--max-new-tokens", type=int, default=1024, help="answer length limit (default 1024)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 decodes greedily (default)")
    gen.add_argument("--device", default=None, help="device for --model (default: cuda if available, else cpu)")
    p.add_argument("--potentials-dir", default=None, help="local potential files (nothing is downloaded)")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible API root of the rubric evaluator")
    p.add_argument("--judge-model", default="default", help="model name sent to --judge-url")
    p.add_argument("--pass-reward", type=float, default=1.0,
                   help="with a judge: reward that counts as success (MDAgent2: 1.0)")
    p.add_argument("--max-rounds", type=int, default=5, help="generate attempts (MDAgent2: 5)")
    p.add_argument("--syntax-check", choices=["static", "lammps"], default="static",
                   help="static sandbox pass (default) or a 3 s LAMMPS launch as MDAgent2")
    p.add_argument("--timeout-s", type=float, default=120.0, help="LAMMPS wall-clock limit per run (default 120)")
    p.add_argument("--out", default="md_run", help="output folder for trajectory.json (default ./md_run)")


def _generator(args):
    from rlpost.envs.md_runtime import HFGenerator, as_generator

    if args.generator_url:
        from rlpost.rewards.judges import OpenAIJudge

        client = OpenAIJudge(args.generator_url, args.generator_model, temperature=args.temperature,
                             max_tokens=args.max_new_tokens, timeout_s=300.0, cache=False)
        return as_generator(client)
    import torch

    from rlpost.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(args.model)
    model = load_causal_lm(args.model, tokenizer=tokenizer)
    model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
    return HFGenerator(model, tokenizer, max_new_tokens=args.max_new_tokens, temperature=args.temperature)


def _print_round(record, max_rounds: int) -> None:
    error = " ".join(record.error.split())
    error = error if len(error) <= 300 else error[:297] + "..."
    line = f"round {record.round}/{max_rounds}: stage={record.stage} reward={record.reward:.3f}"
    print(line + (f" error: {error}" if error and not record.success else ""), flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the ``md`` subcommand; returns the exit status."""
    if getattr(args, "md_command", "run") != "run":
        print(f"rlpost md: unknown command {args.md_command!r}; use 'rlpost md run'", file=sys.stderr)
        return 2
    if bool(args.model) == bool(args.generator_url):
        print("rlpost md run: give exactly one code model: --model PATH_OR_ID (e.g. tiny:qwen2) or "
              "--generator-url URL", file=sys.stderr)
        return 2
    if args.max_rounds < 1:
        print(f"rlpost md run: --max-rounds must be >= 1, got {args.max_rounds}", file=sys.stderr)
        return 2
    task = args.task
    if task.startswith("@"):
        task = Path(task[1:]).read_text(encoding="utf-8")
    if not task.strip():
        print("rlpost md run: the task is empty", file=sys.stderr)
        return 2
    if args.potentials_dir is not None and not Path(args.potentials_dir).is_dir():
        print(f"rlpost md run: --potentials-dir {args.potentials_dir!r} is not a directory", file=sys.stderr)
        return 2

    from rlpost.envs.md_runtime import MDRuntimeEnv, as_judge_fn

    judge = None
    if args.judge_url:
        from rlpost.rewards.judges import OpenAIJudge

        judge = as_judge_fn(OpenAIJudge(args.judge_url, args.judge_model, max_tokens=2048, timeout_s=120.0))
    generate = _generator(args)
    env = MDRuntimeEnv(potentials_dir=args.potentials_dir, judge=judge, max_rounds=args.max_rounds,
                       pass_reward=args.pass_reward, syntax_check=args.syntax_check,
                       executor_options={"timeout_s": args.timeout_s})
    try:
        trajectory = env.run(generate, task, on_round=lambda r: _print_round(r, args.max_rounds))
    finally:
        env.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trajectory.save(out / "trajectory.json")
    verdict = "success" if trajectory.success else f"failed (last stage: {trajectory.rounds[-1].stage})"
    print(f"result: {verdict} after {len(trajectory.rounds)} round(s), reward {trajectory.reward:.3f}; "
          f"trajectory: {out / 'trajectory.json'}", flush=True)
    return 0 if trajectory.success else 1
