"""ThinkRL-Edit reasoning rollouts (plan → generate → reflect → regenerate) with one shared advantage, on a tiny
Qwen2 planner and a tiny FLUX generator on CPU. The reflector's judge is a scripted test double; everything else is
the shipped path."""

from __future__ import annotations

import json

import pytest
import torch
from flow_helpers import BrightnessReward, ConstantReward

from rlpost.models import tiny_causal_lm, tiny_tokenizer
from rlpost.models.flow import LatentRGBDecoder, RandomPromptEncoder, tiny_flow_transformer
from rlpost.trainers.flow_grpo import FlowGRPOConfig, FlowGRPOTrainer
from rlpost.trainers.reasoning_edit import (
    JudgeReflector,
    ReasoningEditConfig,
    ReasoningEditTrainer,
    parse_reflection,
)

TASKS = [{"prompt": "make the square red", "context": "a blue square"},
         {"prompt": "remove the circle", "context": "a green circle"}]


class ScriptedJudge:
    """Answers the reflection prompt: candidate k (call order) matches unless k is in ``mismatch``."""

    def __init__(self, mismatch=()):
        self.mismatch, self.calls = set(mismatch), []

    def complete(self, prompts, **gen):
        answers = []
        for prompt in prompts:
            k = len(self.calls)
            self.calls.append(prompt)
            answers.append(json.dumps({"detect_difference": "d", "instruction_match": k not in self.mismatch,
                                       "edit_suggestion": f"fix {k}"}))
        return answers


def make_trainer(tmp_path, rewards=None, reflector=None, **overrides):
    tokenizer = tiny_tokenizer()
    planner = tiny_causal_lm("qwen2", tokenizer=tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    gen_args = FlowGRPOConfig(mode="flow_grpo", adapter="flux", output_dir=str(tmp_path / "gen"), max_steps=1,
                              num_inference_steps=4, resolution=16, num_generations=2, use_cpu=True,
                              save_model=False, learning_rate=1e-3, timestep_fraction=1.0)
    model = tiny_flow_transformer("flux", seed=0)
    generator = FlowGRPOTrainer(model, rewards or [BrightnessReward()], gen_args,
                                prompt_encoder=RandomPromptEncoder(8, model.config.joint_attention_dim,
                                                                   model.config.pooled_projection_dim),
                                decoder=LatentRGBDecoder(4), prompts=["unused"])
    options = dict(num_candidates=3, tasks_per_step=2, max_steps=2, output_dir=str(tmp_path / "run"),
                   plan_format="text", plan_max_new_tokens=6, planner_learning_rate=1e-3)
    options.update(overrides)
    return ReasoningEditTrainer(planner, tokenizer, generator, TASKS, ReasoningEditConfig(**options),
                                reflector=reflector)


def test_both_ratios_are_one_on_policy_and_both_losses_use_the_candidate_advantage(tmp_path):
    trainer = make_trainer(tmp_path, reflect=False)
    rollout = trainer.rollout(TASKS)
    advantages = trainer.compute_advantages(rollout)
    assert advantages.shape == (6,) and advantages.abs().sum() > 0
    for group in (advantages[:3], advantages[3:]):  # z-scored within each task's candidates
        assert abs(float(group.sum())) < 1e-5
    loss, stats = trainer.compute_loss(rollout, advantages)
    assert stats["text/ratio_max_dev"] == 0.0  # bit-identical recomputation of the sampling log-probs
    assert stats["gen/ratio_mean"] == 1.0
    # On-policy PPO-clip is -mean(A) over its units: tokens for the text ratio (token_mean), images for the flow one.
    tokens = rollout["plans"].completion_mask.sum(1).float()
    expected_text = -(advantages * tokens).sum() / tokens.sum()
    assert stats["loss/text"] == pytest.approx(float(expected_text), abs=1e-6)
    assert stats["loss/gen"] == pytest.approx(float(-advantages.mean()), abs=1e-6)
    assert loss.item() == pytest.approx(stats["loss/text"] + stats["loss/gen"], abs=1e-6)


def test_reflection_regenerates_mismatched_candidates_once_with_the_feedback(tmp_path):
    judge = ScriptedJudge(mismatch={1, 4})
    reward = BrightnessReward()
    trainer = make_trainer(tmp_path, rewards=[reward], reflector=JudgeReflector(judge))
    rollout = trainer.rollout(TASKS)
    assert rollout["redo"] == [1, 4]
    assert len(judge.calls) == 6  # one reflection per candidate, none after the regeneration
    plans = rollout["plans"].texts
    assert rollout["second"].prompts == [plans[1] + " Feedback on the last edit follows. fix 1",
                                         plans[4] + " Feedback on the last edit follows. fix 4"]
    images = rollout["images"]
    torch.testing.assert_close(images[[1, 4]], rollout["second"].images)
    torch.testing.assert_close(images[[0, 2, 3, 5]], rollout["first"].images[[0, 2, 3, 5]])
    # the reward judges the task's instruction, not the plan the image was conditioned on
    assert reward.prompts == [TASKS[0]["prompt"]] * 3 + [TASKS[1]["prompt"]] * 3
    advantages = trainer.compute_advantages(rollout)
    _, stats = trainer.compute_loss(rollout, advantages)
    assert stats["gen/ratio_mean"] == 1.0  # the regenerated trajectory is on-policy too


def test_constant_reward_gives_zero_gradient_to_planner_and_generator(tmp_path):
    trainer = make_trainer(tmp_path, rewards=[ConstantReward()], reflect=False)
    rollout = trainer.rollout(TASKS)
    advantages = trainer.compute_advantages(rollout)
    assert torch.count_nonzero(advantages) == 0
    loss, _ = trainer.compute_loss(rollout, advantages)
    loss.backward()
    planner_grads = [p.grad for p in trainer.planner.parameters() if p.grad is not None]
    gen_grads = [p.grad for p in trainer.generator.model.parameters() if p.grad is not None]
    assert planner_grads and gen_grads
    assert all(torch.count_nonzero(g) == 0 for g in planner_grads + gen_grads)


def test_training_steps_update_both_policies_and_log_rows(tmp_path):
    trainer = make_trainer(tmp_path, reflector=JudgeReflector(ScriptedJudge(mismatch={0})))
    planner_before = [p.detach().clone() for p in trainer.planner.parameters()]
    gen_before = [p.detach().clone() for p in trainer.generator.model.parameters()]
    history = trainer.train()
    assert len(history) == 2
    assert any(not torch.equal(a, b) for a, b in zip(planner_before, trainer.planner.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(gen_before, trainer.generator.model.parameters()))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["stage"] == "reasoning_edit" for r in rows)
    assert rows[0]["reflect/regenerated_frac"] == pytest.approx(1 / 6)
    assert {"loss/text", "loss/gen", "text/ratio_mean", "gen/ratio_mean", "rewards/brightness/mean"} <= set(rows[0])
    result = trainer.evaluate(TASKS)
    assert len(result["plans"]) == 2 and 0.0 <= result["rewards/brightness"] <= 1.0


def test_parse_reflection_and_config_errors(tmp_path):
    r = parse_reflection('```json\n{"instruction_match": "no", "edit_suggestion": "make it redder"}\n```')
    assert r is not None and r.match is False and r.suggestion == "make it redder"
    assert parse_reflection('{"instruction_match": true}').match is True
    assert parse_reflection("the edit looks fine") is None
    assert parse_reflection('{"instruction_match": "maybe"}') is None
    assert parse_reflection(None) is None
    with pytest.raises(ValueError, match="num_candidates"):
        ReasoningEditConfig(num_candidates=1)
    with pytest.raises(ValueError, match="feedback_template"):
        ReasoningEditConfig(feedback_template="no placeholder")
    trainer = make_trainer(tmp_path, reflect=False)
    trainer.generator.args.mode = "e_grpo"
    with pytest.raises(ValueError, match="flow_grpo"):
        ReasoningEditTrainer(trainer.planner, trainer.tokenizer, trainer.generator, TASKS, ReasoningEditConfig())


def test_json_plans_are_read_and_unreadable_plans_fall_back_to_the_instruction(tmp_path):
    trainer = make_trainer(tmp_path, plan_format="json", reflect=False)
    assert trainer._read_plan('{"Rewrited": "recolour the blue square red"}') == "recolour the blue square red"
    assert trainer._read_plan("no json here") == ""
    plans = trainer.plan(TASKS)  # a random tiny LM writes no JSON: both plans fall back
    assert plans.texts == [t["prompt"] for t in TASKS] and plans.fallbacks == 2
