"""The reasoning loop from a recipe (`reasoning:` on a flow_grpo stage): validation, the planner's supervised warm
start, the shapes env's scene descriptions, and `rlpost train` end to end on CPU. No test doubles."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlpost.config import ConfigError, load_recipe
from rlpost.envs.shapes_edit import ShapesChecklist, ShapesEditTask, describe_scene, render_scene
from rlpost.models import tiny_causal_lm, tiny_tokenizer
from rlpost.models.flow import get_flow_adapter
from rlpost.models.flow_edit import PixelCodec, WordPromptEncoder
from rlpost.trainers.flow_grpo import FlowGRPOConfig, FlowGRPOTrainer
from rlpost.trainers.reasoning_edit import ReasoningEditConfig, ReasoningEditTrainer, pretrain_planner

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "thinkrl_edit" / "reasoning_tiny.yaml"


def test_describe_scene_reads_row_by_row_in_the_canonical_words():
    scene = {(1, 0): ("circle", "blue"), (0, 2): ("square", "red")}
    assert describe_scene(scene) == "scene: row 1, column 3: red square; row 2, column 1: blue circle."


def test_scene_context_is_opt_in_and_describes_the_source_image():
    plain = ShapesEditTask(num_train=4, num_heldout=2, instruction="indirect", seed=3)
    with_context = ShapesEditTask(num_train=4, num_heldout=2, instruction="indirect", seed=3, scene_context=True)
    assert all("context" not in r for r in plain.split("train"))
    for a, b in zip(plain.split("train"), with_context.split("train")):
        assert a["prompt"] == b["prompt"]  # the same tasks; only the extra field differs
        # the description is the source image's scene: rendering it back gives the source pixels
        cells = {}
        for part in b["context"].removeprefix("scene: ").rstrip(".").split("; "):
            where, what = part.split(": ")
            row, col = (int(w.split()[-1]) - 1 for w in where.split(", "))
            colour, shape = what.split()
            cells[(row, col)] = (shape, colour)
        assert (render_scene(cells) == b["source_image"]).all()
    assert any(r["context"] in with_context.corpus() for r in with_context.split("heldout"))


def _planner_trainer(tmp_path, records):
    tokenizer = tiny_tokenizer(vocab_size=256, corpus=[r["prompt"] for r in records] + [r["canonical"] for r in records])
    planner = tiny_causal_lm("qwen2", tokenizer=tokenizer, hidden_size=64, num_layers=2, num_heads=4, seed=0)
    editor = get_flow_adapter("qwen_image_edit").build_tiny(hidden_size=32, num_layers=1, num_heads=2, text_dim=16)
    gen_args = FlowGRPOConfig(mode="flow_grpo", adapter="qwen_image_edit", output_dir=str(tmp_path / "gen"),
                              max_steps=1, num_inference_steps=2, resolution=12, vae_scale_factor=1, shift=1.0,
                              num_generations=2, use_cpu=True, save_model=False)
    generator = FlowGRPOTrainer(editor, [ShapesChecklist()], gen_args,
                                prompt_encoder=WordPromptEncoder(16, max_words=96), decoder=PixelCodec.decode,
                                image_encoder=PixelCodec.encode, prompts=records)
    args = ReasoningEditConfig(num_candidates=2, output_dir=str(tmp_path / "run"), plan_format="text",
                               use_chat_template=False, plan_prompt="{context}\n{instruction}\nplan:",
                               plan_max_new_tokens=64)
    return ReasoningEditTrainer(planner, tokenizer, generator, records, args)


def test_pretrain_planner_teaches_the_exact_prompts_plan_reads(tmp_path):
    # 4 tasks memorised: greedy plans from plan() (the RL path) must reproduce the SFT targets, which holds only if
    # the warm start trained on the very strings plan() generates from, with an EOS after the target.
    records = ShapesEditTask(num_train=4, num_heldout=1, instruction="indirect", seed=0,
                             scene_context=True).split("train")
    trainer = _planner_trainer(tmp_path, records)
    targets = [r["canonical"] for r in records]
    before = trainer.plan(records, greedy=True).texts
    losses = pretrain_planner(trainer, records, targets, steps=120, batch_size=4, learning_rate=3e-3)
    after = trainer.plan(records, greedy=True).texts
    assert losses[-1] < 0.1 * losses[0]
    assert before != targets and after == targets
    assert all(p.requires_grad for p in trainer.planner.parameters())  # train_planner=True: still trainable after
    with pytest.raises(ValueError, match="one target per record"):
        pretrain_planner(trainer, records, targets[:2], steps=1)


@pytest.mark.parametrize("override, message", [
    ("stages.0.args.mode=e_grpo", "no shared E-GRPO anchor"),
    ("stages.0.reasoning.args.num_candidate=4", "Did you mean 'num_candidates'"),
    ("stages.0.reasoning.reflector=judge", "reflector must be 'shapes'"),
    ("stages.0.reasoning.pretrain_steps=-1", "pretrain_steps must be >= 0"),
])
def test_reasoning_section_is_validated_before_anything_loads(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(RECIPE, [override])


def test_reasoning_recipe_trains_end_to_end(tmp_path):
    from rlpost.cli import main
    from rlpost.logging import read_metrics

    overrides = [f"output_dir={tmp_path}", "data.task_options.num_train=16", "data.task_options.num_heldout=4",
                 "data.task_options.pretrain_steps=10", "stages.0.reasoning.pretrain_steps=10",
                 "stages.0.reasoning.pretrain_batch_size=8", "stages.0.reasoning.args.max_steps=2",
                 "stages.0.reasoning.args.tasks_per_step=2", "stages.0.reasoning.args.num_candidates=3"]
    assert main(["train", str(RECIPE), *overrides]) == 0
    rows = read_metrics(tmp_path)
    rl = [r for r in rows if r["stage"] == "reasoning_edit"]
    assert len(rl) == 2
    for row in rl:
        assert row["reflect/failures"] == 0.0  # the pixel judge grounded every instruction
        assert 0.0 <= row["rewards/shapes_checklist/mean"] <= 1.0
        assert {"loss/text", "loss/gen", "text/ratio_mean", "gen/ratio_mean", "grad_norm/planner"} <= set(row)
    evals = {r["when"]: r for r in rows if r["stage"] == "eval"}
    assert set(evals) == {"before", "after"}
    for values in evals.values():  # the editor alone (control) and the whole loop, on held-out tasks
        assert 0.0 <= values["heldout/shapes_checklist"] <= 1.0
        assert 0.0 <= values["heldout_reasoning/shapes_checklist"] <= 1.0
        assert 0.0 <= values["heldout_reasoning/plan_exact"] <= 1.0
    planner = [r for r in rows if r["stage"] == "planner_pretrain"]
    assert planner and planner[0]["steps"] == 10 and planner[0]["loss_last"] < planner[0]["loss_first"]
    assert [r for r in rows if r["stage"] == "pretrain"][0]["steps"] == 10
