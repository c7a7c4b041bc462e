"""The whole ThinkRL-Edit loop on the shapes env: a tiny Qwen2 planner rewrites indirect instructions, the tiny
Qwen-Image-Edit-style editor edits, ShapesJudge reflects (reading pixels) and the failed edits are regenerated once,
then checklist + consistency + quality feed UCPG and one update trains both policies. No test doubles."""

from __future__ import annotations

import pytest

from rlpost.envs.shapes_edit import (
    ShapesChecklist,
    ShapesConsistency,
    ShapesEditTask,
    ShapesJudge,
    ShapesQuality,
    reflect_on_edit,
    render_scene,
)
from rlpost.models import tiny_causal_lm, tiny_tokenizer
from rlpost.models.flow import get_flow_adapter
from rlpost.models.flow_edit import PixelCodec, WordPromptEncoder
from rlpost.trainers.flow_grpo import FlowGRPOConfig, FlowGRPOTrainer
from rlpost.trainers.reasoning_edit import JudgeReflector, ReasoningEditConfig, ReasoningEditTrainer

SCENE = {(0, 0): ("square", "red"), (1, 1): ("circle", "blue")}


@pytest.mark.parametrize("image_format", ["object", "openai"])
def test_shapes_judge_reflects_through_the_judge_reflector(image_format):
    source = render_scene(SCENE)
    right = render_scene({(0, 0): ("square", "green"), (1, 1): ("circle", "blue")})
    wrong = render_scene({(0, 0): ("square", "yellow")})  # wrong colour, and the circle is gone
    reflector = JudgeReflector(ShapesJudge(), image_format=image_format)
    good, bad = reflector(["paint the top-left shape the colour of grass"] * 2, [source, source], [right, wrong])
    assert good.match is True and good.suggestion == ""
    assert bad.match is False
    assert "row 1, column 1 should hold a green square" in bad.suggestion
    assert "row 2, column 2 should hold a blue circle" in bad.suggestion
    assert reflect_on_edit("make it nicer", source, right) is None  # not an instruction the env can ground


def test_reasoning_loop_runs_on_the_shapes_env_with_real_reflection(tmp_path):
    task = ShapesEditTask(num_train=8, num_heldout=4, instruction="indirect", seed=1)
    records = task.split("train")
    tokenizer = tiny_tokenizer(vocab_size=256, corpus=task.corpus())
    planner = tiny_causal_lm("qwen2", tokenizer=tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    editor = get_flow_adapter("qwen_image_edit").build_tiny(hidden_size=32, num_layers=1, num_heads=2, text_dim=16)
    gen_args = FlowGRPOConfig(mode="flow_grpo", adapter="qwen_image_edit", output_dir=str(tmp_path / "gen"),
                              max_steps=1, num_inference_steps=4, resolution=task.image_size, vae_scale_factor=1,
                              shift=1.0, num_generations=2, use_cpu=True, save_model=False, advantage="ucpg",
                              learning_rate=1e-3, clip_range=1e-2, timestep_fraction=1.0)
    generator = FlowGRPOTrainer(editor, [ShapesChecklist(), ShapesConsistency(), ShapesQuality()], gen_args,
                                prompt_encoder=WordPromptEncoder(16, max_words=96), decoder=PixelCodec.decode,
                                image_encoder=PixelCodec.encode, prompts=records)
    trainer = ReasoningEditTrainer(
        planner, tokenizer, generator, records,
        ReasoningEditConfig(num_candidates=3, tasks_per_step=2, max_steps=2, output_dir=str(tmp_path / "run"),
                            plan_format="text", use_chat_template=False, plan_prompt="{instruction}{context} ->",
                            plan_max_new_tokens=8, planner_learning_rate=1e-3),
        reflector=JudgeReflector(ShapesJudge(), image_format="object"),
    )
    history = trainer.train()
    assert len(history) == 2
    for row in history:
        assert row["reflect/failures"] == 0.0  # the pixel judge grounded every (indirect) instruction
        assert 0.0 <= row["rewards/shapes_checklist/mean"] <= 1.0
        assert {"loss/text", "loss/gen", "text/ratio_mean", "gen/ratio_mean"} <= set(row)
    rollout = trainer.last_rollout
    # A random editor misses most edits: reflection sent some candidates back, with the judge's concrete fix.
    assert rollout["redo"] and all("should" in rollout["reflections"][i].suggestion for i in rollout["redo"])
    assert all(not rollout["reflections"][i].match for i in rollout["redo"])
