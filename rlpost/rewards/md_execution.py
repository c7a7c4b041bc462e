"""``md_execution``: MDAgent2's execution reward for generated LAMMPS scripts (issue 6 item 3).

MDAgent2 (arXiv 2601.02075; ``FredericVAN/PKU_MDAgent2`` @e3ed738, spec mdagent2.md §4.2) scores a completion by
extracting its script, running it in a sandbox and asking an LLM judge to fill a 15-item rubric with penalties. Here
each of those steps is a stage whose outcome is logged as its own component:

==========  =======================================================================================================
stage       passes when
==========  =======================================================================================================
extract     the completion holds a script (:mod:`rlpost.rewards.extract`); otherwise the reward is 0 (spec [I])
launch      the simulation started: the script finished, or it failed after executing a ``run``/``minimize``
run         LAMMPS finished the whole script without error, limit or timeout, **and executed dynamics**: at least one
            ``run``/``minimize`` that advanced the timestep (counted by the worker through the LAMMPS API)
physics     the atoms moved during a run (API), every end-of-run thermo value LAMMPS computed is finite, ``T`` lies
            in ``temp_bounds`` and no atoms were lost (:func:`physics_report`)
judge       optional: a judge callable filled the rubric; its score replaces the stage sum (:func:`rubric_reward`)
==========  =======================================================================================================

The stage rule is one function, :func:`score_stages`, shared with :mod:`rlpost.rewards.lammps_fill` and the
runtime env (:mod:`rlpost.envs.md_runtime`). Thermo values come from the LAMMPS API (``LammpsResult.runs``:
``lmp.last_thermo()`` after each run), never from the log text, so ``print`` lines that look like thermo output earn
nothing, and a script without dynamics (``units lj``) passes launch only (0.25).

Without a judge the reward is ``Σ_s w_s·passed_s`` over launch/run/physics with ``stage_weights`` (default 0.25 /
0.5 / 0.25, summing to 1). The paper's reward always goes through the judge, so these weights are rlpost's choice,
not the paper's; stages are cumulative (a script that did not run cannot pass physics).

With a judge, ``reward = (clip(module − |penalty|, −10, 30) + 10) / 40`` (``cal_reward``), exactly as MDAgent2. The
judge sees the task, the script and a summary of the run (status, error, thermo head and tail, physics report), as
``lammps_evaluator_system_prompt_v7`` does; its JSON is read from ``score_summary`` with a fallback to top-level
keys (as ``lammps_agent_harness/tools.py`` does, fixing the runtime's 0.25 bug), and from ``key: number`` text when
no JSON parses.

Per-sample columns (``md_execution/<column>`` in the completions table): ``stage`` (the last stage passed), the 0/1
stage flags, ``error`` (what failed: LAMMPS error, physics problem) and ``penalty`` (the judge's penalty reasons) -
the last two are the failure context that :class:`rlpost.envs.recycling.RecyclingBuffer` turns into new prompts.
"""

from __future__ import annotations

import logging
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from rlpost.rewards.base import RewardModule, RewardOutput
from rlpost.rewards.lammps import api_thermo
from rlpost.rewards.extract import find_script, json_objects
from rlpost.rewards.registry import register_reward

__all__ = [
    "DEFAULT_JUDGE_TEMPLATE",
    "DEFAULT_STAGE_WEIGHTS",
    "MDExecutionReward",
    "PhysicsReport",
    "RubricScore",
    "dynamics_problem",
    "parse_rubric",
    "score_stages",
    "physics_report",
    "rubric_reward",
    "result_summary",
]

logger = logging.getLogger(__name__)

DEFAULT_STAGE_WEIGHTS: Mapping[str, float] = {"launch": 0.25, "run": 0.5, "physics": 0.25}
_STAGES = ("launch", "run", "physics")

# Commands after which a changing atom count is intended rather than lost atoms.
_ATOM_COUNT_CHANGERS = re.compile(
    r"^\s*(delete_atoms|create_atoms|read_data|read_restart|read_dump|"
    r"fix\s+\S+\s+\S+\s+(deposit|evaporate|pour|gcmc|widom|atom/swap))\b", re.MULTILINE)
_RUN_CMD = re.compile(r"^\s*(run|minimize|rerun)\b", re.MULTILINE)
_MINIMIZE = re.compile(r"^\s*minimize\b", re.MULTILINE)

DEFAULT_JUDGE_TEMPLATE = """You are an expert reviewer of LAMMPS molecular-dynamics scripts.
Score the script written for the task below with this rubric (spec: MDAgent2 evaluator v7).

Module items (total 0-30): A1 syntax 0-3; A2 script quality 0-1; A3 model/region 0-1; A4 boundary 0-1;
A5 potential match 0-2; A6 timestep 0-1; A7 computes 0-1; A8 thermostat/barostat 0-1; A9 process logic 0-1;
A10 run commands 0-1; A11 output settings 0-1; A12 no runtime errors 0-2; A13 conserved-quantity stability 0-3;
A14 state-variable stability 0-1; A15 task completion 0-10.
Penalties: E0 task inconsistency -20..0 (-20 off-topic, -15 wrong element or potential, -5 minor deviation);
E1 cannot launch -6; E2 crash or lost atoms -4; E3 bad physics parameters -3; E4 no output -2; E5 code quality -1.
If no log exists, give neutral points to the log-dependent items.

Answer with JSON only:
{{"analysis_chain": "...", "module_detail": {{"A1": 0, ...}},
 "penalty_detail": {{"E1": {{"score": 0, "reason": "..."}}}},
 "score_summary": {{"module_score": 0, "penalty_score": 0, "final_score": 0}}}}

## Task
{task}

## Script
```lammps
{code}
```

## Execution result
{result}
"""


# ---------------------------------------------------------------------------------------------------------------
# Pure pieces: rubric arithmetic, rubric parsing, physics checks
# ---------------------------------------------------------------------------------------------------------------
def rubric_reward(module_score: float, penalty_score: float, low: float = -10.0, high: float = 30.0) -> float:
    """MDAgent2's scalar reward (``utils/common_utils.py::cal_reward``, spec mdagent2.md §4.2 step 4).

    ``reward = (clip(module − |penalty|, low, high) − low) / (high − low)``; with the defaults
    ``(raw + 10) / 40`` in [0, 1]. The penalty's sign is ignored because judges write it as either −6 or 6.
    """
    raw = min(max(float(module_score) - abs(float(penalty_score)), low), high)
    return (raw - low) / (high - low)


@dataclass
class RubricScore:
    """A judge's rubric verdict: module points (0-30), penalty points (≤ 0 by convention) and penalty reasons."""

    module: float
    penalty: float
    reasons: list[str] = field(default_factory=list)

    @property
    def reward(self) -> float:
        return rubric_reward(self.module, self.penalty)


_NUMBER = r"(-?\d+(?:\.\d+)?)"


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):  # {"score": -6, "reason": ...}
        return _as_number(value.get("score"))
    if isinstance(value, str):
        m = re.search(_NUMBER, value)
        return float(m.group(1)) if m else None
    return None


def _penalty_reasons(detail: Any) -> tuple[list[str], float | None]:
    """Reasons of the non-zero penalty items and their summed points."""
    if not isinstance(detail, dict):
        return [], None
    reasons, total, any_number = [], 0.0, False
    for key, value in detail.items():
        points = _as_number(value)
        if points is None:
            continue
        any_number = True
        total += -abs(points)
        if points != 0:
            reason = value.get("reason") if isinstance(value, dict) else None
            reasons.append(f"{key} ({-abs(points):g}): {reason}" if reason else f"{key} ({-abs(points):g})")
    return reasons, (total if any_number else None)


def parse_rubric(text: str | None) -> RubricScore | None:
    """Read a judge's rubric answer; None when it holds no usable score.

    Accepted, first match wins: a JSON object (anywhere in the text, fenced or not) with ``score_summary``
    ``{module_score, penalty_score}``; the same keys at the top level; ``module_detail`` / ``penalty_detail`` items
    summed; finally ``module_score: N`` / ``penalty_score: N`` written as text. A missing penalty counts as 0; the
    penalty is returned as ``-|penalty|`` whichever sign the judge wrote.
    """
    if not text:
        return None
    for obj in reversed(json_objects(text)):
        summary = obj.get("score_summary") if isinstance(obj.get("score_summary"), dict) else obj
        module = _as_number(summary.get("module_score"))
        penalty = _as_number(summary.get("penalty_score"))
        reasons, detail_penalty = _penalty_reasons(obj.get("penalty_detail"))
        if module is None and isinstance(obj.get("module_detail"), dict):
            items = [_as_number(v) for v in obj["module_detail"].values()]
            items = [v for v in items if v is not None]
            module = sum(items) if items else None
        if module is None:
            continue
        if penalty is None:
            penalty = detail_penalty if detail_penalty is not None else 0.0
        return RubricScore(module, -abs(penalty), reasons)
    module = re.search(r"module_score\W{0,4}?" + _NUMBER, text)
    if module is None:
        return None
    penalty = re.search(r"penalty_score\W{0,4}?" + _NUMBER, text)
    return RubricScore(float(module.group(1)), -abs(float(penalty.group(1))) if penalty else 0.0)


@dataclass
class PhysicsReport:
    """Physics sanity of one finished run; ``ok`` when ``problems`` is empty."""

    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _nonfinite_rows(log: str) -> int:
    """Log lines made only of numbers of which one is NaN/inf (thermo rows; LAMMPS prints ``nan``/``-nan``/``inf``).

    Read from the log rather than from ``LammpsResult.thermo``, where NaN also pads columns a run did not print.
    """
    count = 0
    for line in log.splitlines():
        words = line.split()
        if not words:
            continue
        try:
            values = [float(w) for w in words]
        except ValueError:
            continue
        count += not all(math.isfinite(v) for v in values)
    return count


def physics_report(thermo: Mapping[str, list[float]], log: str, script: str,
                   temp_bounds: tuple[float, float] = (0.0, 1e5)) -> PhysicsReport:
    """Check a finished run for finite thermo output, a temperature within bounds and no lost atoms.

    Args:
        thermo: ``LammpsResult.thermo`` (column -> values).
        log: the LAMMPS log text (``LammpsResult.log``).
        script: the script that ran; ``minimize`` allows T = 0, commands that add or delete atoms after the first
            ``run``/``minimize`` allow the ``Atoms`` column to change.
        temp_bounds: ``(low, high)``, checked as ``low < T <= high`` (in the script's units; the default suits LJ,
            real and metal units). T = 0 is accepted when the script minimizes, where atoms are at rest.

    Returns:
        A :class:`PhysicsReport` listing each problem in words (fed to the judge and to recycled prompts).
    """
    problems = []
    bad = _nonfinite_rows(log)
    if bad:
        problems.append(f"{bad} thermo row(s) hold NaN or inf: the simulation blew up (check timestep, overlaps, "
                        "potential)")
    low, high = temp_bounds
    temps = [t for t in thermo.get("Temp", []) if math.isfinite(t)]
    allow_zero = bool(_MINIMIZE.search(script))
    out = [t for t in temps if not (low < t <= high or (allow_zero and t == 0.0))]
    if out:
        problems.append(f"temperature {out[0]:g} outside ({low:g}, {high:g}] ({len(out)} thermo row(s))")
    if "Lost atoms" in log:
        problems.append("atoms were lost during the run (LAMMPS reported 'Lost atoms')")
    first_run = _RUN_CMD.search(script)
    changes_count = first_run is not None and _ATOM_COUNT_CHANGERS.search(script, first_run.end()) is not None
    atoms = [a for a in thermo.get("Atoms", []) if math.isfinite(a)]
    if atoms and not changes_count and len(set(atoms)) > 1:
        problems.append(f"atom count changed from {atoms[0]:g} to {atoms[-1]:g} without a command that adds or "
                        "deletes atoms")
    return PhysicsReport(problems)


def dynamics_problem(result: Any, *, require_motion: bool = True) -> str | None:
    """Why a finished :class:`~rlpost.rewards.lammps.LammpsResult` did not simulate anything, or None.

    Read from what the worker counted through the LAMMPS API: executed ``run``/``minimize`` commands
    (``n_runs``), timesteps they advanced (``steps``) and, with ``require_motion``, whether any atom position or
    velocity changed during them (``moved``).
    """
    if not result.n_runs:
        return "no run or minimize command was executed: the script simulates nothing (add e.g. 'run 1000')"
    if not result.steps:
        return f"{result.n_runs} run/minimize command(s) executed 0 timesteps: nothing was simulated"
    if require_motion and not result.moved:
        return ("the atoms did not move during any run: nothing integrates the equations of motion (no fix "
                "nve/nvt/npt, or no velocities and no forces?)")
    return None


def score_stages(result: Any, script: str, *, temp_bounds: tuple[float, float] = (0.0, 1e5),
                 require_dynamics: bool = True) -> dict[str, Any]:
    """The stage rule of every MD reward: ``{launch, run, physics, error, report, infra}`` of one result.

    ``launch`` / ``run`` / ``physics`` are 0/1 and cumulative. ``launch``: the script finished or executed a
    ``run``/``minimize`` before failing. ``run``: it finished and (``require_dynamics``, default) executed at least
    one ``run``/``minimize`` advancing the timestep. ``physics``: :func:`physics_report` on the API's end-of-run
    thermo values finds nothing and (``require_dynamics``) the atoms moved. ``infra`` marks a sandbox that could
    not start (``stage == "launch"``: not the script's fault); ``error`` says what failed, in words.
    """
    row = {"launch": 0, "run": 0, "physics": 0, "error": "", "report": None, "infra": result.stage == "launch"}
    if row["infra"]:
        row["error"] = result.error or "the sandbox could not start a worker"
        return row
    row["launch"] = int(result.ok or result.n_runs > 0)
    if not result.ok:
        where = f" (script line {result.failed_line})" if result.failed_line is not None else ""
        row["error"] = f"{result.error or result.stage}{where}"
        return row
    problem = dynamics_problem(result, require_motion=False) if require_dynamics else None
    if problem:
        row["error"] = problem
        return row
    row["run"] = 1
    thermo = api_thermo(result.runs)
    if result.runs:
        thermo["Atoms"] = [float(r["natoms"]) for r in result.runs]
    report = physics_report(thermo, result.log, script, temp_bounds)
    if require_dynamics:
        problem = dynamics_problem(result)
        if problem:
            report.problems.append(problem)
    row["report"] = report
    row["physics"] = int(report.ok)
    row["error"] = "; ".join(report.problems)
    return row


def result_summary(result: Any, physics: PhysicsReport | None, rows: int = 3) -> str:
    """What the judge reads about the run: status, error, executed dynamics and end-of-run thermo values (both
    from the LAMMPS API), physics problems."""
    lines = [f"status: {'success' if result.ok else result.stage}"]
    if result.error:
        lines.append(f"error: {result.error}")
    if result.failed_line is not None:
        lines.append(f"failed at script line {result.failed_line}")
    if result.natoms is not None:
        lines.append(f"atoms: {result.natoms}")
    lines.append(f"executed run/minimize commands: {result.n_runs}, timesteps: {result.steps}, atoms moved: "
                 f"{'yes' if result.moved else 'no'}")
    thermo = api_thermo(result.runs)  # from the LAMMPS API: printed text cannot forge it
    if thermo:
        cols = list(thermo)
        n = len(thermo[cols[0]])
        picks = sorted(set(range(min(rows, n))) | set(range(max(0, n - rows), n)))
        lines.append("thermo at the end of each run (head and tail):\n" + " ".join(cols))
        lines += [" ".join(f"{thermo[c][i]:g}" for c in cols) for i in picks]
    else:
        lines.append("no thermo output")
    if physics is not None:
        lines.append("physics checks: " + ("passed" if physics.ok else "; ".join(physics.problems)))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The reward module
# ---------------------------------------------------------------------------------------------------------------
@register_reward("md_execution")
class MDExecutionReward(RewardModule):
    """Execution reward for LAMMPS scripts (MDAgent2): extract → launch → run → physics → optional judge rubric.

    See the module docstring for the stages and the score. Scripts of a batch run concurrently on the executor's
    pool (``executor.workers`` at a time); its sandbox limits (timeout, memory, atoms, steps) bound each run, so the
    module sets no call timeout of its own.

    Args:
        executor: a :class:`rlpost.rewards.lammps.LammpsExecutor`; None builds one from ``executor_options``
            (closed by :meth:`close`).
        judge: optional judge: a ``judge(prompt: str) -> str`` callable, a :class:`rlpost.rewards.judges.Judge`, or a
            dict of options for one (``{base_url, model, ...}`` -> ``OpenAIJudge``, else ``LocalJudge``), so a recipe
            can configure it. None (default) scores by stage weights.
        stage_weights: weights of ``launch``/``run``/``physics`` without a judge (default 0.25/0.5/0.25; an rlpost
            choice, the paper always uses the judge).
        temp_bounds: temperature range of the physics check, ``low < T <= high`` (default ``(0, 1e5]``).
        launch_failure_score: score when the executor itself could not start a worker (``stage == "launch"``: an
            infrastructure problem, not the script's fault). Default None: the sample is skipped, as the failure
            policy treats other broken calls.
        judge_retries: extra judge calls when an answer does not parse (MDAgent2 re-evaluates; default 1).
        judge_failure: ``"none"`` (default: a sample whose judge call fails or never parses scores None) or
            ``"stages"`` (fall back to the stage-weight score).
        judge_template: format string with ``{task}``, ``{code}`` and ``{result}``.
        judge_concurrency: concurrent judge calls (default 4); the judge must be thread-safe above 1.
        executor_options: keyword arguments of ``LammpsExecutor`` when ``executor`` is None (e.g. ``timeout_s``,
            ``potentials_dir``, ``workers``), so a recipe can configure the sandbox by name.
        **options: ``field_map``, ``name``, ``timeout_s``, ``max_concurrency`` of :class:`RewardModule`.
    """

    description = "MDAgent2 LAMMPS reward: extract, run in a sandbox, physics checks, optional judge rubric (0-1)."
    requires = ("prompt", "completion")
    granularity = "pointwise"

    def __init__(self, executor: Any = None, *, judge: Any = None,
                 stage_weights: Mapping[str, float] | None = None,
                 temp_bounds: tuple[float, float] = (0.0, 1e5),
                 launch_failure_score: float | None = None, judge_retries: int = 1,
                 judge_failure: str = "none", judge_template: str = DEFAULT_JUDGE_TEMPLATE,
                 judge_concurrency: int = 4, executor_options: Mapping[str, Any] | None = None,
                 **options: Any) -> None:
        weights = dict(DEFAULT_STAGE_WEIGHTS if stage_weights is None else stage_weights)
        unknown = sorted(set(weights) - set(_STAGES))
        if unknown:
            raise ValueError(f"md_execution stage_weights has unknown stages {unknown}; use {list(_STAGES)}.")
        self.stage_weights = {s: float(weights.get(s, 0.0)) for s in _STAGES}
        low, high = temp_bounds
        if not low < high:
            raise ValueError(f"md_execution temp_bounds must be (low, high) with low < high, got {temp_bounds}.")
        if judge is not None:
            from rlpost.rewards.judges import judge_callable

            judge = judge_callable(judge)
        if judge_failure not in ("none", "stages"):
            raise ValueError(f"md_execution judge_failure must be 'none' or 'stages', got {judge_failure!r}.")
        if judge_retries < 0 or judge_concurrency < 1:
            raise ValueError("md_execution needs judge_retries >= 0 and judge_concurrency >= 1, got "
                             f"{judge_retries} and {judge_concurrency}.")
        for key in ("{task}", "{code}", "{result}"):
            if key not in judge_template:
                raise ValueError(f"md_execution judge_template lacks the {key} placeholder.")
        self.temp_bounds = (float(low), float(high))
        self.judge = judge
        self.launch_failure_score = launch_failure_score
        self.judge_retries = judge_retries
        self.judge_failure = judge_failure
        self.judge_template = judge_template
        self.judge_concurrency = judge_concurrency
        from rlpost.rewards.lammps import resolve_executor

        self.executor, self._own_executor = resolve_executor(executor, executor_options, "md_execution")
        super().__init__(**options)

    def close(self) -> None:
        """Shut down the executor's pool if this module built the executor."""
        if self._own_executor:
            self.executor.close()

    # -- scoring ------------------------------------------------------------------------------------------------
    def score_batch(self, batch: dict[str, list], group_ids: list[int]) -> RewardOutput:
        n = len(group_ids)
        found = [find_script(c) for c in batch["completion"]]
        futures = {i: self.executor.submit(f.code) for i, f in enumerate(found) if f is not None}
        results = {i: fut.result() for i, fut in futures.items()}

        rows = [self._stages(found[i], results.get(i)) for i in range(n)]
        if self.judge is not None:
            todo = [i for i in range(n) if rows[i]["extract"] and not rows[i]["infra"]]
            with ThreadPoolExecutor(max_workers=min(self.judge_concurrency, max(1, len(todo)))) as pool:
                verdicts = list(pool.map(
                    lambda i: self._judge(batch["prompt"][i], found[i].code, results[i], rows[i]["report"]), todo))
            for i, verdict in zip(todo, verdicts):
                rows[i]["judge"] = verdict
                if verdict is not None:
                    rows[i]["score"] = verdict.reward
                    rows[i]["penalty"] = "; ".join(verdict.reasons)
                elif self.judge_failure == "none":
                    rows[i]["score"] = None
        return self._output(rows)

    def _stages(self, found: Any, result: Any) -> dict[str, Any]:
        row = {"extract": found is not None, "launch": 0, "run": 0, "physics": 0, "stage": "extract",
               "error": "", "penalty": "", "report": None, "judge": None, "infra": False, "timed_out": False}
        if found is None:
            row.update(stage="none", score=0.0, error="no script found: answer with a ```lammps block or JSON "
                                                          '{"code": ...}')
            return row
        row["timed_out"] = bool(result.timed_out)
        stages = score_stages(result, found.code, temp_bounds=self.temp_bounds)
        row.update({k: stages[k] for k in ("launch", "run", "physics", "error", "report", "infra")})
        if row["infra"]:  # the sandbox could not start a worker: not the script's fault
            row["score"] = self.launch_failure_score
            return row
        passed = [s for s in _STAGES if row[s]]
        row["stage"] = passed[-1] if passed else "extract"
        row["score"] = sum(self.stage_weights[s] for s in passed)
        return row

    def _judge(self, task: str, code: str, result: Any, report: PhysicsReport | None) -> RubricScore | None:
        prompt = self.judge_template.format(task=task, code=code, result=result_summary(result, report))
        for _ in range(1 + self.judge_retries):
            try:
                verdict = parse_rubric(self.judge(prompt))
            except Exception as error:  # noqa: BLE001 - a judge outage must not stop training
                logger.warning("md_execution: judge call failed: %r", error)
                continue
            if verdict is not None:
                return verdict
        return None

    def _output(self, rows: list[dict[str, Any]]) -> RewardOutput:
        n = len(rows)
        scripts = [r for r in rows if r["extract"] and not r["infra"]]
        metrics = {"extract_rate": sum(r["extract"] for r in rows) / n if n else 0.0,
                   "infra_errors": float(sum(r["infra"] for r in rows)),
                   "lammps_timeouts": float(sum(r["timed_out"] for r in rows))}
        for stage in _STAGES:  # rates over samples that produced a script, so extraction does not mask them
            metrics[f"{stage}_rate"] = sum(r[stage] for r in scripts) / len(scripts) if scripts else 0.0
        columns: dict[str, list] = {"stage": [r["stage"] for r in rows],
                                    "extract": [int(r["extract"]) for r in rows],
                                    **{s: [r[s] for r in rows] for s in _STAGES},
                                    "error": [r["error"] for r in rows], "penalty": [r["penalty"] for r in rows]}
        if self.judge is not None:
            judged = [r["judge"] for r in rows if r["judge"] is not None]
            asked = sum(r["extract"] and not r["infra"] for r in rows)
            metrics["judge_parse_failures"] = float(asked - len(judged))
            if judged:
                metrics["judge_module_mean"] = sum(v.module for v in judged) / len(judged)
                metrics["judge_penalty_mean"] = sum(v.penalty for v in judged) / len(judged)
            columns["judge_module"] = [r["judge"].module if r["judge"] else None for r in rows]
            columns["judge_penalty"] = [r["judge"].penalty if r["judge"] else None for r in rows]
        return RewardOutput([r["score"] for r in rows], metrics=metrics, columns=columns)
