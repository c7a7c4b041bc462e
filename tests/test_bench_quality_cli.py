"""Benchmark² tables (rlpost.eval.tables) and the bench-quality command (rlpost.eval.bench_quality).

Fixtures in tests/fixtures/bench2/ (5 models; families A = a_70b > a_8b, B = b_32b > b_7b > b_1.5b,
so 1 + 3 = 4 within-family pairs per item). Columns below: a_70b a_8b b_32b b_7b b_1.5b.

items.csv, benchmark "mathx" (inversions per item):
    m1 11111 -> 0      m2 10110 -> 0      m3 01100 -> 1 (A)
    m4 10100 -> 0      m5 00011 -> 2 (b_32b wrong, b_7b and b_1.5b right)
    m6 11000 -> 0
  -> 3 inversions / (6 items * 4 pairs) = 0.125 -> CAD = exp(-12 * 0.125) = exp(-1.5).
  Item CAD exp(-12*inv/4): one inversion is exp(-3) < 0.15, so m3 and m5 are filtered;
  pair_disagreement 2*nc*(5-nc)/20: m1 0, m2 0.6, m4 0.6, m6 0.6.
benchmark "qa": q1 11111, q2 10110, q3 10100, q4 00111 -> no inversions -> CAD = 1.

scores_long.csv, domain "general": qa [0.75, 0.25, 1.0, 0.75, 0.5], gen2 [0.8, 0.6, 0.9, 0.7, 0.65].
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rlpost.eval import bench_quality, tables

FIX = Path(__file__).parent / "fixtures" / "bench2"


def close(actual, expected, tol=1e-9):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol)


def run_cli(*argv):
    parser = argparse.ArgumentParser()
    bench_quality.add_arguments(parser)
    return bench_quality.run(parser.parse_args([str(a) for a in argv]))


# --------------------------------------------------------------------------- item correctness format


@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_item_correctness_round_trip(tmp_path, ext):
    records = [
        ("epiqal", "m1", "007", True),  # leading zeros must survive
        ("epiqal", "m2", "007", 0),
        ("redbench", "m1", "a/1", 1),
        ("redbench", "m2", "a/1", False),
    ]
    path = tables.write_item_correctness(records, tmp_path / "sub" / f"items.{ext}")
    back = tables.read_item_correctness(path)
    assert back.columns.tolist() == ["benchmark", "model", "item", "correct"]
    assert back["item"].tolist() == ["007", "007", "a/1", "a/1"]
    assert back["correct"].tolist() == [True, False, True, False]
    assert back["correct"].dtype == bool


def test_write_item_correctness_accepts_dicts_and_frames(tmp_path):
    rows = [
        {"benchmark": "md", "model": "m", "item": 1, "correct": 1},
        {"benchmark": "md", "model": "n", "item": 1, "correct": 0},
    ]
    a = tables.read_item_correctness(tables.write_item_correctness(rows, tmp_path / "a.csv"))
    b = tables.read_item_correctness(tables.write_item_correctness(pd.DataFrame(rows), tmp_path / "b.jsonl"))
    assert a.equals(b)
    assert a["item"].tolist() == ["1", "1"]


def test_item_correctness_rejects_duplicates_and_bad_values(tmp_path):
    dup = [("b", "m", "q1", 1), ("b", "m", "q1", 0)]
    with pytest.raises(ValueError, match=r"duplicate \(benchmark, model, item\)"):
        tables.write_item_correctness(dup, tmp_path / "x.csv")
    with pytest.raises(ValueError, match="'correct' must be 0/1"):
        tables.write_item_correctness([("b", "m", "q1", 0.5)], tmp_path / "x.csv")
    with pytest.raises(ValueError, match=".csv or .jsonl"):
        tables.write_item_correctness([("b", "m", "q1", 1)], tmp_path / "x.txt")
    (tmp_path / "bad.csv").write_text("benchmark,model,item,correct\nb,m,q1,1\nb,m,q2,2\n")
    with pytest.raises(ValueError, match="line 3"):  # header is line 1
        tables.read_item_correctness(tmp_path / "bad.csv")
    (tmp_path / "dup.jsonl").write_text('{"benchmark":"b","model":"m","item":"q","correct":true}\n' * 2)
    with pytest.raises(ValueError, match="duplicate"):
        tables.read_item_correctness(tmp_path / "dup.jsonl")
    (tmp_path / "cols.csv").write_text("benchmark,model,correct\nb,m,1\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['item'\]"):
        tables.read_item_correctness(tmp_path / "cols.csv")


def test_correctness_matrix_from_fixture():
    items = tables.read_item_correctness(FIX / "items.csv")
    mat = tables.correctness_matrix(items, "mathx")
    assert mat.columns.tolist() == ["a_70b", "a_8b", "b_32b", "b_7b", "b_1.5b"]
    assert mat.index.tolist() == ["m1", "m2", "m3", "m4", "m5", "m6"]
    assert ["".join(str(int(v)) for v in row) for row in mat.to_numpy()] == [
        "11111", "10110", "01100", "10100", "00011", "11000"
    ]
    with pytest.raises(ValueError, match="pass benchmark="):
        tables.correctness_matrix(items)


def test_correctness_matrix_errors():
    items = pd.DataFrame(
        [("b", "m1", "q1", True), ("b", "m2", "q1", False), ("b", "m1", "q2", True)], columns=list(tables.ITEM_COLUMNS)
    )
    with pytest.raises(ValueError, match=r"missing.*\('m2', 'q2'\).*correct=0"):
        tables.correctness_matrix(items)
    with pytest.raises(ValueError, match="fewer than 2 models"):
        tables.correctness_matrix(items[items["model"] == "m1"])


# --------------------------------------------------------------------------- scores and families


def test_read_scores_and_matrix_from_fixture():
    long = tables.read_scores(FIX / "scores_long.csv")
    mat, domains = tables.scores_matrix(long)
    assert mat.index.tolist() == ["mathx", "mathy", "mathz", "qa", "gen2"]
    assert domains.tolist() == ["math", "math", "math", "general", "general"]
    close(mat.loc["qa"].to_numpy(), [0.75, 0.25, 1.0, 0.75, 0.5])


@pytest.mark.parametrize(
    "body, message",
    [
        ("benchmark,model,score\nb,m1,0.5\nb,m2,\n", "NaN or non-numeric"),
        ("benchmark,model,score\nb,m1,0.5\nc,m1,0.4\nc,m2,0.3\n", r"\['b'\] have fewer than 2 models"),
        ("benchmark,model,score\nb,m1,49\nb,m2,87\n", "divide percentages by 100"),
        ("benchmark,model,score\nb,m1,0.5\nb,m1,0.4\nb,m2,0.3\n", "duplicate"),
        ("benchmark,model\nb,m1\n", r"missing column\(s\) \['score'\]"),
        ("benchmark,model,score,domain\nb,m1,0.5,x\nb,m2,0.4,y\n", "more than one domain"),
    ],
)
def test_read_scores_errors(tmp_path, body, message):
    (tmp_path / "s.csv").write_text(body)
    with pytest.raises(ValueError, match=message):
        tables.read_scores(tmp_path / "s.csv")


def test_scores_matrix_names_missing_cells(tmp_path):
    (tmp_path / "s.csv").write_text("benchmark,model,score\nb,m1,0.5\nb,m2,0.4\nc,m1,0.3\nc,m3,0.2\n")
    with pytest.raises(ValueError, match=r"\('b', 'm3'\)"):
        tables.scores_matrix(tables.read_scores(tmp_path / "s.csv"))


@pytest.mark.parametrize("text, value", [("7B", 7e9), ("1.5b", 1.5e9), ("350M", 3.5e8), (" 70 ", 70.0), (8, 8.0)])
def test_parse_size(text, value):
    close(tables.parse_size(text), value, 1e-3)


def test_read_families_fixture_and_errors(tmp_path):
    fam = tables.read_families(FIX / "families.csv")
    assert fam["b_1.5b"] == ("B", 1.5e9)
    assert fam["a_70b"] == ("A", 70e9)
    (tmp_path / "f.csv").write_text("model,family,size\nx,F,big\n")
    with pytest.raises(ValueError, match="line 2: cannot read model size 'big'"):
        tables.read_families(tmp_path / "f.csv")
    (tmp_path / "g.csv").write_text("model,family,size\nx,F,7B\nx,G,8B\n")
    with pytest.raises(ValueError, match=r"duplicate \(model\)"):
        tables.read_families(tmp_path / "g.csv")


# --------------------------------------------------------------------------- CLI


def test_cli_full_audit(tmp_path, capsys):
    out = tmp_path / "out"
    rc = run_cli(
        "--scores", FIX / "scores_long.csv", "--items", FIX / "items.csv", "--families", FIX / "families.csv",
        "--ratio", "0.5", "--stability-k", "20",
        "--subset-out", out / "subset.csv", "--plot", out / "agreement.png", "--json-out", out / "report.json",
    )
    assert rc == 0
    printed = capsys.readouterr().out
    for text in ("CBRC", "BQS", "mathx", "gen2", "significant issues", "wrote 5 selected items"):
        assert text in printed

    report = json.loads((out / "report.json").read_text())
    # CBRC(qa) = CBRC(gen2) = tau_b(qa, gen2): qa ties a_70b with b_7b, every other pair of the
    # 10 is concordant -> P - Q = 9, untied 9 and 10 -> 9/sqrt(90).
    tau = 9 / math.sqrt(90)
    close(report["qa"]["cbrc"], tau)
    close(report["gen2"]["cbrc"], tau)
    # DS(gen2): mean 0.73, squared deviations sum 0.058 -> sigma sqrt(0.0116); all 10 pairs > 0.02
    close(report["gen2"]["ds"], math.sqrt(0.058 / 5) / 0.73)
    # DS(qa): mean 0.65, squared deviations sum 0.325; 9 of 10 pairs separated (a_70b = b_7b)
    ds_qa = math.sqrt(0.325 / 5) / 0.65 * math.sqrt(0.9)
    close(report["qa"]["ds"], ds_qa)
    close(report["mathx"]["cad"], math.exp(-1.5))
    close(report["qa"]["cad"], 1.0)
    close(report["qa"]["bqs"], 0.3 * (tau + 1) / 2 + 0.3 * ds_qa + 0.4 * 1.0)
    assert report["mathx"]["pairs_per_item"] == 4
    assert "cad" not in report["mathy"]  # no per-item results for mathy

    # subset at ratio 0.5: mathx target 3 = the three inversion-free items scoring 0.6;
    # qa target 2 of q1 (0), q2 (0.6), q3 (0.6), q4 (0.6) -> 2 of q2..q4 (random tie-break)
    subset = pd.read_csv(out / "subset.csv", dtype={"item": str})
    mathx = subset[subset["benchmark"] == "mathx"]
    assert sorted(mathx["item"]) == ["m2", "m4", "m6"]
    close(mathx["item_score"].to_numpy(), [0.6, 0.6, 0.6])
    close(mathx["item_cad"].to_numpy(), [1.0, 1.0, 1.0])
    qa = subset[subset["benchmark"] == "qa"]
    assert len(qa) == 2 and set(qa["item"]) <= {"q2", "q3", "q4"}
    assert (out / "agreement.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_items_only_and_positional_scores(tmp_path, capsys):
    assert run_cli("--items", FIX / "items.csv", "--families", FIX / "families.csv", "--stability-k", "0",
                   "--json-out", tmp_path / "r.json") == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report) == {"mathx", "qa"} and report["qa"]["domain"] == "all"
    assert "stability_full" not in report["qa"]
    # mathx accuracies 4/6, 3/6, 4/6, 3/6, 2/6 (from the item table)
    acc = np.array([4, 3, 4, 3, 2]) / 6
    close(report["mathx"]["ds"], acc.std() / acc.mean() * math.sqrt(8 / 10))  # 2 tied pairs of 10
    assert run_cli(FIX / "scores_long.csv") == 0
    assert "mathz" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        ((), "nothing to audit"),
        (("--scores", FIX / "scores_long.csv", "--plot", "x.png"), "need per-item results"),
        (
            ("--items", FIX / "items.csv", "--families", FIX / "families.csv", "--item-score", "entropy"),
            "unknown item_score",
        ),
    ],
)
def test_cli_usage_errors(capsys, extra, message):
    assert run_cli(*extra) == 2
    assert message in capsys.readouterr().err


def test_cli_model_missing_from_family_table(tmp_path, capsys):
    (tmp_path / "fam.csv").write_text("model,family,size\na_70b,A,70B\na_8b,A,8B\nb_32b,B,32B\nb_7b,B,7B\n")
    assert run_cli("--items", FIX / "items.csv", "--families", tmp_path / "fam.csv") == 2
    err = capsys.readouterr().err
    assert "['b_1.5b']" in err and "family table" in err


def test_cli_nan_score_is_an_error(tmp_path, capsys):
    (tmp_path / "s.csv").write_text("benchmark,model,score\nb,m1,0.5\nb,m2,nan\n")
    assert run_cli("--scores", tmp_path / "s.csv") == 2
    assert "NaN" in capsys.readouterr().err


def test_parquet_inputs(tmp_path):
    pytest.importorskip("pyarrow")  # pandas' parquet engine; not a declared rlpost dependency
    long = tables.read_scores(FIX / "scores_long.csv")
    long.to_parquet(tmp_path / "s.parquet")
    mat, _ = tables.scores_matrix(tables.read_scores(tmp_path / "s.parquet"))
    close(mat.loc["gen2"].to_numpy(), [0.8, 0.6, 0.9, 0.7, 0.65])
    items = tables.read_item_correctness(FIX / "items.csv")
    items.to_parquet(tmp_path / "i.parquet")
    assert tables.read_item_correctness(tmp_path / "i.parquet").equals(items)
