"""End to end through the CLI: a tiny SFT -> GRPO recipe writes metrics, results, plots, item correctness, wandb."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlpost.cli import main
from rlpost.logging import read_metrics

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = str(ROOT / "recipes" / "quickstart.yaml")
TINY = [
    "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
    "data.task_options.max_operand=9", "data.task_options.num_heldout=20",
    "sft.max_steps=6", "sft.logging_steps=2", "sft.per_device_train_batch_size=16",
    "grpo.max_steps=4", "grpo.logging_steps=1", "grpo.per_device_train_batch_size=16",
    "sft.disable_tqdm=true", "grpo.disable_tqdm=true",
]


def test_tiny_recipe_end_to_end(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", QUICKSTART, f"output_dir={run_dir}", *TINY]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy: before training:" in out and "after SFT:" in out and "after GRPO:" in out

    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["accuracy"]) == {"before training", "after SFT", "after GRPO"}
    rows = read_metrics(run_dir)
    stages = {r["stage"] for r in rows}
    assert stages == {"0-sft", "1-grpo", "eval: before training", "eval: after SFT", "eval: after GRPO"}
    evals = [r["eval/heldout_accuracy"] for r in rows if r["stage"].startswith("eval")]
    assert evals == [results["accuracy"][k] for k in ("before training", "after SFT", "after GRPO")]
    grpo_rows = [r for r in rows if r["stage"] == "1-grpo" and "reward" in r]
    assert len(grpo_rows) == 4 and all("rewards/exact_match/mean" in r for r in grpo_rows)
    assert {p.name for p in (run_dir / "plots").glob("*.png")} >= {"reward.png", "loss.png", "entropy.png", "held_out_accuracy.png"}
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb offline run directory missing"
    # Per-item correctness in Benchmark²'s format: one "model" per evaluated checkpoint, 20 held-out items each.
    from rlpost.eval.tables import correctness_matrix, read_item_correctness

    items = read_item_correctness(run_dir / "item_correctness.csv")
    matrix = correctness_matrix(items)
    assert matrix.shape == (20, 3)
    final_accuracy = results["accuracy"]["after GRPO"]
    assert matrix["quickstart:after_GRPO"].mean() == pytest.approx(final_accuracy)
    assert (run_dir / "1-grpo" / "final" / "model.safetensors").exists()

    # `rlpost eval` on the saved checkpoint reproduces the pipeline's final held-out accuracy.
    capsys.readouterr()
    data = [o for o in TINY if o.startswith("data.")]
    assert main(["eval", QUICKSTART, *data, "--model", str(run_dir / "1-grpo" / "final")]) == 0
    assert f"held-out accuracy: {final_accuracy:.3f}" in capsys.readouterr().out

    # `rlpost report` redraws from metrics.jsonl alone.
    assert main(["report", str(run_dir), "--out", str(tmp_path / "plots2")]) == 0
    assert (tmp_path / "plots2" / "reward.png").stat().st_size > 1000


def test_lora_recipe_trains_only_the_adapter_and_saves_it(tmp_path, monkeypatch):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from rlpost import pipeline
    from rlpost.config import load_recipe
    from rlpost.models import load_causal_lm, load_tokenizer

    trained = []  # the model each stage returns, as the pipeline holds it
    train_stage = pipeline._train_stage
    monkeypatch.setattr(pipeline, "_train_stage", lambda *a, **k: trained.append(train_stage(*a, **k)) or trained[-1])
    run_dir = tmp_path / "lora"
    recipe = load_recipe(QUICKSTART, [
        *TINY, f"output_dir={run_dir}", "tracking.wandb=disabled", "tracking.plots=false", "eval.enabled=false",
        "model.lora.r=4", "model.lora.alpha=8", "model.lora.dropout=0.0", "model.lora.target_modules=[q_proj,v_proj]",
        "sft.learning_rate=1e-2", "grpo.learning_rate=1e-2",
    ])
    pipeline.run_recipe(recipe)
    model = trained[-1][0]
    assert isinstance(model, PeftModel) and trained[0][0] is model  # SFT and GRPO trained one adapter

    # The base weights are the untouched random init; only the adapters moved (B starts at zero in LoRA).
    spec = recipe.model
    tokenizer = load_tokenizer(spec.name_or_path, vocab_size=spec.tokenizer_vocab_size,
                               corpus=pipeline._load(recipe)[0].corpus())
    fresh = lambda: load_causal_lm(spec.name_or_path, tokenizer=tokenizer, hidden_size=spec.hidden_size,  # noqa: E731
                                   num_layers=spec.num_layers, num_heads=spec.num_heads, seed=spec.seed)
    base = dict(fresh().named_parameters())
    lora, frozen = {}, 0
    for name, param in model.named_parameters():
        if "lora_" in name:
            lora[name] = param
            continue
        key = name.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(param, base[key]), f"base weight {key} changed"
        assert not param.requires_grad
        frozen += 1
    assert frozen == len(base)
    assert sorted({n.split(".")[-4] for n in lora}) == ["q_proj", "v_proj"] and len(lora) == 2 * 2 * spec.num_layers
    assert all(p.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n), "an adapter did not train"

    # Each final/ is an adapter in safetensors, and it loads back onto a fresh base with the trained logits.
    for stage in ("0-sft", "1-grpo"):
        final = run_dir / stage / "final"
        assert (final / "adapter_model.safetensors").exists() and (final / "adapter_config.json").exists()
        assert not (final / "model.safetensors").exists()
    saved = load_file(run_dir / "1-grpo" / "final" / "adapter_model.safetensors")
    assert len(saved) == len(lora) and all("lora_" in k for k in saved)
    loaded = PeftModel.from_pretrained(fresh(), run_dir / "1-grpo" / "final").eval()
    ids = torch.tensor([tokenizer.encode("3+4=7")])
    model.eval()
    with torch.no_grad():
        expected = model(ids).logits
        assert torch.allclose(loaded(ids).logits, expected, atol=1e-6)
        assert not torch.allclose(fresh()(ids).logits, expected, atol=1e-3)  # the adapter changed the model
        # resume=true takes the same route: wrap the base with stage 0's adapter, then load stage 1's into it
        resumed = pipeline._load_finished(fresh(), run_dir / "0-sft" / "final", recipe)
        resumed = pipeline._load_finished(resumed, run_dir / "1-grpo" / "final", recipe)
        assert torch.allclose(resumed.eval()(ids).logits, expected, atol=1e-6)


def test_list_commands(capsys):
    assert main(["list", "rewards"]) == 0
    assert "exact_match:" in capsys.readouterr().out
    assert main(["list", "recipes"]) == 0
    assert "quickstart.yaml: Quickstart" in capsys.readouterr().out
    assert main(["list", "advantages"]) == 0
    assert "grpo" in capsys.readouterr().out.split()


def _stage_rows(run_dir, stage):
    # Timings differ run to run; train_loss is Trainer's mean loss over the steps *this process* trained (the
    # per-step losses, all compared, are equal).
    skip = {"step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss"}
    return [{k: v for k, v in r.items() if k not in skip} for r in read_metrics(run_dir) if r["stage"] == stage]


def _run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def _checkpoint_steps(stage_dir):
    return [int(p.name.rsplit("-", 1)[1]) for p in stage_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["0-sft", "1-grpo"])
def test_kill_9_inside_a_stage_then_resume_matches_uninterrupted_run(tmp_path, stage):
    # No save_* overrides: the pipeline's default keeps the latest checkpoint (every tenth of a stage: 2 steps here).
    common = [*TINY, "sft.max_steps=20", "grpo.max_steps=20", "tracking.wandb=disabled", "tracking.plots=false"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "rlpost.cli", "train", QUICKSTART]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    _run([*cli, f"output_dir={clean}", *common], env)
    assert len(list((clean / stage).glob("checkpoint-*"))) == 1, "save_total_limit=1 keeps only the latest"

    proc = subprocess.Popen([*cli, f"output_dir={killed}", *common], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not any(step >= 10 for step in _checkpoint_steps(killed / stage)):
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9, half-way through the stage
    proc.wait()
    assert not (killed / stage / "final").exists(), "the kill came too late to test resumption"
    assert max(_checkpoint_steps(killed / stage)) < 20

    out = _run([*cli, f"output_dir={killed}", *common, "resume=true"], env)
    assert f"{stage.split('-')[0]} ({stage.split('-')[1]}): resuming from" in out and "checkpoint-" in out, out
    clean_results = json.loads((clean / "results.json").read_text())
    killed_results = json.loads((killed / "results.json").read_text())
    assert killed_results["accuracy"] == clean_results["accuracy"]
    for name in ("0-sft", "1-grpo"):
        assert _stage_rows(killed, name) == _stage_rows(clean, name), name


def test_recycling_is_switched_on_from_a_recipe(tmp_path):
    import pandas as pd

    from rlpost import pipeline
    from rlpost.config import load_recipe

    run_dir = tmp_path / "recycle"
    # threshold above the best reward: every group fails and is recycled; the template stays in the tiny vocabulary
    recipe = load_recipe(QUICKSTART, [
        *TINY, f"output_dir={run_dir}", "tracking.wandb=disabled", "tracking.plots=false", "eval.enabled=false",
        "sft.max_steps=2", "grpo.recycling={template: '{prompt}{prompt}', threshold: 1.01, mix_ratio: 0.5}",
    ])
    pipeline.run_recipe(recipe)
    prompts = pd.concat(pd.read_parquet(p) for p in (run_dir / "1-grpo" / "completions").glob("*.parquet"))["prompt"]
    recycled = [p for p in prompts if p.count("=") == 2]  # "a+b=a+b=": a failed prompt written twice
    assert recycled and all(p[: len(p) // 2] * 2 == p for p in recycled)


def test_recycling_needs_max_steps_and_a_known_reward():
    from rlpost.config import ConfigError, load_recipe

    with pytest.raises(ConfigError, match=r"stages.1.recycling.reward'. Did you mean 'exact_match'"):
        load_recipe(QUICKSTART, ["grpo.recycling={reward: exact_mach}"])
    with pytest.raises(ConfigError, match="set stages.1.args.max_steps"):
        load_recipe(QUICKSTART, ["grpo.recycling={}", "grpo.max_steps=-1"])
    with pytest.raises(ConfigError, match="only grpo stages recycle"):
        load_recipe(QUICKSTART, ["stages.0.recycling={}"])
