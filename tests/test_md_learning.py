"""MD-GRPO learning check (issue 6 item 7), end to end on the real recipe ``recipes/md_grpo/tiny.yaml``: a tiny
policy trained with the LAMMPS execution reward on missing-line tasks raises its held-out execution-success rate.

Held-out success = fraction of held-out tasks whose greedy completion, put into the script, runs in the sandbox with
sane physics (every stage of :class:`rlpost.rewards.lammps_fill.LammpsFillReward` passes). Measured numbers and what
the margins below rest on: docs/md_grpo.md.
"""

from pathlib import Path

import pytest

from rlpost.config import load_recipe
from rlpost.envs import TASKS
from rlpost.envs.lammps_fill import REMOVABLE, LammpsFillTask, fill_script

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "md_grpo" / "tiny.yaml"
QUIET = ["sft.disable_tqdm=true", "grpo.disable_tqdm=true", "tracking.wandb=disabled", "tracking.plots=false"]


@pytest.fixture(autouse=True)
def _task_registered(monkeypatch):
    # Until rlpost/envs/__init__.py lists the task, register it for the test only.
    monkeypatch.setitem(TASKS, "lammps_fill", LammpsFillTask)


def heldout_success(checkpoint, task, executor) -> tuple[float, list[str]]:
    """Greedy completions of the held-out prompts, scored by execution: (success rate, completions)."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from rlpost.eval.generation import generate_greedy
    from rlpost.rewards.lammps_fill import LammpsFillReward

    model = AutoModelForCausalLM.from_pretrained(checkpoint, use_safetensors=True)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(checkpoint)
    heldout = task.split("heldout")
    completions = generate_greedy(model, tokenizer, heldout["prompt"], max_new_tokens=16)
    reward = LammpsFillReward(executor, score="binary")
    out = reward({"completion": completions, "script_template": heldout["script_template"]})
    return sum(out.scores) / len(out.scores), completions


# ---------------------------------------------------------------------------------------------------------------
# Fast checks of the task family and the reward (no training)
# ---------------------------------------------------------------------------------------------------------------
def test_fill_script_uses_first_line_only_and_needs_the_marker():
    assert fill_script("a\n<MISSING>\nb", "  fix 1 all nve \nshell rm -rf x") == "a\nfix 1 all nve\nb"
    with pytest.raises(ValueError, match="MISSING"):
        fill_script("no marker", "run 10")


def test_splits_hold_out_parameter_sets_and_teacher_drops_last_argument():
    perfect, broken = LammpsFillTask(teacher_error=0.0), LammpsFillTask(teacher_error=1.0)
    heldout, rl = perfect.split("heldout"), perfect.split("rl")
    # 2*2*2*4*2*3 = 192 parameter sets - 48 held out = 144 train sets, x 6 removable lines.
    assert (len(heldout), len(rl), len(perfect.split("sft"))) == (48, 144 * 6, 144 * 6)
    full = lambda rows: {fill_script(t, a) for t, a in zip(rows["script_template"], rows["answer"])}
    assert not full(heldout) & full(rl)
    assert [r.split()[0] for r in list(heldout["answer"])[:6]] == list(REMOVABLE)
    sft_ok, sft_bad = perfect.split("sft"), broken.split("sft")
    assert list(sft_ok["completion"]) == list(rl["answer"])
    # e.g. "velocity all create 1.5 92594" -> "velocity all create 1.5"
    assert list(sft_bad["completion"]) == [a.rsplit(" ", 1)[0] for a in rl["answer"]]
    with pytest.raises(ValueError, match="splits"):
        perfect.split("test")
    with pytest.raises(ValueError, match="teacher_error"):
        LammpsFillTask(teacher_error=1.5)


class _FakeExecutor:
    """Returns a canned LammpsResult per script line (what the reward must map to scores), no LAMMPS."""

    def __init__(self, results):
        self.results, self.ran = results, []

    def submit(self, script):
        from concurrent.futures import Future

        self.ran.append(script)
        future = Future()
        future.set_result(self.results[script.splitlines()[1]])
        return future


def _result(ok, stage, temps=(), error=None, moved=True, steps=10):
    """A LammpsResult as the worker reports it: one API record per executed run, ending at each of ``temps``."""
    from rlpost.rewards.lammps import LammpsResult

    runs = [{"command": "run", "line": 2, "step_start": steps * i, "step_end": steps * (i + 1), "natoms": 108,
             "thermo": {"Step": steps * (i + 1), "Temp": t}} for i, t in enumerate(temps)]
    return LammpsResult(ok, stage, error=error, runs=runs, n_runs=len(runs), steps=steps * len(runs),
                        moved=moved and bool(runs))


def test_reward_edge_cases():
    from rlpost.rewards.lammps_fill import LammpsFillReward

    cases = {  # completion line -> (LAMMPS result, stages score, binary score)
        "good": (_result(True, "ok", (1.5, 1.2, 0.9)), 1.0, 1.0),  # 0.25 + 0.5 + 0.25
        "no_fix": (_result(True, "ok", (1.5, 1.5), moved=False), 0.75, 0.0),  # ran, no atom moved: physics fails
        "zero_steps": (_result(True, "ok", (1.5,), steps=0), 0.25, 0.0),  # 'run 0': no dynamics, run stage fails
        "no_run": (_result(True, "ok", ()), 0.25, 0.0),  # no run command at all
        "hot": (_result(True, "ok", (1.5, 2e5)), 0.75, 0.0),  # T above the 1e5 bound
        "crash_late": (_result(False, "run", (1.5, 1.2), "ERROR: Lost atoms"), 0.25, 0.0),  # launched, not finished
        "crash_early": (_result(False, "run", (), "ERROR: Illegal fix command"), 0.0, 0.0),
        "infra": (_result(False, "launch", (), "worker did not start"), None, None),  # not the script's fault
    }
    lines = [*cases, "", "   "]
    batch = {"completion": lines, "script_template": ["x\n<MISSING>\ny"] * len(lines)}
    executor = _FakeExecutor({k: v[0] for k, v in cases.items()})
    out = LammpsFillReward(executor)(batch)
    assert out.scores == [v[1] for v in cases.values()] + [0.0, 0.0]  # empty completions: 0, never run
    assert len(executor.ran) == len(cases)
    # success over the 9 samples that ran or were empty (infra excluded): only "good"
    assert out.metrics["success_rate"] == pytest.approx(1 / 9, abs=1e-12)
    assert out.columns["success"] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert "did not move" in out.columns["error"][1] and "0 timesteps" in out.columns["error"][2]
    binary = LammpsFillReward(_FakeExecutor({k: v[0] for k, v in cases.items()}), score="binary")(batch)
    assert binary.scores == [v[2] for v in cases.values()] + [0.0, 0.0]
    lenient = LammpsFillReward(_FakeExecutor({k: v[0] for k, v in cases.items()}), require_dynamics=False)(batch)
    assert lenient.scores[1:4] == [1.0, 1.0, 1.0]  # without the dynamics rule these pass run and physics
    with pytest.raises(ValueError, match="score"):
        LammpsFillReward(executor, score="exact")


def test_reward_runs_lammps_reference_passes_teacher_error_fails():
    from rlpost.rewards.lammps import LammpsExecutor
    from rlpost.rewards.lammps_fill import LammpsFillReward

    task = LammpsFillTask()
    rows = task.split("heldout").select(range(6))  # one task per removable line
    answers, templates = list(rows["answer"]), list(rows["script_template"])
    # the teacher's truncation is valid for pair_coeff only (its cutoff argument is optional)
    broken = [a.rsplit(" ", 1)[0] for a in answers]
    expected = [1.0] * 6 + [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    reward = LammpsFillReward(score="binary", executor_options={"workers": 2, "timeout_s": 20})
    try:
        out = reward({"completion": answers + broken, "script_template": templates * 2})
    finally:
        reward.close()
    assert [r.split()[0] for r in answers] == list(REMOVABLE)
    assert out.scores == expected, out.columns["error"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_grpo_raises_heldout_execution_success_over_sft(tmp_path, seed):
    from rlpost.pipeline import run_recipe
    from rlpost.rewards.lammps import LammpsExecutor

    run_dir = tmp_path / f"seed{seed}"
    recipe = load_recipe(RECIPE, [f"output_dir={run_dir}", f"seed={seed}", f"model.seed={seed}", *QUIET])
    run_recipe(recipe)
    task = LammpsFillTask(**recipe.data.task_options)
    executor = LammpsExecutor(workers=2, timeout_s=20)
    try:
        after_sft, sft_lines = heldout_success(run_dir / "0-sft" / "final", task, executor)
        after_grpo, grpo_lines = heldout_success(run_dir / "1-grpo" / "final", task, executor)
    finally:
        executor.close()
    # Measured (docs/md_grpo.md): 0.17-0.33 after SFT (the teacher's broken lines; only `pair_coeff` without its
    # optional cutoff and the odd correct line run), 0.83 after 16 GRPO steps on both seeds; 0.25 is well below that.
    assert after_grpo >= after_sft + 0.25, (after_sft, after_grpo, sft_lines[:6], grpo_lines[:6])
