"""Edge-case tables for the built-in text rewards (rlpost.rewards.text), run through the public entry point."""

import pytest

from rlpost.rewards import get_reward, list_rewards, to_trl
from rlpost.rewards.text import extract_last_number, normalize_answer


def msg(text):
    return [{"role": "assistant", "content": text}]


def score(module, completion, **fields):
    """One sample through module.__call__ (field checks + failure policy); returns (score, metrics)."""
    out = module({"completion": [completion], **{k: [v] for k, v in fields.items()}})
    return out.scores[0], out.metrics


def test_builtins_are_registered_with_descriptions():
    listed = list_rewards()
    for name in ("exact_match", "numeric_match", "format_regex", "length_penalty"):
        assert listed[name] and "\n" not in listed[name]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  The   Cat. ", "the cat"),  # strip, lowercase, collapse spaces, trailing period
        ("Paris", "paris"),
        ("4.", "4"),
        ("a\n\tb", "a b"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x = 3, then 42", 42.0),
        ("total 1,234.5 dollars", 1234.5),
        ("-7", -7.0),
        ("1e3 items", 1000.0),
        (".5", 0.5),
        ("no digits", None),
        ("", None),
    ],
)
def test_extract_last_number(text, expected):
    assert extract_last_number(text) == expected


# completion, answer, expected score
EXACT_MATCH_CASES = [
    ("Answer: 42", "42", 1.0),
    ("work... Answer: Paris.", "paris", 1.0),  # normalized: trailing period and case
    ("Answer: 1 then answer: 2", "2", 1.0),  # the last marker wins
    ("  42 \n", "42", 1.0),  # no marker: the whole stripped completion
    ("Answer: 41", "42", 0.0),
    ("The answer is 42", "42", 0.0),  # no "Answer:" marker -> whole text compared -> mismatch
    ("", "42", 0.0),  # empty completion
    ("   ", "", 0.0),  # blank completion counts as empty even against an empty answer
    ("Answer: 42", None, None),  # no reference: not applicable
    (msg("Answer: 42"), "42", 1.0),  # message-list completion
    ("Answer: 7", 7, 1.0),  # non-string answers compare by str()
]


@pytest.mark.parametrize(("completion", "answer", "expected"), EXACT_MATCH_CASES)
def test_exact_match_table(completion, answer, expected):
    value, metrics = score(get_reward("exact_match"), completion, answer=answer)
    assert value == expected
    assert metrics["failures"] == 0


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        (r"so \boxed{12}", "12", 1.0),
        (r"\boxed{1} no wait \boxed{2}", "2", 1.0),  # last match
        ("no box at all", "12", 0.0),  # malformed output
        ("", "12", 0.0),
        (msg(r"\boxed{ 12 }"), "12", 1.0),
    ],
)
def test_exact_match_with_pattern(completion, answer, expected):
    module = get_reward("exact_match", pattern=r"\\boxed\{([^}]*)\}")
    assert score(module, completion, answer=answer)[0] == expected


def test_exact_match_without_normalize_is_case_sensitive():
    module = get_reward("exact_match", normalize=False)
    assert score(module, "Answer: Paris", answer="paris")[0] == 0.0
    assert score(module, "Answer:  Paris ", answer="Paris")[0] == 1.0  # still stripped


def test_exact_match_pattern_needs_one_group():
    with pytest.raises(ValueError, match="exactly one"):
        get_reward("exact_match", pattern=r"(a)(b)")


NUMERIC_CASES = [
    ("The total is 72.", "72", 1.0),
    ("She has #### 72", "Natalia sold 48/2 = 24 clips. 48+24 = 72 #### 72", 1.0),  # GSM8K-style answer: last number
    ("1,000 apples", 1000, 1.0),
    ("0.1 + 0.2 = 0.30000000000000004", 0.3, 1.0),  # within rel_tol 1e-6
    ("I think 71", "72", 0.0),
    ("no number here", "72", 0.0),  # malformed output
    ("", "72", 0.0),  # empty completion
    ("72", None, None),  # no reference: not applicable
    (msg("so 3.5"), 3.5, 1.0),  # message-list completion
]


@pytest.mark.parametrize(("completion", "answer", "expected"), NUMERIC_CASES)
def test_numeric_match_table(completion, answer, expected):
    value, metrics = score(get_reward("numeric_match"), completion, answer=answer)
    assert value == expected
    assert metrics["failures"] == 0


def test_numeric_match_tolerance():
    # |100.5 - 100| / 100 = 5e-3: fails at rel_tol 1e-3, passes at 1e-2
    assert score(get_reward("numeric_match", rel_tol=1e-3), "100.5", answer=100)[0] == 0.0
    assert score(get_reward("numeric_match", rel_tol=1e-2), "100.5", answer=100)[0] == 1.0
    # answer 0: relative tolerance alone accepts only exact 0; abs_tol admits 1e-9
    assert score(get_reward("numeric_match"), "1e-9", answer=0)[0] == 0.0
    assert score(get_reward("numeric_match", abs_tol=1e-6), "1e-9", answer=0)[0] == 1.0


def test_numeric_match_answer_without_number_is_a_counted_failure():
    value, metrics = score(get_reward("numeric_match"), "42", answer="forty-two")
    assert value is None and metrics["failures"] == 1


FORMAT = r"<think>.*?</think>\s*Answer: \S.*"
FORMAT_CASES = [
    ("<think>a\nb</think>\nAnswer: 4", 1.0),  # DOTALL: the thought spans lines
    ("<think>a</think> Answer: 4 because", 1.0),
    ("Answer: 4", 0.0),  # no thought
    ("<think>a</think>", 0.0),  # no answer
    ("prefix <think>a</think> Answer: 4", 0.0),  # fullmatch: nothing before the format
    ("", 0.0),  # empty completion
    (msg("<think>x</think>Answer: 1"), 1.0),  # message-list completion
]


@pytest.mark.parametrize(("completion", "expected"), FORMAT_CASES)
def test_format_regex_table(completion, expected):
    assert score(get_reward("format_regex", pattern=FORMAT), completion)[0] == expected


def test_format_regex_needs_a_pattern():
    with pytest.raises(ValueError, match="needs a `pattern`"):
        get_reward("format_regex")


LENGTH_CASES = [
    ("abcd", 0.0),  # L = target = 4 -> 0
    ("ab", -0.5),  # |2 - 4| / 4
    ("abcdef", -0.5),  # |6 - 4| / 4
    ("a" * 20, -1.0),  # |20 - 4| / 4 = 4 -> clipped to max_penalty 1
    ("", -1.0),  # empty: |0 - 4| / 4 = 1
    (msg("abc"), -0.25),  # message-list completion: len("abc") = 3 -> 1/4
]


@pytest.mark.parametrize(("completion", "expected"), LENGTH_CASES)
def test_length_penalty_chars_table(completion, expected):
    assert score(get_reward("length_penalty", target=4), completion)[0] == expected


def test_length_penalty_tokens_reads_completion_ids():
    module = get_reward("length_penalty", target=2, unit="tokens", max_penalty=0.5)
    assert module.requires == ("completion_ids",)
    # 3 ids vs target 2 -> 1/2 = 0.5; 6 ids -> 2 -> clipped 0.5
    out = module({"completion": ["x", "y"], "completion_ids": [[1, 2, 3], [1] * 6]})
    assert out.scores == [-0.5, -0.5]


@pytest.mark.parametrize(
    "options", [{}, {"target": 0}, {"target": 4, "unit": "bytes"}, {"target": 4, "max_penalty": 0}]
)
def test_length_penalty_rejects_bad_options(options):
    with pytest.raises(ValueError, match="length_penalty"):
        get_reward("length_penalty", **options)


def test_builtins_run_through_trl_adapter_with_conversational_data():
    fn = to_trl(get_reward("exact_match", field_map={"answer": "solution"}))
    scores = fn(
        prompts=[[{"role": "user", "content": "2+2?"}]] * 3,
        completions=[msg("Answer: 4"), msg("Answer: 5"), msg("")],
        completion_ids=[[1], [2], []],
        solution=["4", "4", "4"],
        group_id=[0, 0, 0],
    )
    assert scores == [1.0, 0.0, 0.0]
