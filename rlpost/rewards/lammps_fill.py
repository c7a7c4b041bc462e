"""``lammps_fill``: execution reward for the missing-line LAMMPS tasks (:mod:`rlpost.envs.lammps_fill`, issue 6 item 7).

The completion's first line is put in place of the ``<MISSING>`` marker of the sample's ``script_template``, the full
script runs in the sandboxed :class:`rlpost.rewards.lammps.LammpsExecutor`, and the run is scored with
:mod:`rlpost.rewards.md_execution`'s stages and physics checks:

==========  =======================================================================================================
stage       passes when
==========  =======================================================================================================
launch      the run finished, or failed after executing a ``run``/``minimize``
run         LAMMPS finished the whole script without error, limit or timeout and, with ``require_dynamics``
            (default True), executed a ``run``/``minimize`` that advanced the timestep
physics     :func:`~rlpost.rewards.md_execution.physics_report` finds no problem and, with ``require_dynamics``,
            the atoms moved during a run
==========  =======================================================================================================

``score="stages"`` (default) gives ``Σ_s w_s·passed_s`` with md_execution's default weights (0.25 / 0.5 / 0.25),
the reward :class:`~rlpost.rewards.md_execution.MDExecutionReward` gives without a judge; ``score="binary"`` gives
1.0 when every stage passes, else 0.0. *Success* (the ``success`` column and ``success_rate`` metric, and what the
learning check counts on held-out tasks) is "every stage passed" either way.

The stages are :func:`rlpost.rewards.md_execution.score_stages`, the one rule of every MD reward: dynamics and
thermo come from the LAMMPS API, so a line that removes the integrator (``fix 1 all nve`` replaced by a harmless
duplicate) or the run does not count, and ``print`` output cannot pass for thermo. A completion that is empty scores
0 without running LAMMPS.
"""

from __future__ import annotations

from typing import Any, Mapping

from rlpost.rewards.base import RewardModule, RewardOutput
from rlpost.rewards.md_execution import DEFAULT_STAGE_WEIGHTS, score_stages
from rlpost.rewards.registry import register_reward

__all__ = ["MISSING", "LammpsFillReward", "fill_script", "score_run"]

MISSING = "<MISSING>"
_STAGES = ("launch", "run", "physics")


def fill_script(template: str, line: str) -> str:
    """The full script: ``template`` with its ``<MISSING>`` marker replaced by the first line of ``line``.

    Only the first line counts, so a completion cannot append extra commands; the caller's sandbox still checks
    whatever the line says.
    """
    if MISSING not in template:
        raise ValueError(f"script_template has no {MISSING} marker; build it with rlpost.envs.lammps_fill.LammpsFillTask.")
    first = line.strip().splitlines()[0].strip() if line.strip() else ""
    return template.replace(MISSING, first, 1)


def score_run(result: Any, script: str, *, require_dynamics: bool = True,
              temp_bounds: tuple[float, float] = (0.0, 1e5)) -> dict[str, Any]:
    """Stage flags of one :class:`~rlpost.rewards.lammps.LammpsResult`: ``{launch, run, physics, error, infra}``,
    by :func:`rlpost.rewards.md_execution.score_stages` (``infra``: the sandbox could not start, not the script's
    fault)."""
    row = score_stages(result, script, temp_bounds=temp_bounds, require_dynamics=require_dynamics)
    row.pop("report")
    return row


@register_reward("lammps_fill")
class LammpsFillReward(RewardModule):
    """Insert the completion into ``script_template``, run it in the LAMMPS sandbox and score the stages.

    Args:
        executor: a :class:`rlpost.rewards.lammps.LammpsExecutor`; None builds one from ``executor_options``
            (closed by :meth:`close`).
        score: ``"stages"`` (default: md_execution's stage-weight score) or ``"binary"`` (1.0 on success).
        stage_weights: weights of launch/run/physics for ``score="stages"`` (default md_execution's 0.25/0.5/0.25).
        require_dynamics: the run stage needs an executed run/minimize and physics needs moving atoms (default
            True; see the module docstring).
        temp_bounds: temperature range of the physics check, ``low < T <= high``.
        launch_failure_score: score when the sandbox itself failed to start (default None: skipped).
        executor_options: keyword arguments of ``LammpsExecutor`` when ``executor`` is None (``workers``,
            ``timeout_s``, ...).
        **options: ``field_map``, ``name``, ``timeout_s``, ``max_concurrency`` of :class:`RewardModule`.
    """

    description = "Missing-line LAMMPS tasks: insert the completion, run the script sandboxed, score launch/run/physics."
    requires = ("completion", "script_template")
    granularity = "pointwise"

    def __init__(self, executor: Any = None, *, score: str = "stages", stage_weights: Mapping[str, float] | None = None,
                 require_dynamics: bool = True, temp_bounds: tuple[float, float] = (0.0, 1e5),
                 launch_failure_score: float | None = None, executor_options: Mapping[str, Any] | None = None,
                 **options: Any) -> None:
        if score not in ("stages", "binary"):
            raise ValueError(f"lammps_fill score must be 'stages' or 'binary', got {score!r}.")
        weights = dict(DEFAULT_STAGE_WEIGHTS if stage_weights is None else stage_weights)
        unknown = sorted(set(weights) - set(_STAGES))
        if unknown:
            raise ValueError(f"lammps_fill stage_weights has unknown stages {unknown}; use {list(_STAGES)}.")
        low, high = temp_bounds
        if not low < high:
            raise ValueError(f"lammps_fill temp_bounds must be (low, high) with low < high, got {temp_bounds}.")
        self.score = score
        self.stage_weights = {s: float(weights.get(s, 0.0)) for s in _STAGES}
        self.require_dynamics = require_dynamics
        self.temp_bounds = (float(low), float(high))
        self.launch_failure_score = launch_failure_score
        from rlpost.rewards.lammps import resolve_executor

        self.executor, self._own_executor = resolve_executor(executor, executor_options, "lammps_fill")
        super().__init__(**options)

    def close(self) -> None:
        """Shut down the executor's pool if this module built the executor."""
        if self._own_executor:
            self.executor.close()

    def scripts(self, completions: list[str], templates: list[str]) -> list[str | None]:
        """The full scripts (None for an empty completion, which is not run)."""
        return [fill_script(t, c) if c.strip() else None for c, t in zip(completions, templates)]

    def score_batch(self, batch: dict[str, list], group_ids: list[int]) -> RewardOutput:
        scripts = self.scripts(batch["completion"], batch["script_template"])
        futures = {i: self.executor.submit(s) for i, s in enumerate(scripts) if s is not None}
        rows = []
        for i, script in enumerate(scripts):
            if script is None:
                rows.append({"launch": 0, "run": 0, "physics": 0, "error": "empty completion", "infra": False})
            else:
                rows.append(score_run(futures[i].result(), script, require_dynamics=self.require_dynamics,
                                      temp_bounds=self.temp_bounds))
        scores: list[float | None] = []
        for row in rows:
            success = all(row[s] for s in _STAGES)
            if row["infra"]:
                scores.append(self.launch_failure_score)
            elif self.score == "binary":
                scores.append(float(success))
            else:
                scores.append(sum(self.stage_weights[s] for s in _STAGES if row[s]))
        n = len(rows)
        ran = [r for r in rows if not r["infra"]]
        metrics = {"success_rate": sum(all(r[s] for s in _STAGES) for r in ran) / len(ran) if ran else 0.0,
                   "infra_errors": float(n - len(ran))}
        for stage in _STAGES:
            metrics[f"{stage}_rate"] = sum(r[stage] for r in ran) / len(ran) if ran else 0.0
        columns = {**{s: [r[s] for r in rows] for s in _STAGES},
                   "success": [int(all(r[s] for s in _STAGES)) for r in rows],
                   "error": [r["error"] for r in rows]}
        return RewardOutput(scores, metrics=metrics, columns=columns)
