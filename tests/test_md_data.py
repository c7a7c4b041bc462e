"""MD-EvalBench loader: own fixtures always, the published benchmark when present."""

import base64
import collections
import json
from pathlib import Path

import pytest

from rlpost.envs.md_data import (
    MDDataError,
    decode_field,
    load_codegen_tasks,
    load_md_evalbench,
    load_qa_items,
)

FIXTURES = Path(__file__).parent / "fixtures" / "md"
BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "md_evalbench"


def test_decode_field_round_trip_and_passthrough():
    # "BASE64:" + b64('["A", "C"]') decodes to the JSON list; other values pass unchanged
    encoded = "BASE64:" + base64.b64encode(b'["A", "C"]').decode()
    assert decode_field(encoded) == ["A", "C"]
    assert decode_field("units lj") == "units lj"
    assert decode_field(None) is None
    assert decode_field(["B"]) == ["B"]


def test_decode_field_bad_payload_names_the_problem():
    with pytest.raises(MDDataError, match="not base64 of JSON"):
        decode_field("BASE64:%%%not-base64")


def test_codegen_fixture_decodes_base64_and_plain_code():
    tasks = load_codegen_tasks(FIXTURES / "codegen_tasks.json")
    assert [t.index for t in tasks] == [0, 1, 2]
    # task 0 is stored encoded, task 2 plain; both come back as the script text
    assert tasks[0].reference_code.splitlines()[1].split() == ["units", "lj"]
    assert "jump            SELF segment" in tasks[2].reference_code
    assert tasks[0].to_record()["prompt"].startswith("Use LAMMPS to melt")


def test_qa_fixture_types_and_answers():
    items = {i.id: i for i in load_qa_items(FIXTURES / "qa.jsonl", subset="mine")}
    assert items["s1"].answer == ["B"] and items["s1"].answer_text is None
    assert items["m1"].answer == ["A", "B", "D"]
    assert items["f1"].answer is None and items["f1"].answer_text == "pair_style"
    # open_qa stores answer [] with a reference text: answer becomes None
    assert items["o1"].answer is None and items["o1"].answer_text.startswith("The velocity")
    assert items["s2"].answer == ["A"]  # unencoded answer accepted
    assert {i.subset for i in items.values()} == {"mine"}


def test_qa_rejects_unknown_type(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "type": "essay", "question": "?"}) + "\n")
    with pytest.raises(MDDataError, match="unknown type 'essay'"):
        load_qa_items(bad)


def test_codegen_rejects_missing_task(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"standrd_code": "units lj"}]))
    with pytest.raises(MDDataError, match="item 0 has no string 'task'"):
        load_codegen_tasks(bad)


def test_missing_language_folder_says_what_to_pass(tmp_path):
    with pytest.raises(MDDataError, match="EN/ and ZH/"):
        load_md_evalbench(tmp_path)


@pytest.mark.skipif(not BENCH.is_dir(), reason="published MD-EvalBench not present")
@pytest.mark.parametrize("lang", ["EN", "ZH"])
def test_published_benchmark_counts(lang):
    bench = load_md_evalbench(BENCH, lang)
    # counts from the dataset card / spec section 4.4
    assert len(bench.codegen) == 167
    assert all(isinstance(t.reference_code, str) and t.reference_code for t in bench.codegen)
    assert collections.Counter(i.type for i in bench.syntax_qa) == {
        "single_choice": 134, "multiple_choice": 81, "fill_blank": 81, "open_qa": 28}
    assert collections.Counter(i.type for i in bench.knowledge_qa) == {
        "single_choice": 151, "multiple_choice": 85, "fill_blank": 63, "open_qa": 37}
    choice = [i for i in bench.syntax_qa + bench.knowledge_qa
              if i.type in ("single_choice", "multiple_choice")]
    # every choice answer is a list of option letters that exist in the item
    assert all(i.answer and set(i.answer) <= set(i.options) for i in choice)
    singles = [i for i in choice if i.type == "single_choice"]
    assert all(len(i.answer) == 1 for i in singles)
