"""The shapes editing env: rendering and reading cells, both instruction grammars, the pixel judge inside the
unchanged ChecklistReward, the consistency and quality rewards, and the splits."""

from __future__ import annotations

import pytest
import torch

from rlpost.envs import TASKS
from rlpost.envs.shapes_edit import (
    COLOURS,
    OPS,
    SHAPES,
    ShapesConsistency,
    ShapesEditTask,
    ShapesJudge,
    ShapesQuality,
    parse_instruction,
    read_scene,
    render_scene,
)
from rlpost.rewards import get_reward
from rlpost.rewards.checklist import ChecklistReward

SCENE = {(0, 0): ("square", "red"), (0, 1): ("circle", "blue"), (1, 1): ("square", "green"),
         (2, 2): ("circle", "yellow")}


@pytest.fixture(scope="module")
def task():
    return ShapesEditTask(num_train=64, num_heldout=32, seed=3)


def test_render_and_read_every_shape_and_colour():
    scene = {(r, c): (SHAPES[(r + c) % 2], list(COLOURS)[(3 * r + c) % 4]) for r in range(3) for c in range(3)
             if (r, c) != (1, 2)}
    image = render_scene(scene)
    assert image.shape == (3, 12, 12)
    assert read_scene(image) == scene
    assert image[:, 0, 0].tolist() == [1.0, 0.0, 0.0]  # square corner is painted (red square at row 1, col 1)
    assert image[:, 0, 4].tolist() == [0.0, 0.0, 0.0]  # circle corner is background (circle at row 1, col 2)


@pytest.mark.parametrize("text, spec", [
    ("recolour the square in row 1, column 1 to yellow",
     {"op": "recolour", "shape": "square", "cell": [0, 0], "colour": "yellow"}),
    ("Move the circle in row 1, column 2 to row 3, column 1.",
     {"op": "move", "shape": "circle", "cell": [0, 1], "to": [2, 0]}),
    ("add a blue square in row 3, column 2", {"op": "add", "colour": "blue", "shape": "square", "cell": [2, 1]}),
    ("remove the circle in row 3, column 3", {"op": "remove", "shape": "circle", "cell": [2, 2]}),
    # indirect forms, grounded on SCENE
    ("paint the top-left shape the colour of grass",
     {"op": "recolour", "shape": "square", "cell": [0, 0], "colour": "green"}),
    ("paint the green square the colour of the sky",
     {"op": "recolour", "shape": "square", "cell": [1, 1], "colour": "blue"}),
    ("remove the shape right of the red square", {"op": "remove", "shape": "circle", "cell": [0, 1]}),
    ("move the shape above the green square to the cell below the green square",
     {"op": "move", "shape": "circle", "cell": [0, 1], "to": [2, 1]}),
    ("add a circle the colour of a lemon to the bottom-left cell",
     {"op": "add", "shape": "circle", "colour": "yellow", "cell": [2, 0]}),
])
def test_parse_both_instruction_forms(text, spec):
    assert parse_instruction(text, SCENE) == spec


def test_unresolvable_instructions_parse_to_none():
    assert parse_instruction("remove the red circle", SCENE) is None  # no red circle
    assert parse_instruction("remove the shape left of the red square", SCENE) is None  # off the board
    assert parse_instruction("paint the top-left shape the colour of grass") is None  # indirect needs the scene
    assert parse_instruction("recolour the square in row 4, column 1 to red") is None
    assert parse_instruction("make it nicer", SCENE) is None


def test_every_generated_task_parses_back_to_its_spec_in_both_forms(task):
    for record in task.split("train") + task.split("heldout"):
        scene = read_scene(record["source_image"])
        for form in ("canonical", "indirect"):
            spec = parse_instruction(record[form], scene)
            expected = {k: v for k, v in record["task"].items() if k not in ("source_colour", "edited_cells")}
            assert spec == expected, (form, record[form])


def test_heldout_combinations_are_unseen_but_their_parts_are_seen(task):
    def combo(r):
        spec = r["task"]
        colour = spec.get("colour") or spec["source_colour"] or read_scene(r["source_image"])[tuple(spec["cell"])][1]
        target = tuple(spec["to"] if spec["op"] == "move" else spec["cell"])
        return spec["op"], colour, target

    train = {combo(r) for r in ShapesEditTask(seed=3).split("train")}
    held = {combo(r) for r in task.split("heldout")}
    assert not train & held
    assert {c[0] for c in held} <= {c[0] for c in train} and {c[1] for c in held} <= {c[1] for c in train}
    assert {c[2] for c in held} <= {c[2] for c in train}
    assert {r["task"]["op"] for r in task.split("train")} == set(OPS)
    assert TASKS["shapes_edit"] is ShapesEditTask


def _checklist_batch(record, images, form="canonical"):
    return {"prompt": [record[form]] * len(images), "image": list(images),
            "source_image": [record["source_image"]] * len(images)}


@pytest.mark.parametrize("image_format", ["object", "openai"])
@pytest.mark.parametrize("form", ["canonical", "indirect"])
def test_judge_scores_perfect_source_and_wrong_edits(task, image_format, form):
    reward = ChecklistReward(judge=ShapesJudge(), target="image", image_format=image_format)
    for record in task.split("train")[:24]:
        batch = _checklist_batch(record, [record["target_image"], record["source_image"]], form)
        out = reward(batch, [0, 0])
        assert out.scores[0] == 1.0 and out.scores[1] < 1.0, record[form]
        assert out.metrics["judge_failures"] == 0 and out.metrics["parse_failures"] == 0


def test_wrong_colour_fails_exactly_the_colour_question():
    source = render_scene(SCENE)
    record = {"canonical": "recolour the square in row 1, column 1 to yellow", "source_image": source}
    wrong = render_scene({**SCENE, (0, 0): ("square", "blue")})
    right = render_scene({**SCENE, (0, 0): ("square", "yellow")})
    out = ChecklistReward(judge=ShapesJudge(), target="image")(_checklist_batch(record, [right, wrong]), [0, 0])
    questions = out.columns["questions"][1].splitlines()
    assert questions == ["Is there a square in row 1, column 1?", "Is the shape in row 1, column 1 yellow?",
                         "Are all cells other than row 1, column 1 unchanged from the source image?",
                         "Is there still a blue circle in row 1, column 2?",
                         "Is there still a green square in row 2, column 2?",
                         "Is there still a yellow circle in row 3, column 3?"]
    assert out.columns["answers"] == ["yes yes yes yes yes yes", "yes no yes yes yes yes"]
    assert out.scores == [1.0, pytest.approx(5 / 6)]
    # a change outside the edited cell fails the "unchanged" question (read against the source pixels) and the
    # preservation question of that shape
    spoiled = render_scene({**SCENE, (0, 0): ("square", "yellow"), (2, 2): ("circle", "red")})
    out = ChecklistReward(judge=ShapesJudge(), target="image")(_checklist_batch(record, [spoiled]), [0])
    assert out.columns["answers"] == ["yes yes no yes yes no"]
    # a blank canvas passes nothing but "empty" questions
    blank = render_scene({})
    remove = {"canonical": "remove the circle in row 3, column 3", "source_image": source}
    out = ChecklistReward(judge=ShapesJudge(), target="image")(_checklist_batch(remove, [blank]), [0])
    assert out.columns["answers"] == ["yes no no no no"] and out.scores == [pytest.approx(1 / 5)]


def test_questions_are_identical_for_every_group_member(task):
    record = task.split("train")[0]
    noisy = [(record["target_image"] + 0.3 * torch.randn(3, 12, 12)).clamp(0, 1) for _ in range(5)]
    out = ChecklistReward(judge=ShapesJudge(), target="image")(_checklist_batch(record, noisy), [7] * 5)
    assert len(set(out.columns["questions"])) == 1 and out.columns["questions"][0]


def test_joint_answer_mode_and_unparseable_instruction():
    source = render_scene(SCENE)
    record = {"canonical": "remove the circle in row 3, column 3", "source_image": source}
    done = render_scene({k: v for k, v in SCENE.items() if k != (2, 2)})
    joint = ChecklistReward(judge=ShapesJudge(), target="image", answer_mode="joint")
    # empty (3,3)? / others unchanged? / red square, blue circle, green square still there? -> source: 4 of 5
    assert joint(_checklist_batch(record, [done, source]), [0, 0]).scores == [1.0, pytest.approx(0.8)]
    bad = {"canonical": "make it pop", "source_image": source}
    out = ChecklistReward(judge=ShapesJudge(), target="image")(_checklist_batch(bad, [source]), [0])
    assert out.scores == [None] and out.metrics["judge_failures"] == 1


def test_registered_rewards_and_the_judge_protocol():
    from rlpost.rewards.judges import Judge

    assert isinstance(ShapesJudge(), Judge)
    source = render_scene(SCENE)
    done = render_scene({k: v for k, v in SCENE.items() if k != (2, 2)})
    batch = {"prompt": ["remove the circle in row 3, column 3"] * 2, "image": [done, source],
             "source_image": [source] * 2}
    assert get_reward("shapes_checklist")(batch, [0, 0]).scores == [1.0, pytest.approx(0.8)]


def test_consistency_reward_reads_only_unedited_cells():
    source = render_scene(SCENE)
    spec = {"op": "recolour", "cell": [0, 0], "shape": "square", "colour": "yellow"}
    reward = ShapesConsistency(tolerance=0.25)
    edited = render_scene({**SCENE, (0, 0): ("square", "yellow")})
    spoiled = edited.clone()
    spoiled[:, 8:12, 8:12] = 1.0  # the yellow circle's cell turns white: off-edit change
    # mean |diff| outside the edited cell: cell (2,2) changes 16 px x 3 ch; yellow->white changes 1 channel of 12 px
    # (blue 0->1) and 4 corners x 3 channels (0->1): (12 + 12) / (3 * (144 - 16)) = 0.0625 -> 1 - 0.0625/0.25 = 0.75
    batch = {"image": [edited, spoiled, source], "source_image": [source] * 3, "task": [spec] * 3}
    assert reward(batch, [0, 0, 0]).scores == [1.0, pytest.approx(0.75), 1.0]


def test_quality_reward_prefers_clean_palette_pixels():
    clean = render_scene(SCENE)
    grey = torch.full((3, 12, 12), 0.5)  # every pixel at distance >= sqrt(0.75) ~ 0.87 from the palette
    half = clean.clone()
    half[:, :6] = 0.5
    scores = ShapesQuality(tolerance=0.5)({"image": [clean, grey, half]}, [0, 1, 2]).scores
    assert scores[0] == 1.0 and scores[1] == 0.0 and scores[2] == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------- recipes

RECIPES = __import__("pathlib").Path(__file__).resolve().parent.parent / "recipes" / "thinkrl_edit"


def test_paper_recipe_validates_without_loading_weights():
    from rlpost.config import load_recipe
    from rlpost.flow_pipeline import _recipe_rewards, load_flow_recipe

    path = RECIPES / "qwen_image_edit.yaml"
    load_recipe(path)  # the CLI's validation: keys, types, reward names
    recipe, args = load_flow_recipe(path)
    assert recipe.model.name_or_path == "Qwen/Qwen-Image-Edit" and args.adapter == "qwen_image_edit"
    assert (args.use_lora, args.lora_r, args.lora_alpha) == (True, 64, 128)
    assert set(args.lora_target_modules) == {
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
        "attn.add_v_proj", "attn.to_add_out", "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj",
        "txt_mlp.net.2"}
    assert (args.mode, args.noise_level, args.num_inference_steps, args.clip_range, args.adv_clip_max) == (
        "flow_grpo", 0.7, 10, 1e-4, 5.0)
    assert (args.advantage, args.mixed_precision, args.prompt_encoder, args.decoder) == ("ucpg", "bf16", "pipeline",
                                                                                         "vae")
    modules = _recipe_rewards(recipe)  # builds the HTTP judges (no request is made)
    assert [m.name for m in modules] == ["checklist_if", "checklist_consistency", "checklist_quality"]
    assert all(type(m.judge).__name__ == "OpenAIJudge" and m.target == "image" for m in modules)
    # the LoRA targets exist in the real architecture (a 1-layer random QwenImageTransformer2DModel)
    from rlpost.models.flow import tiny_flow_transformer

    names = {n for n, _ in tiny_flow_transformer("qwen_image_edit", num_layers=1).named_modules()}
    assert all(any(n.endswith(target) for n in names) for target in args.lora_target_modules)
    assert (RECIPES.parent / "accelerate" / "zero2.yaml").is_file()


def test_tiny_recipe_runs_end_to_end(tmp_path):
    from rlpost.cli import main
    from rlpost.logging import read_metrics

    overrides = [f"output_dir={tmp_path}", "data.task_options.pretrain_steps=20", "data.task_options.num_train=32",
                 "data.task_options.num_heldout=16", "flow_grpo.max_steps=2", "flow_grpo.prompts_per_step=2"]
    assert main(["train", str(RECIPES / "tiny.yaml"), *overrides]) == 0
    rows = read_metrics(tmp_path)
    rl = [r for r in rows if r["stage"] == "flow_grpo"]
    evals = {r["when"]: r for r in rows if r["stage"] == "eval"}
    assert len(rl) == 2 and all(0 <= r["rewards/shapes_checklist/mean"] <= 1 for r in rl)
    assert set(evals) == {"before", "after"} and 0 <= evals["after"]["heldout/shapes_checklist"] <= 1
    assert [r for r in rows if r["stage"] == "pretrain"][0]["steps"] == 20
