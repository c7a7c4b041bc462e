"""EAFT recipes: the paper-scale recipe validates and keeps the paper's numbers; its tiny twin trains end to end."""

import json
import math
from pathlib import Path

import pytest
import yaml

from rlpost import cli
from rlpost.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]
BIG = ROOT / "recipes" / "eaft" / "qwen3_4b_math.yaml"
TINY = ROOT / "recipes" / "eaft" / "tiny.yaml"
ZERO3 = ROOT / "recipes" / "accelerate" / "zero3.yaml"

# EAFT arXiv 2601.02151, App. B: lr 1e-5, cosine, warmup ratio 0.03, batch 64, 10 epochs, max length 16384.
PAPER = dict(learning_rate=1e-5, lr_scheduler_type="cosine", warmup_steps=0.03, num_train_epochs=10, max_length=16384)
# EAFT eqs. 2-3: top-20 entropy / ln 20, linear gate.
PAPER_LOSS = dict(loss_type="eaft", eaft_top_k=20, eaft_alpha=1.0, eaft_normalizer="ln_k")


def _sft_args(path):
    recipe = load_recipe(path)
    (stage,) = recipe.stages
    assert stage.trainer == "sft"
    return recipe, stage.args


def test_big_recipe_validates_with_the_papers_hyperparameters():
    recipe, args = _sft_args(BIG)
    for key, value in {**PAPER, **PAPER_LOSS}.items():
        assert args[key] == value, f"{key}: {args[key]!r} != paper's {value!r}"
    assert recipe.model.name_or_path == "Qwen/Qwen3-4B-Instruct-2507"
    assert recipe.data.task is None and recipe.data.train_files, "the big recipe trains on the user's jsonl"


def test_big_recipe_batch_arithmetic_gives_64_on_the_zero3_config():
    _, args = _sft_args(BIG)
    accelerate = yaml.safe_load(ZERO3.read_text())
    assert accelerate["deepspeed_config"]["zero_stage"] == 3
    # per-device batch x GPUs x gradient accumulation = 1 x 8 x 8 = 64 (paper: batch size 64)
    batch = args["per_device_train_batch_size"] * accelerate["num_processes"] * args["gradient_accumulation_steps"]
    assert batch == 64
    header = BIG.read_text().split("\nname:")[0]
    assert "--config_file recipes/accelerate/zero3.yaml" in header, "the header must give the launch line"
    assert "= 64" in header, "the header must spell out the batch arithmetic"


def test_big_recipe_data_path_is_overridable():
    recipe = load_recipe(BIG, ["data.train_files=[/data/my_math.jsonl]"])
    assert recipe.data.train_files == ["/data/my_math.jsonl"]


def test_tiny_twin_uses_the_same_loss_and_schedule_as_the_big_recipe():
    _, big = _sft_args(BIG)
    _, tiny = _sft_args(TINY)
    shared = [*PAPER_LOSS, "eaft_chunk_size", "num_train_epochs", "lr_scheduler_type", "warmup_steps", "optim",
              "activation_checkpointing"]
    assert {k: tiny[k] for k in shared} == {k: big[k] for k in shared}
    assert tiny["gradient_accumulation_steps"] > 1, "the twin exercises gradient accumulation like the big recipe"


@pytest.mark.parametrize("path", [BIG, TINY])
def test_recipe_header_says_launch_hardware_and_expectation(path):
    header = path.read_text().split("\nname:")[0]
    for word in ("Launch:", "Expect:", "Batch arithmetic:"):
        assert word in header, f"{path.name}: header lacks {word!r}"


def test_tiny_recipe_trains_end_to_end_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")  # an explicit WANDB_MODE wins over the recipe (rlpost.logging)
    out = tmp_path / "run"
    # 3 of the recipe's 10 epochs (15 optimizer steps) keep this under a minute on a shared 2-core CI machine.
    rc = cli.main(["train", str(TINY), f"output_dir={out}", "sft.num_train_epochs=3", "sft.logging_steps=1",
                   "tracking.plots=false"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["accuracy"]) == {"before training", "after SFT"}
    assert all(0.0 <= v <= 1.0 for v in results["accuracy"].values())
    ran = json.loads((out / "recipe.json").read_text())
    assert ran["stages"][0]["args"]["loss_type"] == "eaft"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    # 80 problems / (8 x 2) per step = 5 steps per epoch, x 3 epochs = 15 logged steps
    assert len(losses) == 15
    assert all(math.isfinite(x) for x in losses)
    # Measured at seed 0: 5.56 -> 2.99 over the 15 steps; 0.7x leaves room for BLAS-order noise, not for "no learning".
    assert losses[-1] < 0.7 * losses[0], f"the EAFT loss should fall during training: {losses}"
    assert (out / "0-sft" / "final" / "config.json").exists()


def test_big_recipes_documented_data_format_runs_through_the_pipeline(tmp_path, monkeypatch):
    """The jsonl format the big recipe's header documents (conversational prompt-completion) trains as is."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    data = tmp_path / "math_sft.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"{a}+{b}="}],
             "completion": [{"role": "assistant", "content": str(a + b)}], "source": "extra columns are ignored"}
            for a in range(4) for b in range(4)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "run"
    rc = cli.main(["train", str(TINY), f"output_dir={out}", "data.task=null", f"data.train_files=[{data}]",
                   "eval.enabled=false", "sft.num_train_epochs=1", "sft.logging_steps=1", "tracking.plots=false"])
    assert rc == 0
    losses = [json.loads(line).get("loss") for line in (out / "metrics.jsonl").read_text().splitlines()]
    # 16 rows / (8 x 2) per optimizer step = 1 step
    assert [x for x in losses if x is not None] and all(math.isfinite(x) for x in losses if x is not None)


# ------------------------------------------------------------------ ConflictTask (forgetting experiment data)


def test_conflict_task_rules_by_hand():
    from rlpost.envs.conflict import ConflictTask

    # reverse, copy, copy under the new operator
    assert ConflictTask.answer(">", "120") == "021"
    assert ConflictTask.answer("=", "120") == "120"
    assert ConflictTask.answer("<", "120") == "120"


def test_conflict_task_splits_are_disjoint_and_conflicts_contradict_task_a():
    from rlpost.envs.conflict import ConflictTask

    task = ConflictTask(num_a_train=40, num_a_heldout=10, num_b_train=20, num_b_heldout=10, num_conflict=15, seed=3)
    digits = lambda ds, column="prompt": {p[:3] for p in ds[column]}  # noqa: E731
    a_train, a_held = digits(task.split("a_train")), digits(task.split("a_heldout"))
    b_train = task.split("b_train")
    b_new = {p[:3] for p in b_train["prompt"] if p.endswith("<")}
    b_held = digits(task.split("b_heldout"))
    assert (len(a_train), len(a_held), len(b_new), len(b_held)) == (40, 10, 20, 10)
    assert not (a_held & (a_train | b_new | b_held)) and not (b_held & (a_train | b_new))
    conflicts = task.split("b_conflict")
    assert len(conflicts) == 15 and len(b_train) == 20 + 15
    for prompt, answer in zip(conflicts["prompt"], conflicts["answer"]):
        assert prompt.endswith(">") and prompt[:3] in a_train, "conflicts re-label A's own training prompts"
        assert answer != ConflictTask.answer(">", prompt[:3]), f"{prompt}: label must contradict task A"
    # both A operators on every A input, and "heldout" = A's then B's held-out items
    assert len(task.split("a_train")) == 2 * 40
    assert [i[0] for i in task.split("heldout")["item"]] == ["A"] * 20 + ["B"] * 10


def test_conflict_task_rejects_impossible_sizes():
    from rlpost.envs.conflict import ConflictTask

    with pytest.raises(ValueError, match="1000"):
        ConflictTask(num_a_train=900, num_a_heldout=200)
    with pytest.raises(ValueError, match="num_conflict"):
        ConflictTask(num_a_train=10, num_conflict=11)


def test_conflict_task_uncertain_prior_adds_random_b_format_items_to_phase_a_only():
    from rlpost.envs.conflict import ConflictTask

    kwargs = dict(num_a_train=40, num_a_heldout=10, num_b_train=20, num_b_heldout=10, num_conflict=5, seed=1)
    plain, noisy = ConflictTask(**kwargs), ConflictTask(**kwargs, uncertain_b_prior=True)
    extra = noisy.split("a_train").select(range(80, 120))  # 2 x 40 A items, then 40 noise items
    assert len(noisy.split("a_train")) == 3 * 40
    assert all(p.endswith("<") for p in extra["prompt"])
    assert {p[:3] for p in extra["prompt"]} == {p[:3] for p in plain.split("a_train")["prompt"]}
    # labels are random digits: a copy label on all 40 would mean the "noise" teaches B's rule
    assert sum(c == p[:3] for p, c in zip(extra["prompt"], extra["completion"])) < 5
    for split in ("a_heldout", "b_train", "b_heldout", "b_conflict"):
        assert plain.split(split).to_list() == noisy.split(split).to_list()
