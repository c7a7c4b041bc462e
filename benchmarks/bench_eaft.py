"""EAFT vs TRL ``nll`` SFT: median step time and peak memory on the same model, data and seed.

Each variant trains ``rlpost.trainers.SFTTrainer`` (a ``trl.SFTTrainer``) for a few steps in a **fresh
subprocess**, so its peak memory is its own: the child reports ``ru_maxrss`` (the kernel's high-water
mark of resident memory, which sees every torch allocation, unlike ``tracemalloc``) and its resident
memory just before the first step. Two numbers come out of that:

* ``peak RSS``: the whole process, imports and Python included (what a job scheduler sees);
* ``train peak``: ``ru_maxrss`` minus the resident memory when training starts, i.e. what the
  optimizer states, activations and the loss (LM head, logits, entropy) added on top. This is
  where the loss variants differ, so the target ratios are judged on it.

Variants:

* ``nll``: TRL 1.16's default SFT loss. It is already TRL's fused/chunked LM head
  (``add_fused_lm_head``: the logits are built in tiles of 4096 tokens x 32768 vocabulary columns and
  never materialized as ``[B, T, V]``; ``chunked_nll`` is a deprecated alias of it).
* ``eaft``: ``loss_type="eaft"`` with the paper's top-20 entropy and the chunked LM head
  (``eaft_chunk_size=1024``, the default): target ratios <= 1.05 against ``nll``.
* ``eaft_full``: the same with the full-vocabulary entropy (``eaft_entropy="full"``), for comparison.
* ``eaft_unchunked``: top-20 EAFT on fully materialized ``[B, T, V]`` logits (``eaft_chunk_size=None``,
  the path DeepSpeed ZeRO-3 takes), for comparison.

The model is a random-init Qwen2 with a 32,768-token vocabulary (Llama-2 / Mistral size) and a small
body, trained on random token ids, so the LM head and the loss dominate the step, as they do for
long-sequence SFT of small models. Sequences are ``--seq-len`` tokens, all of them supervised.

Usage (about 2-3 minutes on 2 CPU cores; prints a table and the ratios)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_eaft.py [--steps 5] [--json out.json]

Timings on a shared machine are noisy: compare ratios from one run, never numbers across machines. The
fastest step of each variant (``min step``) is printed beside the median: when other jobs share the
cores, it is the step they disturbed least.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["VARIANTS", "main", "run_variant"]

# name -> SFTConfig overrides. Everything else (model, data, seed, optimizer, batch) is shared.
VARIANTS: dict[str, dict] = {
    "nll": dict(loss_type="nll"),
    "eaft": dict(loss_type="eaft", eaft_entropy="top_k", eaft_chunk_size=1024),
    "eaft_full": dict(loss_type="eaft", eaft_entropy="full", eaft_chunk_size=1024),
    "eaft_unchunked": dict(loss_type="eaft", eaft_entropy="top_k", eaft_chunk_size=None),
}
_BASELINE = "nll"
_TARGET_VARIANT = "eaft"  # the target: top-K chunked EAFT within 5% of nll in time and memory
_TARGET_RATIO = 1.05


def _rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status: this benchmark measures memory on Linux only.")


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_variant(name: str, opts: argparse.Namespace) -> dict:
    """Train one variant in this process and return its timings and memory (call it in a fresh process)."""
    import torch
    from datasets import Dataset
    from transformers import AutoConfig, AutoModelForCausalLM, TrainerCallback

    from rlpost.models import tiny_tokenizer
    from rlpost.trainers import SFTConfig, SFTTrainer

    torch.manual_seed(opts.seed)
    # The tokenizer only supplies pad/eos ids to the collator; the data are random ids over the model's vocabulary.
    tokenizer = tiny_tokenizer(vocab_size=64)
    config = AutoConfig.for_model(
        "qwen2", vocab_size=opts.vocab, hidden_size=opts.hidden, intermediate_size=2 * opts.hidden,
        num_hidden_layers=opts.layers, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=opts.seq_len, tie_word_embeddings=True, use_sliding_window=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = AutoModelForCausalLM.from_config(config)
    generator = torch.Generator().manual_seed(opts.seed)
    # Ids above the tokenizer's special tokens, so no sequence contains a pad token the collator would mask.
    ids = torch.randint(len(tokenizer), opts.vocab, (opts.batch * (opts.steps + opts.warmup), opts.seq_len),
                        generator=generator)
    dataset = Dataset.from_dict({"input_ids": ids.tolist()})

    class Timer(TrainerCallback):
        def __init__(self):
            self.step_seconds: list[float] = []
            self.rss_at_start: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.rss_at_start = _rss_mib()

        def on_step_begin(self, args, state, control, **kwargs):
            self._started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.step_seconds.append(time.perf_counter() - self._started)

    timer = Timer()
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out, use_cpu=True, bf16=False, report_to="none", disable_tqdm=True, save_strategy="no",
            per_device_train_batch_size=opts.batch, max_steps=opts.steps + opts.warmup, learning_rate=1e-4,
            logging_steps=1, seed=opts.seed, data_seed=opts.seed, max_length=opts.seq_len,
            activation_checkpointing=False, dataloader_num_workers=0, **VARIANTS[name],
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[timer])
        trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    measured = timer.step_seconds[opts.warmup :]
    return {
        "variant": name,
        "median_step_s": statistics.median(measured),
        "min_step_s": min(measured),
        "step_s": timer.step_seconds,
        "peak_rss_mib": _max_rss_mib(),
        "rss_at_train_start_mib": timer.rss_at_start,
        "train_peak_mib": _max_rss_mib() - timer.rss_at_start,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


def _child(name: str, opts: argparse.Namespace) -> dict:
    """Run one variant in a fresh interpreter so its ru_maxrss is its own."""
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        command = [sys.executable, __file__, "--child", name, "--child-out", result.name, *_shared_argv(opts)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"variant {name!r} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        return json.loads(Path(result.name).read_text())


def _shared_argv(opts: argparse.Namespace) -> list[str]:
    keys = ("vocab", "hidden", "layers", "seq_len", "batch", "steps", "warmup", "seed")
    return [f"--{k.replace('_', '-')}={getattr(opts, k)}" for k in keys]


def _table(results: list[dict]) -> str:
    base = next(r for r in results if r["variant"] == _BASELINE)
    header = (f"{'variant':<16}{'median step s':>14}{'time ratio':>12}{'min step s':>12}{'min ratio':>11}"
              f"{'train peak MiB':>16}{'mem ratio':>11}{'peak RSS MiB':>14}{'RSS ratio':>11}{'loss first->last':>20}")
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r['variant']:<16}{r['median_step_s']:>14.3f}{r['median_step_s'] / base['median_step_s']:>12.3f}"
            f"{r['min_step_s']:>12.3f}{r['min_step_s'] / base['min_step_s']:>11.3f}"
            f"{r['train_peak_mib']:>16.0f}{r['train_peak_mib'] / base['train_peak_mib']:>11.3f}"
            f"{r['peak_rss_mib']:>14.0f}{r['peak_rss_mib'] / base['peak_rss_mib']:>11.3f}"
            f"{r['first_loss']:>10.3f}->{r['last_loss']:<8.3f}"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="measured optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="steps run before measuring (allocator, caches)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", default=None, help="also write every measurement to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    opts = _parser().parse_args(argv)
    if opts.child is not None:
        Path(opts.child_out).write_text(json.dumps(run_variant(opts.child, opts)))
        return 0
    if _BASELINE not in opts.variants:
        opts.variants.insert(0, _BASELINE)
    print(f"model: Qwen2, vocab {opts.vocab}, hidden {opts.hidden}, {opts.layers} layers; batch {opts.batch} x "
          f"{opts.seq_len} tokens; {opts.warmup} warm-up + {opts.steps} measured steps; seed {opts.seed}; "
          f"torch threads: {os.cpu_count()} CPUs", flush=True)
    results = []
    for name in opts.variants:  # one after another: parallel children would share the cores and the memory
        started = time.perf_counter()
        results.append(_child(name, opts))
        print(f"  {name}: done in {time.perf_counter() - started:.0f}s", flush=True)
    print()
    print(_table(results))
    base = next(r for r in results if r["variant"] == _BASELINE)
    print()
    for r in results:
        if r["variant"] == _BASELINE:
            continue
        time_ratio = r["median_step_s"] / base["median_step_s"]
        mem_ratio = r["train_peak_mib"] / base["train_peak_mib"]
        line = f"{r['variant']} / nll: step time x{time_ratio:.3f}, train peak memory x{mem_ratio:.3f}"
        if r["variant"] == _TARGET_VARIANT:
            verdict = "meets" if max(time_ratio, mem_ratio) <= _TARGET_RATIO else "misses"
            line += f" ({verdict} the <= {_TARGET_RATIO} target for both)"
        print(line)
    if opts.json:
        Path(opts.json).write_text(json.dumps({"options": vars(opts), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
