"""Recipe loading: typed validation fails before any model loads, naming the key and the closest valid one."""

from pathlib import Path

import pytest
import yaml

from rlpost.config import ConfigError, load_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
QUICKSTART = RECIPES / "quickstart.yaml"


def test_quickstart_loads_with_typed_values():
    recipe = load_recipe(QUICKSTART)
    assert [s.trainer for s in recipe.stages] == ["sft", "grpo"]
    assert recipe.stages[0].args["loss_type"] == "eaft"
    assert recipe.stages[0].args["learning_rate"] == pytest.approx(3e-3)
    assert recipe.stages[1].rewards[0].name == "exact_match"


@pytest.mark.parametrize(
    "override, message",
    [
        ("seeed=1", "Unknown key 'seeed'. Did you mean 'seed'?"),
        ("model.hiden_size=8", "Unknown key 'model.hiden_size'. Did you mean 'hidden_size'?"),
        ("grpo.learning_rat=1e-4", "Did you mean 'learning_rate'?"),
        ("grpo.max_steps=ten", "stages.1.args.max_steps must be an integer, got 'ten'"),
        ("sft.learning_rate=fast", "stages.0.args.learning_rate must be a number"),
        ("eval.enabled=maybe", "eval.enabled must be true or false"),
        ("data.task=additon", "Did you mean 'addition'?"),
        ("stages.1.rewards.0.name=exact_mach", "Did you mean 'exact_match'?"),
        ("stages.1.trainer=grop", "Did you mean 'grpo'?"),
        ("nokey", "must look like key=value"),
        ("data.task_options.max_opernd=9", "Did you mean 'max_operand'?"),
        ("data.task_options.carry_error=lots", "data.task_options.carry_error must be a number"),
        ("model.lora.target_module=[q_proj]", "Unknown key 'model.lora.target_module'. Did you mean 'target_modules'?"),
        ("model.lora.lora_alpha=8", "Did you mean 'alpha'?"),
        ("model.lora.r=0", "model.lora.r must be a positive integer"),
        ("model.lora.r=eight", "model.lora.r must be an integer, got 'eight'"),
        ("model.lora.dropout=1.5", "model.lora.dropout must be in [0, 1)"),
        ("model.lora.alpha=-1", "model.lora.alpha must be > 0"),
        ("model.lora.target_modules=[]", "model.lora.target_modules is empty"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_recipe(QUICKSTART, [override])
    assert message in str(info.value)


def test_overrides_apply_with_trainer_shorthand_and_yaml_values():
    recipe = load_recipe(QUICKSTART, ["grpo.learning_rate=1e-4", "sft.max_steps=7", "seed=3", "eval.max_items=10"])
    assert recipe.stages[1].args["learning_rate"] == pytest.approx(1e-4)
    assert recipe.stages[0].args["max_steps"] == 7
    assert recipe.seed == 3 and recipe.eval.max_items == 10


def test_grpo_stage_without_rewards_is_rejected(tmp_path):
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["stages"][1]["rewards"] = []
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="grpo stage needs `rewards:`"):
        load_recipe(path)


def test_missing_recipe_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe("recipes/nope.yaml")


@pytest.mark.parametrize("path", sorted(p for p in RECIPES.rglob("*.yaml") if "accelerate" not in p.parts), ids=str)
def test_every_bundled_recipe_validates(path):
    load_recipe(path)


def test_cli_reports_config_errors_without_traceback(capsys):
    from rlpost.cli import main

    assert main(["train", str(QUICKSTART), "grpo.learning_rat=1"]) == 2
    assert "Did you mean 'learning_rate'?" in capsys.readouterr().err


def test_lora_block_is_validated_like_the_rest():
    recipe = load_recipe(QUICKSTART, ["model.lora.r=8", "model.lora.target_modules=[q_proj,v_proj]"])
    lora = recipe.model.lora
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (8, 32.0, 0.05, ["q_proj", "v_proj"])
    assert load_recipe(QUICKSTART).model.lora is None  # absent: full fine-tuning
    from rlpost.config import lora_config

    config = lora_config(lora)  # what the pipeline hands TRL as peft_config
    assert (config.r, config.lora_alpha, config.lora_dropout, set(config.target_modules)) == (8, 32.0, 0.05,
                                                                                          {"q_proj", "v_proj"})
    assert config.task_type == "CAUSAL_LM"
    assert load_recipe(QUICKSTART, ["model.lora.r=8"]).model.lora.target_modules == "all-linear"


def test_lora_is_refused_for_flow_stages():
    with pytest.raises(ConfigError, match="model.lora applies to sft and grpo stages only; stage 0 is 'flow_grpo'"):
        load_recipe(RECIPES / "e_grpo" / "tiny.yaml", ["model.lora.r=4"])


@pytest.mark.parametrize(
    "rewards, message",
    [
        ("[{name: exact_match}, {name: exact_match, weight: 0.5}]",
         "stages.1.rewards.1: reward name 'exact_match' is already used by rewards.0; their metrics would mix. "
         "Give one of them `options: {name: ...}`."),
        ("[{name: exact_match, options: {name: em}}, {name: exact_match, options: {name: em}}]",
         "reward name 'em' is already used by rewards.0"),
        ("[{name: exact_match, options: {name: exact_match}}, {name: exact_match}]",
         "reward name 'exact_match' is already used by rewards.0"),
        ("[{name: exact_match, options: {name: 3}}]", "stages.1.rewards.0.options.name must be a non-empty string"),
    ],
)
def test_repeated_reward_names_fail_before_any_model_loads(rewards, message):
    with pytest.raises(ConfigError) as info:
        load_recipe(QUICKSTART, [f"grpo.rewards={rewards}"])
    assert message in str(info.value)


def test_renamed_instances_of_one_reward_validate():
    recipe = load_recipe(QUICKSTART, ["grpo.rewards=[{name: exact_match}, {name: exact_match, options: {name: em2}}]"])
    assert [r.options.get("name") for r in recipe.stages[1].rewards] == [None, "em2"]
