"""LoRA runs end to end: `rlpost eval` on an adapter folder, what a LoRA `final/` holds, renamed reward instances."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from rlpost.cli import main

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = str(ROOT / "recipes" / "quickstart.yaml")
DATA = ["data.task_options.max_operand=9", "data.task_options.num_heldout=20"]
TINY = [
    "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", *DATA,
    "sft.max_steps=6", "sft.per_device_train_batch_size=16", "grpo.max_steps=3", "grpo.per_device_train_batch_size=16",
    "sft.disable_tqdm=true", "grpo.disable_tqdm=true", "tracking.wandb=disabled", "tracking.plots=false",
]
# Enough SFT (150 steps, ~2 s) that the adapter answers some held-out items right: the accuracies compared below are
# not 0 == 0.
LORA = ["model.lora.r=8", "model.lora.alpha=16", "model.lora.dropout=0.0", "sft.max_steps=150",
        "sft.learning_rate=1e-2", "grpo.learning_rate=1e-2"]


def test_eval_of_a_lora_final_dir_reproduces_the_trained_model(tmp_path, monkeypatch, capsys):
    from peft import PeftModel

    from rlpost import pipeline
    from rlpost.config import load_recipe
    from rlpost.eval.generation import exact_match_accuracy, generate_greedy
    from rlpost.models import load_causal_lm, load_tokenizer
    from rlpost.recipe_runner import build_task, heldout_split

    # The tiny base is random init living only in the model cache: give this run its own cache and delete it before
    # evaluating, so `rlpost eval` must rebuild the exact base from the run's own files.
    cache = tmp_path / "cache"
    monkeypatch.setenv("RLPOST_CACHE", str(cache))
    trained = []  # the model each stage returns, as the pipeline holds it (a spy; the stage itself runs unchanged)
    train_stage = pipeline._train_stage
    monkeypatch.setattr(pipeline, "_train_stage", lambda *a, **k: trained.append(train_stage(*a, **k)) or trained[-1])
    run_dir = tmp_path / "run"
    # beta > 0 on an already-wrapped model (the GRPO stage continues the SFT adapter): TRL adds a frozen "ref" copy.
    assert main(["train", QUICKSTART, f"output_dir={run_dir}", *TINY, *LORA, "grpo.beta=0.1"]) == 0
    final = run_dir / "1-grpo" / "final"
    model = trained[-1][0].eval()
    assert isinstance(model, PeftModel) and list(model.peft_config) == ["default"]  # "ref" removed after the stage

    # final/ holds the trained adapter, the tokenizer and (tiny base) the base model; no "ref" adapter anywhere.
    files = {p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "base_model/config.json",
            "base_model/model.safetensors"} <= files
    assert not [f for f in files if f.startswith("ref/") or f == "model.safetensors"], sorted(files)
    shutil.rmtree(cache)

    # Greedy answers of the folder loaded back equal the in-memory trained model's, and differ from the base's.
    tokenizer = load_tokenizer(str(final))
    loaded = load_causal_lm(str(final))
    assert isinstance(loaded, PeftModel) and list(loaded.peft_config) == ["default"]
    recipe = load_recipe(QUICKSTART, TINY)
    heldout = heldout_split(recipe, build_task(recipe))
    prompts = heldout["prompt"]
    answers = generate_greedy(model, tokenizer, prompts, max_new_tokens=4)
    assert generate_greedy(loaded, tokenizer, prompts, max_new_tokens=4) == answers
    with loaded.disable_adapter():
        assert generate_greedy(loaded, tokenizer, prompts, max_new_tokens=4) != answers, "the adapter changed nothing"
    ids = torch.tensor([tokenizer.encode(prompts[0])])
    with torch.no_grad():
        expected = model(ids).logits
        assert torch.equal(loaded(ids).logits, expected)
        merged = load_causal_lm(str(final), merge_adapter=True)
        assert not isinstance(merged, PeftModel)
        torch.testing.assert_close(merged(ids).logits, expected, atol=1e-5, rtol=0)

    # `rlpost eval` on the adapter folder prints the accuracy the pipeline measured on the in-memory model, and that
    # is the in-memory model's own exact-match score. Its value depends on the CPU's floating-point path (a tiny
    # model's greedy answers flip with the last bits of a matmul), so it is compared, not asserted above a threshold;
    # the greedy answers above already show the adapter is the trained one and not the base.
    accuracy = json.loads((run_dir / "results.json").read_text())["accuracy"]["after GRPO"]
    in_memory, _ = exact_match_accuracy(model, tokenizer, prompts, heldout["answer"],
                                        max_new_tokens=recipe.eval.max_new_tokens, batch_size=recipe.eval.batch_size)
    assert accuracy == in_memory
    capsys.readouterr()
    assert main(["eval", QUICKSTART, *DATA, "--model", str(final)]) == 0
    assert f"held-out accuracy: {accuracy:.3f}" in capsys.readouterr().out


def test_eval_names_a_folder_that_is_neither_model_nor_adapter(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    assert main(["eval", QUICKSTART, *DATA, "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "neither a model folder (config.json) nor a LoRA adapter folder (adapter_config.json)" in err
    assert str(tmp_path) in err


def test_adapter_without_reachable_base_says_what_to_provide(tmp_path, capsys):
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(tmp_path / "gone"),
         "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}))
    assert main(["eval", QUICKSTART, *DATA, "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "base model" in err and str(tmp_path / "gone") in err and "base_model" in err


def test_two_instances_of_one_reward_log_under_their_own_names(tmp_path):
    from rlpost.config import load_recipe
    from rlpost.logging import read_metrics
    from rlpost.pipeline import run_recipe

    rewards = "grpo.rewards=[{name: exact_match, options: {name: em_strict}}, " \
              "{name: exact_match, weight: 0.5, options: {name: em_loose, normalize: false}}]"
    run_dir = tmp_path / "run"
    recipe = load_recipe(QUICKSTART, [*TINY, f"output_dir={run_dir}", "eval.enabled=false", "sft.max_steps=1",
                                      "grpo.max_steps=2", "grpo.logging_steps=1", rewards])
    run_recipe(recipe)
    rows = [r for r in read_metrics(run_dir) if r["stage"] == "1-grpo" and "reward" in r]
    assert len(rows) == 2
    assert all("rewards/em_strict/mean" in r and "rewards/em_loose/mean" in r for r in rows)
    assert not any("rewards/exact_match/mean" in r for r in rows)


def test_get_reward_options_name_names_the_instance():
    from rlpost.config import RewardSpec
    from rlpost.rewards import get_reward
    from rlpost.rewards.registry import build_rewards

    assert get_reward("exact_match", name="em_strict").name == "em_strict"
    assert get_reward("exact_match").name == "exact_match"
    # an import path to a TRL-style function: the name goes to from_trl
    assert get_reward("trl.rewards:think_format_reward", name="think").name == "think"
    specs = [RewardSpec("exact_match", options={"name": "a"}), RewardSpec("exact_match", options={"name": "b"})]
    assert [m.name for m in build_rewards(specs)] == ["a", "b"]
    # import paths are named only once imported, so build_rewards (not recipe validation) catches their repeats
    with pytest.raises(ValueError, match=r"rewards \['think_format_reward'\] appear more than once"):
        build_rewards([RewardSpec("trl.rewards:think_format_reward")] * 2)
