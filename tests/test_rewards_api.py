"""The reward-module contract: TRL adapters, failure policy, field checks, registry, composition, concurrency."""

import asyncio
import math
import pickle
import time
from collections import defaultdict
from types import SimpleNamespace

import pytest

from rlpost.rewards import (
    FAILURE_METRICS,
    MissingFieldError,
    RewardLengthError,
    RewardModule,
    RewardOutput,
    UnknownRewardError,
    WeightedSum,
    as_text,
    from_trl,
    get_reward,
    list_rewards,
    register_lazy_reward,
    register_reward,
    run_calls,
    to_trl,
    validate_fields,
)
from rlpost.rewards import registry


# -- test modules ------------------------------------------------------------------------------------------------
class Contains(RewardModule):
    """1.0 when the answer string occurs in the completion; reports a metric and a column."""

    name = "contains"
    description = "answer substring check"
    requires = ("completion", "answer")

    def score_one(self, sample):
        if sample["answer"] is None:
            return None
        return float(sample["answer"] in sample["completion"])


class ContainsWithExtras(Contains):
    name = "contains_extras"

    def score_batch(self, batch, group_ids):
        scores = [self.score_one({k: v[i] for k, v in batch.items()}) for i in range(len(group_ids))]
        lengths = [len(c) for c in batch["completion"]]
        return RewardOutput(scores, metrics={"hits": sum(s or 0 for s in scores)}, columns={"length": lengths})


class Fixed(RewardModule):
    """Returns the per-sample values of the ``value`` column (any object), optionally after a sleep."""

    name = "fixed"
    description = "returns the value column"
    requires = ("value",)

    def __init__(self, sleep_s=0.0, **options):
        self.sleep_s = sleep_s
        super().__init__(**options)

    def score_one(self, sample):
        time.sleep(self.sleep_s)
        if sample["value"] == "raise":
            raise RuntimeError("scorer crashed")
        if sample["value"] == "hang":
            time.sleep(5.0)
        return sample["value"]


class GroupCentered(RewardModule):
    """Groupwise: value minus the mean value of its group; records the group ids it saw."""

    name = "group_centered"
    description = "value minus its group mean"
    requires = ("value",)
    granularity = "groupwise"

    def score_batch(self, batch, group_ids):
        self.seen_group_ids = list(group_ids)
        self.seen_batch_group_ids = list(batch["group_id"])
        groups = {}
        for v, g in zip(batch["value"], group_ids):
            groups.setdefault(g, []).append(v)
        return RewardOutput([v - sum(groups[g]) / len(groups[g]) for v, g in zip(batch["value"], group_ids)])


class BatchReturning(RewardModule):
    """Groupwise module whose score_batch returns whatever ``result`` holds (or raises / hangs)."""

    name = "batch_returning"
    description = "returns a fixed result"
    granularity = "groupwise"

    def __init__(self, result, **options):
        self.result = result
        super().__init__(**options)

    def score_batch(self, batch, group_ids):
        if self.result == "raise":
            raise RuntimeError("judge server down")
        if self.result == "hang":
            time.sleep(5.0)
        return self.result


def no_failures(metrics):
    return all(metrics[k] == 0 for k in FAILURE_METRICS)


# -- TRL adapter -------------------------------------------------------------------------------------------------
def test_to_trl_round_trip_with_a_trl_shaped_call():
    logged_metrics, logged_columns = [], []
    fn = to_trl(ContainsWithExtras())
    scores = fn(
        prompts=["2+2?", "3+3?", "1+1?"],
        completions=["it is 4", "it is 5", "2"],
        completion_ids=[[1, 2], [3, 4], [5]],
        trainer_state=None,
        log_extra=lambda column, values: logged_columns.append((column, values)),
        log_metric=lambda name, value: logged_metrics.append((name, value)),
        answer=["4", "6", "2"],
        group_id=[0, 0, 1],
    )
    # "4" in "it is 4" -> 1; "6" in "it is 5" -> 0; "2" in "2" -> 1
    assert scores == [1.0, 0.0, 1.0]
    assert fn.__name__ == "contains_extras"
    assert dict(logged_metrics) == {
        "rewards/contains_extras/hits": 2.0,
        "rewards/contains_extras/failures": 0.0,
        "rewards/contains_extras/timeouts": 0.0,
        "rewards/contains_extras/nonfinite": 0.0,
    }
    assert logged_columns == [("contains_extras/length", [7, 7, 1])]


def test_to_trl_reads_conversational_completions_as_last_assistant_text():
    fn = to_trl(Contains())
    completions = [
        [{"role": "assistant", "content": "no idea"}],
        [
            {"role": "assistant", "content": "thinking"},
            {"role": "tool", "content": "4"},
            {"role": "assistant", "content": "so 4"},
        ],
    ]
    prompts = [[{"role": "user", "content": "2+2?"}]] * 2
    # sample 0: "4" not in "no idea" -> 0; sample 1: last assistant turn "so 4" -> 1 (the tool's "4" is not read)
    assert fn(prompts=prompts, completions=completions, completion_ids=None, answer=["4", "4"]) == [0.0, 1.0]


def test_trl_sees_the_adapter_as_a_named_sync_reward_function():
    from trl.trainer.utils import get_callable_name, is_async_callable

    fn = to_trl(Contains(name="my_reward"))
    assert get_callable_name(fn) == "my_reward"
    assert not is_async_callable(fn)


def test_contract_with_trl_calculate_rewards():
    # Pins TRL 1.16's private GRPOTrainer._calculate_rewards: runs it on a stand-in trainer holding only what it reads.
    import trl

    class Stub:
        state = SimpleNamespace(global_step=0)
        args = SimpleNamespace(report_to=[])
        accelerator = SimpleNamespace(device="cpu", is_main_process=True)
        environments = None
        _log_completion_extra = trl.GRPOTrainer._log_completion_extra
        _log_metric = trl.GRPOTrainer._log_metric

    stub = Stub()
    stub._pending_extra_logs, stub._pending_metrics = defaultdict(list), defaultdict(list)
    total = WeightedSum([Contains(), Fixed(name="fixed", field_map={"value": "score"})], weights=[1.0, 0.5])
    stub.reward_funcs, stub.reward_processing_classes, stub.reward_func_names = [to_trl(total)], [None], [total.name]
    inputs = [
        {"prompt": "q", "answer": "4", "score": 2.0, "group_id": 3},
        {"prompt": "q", "answer": "4", "score": None, "group_id": 3},
    ]
    rewards = trl.GRPOTrainer._calculate_rewards(stub, inputs, ["q", "q"], ["is 4", "is 5"], [[1], [2]])
    # sample 0: 1·1 + 0.5·2 = 2; sample 1: 1·0 + (fixed is None, skipped) = 0
    assert rewards.flatten().tolist() == [2.0, 0.0]
    assert stub._pending_metrics["rewards/contains/mean"] == [0.5]
    assert stub._pending_metrics["rewards/fixed/mean"] == [2.0]
    assert stub._pending_metrics["rewards/weighted_sum/failures"] == [0.0]
    assert stub._pending_extra_logs["weighted_sum/contains"] == [1.0, 0.0]


@pytest.mark.parametrize(
    ("num_generations", "group_id", "expected"),
    [
        (None, [5, 9, 5, 9], [5, 9, 5, 9]),  # explicit column wins
        (2, None, [0, 0, 1, 1]),  # i // G
        (None, None, [0, 1, 2, 3]),  # each sample its own group
    ],
)
def test_to_trl_group_ids(num_generations, group_id, expected):
    module = GroupCentered()
    extra = {} if group_id is None else {"group_id": group_id}
    fn = to_trl(module, num_generations=num_generations)
    fn(prompts=["p"] * 4, completions=["c"] * 4, value=[1.0, 2.0, 3.0, 4.0], **extra)
    assert module.seen_group_ids == expected
    assert module.seen_batch_group_ids == expected


def test_from_trl_of_to_trl_is_equivalent():
    module = Contains()
    wrapped = from_trl(to_trl(module), requires=("completion", "answer"))
    batch = {
        "prompt": ["q1", "q2", "q3"],
        "completion": ["x 4", [{"role": "assistant", "content": "y 5"}], "z"],
        "answer": ["4", "5", None],
    }
    direct = module(batch, [0, 0, 1])
    via_trl = wrapped(batch, [0, 0, 1])
    assert wrapped.name == "contains"
    assert via_trl.scores == direct.scores == [1.0, 1.0, None]
    # the inner module's counters come back through TRL's log_metric hook under their full names
    assert via_trl.metrics["rewards/contains/failures"] == 0


def test_from_trl_passes_raw_messages_columns_and_collects_logs():
    seen = {}

    def trl_style(prompts, completions, completion_ids, log_metric, log_extra, answer, **kwargs):
        seen.update(prompts=prompts, completions=completions, answer=answer, kwargs=sorted(kwargs))
        log_metric("calls", 1)
        log_extra("echo", answer)
        return [float(c[0]["content"] == a) for c, a in zip(completions, answer)]

    messages = [[{"role": "assistant", "content": "7"}], [{"role": "assistant", "content": "8"}]]
    module = from_trl(trl_style, requires=("completion", "answer"))
    out = module({"prompt": ["a", "b"], "completion": messages, "answer": ["7", "9"]})
    assert out.scores == [1.0, 0.0]
    assert seen["completions"] == messages  # raw message lists, as TRL would pass them
    assert seen["prompts"] == ["a", "b"]
    assert seen["kwargs"] == ["group_id", "trainer_state"]
    assert out.metrics["calls"] == 1.0 and out.columns == {"echo": ["7", "9"]}


def test_from_trl_wraps_trl_builtin_and_async_functions():
    from trl.rewards import think_format_reward

    module = from_trl(think_format_reward)
    completions = [
        [{"role": "assistant", "content": "<think>\nhm\n</think>\n4"}],
        [{"role": "assistant", "content": "4"}],
    ]
    assert module.name == "think_format_reward"
    assert module({"prompt": ["q", "q"], "completion": completions}).scores == [1.0, 0.0]

    async def judge(prompts, completions, **kwargs):
        await asyncio.sleep(0)
        return [float(len(c)) for c in completions]

    assert from_trl(judge)({"prompt": ["q", "q"], "completion": ["ab", "abc"]}).scores == [2.0, 3.0]


# -- failure policy ----------------------------------------------------------------------------------------------
def test_raising_sample_scores_none_and_others_survive():
    out = Fixed()({"value": [1.0, "raise", 0.5]})
    assert out.scores == [1.0, None, 0.5]
    assert (out.metrics["failures"], out.metrics["timeouts"], out.metrics["nonfinite"]) == (1, 0, 0)


def test_hanging_sample_times_out_without_blocking():
    module = Fixed(timeout_s=0.3, max_concurrency=2)
    start = time.monotonic()
    out = module({"value": [1.0, "hang", 2.0]})
    elapsed = time.monotonic() - start
    assert elapsed < 1.0  # the hung call sleeps 5 s; it is abandoned at 0.3 s
    assert out.scores == [1.0, None, 2.0]
    assert (out.metrics["failures"], out.metrics["timeouts"]) == (0, 1)


def test_timeout_is_enforced_with_max_concurrency_one():
    start = time.monotonic()
    out = Fixed(timeout_s=0.3)({"value": ["hang"]})
    assert time.monotonic() - start < 1.0
    assert out.scores == [None] and out.metrics["timeouts"] == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_pointwise_score_drops_only_that_sample(bad):
    out = Fixed()({"value": [0.25, bad, 3]})
    assert out.scores == [0.25, None, 3.0]
    assert out.metrics["nonfinite"] == 1 and out.metrics["failures"] == 0


def test_non_numeric_score_counts_as_failure():
    out = Fixed()({"value": ["oops", 1]})
    assert out.scores == [None, 1.0] and out.metrics["failures"] == 1


def test_nonfinite_groupwise_score_drops_its_whole_group():
    # groups: {0: samples 0, 2}, {1: samples 1, 3}; sample 2 is NaN -> group 0 dropped (2 samples), group 1 kept
    out = BatchReturning([1.0, 2.0, math.nan, 3.0])({"completion": ["a"] * 4}, [0, 1, 0, 1])
    assert out.scores == [None, 2.0, None, 3.0]
    assert out.metrics["nonfinite"] == 2


@pytest.mark.parametrize(("result", "metric"), [("raise", "failures"), ("hang", "timeouts")])
def test_failing_batch_call_nulls_the_whole_batch(result, metric):
    start = time.monotonic()
    out = BatchReturning(result, timeout_s=0.3)({"completion": ["a", "b", "c"]}, [0, 0, 1])
    assert time.monotonic() - start < 1.0
    assert out.scores == [None, None, None]
    assert out.metrics[metric] == 3  # counted per affected sample


def test_wrong_length_raises_naming_module_and_lengths():
    with pytest.raises(RewardLengthError, match=r"reward 'batch_returning' returned 2 scores for a batch of 3"):
        BatchReturning([1.0, 2.0])({"completion": ["a", "b", "c"]})
    with pytest.raises(RewardLengthError, match=r"column 'x' with 1 values for a batch of 2"):
        BatchReturning(RewardOutput([1.0, 2.0], columns={"x": [0]}))({"completion": ["a", "b"]})


def test_wrong_length_inside_a_weighted_sum_still_raises():
    with pytest.raises(RewardLengthError, match="batch_returning"):
        WeightedSum([BatchReturning([1.0]), Contains()])({"completion": ["a", "b"], "answer": ["a", "b"]})


def test_mismatched_column_lengths_raise():
    with pytest.raises(ValueError, match="different lengths"):
        Contains()({"completion": ["a", "b"], "answer": ["a"]})


# -- fields ------------------------------------------------------------------------------------------------------
def test_missing_field_error_names_reward_field_and_fix():
    with pytest.raises(MissingFieldError) as info:
        validate_fields([Contains()], ["prompt", "question"])
    message = str(info.value)
    assert "reward 'contains' requires dataset field 'answer', which is missing." in message
    assert "Available fields: ['completion', 'completion_ids', 'completion_messages', 'group_id'" in message
    assert "'question'" in message
    assert "Add an 'answer' column to the dataset or map it with `field_map`." in message
    with pytest.raises(MissingFieldError, match="'answer'"):
        Contains()({"completion": ["a"]})


def test_validate_fields_accepts_trainer_fields_and_mapped_columns():
    modules = [Contains(field_map={"answer": "solution"}), Fixed(field_map={"value": "completion_ids"})]
    validate_fields(modules, ["solution"])
    expected = r"dataset field 'solution' \(its 'answer' field, mapped by field_map\)"
    with pytest.raises(MissingFieldError, match=expected):
        validate_fields(Contains(field_map={"answer": "solution"}), ["answer"])


def test_field_map_reads_the_renamed_column():
    module = Contains(field_map={"answer": "solution"})
    assert module({"completion": ["x 4", "x 4"], "solution": ["4", "5"]}).scores == [1.0, 0.0]


def test_field_map_with_unknown_field_is_rejected():
    with pytest.raises(ValueError, match=r"renames \['answr'\]"):
        Contains(field_map={"answr": "solution"})


def test_module_without_scoring_method_is_rejected():
    class Empty(RewardModule):
        name = "empty"

    with pytest.raises(TypeError, match="must implement score_one"):
        Empty()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        (None, ""),
        ([{"role": "assistant", "content": "a"}], "a"),
        ([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}], "q"),
        (
            [{"role": "assistant", "content": [{"type": "text", "text": "x"}, {"type": "image"}, {"type": "text", "text": "y"}]}],
            "xy",
        ),
        ([{"role": "assistant", "content": None}], ""),
        ([{"role": "tool", "content": "t"}], "t"),  # no assistant/user turn: fall back to the last message
        ([], ""),
    ],
)
def test_as_text(value, expected):
    assert as_text(value) == expected


def test_as_text_rejects_non_message_lists():
    with pytest.raises(TypeError, match="list of message dicts"):
        as_text(["a", "b"])


# -- groupwise ---------------------------------------------------------------------------------------------------
def test_groupwise_module_receives_non_contiguous_group_ids():
    module = GroupCentered()
    # group 7 = samples {0, 2} with values {1, 3} -> mean 2; group 3 = samples {1, 3} with values {10, 20} -> mean 15
    out = module({"value": [1.0, 10.0, 3.0, 20.0]}, [7, 3, 7, 3])
    assert module.seen_group_ids == [7, 3, 7, 3]
    assert out.scores == [-1.0, -5.0, 1.0, 5.0]


# -- registry ----------------------------------------------------------------------------------------------------
@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_LAZY", dict(registry._LAZY))


def test_unknown_name_lists_valid_names_and_closest_match():
    with pytest.raises(UnknownRewardError) as info:
        get_reward("exact_mach")
    message = str(info.value)
    assert "Did you mean 'exact_match'?" in message and "'numeric_match'" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_register_get_and_list(clean_registry):
    @register_reward("test_contains")
    class TestContains(Contains):
        description = "test-only reward"

    module = get_reward("test_contains", field_map={"answer": "solution"})
    assert isinstance(module, TestContains) and module.name == "test_contains"
    assert module.field_map == {"answer": "solution"}
    assert list_rewards()["test_contains"] == "test-only reward"
    with pytest.raises(ValueError, match="already registered"):

        @register_reward("test_contains")
        class Other(Contains):
            description = "clash"


def test_lazy_reward_is_listed_and_imported_on_use(clean_registry):
    register_lazy_reward("lazy_missing", "rlpost_no_such_module.rewards:Thing", "heavy reward")
    assert list_rewards()["lazy_missing"] == "heavy reward"
    with pytest.raises(ImportError, match="rlpost_no_such_module"):
        get_reward("lazy_missing")


def trl_style_length(completions, **kwargs):
    """Length of each completion."""
    return [float(len(c)) for c in completions]


def test_get_reward_by_import_path():
    module = get_reward("rlpost.rewards.text:ExactMatch", normalize=False)
    assert module.name == "exact_match" and module.normalize is False
    function_module = get_reward(f"{__name__}:trl_style_length", requires=("completion",))
    assert function_module.name == "trl_style_length"
    assert function_module.description == "Length of each completion."
    assert function_module({"completion": ["ab", "abcd"]}).scores == [2.0, 4.0]


def test_bad_options_name_the_reward():
    with pytest.raises(TypeError, match="reward 'exact_match' rejected its options"):
        get_reward("exact_match", patern="x")


# -- composition -------------------------------------------------------------------------------------------------
def test_weighted_sum_skips_none_components():
    a = Fixed(name="a")
    b = Fixed(name="b", field_map={"value": "other"})
    total = WeightedSum([a, b], weights=[2.0, -1.0])
    out = total({"value": [1.0, None, 0.5], "other": [None, None, 2.0]})
    # sample 0: 2·1 (b is None) = 2; sample 1: both None -> None; sample 2: 2·0.5 - 1·2 = -1
    assert out.scores == [2.0, None, -1.0]
    assert out.metrics["rewards/a/mean"] == 0.75  # (1 + 0.5) / 2
    assert out.metrics["rewards/b/mean"] == 2.0
    assert out.metrics["rewards/a/failures"] == 0 and no_failures(out.metrics)
    assert out.columns == {"a": [1.0, None, 0.5], "b": [None, None, 2.0]}
    assert total.requires == ("value", "other")


def test_weighted_sum_metrics_reach_trl_under_component_names():
    logged = {}
    total = WeightedSum([Contains(), Fixed(name="fixed", field_map={"value": "completion_ids"})], weights=[1.0, 0.0])
    fn = to_trl(total)
    fn(
        prompts=["p", "p"], completions=["4", "5"], completion_ids=[1, 2], answer=["4", "4"],
        log_metric=logged.__setitem__,
    )
    assert logged["rewards/contains/mean"] == 0.5
    assert logged["rewards/fixed/mean"] == 1.5
    assert logged["rewards/weighted_sum/failures"] == 0.0


def test_weighted_sum_rejects_duplicate_names_and_bad_weights():
    with pytest.raises(ValueError, match="distinct names"):
        WeightedSum([Contains(), Contains()])
    with pytest.raises(ValueError, match="1 weights for 2 modules"):
        WeightedSum([Contains(), Fixed()], weights=[1.0])


# -- concurrency -------------------------------------------------------------------------------------------------
def test_pointwise_calls_overlap_with_max_concurrency():
    module = Fixed(sleep_s=0.2, max_concurrency=4)
    start = time.monotonic()
    out = module({"value": [1, 2, 3, 4]})
    assert time.monotonic() - start < 0.5  # serial would take 4 × 0.2 = 0.8 s
    assert out.scores == [1.0, 2.0, 3.0, 4.0]


def test_max_concurrency_limits_overlap():
    # 4 calls of 0.15 s, 2 at a time -> two waves -> at least 0.3 s
    start = time.monotonic()
    Fixed(sleep_s=0.15, max_concurrency=2)({"value": [1, 2, 3, 4]})
    assert time.monotonic() - start >= 0.3


def test_slow_weighted_sum_components_run_concurrently():
    a = Fixed(name="a", sleep_s=0.3, timeout_s=2.0)
    b = Fixed(name="b", sleep_s=0.3, timeout_s=2.0)
    start = time.monotonic()
    out = WeightedSum([a, b])({"value": [1.0]})
    assert time.monotonic() - start < 0.5  # serial would take 0.6 s
    assert out.scores == [2.0]


def test_trl_adapter_pickles():
    # TRL's async GRPO ships reward functions to a worker process
    fn = pickle.loads(pickle.dumps(to_trl(Contains(), num_generations=2)))
    assert fn.__name__ == "contains"
    assert fn(prompts=["q"], completions=["4"], answer=["4"]) == [1.0]


def test_run_calls_keeps_order_and_reports_status():
    def boom():
        raise KeyError("k")

    results = run_calls([lambda: 1, boom, lambda: 3], max_concurrency=3, timeout_s=1.0)
    assert [r.status for r in results] == ["ok", "error", "ok"]
    assert results[0].value == 1 and results[2].value == 3 and isinstance(results[1].error, KeyError)
