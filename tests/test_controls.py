"""The equal-compute controls of the learning claim (rlpost.eval.controls) on a tiny recipe: mechanics, not learning
(the learning comparison is tests/test_learning.py, slow tier)."""

from pathlib import Path

import pytest

from rlpost.config import load_recipe
from rlpost.eval.controls import RSSFTOptions, rejection_sampling_sft, sample_completions, stage_runtime
from rlpost.pipeline import run_recipe

QUICKSTART = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"
TINY = [
    "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
    "data.task_options.max_operand=9", "data.task_options.num_heldout=20",
    "sft.max_steps=40", "sft.per_device_train_batch_size=16", "sft.learning_rate=1e-2",
    "grpo.max_steps=2", "grpo.per_device_train_batch_size=16",
    "sft.disable_tqdm=true", "grpo.disable_tqdm=true", "tracking.wandb=disabled", "tracking.plots=false",
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    recipe = load_recipe(QUICKSTART, [*TINY, f"output_dir={tmp_path_factory.mktemp('controls') / 'run'}"])
    return recipe, run_recipe(recipe)["accuracy"]


def test_sample_completions_gives_n_per_prompt_and_is_seeded(finished_run):
    from transformers import set_seed

    from rlpost.models import load_causal_lm, load_tokenizer

    recipe, _ = finished_run
    final = str(Path(recipe.output_dir) / "0-sft" / "final")
    model, tokenizer = load_causal_lm(final), load_tokenizer(final)
    prompts = ["1+2=", "3+4=", "5+5="]
    set_seed(0)
    first = sample_completions(model, tokenizer, prompts, num_samples=4, max_new_tokens=4, batch_size=2)
    set_seed(0)
    again = sample_completions(model, tokenizer, prompts, num_samples=4, max_new_tokens=4, batch_size=2)
    assert [len(group) for group in first] == [4, 4, 4] and first == again


def test_rs_sft_trains_only_on_what_the_checker_accepts_within_the_budget(finished_run):
    recipe, accuracy = finished_run
    budget = 1.0
    out = rejection_sampling_sft(recipe, budget, RSSFTOptions(prompts_per_round=16))
    assert out["rounds"] and all(r["accepted"] <= r["sampled"] for r in out["rounds"])
    assert out["sampled"] == 16 * 8 * len(out["rounds"])  # samples_per_prompt defaults to GRPO's num_generations
    sft_seconds, sft_steps = stage_runtime(recipe.output_dir, "0-sft")
    assert out["seconds"] <= budget + 2 * sft_seconds / sft_steps  # stops before the next step would overrun
    # A checker nothing passes: no pair is kept, no SFT step runs, the model is the SFT checkpoint's.
    nothing = rejection_sampling_sft(recipe, budget, RSSFTOptions(prompts_per_round=16, accept_reward=2.0))
    assert nothing["accepted"] == 0 and nothing["sft_steps"] == 0
    assert nothing["accuracy"] == accuracy["after SFT"]


def test_rs_sft_refuses_recipes_it_cannot_continue(finished_run):
    recipe, _ = finished_run
    lora = load_recipe(QUICKSTART, [*TINY, f"output_dir={recipe.output_dir}", "model.lora.r=4"])
    with pytest.raises(ValueError, match="Drop model.lora"):
        rejection_sampling_sft(lora, 1.0)
    fresh = load_recipe(QUICKSTART, [*TINY, f"output_dir={Path(recipe.output_dir).parent / 'nothing'}"])
    with pytest.raises(FileNotFoundError, match="holds no finished SFT stage"):
        rejection_sampling_sft(fresh, 1.0)
