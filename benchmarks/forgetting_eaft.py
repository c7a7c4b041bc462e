"""Small-scale forgetting experiment: fine-tune on a conflicting task B with plain SFT and with EAFT.

EAFT (arXiv 2601.02151) claims that weighting each token's cross-entropy by the model's normalized
top-20 entropy keeps target-task accuracy close to SFT while forgetting much less, because it mutes
"confident conflicts": tokens where the model is sure (low entropy) and the label disagrees.

Setup (:class:`rlpost.envs.conflict.ConflictTask`, 3-digit strings):

1. Phase A: a tiny random-init Qwen2 (2 layers, hidden 64) learns task A with plain SFT until it is
   confident and right on held-out items (rounds of ``--a-steps`` until both rules reach ``--a-target``):
   ``"abc>" -> "cba"`` (reverse) and ``"abc=" -> "abc"`` (copy). By default phase A also shows B's
   operator, ``"abc<"``, with random digits as labels, so the A model is *uncertain* on B's format, as a
   pretrained LM is on genuinely new content; ``--confident-b-prior`` drops them, and the A model is
   then confidently wrong on B's format as well (a second, harder setting).
2. Phase B, from that same checkpoint, with the same budget (steps, batch, learning rate, data order):
   ``loss_type="nll"`` (SFT) and ``loss_type="eaft"`` (paper defaults: top-20 entropy / ln 20, alpha 1).
   B's data: a new prompt format, ``"abc<" -> "abc"``, plus *conflict* items ``"abc>" -> "abc"`` on A's
   training inputs: A's prompt with a label that contradicts A's confident prediction (first and last
   digit). A control branch trains SFT on the new-format items alone (no conflicts), to separate the
   forgetting the conflicts cause from the forgetting any further training causes.
3. Reported per seed, then mean ± sd (sample sd) over seeds:

   * ``B acc``: exact match on held-out ``abc<`` items (the target task);
   * ``A ret >``: exact match on held-out ``abc>`` items with A's label (reverse), never trained on in
     either phase: the rule the conflicts contradict;
   * ``A ret =``: the same for held-out ``abc=`` items (copy), which the conflicts do not contradict;
   * ``conflict fit``: exact match on the trained conflict items with B's label (how far the model
     adopted the contradicting labels);
   * at the start of phase B, the mean EAFT weight and gold-token probability on conflicting tokens
     and on new-format tokens, to show the conflicts are confident ones.

Accuracies are also recorded every ``--eval-every`` B steps, to compare the losses along the whole
run and not only at its end.

Usage (about 3 minutes on one CPU core for 5 seeds)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/forgetting_eaft.py [--seeds 0 1 2 3 4] [--confident-b-prior] \
        [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

__all__ = ["conflict_diagnostics", "main", "run_seed", "train_sft"]

# Phase-B branches: name -> (loss_type, with conflict items)
BRANCHES = {"sft": ("nll", True), "eaft": ("eaft", True), "sft_no_conflict": ("nll", False)}
_LABELS = {"sft": "SFT", "eaft": "EAFT", "sft_no_conflict": "SFT, no conflicts (control)"}
_METRICS = {"b_acc": "B acc (abc<)", "a_ret_reverse": "A ret > (reverse)", "a_ret_copy": "A ret = (copy)",
            "conflict_fit": "conflict fit"}


def train_sft(model, tokenizer, dataset, *, loss_type: str, steps: int, learning_rate: float, batch_size: int,
              seed: int, eval_every: int | None = None, evaluate=None) -> list[dict]:
    """Train ``model`` in place with rlpost's SFTTrainer; return ``evaluate(model)`` rows every ``eval_every`` steps."""
    from transformers import TrainerCallback

    from rlpost.trainers import SFTConfig, SFTTrainer

    curve: list[dict] = []

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if eval_every and evaluate is not None and state.global_step % eval_every == 0:
                curve.append({"step": state.global_step, **evaluate(model)})

    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out, use_cpu=True, bf16=False, report_to="none", disable_tqdm=True, save_strategy="no",
            loss_type=loss_type, max_steps=steps, per_device_train_batch_size=batch_size,
            learning_rate=learning_rate, lr_scheduler_type="constant", warmup_steps=0, logging_steps=max(1, steps),
            seed=seed, data_seed=seed, activation_checkpointing=False, dataloader_num_workers=0,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[Probe()])
        trainer.train()
    return curve


def _accuracy(model, tokenizer, data) -> float:
    from rlpost.eval.generation import exact_match_accuracy

    accuracy, _ = exact_match_accuracy(model, tokenizer, data["prompt"], data["answer"], max_new_tokens=4,
                                       batch_size=512)
    return accuracy


@torch.no_grad()
def conflict_diagnostics(model, tokenizer, task) -> dict[str, float]:
    """Mean EAFT weight and gold-token probability on B's answer tokens, before phase B.

    "conflict" tokens: answer tokens of conflict items whose B label differs from A's label at that
    position (the first and last digit); "new" tokens: answer tokens of new-operator items.
    """
    from rlpost.algorithms.losses import eaft_weights
    from rlpost.envs.conflict import CONFLICT_OPERATOR

    was_training = model.training
    model.eval()
    groups: dict[str, list[tuple[float, float]]] = {"conflict": [], "new": []}
    for split, group in (("b_conflict", "conflict"), ("b_heldout", "new")):
        data = task.split(split)
        prompts = [tokenizer(p)["input_ids"] for p in data["prompt"]]
        answers = [tokenizer(a)["input_ids"] for a in data["answer"]]
        ids = torch.tensor([p + a for p, a in zip(prompts, answers)])  # [N, P+A]: every item has the same lengths
        logits = model(input_ids=ids).logits  # [N, P+A, V]
        start = len(prompts[0])
        predicting = logits[:, start - 1 : -1]  # [N, A, V]: position t predicts token t+1
        gold = ids[:, start:]  # [N, A]
        weight = eaft_weights(predicting)  # paper defaults: top-20 entropy / ln 20
        prob = predicting.float().softmax(-1).gather(-1, gold.unsqueeze(-1)).squeeze(-1)
        for i, digits in enumerate(data["prompt"]):
            for j in range(gold.shape[1]):
                if group == "conflict" and task.answer(CONFLICT_OPERATOR, digits[:3])[j] == data["answer"][i][j]:
                    continue  # B agrees with A here (middle digit): not a conflict
                groups[group].append((weight[i, j].item(), prob[i, j].item()))
    model.train(was_training)
    out = {}
    for group, pairs in groups.items():
        out[f"{group}_weight"] = statistics.fmean(w for w, _ in pairs)
        out[f"{group}_gold_prob"] = statistics.fmean(p for _, p in pairs)
    return out


def run_seed(seed: int, opts: argparse.Namespace) -> dict:
    """Phase A once, then every phase-B branch from a fresh model loaded with the phase-A weights."""
    from transformers import set_seed

    from rlpost.envs.conflict import ConflictTask
    from rlpost.models import tiny_causal_lm, tiny_tokenizer

    set_seed(seed)
    task = ConflictTask(seed=seed, num_conflict=opts.conflicts, uncertain_b_prior=not opts.confident_b_prior)
    # Same inputs, phase-A data and new-format items, no conflicts.
    control = ConflictTask(seed=seed, num_conflict=0, uncertain_b_prior=not opts.confident_b_prior)
    tokenizer = tiny_tokenizer(vocab_size=64, corpus=task.corpus())

    def build_model():
        return tiny_causal_lm(tokenizer=tokenizer, hidden_size=opts.hidden, num_layers=opts.layers, num_heads=4,
                              seed=seed)

    a_held = task.split("a_heldout")
    held = {
        "b_acc": task.split("b_heldout"),
        "a_ret_reverse": a_held.filter(lambda r: r["prompt"].endswith(">")),
        "a_ret_copy": a_held.filter(lambda r: r["prompt"].endswith("=")),
        "conflict_fit": task.split("b_conflict"),
    }

    def evaluate(m) -> dict[str, float]:
        return {name: _accuracy(m, tokenizer, data) for name, data in held.items()}

    started = time.perf_counter()
    model = build_model()
    a_steps = 0
    # "Until confident": rounds of a_steps until both A rules reach a_target on held-out items (or a_max_rounds).
    for _ in range(opts.a_max_rounds):
        train_sft(model, tokenizer, task.split("a_train"), loss_type="nll", steps=opts.a_steps,
                  learning_rate=opts.a_lr, batch_size=opts.batch, seed=seed + a_steps)
        a_steps += opts.a_steps
        after_a = evaluate(model)
        if min(after_a["a_ret_reverse"], after_a["a_ret_copy"]) >= opts.a_target:
            break
    converged = min(after_a["a_ret_reverse"], after_a["a_ret_copy"]) >= opts.a_target
    result: dict = {"seed": seed, "a_steps": a_steps, "a_converged": converged, "after_a": after_a,
                    "diagnostics": conflict_diagnostics(model, tokenizer, task)}
    print(f"seed {seed}: phase A {a_steps} steps, {time.perf_counter() - started:.0f}s, "
          + ", ".join(f"{k} {v:.3f}" for k, v in after_a.items()), flush=True)
    phase_a_state = copy.deepcopy(model.state_dict())
    for name, (loss_type, with_conflicts) in BRANCHES.items():
        started = time.perf_counter()
        # A fresh model loaded with the phase-A weights, not copy.deepcopy(model): TRL patched the phase-A model's
        # forward (add_fused_lm_head) with a closure over that object, which a deep copy would keep calling.
        branch = build_model()
        branch.load_state_dict(phase_a_state)
        data = (task if with_conflicts else control).split("b_train")
        curve = train_sft(branch, tokenizer, data, loss_type=loss_type, steps=opts.b_steps, learning_rate=opts.b_lr,
                          batch_size=opts.batch, seed=seed, eval_every=opts.eval_every, evaluate=evaluate)
        final = curve[-1] if curve and curve[-1]["step"] == opts.b_steps else {"step": opts.b_steps, **evaluate(branch)}
        result[name] = {"final": final, "curve": curve}
        print(f"seed {seed}: phase B {_LABELS[name]} {time.perf_counter() - started:.0f}s, "
              + ", ".join(f"{k} {v:.3f}" for k, v in final.items() if k != "step"), flush=True)
    return result


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def summarize(results: list[dict]) -> str:
    """Mean ± sd (sample sd over seeds) of every metric, as Markdown tables.

    Seeds whose phase A never reached the target are listed and left out: without a confident A model
    there is nothing to forget and no confident conflict.
    """
    skipped = [r["seed"] for r in results if not r["a_converged"]]
    results = [r for r in results if r["a_converged"]]
    if not results:
        return f"no seed reached the phase-A target (seeds {skipped}); raise --a-max-rounds or --a-steps."
    lines = [f"seeds: {[r['seed'] for r in results]} (mean ± sd over seeds); phase-A steps per seed: "
             f"{[r['a_steps'] for r in results]}; left out (phase A below target): {skipped or 'none'}", "",
             "| model | " + " | ".join(_METRICS.values()) + " |", "|---|" + "---|" * len(_METRICS)]
    rows = [("after phase A", [r["after_a"] for r in results])]
    rows += [(f"+ phase B, {_LABELS[name]}", [r[name]["final"] for r in results]) for name in BRANCHES]
    for label, finals in rows:
        lines.append(f"| {label} | " + " | ".join(_mean_sd([x[k] for x in finals]) for k in _METRICS) + " |")
    diag = [r["diagnostics"] for r in results]
    lines += ["", "before phase B (the phase-A model), on B's answer tokens:", "",
              "| tokens | mean EAFT weight | mean p(gold) |", "|---|---|---|",
              "| conflicting (abc> labelled abc, first/last digit) | "
              f"{_mean_sd([d['conflict_weight'] for d in diag])} | "
              f"{_mean_sd([d['conflict_gold_prob'] for d in diag])} |",
              f"| new format (abc<) | {_mean_sd([d['new_weight'] for d in diag])} | "
              f"{_mean_sd([d['new_gold_prob'] for d in diag])} |"]
    steps = [row["step"] for row in results[0]["sft"]["curve"]]
    if steps:
        lines += ["", "along phase B (mean over seeds), B acc / A ret > (reverse) / conflict fit:", "",
                  "| step | " + " | ".join(_LABELS[name] for name in BRANCHES) + " |", "|---|" + "---|" * len(BRANCHES)]
        for i, step in enumerate(steps):
            cells = []
            for name in BRANCHES:
                at = [r[name]["curve"][i] for r in results]
                cells.append(" / ".join(f"{statistics.fmean(x[k] for x in at):.2f}"
                                        for k in ("b_acc", "a_ret_reverse", "conflict_fit")))
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--a-steps", type=int, default=400, help="phase A (task A, plain SFT) steps per round")
    parser.add_argument("--a-target", type=float, default=0.95, help="phase A stops at this held-out accuracy ...")
    parser.add_argument("--a-max-rounds", type=int, default=4, help="... or after this many rounds")
    parser.add_argument("--a-lr", type=float, default=3e-3)
    parser.add_argument("--b-steps", type=int, default=200, help="phase B steps, the same for SFT and EAFT")
    parser.add_argument("--b-lr", type=float, default=1e-4, help="phase B learning rate (constant), both losses")
    parser.add_argument("--conflicts", type=int, default=100, help="conflict items in B (on top of 200 new-format)")
    parser.add_argument("--confident-b-prior", action="store_true",
                        help="phase A never shows abc<, so the A model is confidently wrong on B's new format too; "
                             "by default phase A shows abc< with random labels and the model is uncertain there "
                             "(ConflictTask.uncertain_b_prior)")
    parser.add_argument("--eval-every", type=int, default=40, help="B steps between accuracy probes (0: none)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write every number (per seed, curves) to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "RLPOST_CACHE" not in os.environ:  # tiny models/tokenizers of this run stay out of the user's cache
        os.environ["RLPOST_CACHE"] = tempfile.mkdtemp(prefix="rlpost-forgetting-")
    # One thread: the models are tiny, and on a shared machine a second OpenMP thread spin-waits on a busy core,
    # which slowed steps down 20x in our runs. Results do not depend on it.
    torch.set_num_threads(opts.threads)
    print(f"options: {vars(opts)}", flush=True)
    results = [run_seed(seed, opts) for seed in opts.seeds]
    print()
    print(summarize(results))
    if opts.json:
        Path(opts.json).write_text(json.dumps({"options": vars(opts), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
