"""EpiQAL: set metrics, the answer parser, the rewards, the official prompt without leaks, the retry loop, and every
released item in ../shared/data/epiqal (skipped when the data is not beside the clone)."""

import json
from pathlib import Path

import pytest

from rlpost.envs.epiqal import RETRY_NOTE, epiqal_messages, load_epiqal, prompt_text, strip_discussion
from rlpost.eval.epiqal import evaluate_epiqal
from rlpost.rewards import get_reward, set_exact_match, set_f1
from rlpost.rewards.sets import parse_results

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "epiqal"

# Items in the released schemas (specs/epiqal.md §1.3): A with a dict question that holds the answer's evidence,
# B with a revised stem, C with a Discussion section left in its passage.
ITEM_A = {"idx": "7", "paragraph": "---Introduction---\nCases rose in Lima.\n---Results---\nVector density doubled.",
          "class": {"Index": "0", "Class": "Surveillance"},
          "question": {"Question": "Where did cases rise?", "Evidence": ["EVIDENCE-SENTENCE cases rose in Lima"],
                       "Rationale": "RATIONALE-TEXT the passage says Lima"},
          "choices": [{"Index": 0, "Option": "Lima"}, {"Index": 1, "Option": "Quito"}, {"Index": 2, "Option": "Cusco"}],
          "ref_answers": ["0"]}
ITEM_B = {"idx": "3", "paragraph": "Body text.", "external_info": "KG-ONLY-FACT",
          "ori_question": {"Question": "ORIGINAL-STEM?", "Evidence": ["x"], "Rationale": "y"},
          "question": {"Revised Question": "Which factor matters most?", "Revised Time": 1, "Difficulty Score": 0.3},
          "choices": [{"Index": i, "Option": f"factor {i}"} for i in range(5)], "ref_answers": ["3"]}
ITEM_C = {"idx": "9", "paragraph": "---Introduction---\nIntro.\n---Discussion---\nWITHHELD-CONCLUSION.\n---Methods---\n"
                                   "Methods text.",
          "discussion": "WITHHELD-CONCLUSION.", "question": {"Revised Question": "What can be inferred?"},
          "choices": [{"Index": 0, "Option": "a"}, {"Index": 1, "Option": "b"}], "ref_answers": ["1"]}


@pytest.fixture
def files(tmp_path):
    for subset, item in (("A", ITEM_A), ("B", ITEM_B), ("C", ITEM_C)):
        (tmp_path / f"EpiQAL-{subset}").mkdir()
        (tmp_path / f"EpiQAL-{subset}" / f"EpiQAL-{subset}.json").write_text(json.dumps([item]))
    return tmp_path


def test_set_metrics_closed_form():
    assert set_f1(["1"], ["1", "2"]) == pytest.approx(2 / 3)
    assert set_f1(["0", "1", "2"], ["1"]) == pytest.approx(0.5)
    assert set_f1([1, "1", " 1"], ["1"]) == 1.0  # cast to deduplicated strings, like the released code
    assert set_f1([], ["1"]) == 0.0 and set_f1(["1"], []) == 0.0 and set_f1([], []) == 0.0
    assert set_exact_match(["2", "0"], ["0", "2"]) == 1.0 and set_exact_match(["0"], ["0", "2"]) == 0.0
    assert set_exact_match([], []) == 1.0  # the code's EM on two empty sets (F1 there is 0)
    with pytest.raises(TypeError, match="wrap it in a list"):
        set_f1("12", ["1"])


def test_parse_results_reads_the_last_answer_after_think():
    assert parse_results('<think>maybe {"results": ["0"]}</think>{"results": ["2", "1"]}') == ["1", "2"]
    assert parse_results('{"results": ["1"]} and then {}') == ["1"]  # a trailing object without the key
    assert parse_results("```json\n{'results': ['0', '3',]}\n```") == ["0", "3"]  # near-JSON repaired
    assert parse_results('{"results": []}') == []  # "no option is correct" is an answer
    assert parse_results('{"results": 2}') == ["2"]
    assert parse_results("I think option 1.") is None and parse_results('{"results": [true]}') is None
    assert parse_results('{"results": [1.5]}') is None


def test_rewards_score_correct_high_and_trivial_or_forged_low():
    f1, em = get_reward("epiqal_f1"), get_reward("epiqal_em")
    gold = ["2"]
    completions = ['{"results": ["2"]}',               # correct
                   '{"results": ["0", "1", "2", "3", "4"]}',  # select everything
                   '{"results": []}',                  # select nothing
                   "the answer is 2",                  # no JSON
                   '{"results": ["1"]}',               # the format demo's answer echoed
                   '<think>{"results": ["2"]}</think>{"results": ["0"]}']  # right only inside the thoughts
    batch = {"completion": completions, "ref_answers": [gold] * len(completions)}
    f1_scores = f1(batch, list(range(len(completions)))).scores
    em_scores = em(batch, list(range(len(completions)))).scores
    assert f1_scores[0] == 1.0 and em_scores[0] == 1.0
    assert max(f1_scores[1:]) <= 1 / 3 and max(em_scores[1:]) == 0.0
    assert f1({"completion": ['{"results": ["0"]}'], "ref_answers": ['["0", "2"]']}, [0]).scores == [pytest.approx(2 / 3)]


def test_prompts_hold_stem_passage_options_and_nothing_that_gives_the_answer(files):
    records = {r["subset"]: r for r in load_epiqal(files)}
    a, b, c = records["A"], records["B"], records["C"]
    text_a = prompt_text(a["prompt"])
    assert "Where did cases rise?" in text_a and "Vector density doubled." in text_a and '"Option": "Quito"' in text_a
    assert "EVIDENCE-SENTENCE" not in text_a and "RATIONALE-TEXT" not in text_a
    assert [m["role"] for m in a["prompt"]] == ["system", "user", "assistant", "user"]
    assert a["prompt"][2]["content"] == '{"results": ["1"]}'  # the format demo's answer
    assert "retrieval-based question" in a["prompt"][0]["content"]
    text_b = prompt_text(b["prompt"])
    assert "Which factor matters most?" in text_b and "ORIGINAL-STEM" not in text_b and "KG-ONLY-FACT" not in text_b
    assert "epidemiological knowledge" in b["prompt"][0]["content"]
    text_c = prompt_text(c["prompt"])
    assert "WITHHELD-CONCLUSION" not in text_c and "Methods text." in text_c and "Intro." in text_c
    assert "except the Discussion" in c["prompt"][0]["content"]
    cot = load_epiqal(files, subset="B", cot=True)[0]["prompt"][0]["content"]
    assert "Step 5: Collect the indices" in cot and "Select all correct answers" not in cot


def test_loader_errors_name_the_fix(files, tmp_path):
    closed = tmp_path / "EpiQAL-A.qa_noparagraph.json"
    closed.write_text(json.dumps([{k: v for k, v in ITEM_A.items() if k != "paragraph"}]))
    with pytest.raises(ValueError, match="missing_passage='omit'"):
        load_epiqal(closed)
    omitted = load_epiqal(closed, missing_passage="omit")[0]
    assert "Passage:" not in omitted["prompt"][3]["content"] and "Where did cases rise?" in omitted["prompt"][3]["content"]
    with pytest.raises(ValueError, match="not the requested subset B"):
        load_epiqal(closed, subset="B")
    with pytest.raises(FileNotFoundError, match="checkout of github.com/myweiii/EpiQAL"):
        load_epiqal(tmp_path / "nowhere")
    assert strip_discussion("---Discussion---\nX") == ""


def test_evaluation_retries_unreadable_replies_with_the_problem_then_scores_empty(files):
    records = load_epiqal(files)  # A (gold 0), B (gold 3), C (gold 1)
    calls = []

    def scripted(prompts):  # a test double standing in for a model
        calls.append(prompts)
        replies = []
        for p in prompts:
            user = p[3]["content"]
            if "Where did cases rise?" in user:
                replies.append('{"results": ["0"]}')
            elif "Which factor" in user:  # unreadable first, right once told the problem
                replies.append("no idea" if len(calls) == 1 else '{"results": ["3"]}')
            else:
                replies.append('{"results": ["7"]}')  # never a valid option
        return replies

    out = evaluate_epiqal(scripted, records, attempts=3)
    assert len(calls) == 3 and [len(c) for c in calls] == [3, 2, 1]
    assert RETRY_NOTE in calls[1][0][0]["content"] and "no JSON object" in calls[1][0][0]["content"]
    assert "are not options" in calls[2][0][0]["content"]
    assert [r["em"] for r in out["items"]] == [1.0, 1.0, 0.0] and out["items"][2]["pred"] == []
    assert out["parse_failures"] == 1 and out["em"] == pytest.approx(2 / 3) and out["n"] == 3


@pytest.mark.skipif(not DATA.is_dir(), reason="EpiQAL data absent (../shared/data/epiqal)")
def test_every_released_item_loads_without_leaking_its_answer():
    files = sorted(DATA.glob("EpiQAL-*.json"))
    assert len(files) == 9
    for file in files:
        raw = json.loads(file.read_text())
        with_passage = all(item.get("paragraph") for item in raw)
        records = load_epiqal(file, missing_passage="error" if with_passage else "omit")
        assert len(records) == len(raw), file.name
        for item, record in zip(raw, records):
            text = prompt_text(record["prompt"])
            assert record["question"] in text and json.dumps(item["choices"]) in text
            question = item["question"] if isinstance(item["question"], dict) else {}
            # evidence quotes the passage (A's answers are stated there): a leak is evidence outside the passage
            hidden = [*question.get("Evidence", []), question.get("Rationale"), *item.get("evidence", []),
                      item.get("rationale")]
            outside = prompt_text(epiqal_messages({**record, "passage": "PASSAGE"}))
            for secret in filter(None, hidden):
                assert secret not in outside, (file.name, item["idx"])
            if item.get("discussion"):
                assert item["discussion"] not in text, (file.name, item["idx"])
    counts = {s: len(load_epiqal(DATA / f"EpiQAL-{s}.qa_noparagraph.json", missing_passage="omit")) for s in "ABC"}
    assert counts == {"A": 475, "B": 478, "C": 479}  # the released sizes (specs/epiqal.md §1.2)
    a = load_epiqal(DATA / "EpiQAL-A.qa_noparagraph.json", missing_passage="omit")
    sizes = [len(r["ref_answers"]) for r in a]
    assert [sizes.count(k) for k in (1, 2, 3, 4)] == [405, 56, 10, 4]  # A is the multi-answer subset


def test_chat_generate_answers_every_prompt_through_the_chat_template(files, tiny_model, tiny_tokenizer):
    from rlpost.eval.epiqal import chat_generate

    records = load_epiqal(files)
    generate = chat_generate(tiny_model, tiny_tokenizer, max_new_tokens=3, temperature=0.0, batch_size=2)
    replies = generate([r["prompt"] for r in records])
    assert len(replies) == 3 and all(isinstance(r, str) for r in replies)
    assert replies == generate([r["prompt"] for r in records])  # greedy at temperature 0
    out = evaluate_epiqal(generate, records, attempts=1)  # a random tiny model writes no JSON: all unparsed, 0
    assert out["parse_failures"] == 3 and out["em"] == 0.0 and out["f1"] == 0.0
