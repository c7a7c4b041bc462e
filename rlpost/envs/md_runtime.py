"""``md_runtime``: MDAgent2's generate → check → run → evaluate → revise loop (issue 6 item 5).

MDAgent2-RUNTIME (arXiv 2601.02075; ``FredericVAN/PKU_MDAgent2`` ``LammpsAgents_by_langgraph.py``, spec mdagent2.md
§4.3) writes a LAMMPS script, checks its potential files, checks its syntax, runs it, has it evaluated, and sends the
failure back to the generator for a revised script, at most ``MAX_GENERATE_CODE_TIME = 5`` times. Here one *round* is

==========  ==========================================================================================================
stage       passes when
==========  ==========================================================================================================
extract     the answer holds a script (:func:`rlpost.rewards.extract.find_script`)
potentials  every potential file named by ``pair_style``/``pair_coeff``/``*_coeff``/``include`` exists in the local
            ``potentials_dir``; a missing one is reported with the nearest local names (never downloaded)
syntax      the sandbox's static pass accepts the script (``syntax_check="static"``, default), or LAMMPS itself ran it
            for ``syntax_timeout_s`` without an error (``"lammps"``: MDAgent2's "TOOL" mode, a timeout counts as OK)
run         :class:`rlpost.rewards.lammps.LammpsExecutor` ran the whole script without error, limit or timeout and
            executed dynamics (:func:`rlpost.rewards.md_execution.score_stages`, the rule of every MD reward)
physics     atoms moved, finite end-of-run thermo (LAMMPS API), temperature in bounds, no lost atoms
judge       optional: a judge filled MDAgent2's rubric and ``reward >= pass_reward``
==========  ==========================================================================================================

The first failing stage ends the round; its message (the LAMMPS error, the missing file with suggestions, the
physics problems, the judge's penalty reasons) becomes the next user message, which asks for a corrected script.
The previous script is already in the conversation as the assistant's turn, so it is not repeated (MDAgent2 pastes
it into its regeneration prompt because its generator is stateless).

Round reward: 0 before the run stage; then, without a judge, ``Σ w_s`` over the passed stages launch / run / physics
(:data:`rlpost.rewards.md_execution.DEFAULT_STAGE_WEIGHTS`, 0.25 / 0.5 / 0.25; rlpost's choice, the same as the
``md_execution`` reward); with a judge, ``(clip(module − |penalty|, −10, 30) + 10) / 40`` as MDAgent2. The episode
stops at success or after ``max_rounds``; its reward is the last round's (``final_reward="last"``, default: what the
agent ends with) or the best one (``"best"``) - an inferred choice, the paper does not say.

Three ways in:

* :meth:`MDRuntimeEnv.run` drives a whole episode with any ``generate(messages) -> str`` (:class:`HFGenerator` for a
  transformers model, :func:`as_generator` for a judge / OpenAI-compatible client) and returns a :class:`Trajectory`;
* :meth:`MDRuntimeEnv.reset` / :meth:`MDRuntimeEnv.step` is a gym-style multi-turn env for a custom GRPO rollout;
* :class:`MDToolEnv` is the shape TRL 1.16's ``GRPOTrainer(environment_factory=...)`` expects: ``reset(**row)``, one
  public tool method ``run_lammps(script)`` (one round per call) and ``get_reward()``
  (``environment_factory=md_tool_env_factory(potentials_dir=...)``).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

from rlpost.rewards._lammps_sanitize import command_words, static_check
from rlpost.rewards.extract import find_script
from rlpost.rewards.lammps import api_thermo
from rlpost.rewards.md_execution import (
    DEFAULT_JUDGE_TEMPLATE,
    DEFAULT_STAGE_WEIGHTS,
    result_summary,
    parse_rubric,
    score_stages,
)

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "HFGenerator",
    "MDRuntimeEnv",
    "MDToolEnv",
    "POTENTIAL_EXTENSIONS",
    "PotentialCheck",
    "RoundRecord",
    "Trajectory",
    "as_generator",
    "as_judge_fn",
    "check_potentials",
    "md_tool_env_factory",
    "potential_files",
    "suggest_potentials",
]

logger = logging.getLogger(__name__)

Message = dict[str, Any]
Generator = Callable[[list[Message]], str]

# MDAgent2's generator prompt, shortened: JSON answer, potentials under potentials/, outputs in the work dir.
DEFAULT_SYSTEM_PROMPT = """You are an expert in molecular dynamics who writes LAMMPS input scripts.
Answer with JSON only: {"code": "<the complete LAMMPS input script>", "checkout_filename_list": ["<output files>"]}
(a ```lammps fenced block is accepted too).
Rules: refer to potential files only as potentials/<file name>, using files that exist locally; write every output
(dump, data, restart files) with a plain relative file name in the current directory; keep runs short
(at most 100000 steps); never use shell, python or plugin commands.
When told that a script failed, fix the named problem, keep the parts that were correct, and answer with the
complete corrected script."""

# Extensions of LAMMPS potential files (MDAgent2 ``lammps_potential_utils`` matches ~60 of them); a word of a
# pair_* command ending in one of these, or under potentials/, is read as a file name.
POTENTIAL_EXTENSIONS = (
    ".eam", ".eam.alloy", ".eam.fs", ".eam.he", ".adp", ".meam", ".meam.spline", ".meam.sw.spline", ".library",
    ".tersoff", ".tersoff.mod", ".tersoff.modc", ".tersoff.zbl", ".sw", ".sw.mod", ".mgpt", ".bop", ".bop.table",
    ".comb", ".comb3", ".rebo", ".airebo", ".airebo-m", ".snapcoeff", ".snapparam", ".mliap", ".mliap.descriptor",
    ".mliap.model", ".ffield", ".reax", ".ILP", ".KC", ".lcbop", ".extep", ".vashishta", ".gw", ".gw.zbl",
    ".nb3b.harmonic", ".poly", ".pod", ".cdeam", ".bmcmd", ".agni", ".polymlp", ".table", ".streitz", ".edip",
    ".lj", ".sph", ".smtbq", ".pace", ".yace", ".drip", ".lmp_potential", ".kim", ".rann", ".mtp", ".txt",
)
_FILE_COMMANDS = frozenset({"pair_style", "pair_coeff", "bond_style", "bond_coeff", "angle_style", "angle_coeff",
                            "dihedral_style", "dihedral_coeff", "improper_style", "improper_coeff", "include"})
_EXTENSIONS_LOWER = tuple(e.lower() for e in POTENTIAL_EXTENSIONS)


# ---------------------------------------------------------------------------------------------------------------
# Potential files: which ones a script needs, which exist, what to suggest
# ---------------------------------------------------------------------------------------------------------------
def _looks_like_file(word: str) -> bool:
    if "$" in word or not word or word in ("NULL", "*"):
        return False
    if word.startswith("potentials/") or word.lower().endswith(_EXTENSIONS_LOWER):
        return True
    # the sandbox's rule: numbers such as 2.5e-3 strip to nothing, file names keep a dot
    return "." in word.strip(".0123456789eE+-")


def potential_files(script: str) -> list[str]:
    """Potential / table / include files a script reads, in order of first use, as written (``potentials/X`` or
    ``X``). Words built from variables (``$``) are skipped: they cannot be checked before the run."""
    names: list[str] = []
    for _line, words in command_words(script):
        if not words or words[0] not in _FILE_COMMANDS:
            continue
        for word in words[1:]:
            if _looks_like_file(word) and word not in names:
                names.append(word)
    return names


def _similarity(wanted: str, have: str) -> float:
    """MDAgent2's ranking (``lammps_potential_utils``): 1.0 exact, 0.8 substring, else difflib's ratio."""
    a, b = wanted.lower(), have.lower()
    if a == b:
        return 1.0
    if a in b or b in a:
        return 0.8
    return difflib.SequenceMatcher(None, a, b).ratio()


def suggest_potentials(name: str, available: Sequence[str], k: int = 5, min_similarity: float = 0.3) -> list[str]:
    """The ``k`` local file names most like ``name`` (its ``potentials/`` prefix ignored), best first.

    ``min_similarity`` drops names with nothing in common (rlpost's addition; MDAgent2 lists its top 10 regardless).
    """
    base = os.path.basename(name)
    scored = sorted(((_similarity(base, have), have) for have in available), key=lambda p: (-p[0], p[1]))
    return [have for score, have in scored[:k] if score >= min_similarity]


@dataclass
class PotentialCheck:
    """Outcome of :func:`check_potentials`: ``missing`` maps each missing name (as written) to suggestions."""

    needed: list[str] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)
    potentials_dir: str | None = None

    @property
    def ok(self) -> bool:
        return not self.missing

    def message(self) -> str:
        if self.ok:
            return "all potential files are available"
        where = (f"the local potentials directory ({len(self._listing())} files)" if self.potentials_dir
                 else "the local potentials directory (none is configured)")
        parts = []
        for name, near in self.missing.items():
            hint = f"; nearest available: {', '.join('potentials/' + n for n in near)}" if near else ""
            parts.append(f"'{name}' is not in {where}{hint}")
        return ("Missing potential file(s): " + "; ".join(parts) + ". Use a file that exists, written as "
                "potentials/<file name>, and make pair_style/pair_coeff match it (elements and format).")

    def _listing(self) -> list[str]:
        return _local_potentials(self.potentials_dir)


def _local_potentials(potentials_dir: str | os.PathLike | None) -> list[str]:
    if potentials_dir is None or not os.path.isdir(potentials_dir):
        return []
    return sorted(n for n in os.listdir(potentials_dir) if os.path.isfile(os.path.join(potentials_dir, n)))


def check_potentials(script: str, potentials_dir: str | os.PathLike | None, k: int = 5) -> PotentialCheck:
    """Check that every potential file of ``script`` exists in ``potentials_dir`` (top level, as the executor
    stages them); suggest the ``k`` nearest local names for each missing one. Nothing is downloaded (MDAgent2
    tries download.lammps.org first; rlpost runs offline)."""
    available = _local_potentials(potentials_dir)
    have = set(available)
    needed = potential_files(script)
    missing = {}
    for name in needed:
        base = name[len("potentials/"):] if name.startswith("potentials/") else name
        if base not in have:
            missing[name] = suggest_potentials(base, available, k)
    return PotentialCheck(needed, missing, None if potentials_dir is None else str(potentials_dir))


# ---------------------------------------------------------------------------------------------------------------
# Generators and judges: adapters onto plain callables
# ---------------------------------------------------------------------------------------------------------------
def as_generator(client: Any, **gen: Any) -> Generator:
    """``generate(messages) -> str`` over a :class:`rlpost.rewards.judges.Judge` (``OpenAIJudge`` against a served
    code model, ``LocalJudge``): one ``complete`` call per turn; a failed call reads as an empty answer, which the
    env reports as "no script found" instead of crashing."""
    if not hasattr(client, "complete"):
        raise TypeError(f"as_generator needs an object with complete(prompts) (a Judge), got {type(client).__name__}.")

    def generate(messages: list[Message]) -> str:
        return client.complete([messages], **gen)[0] or ""

    return generate


def as_judge_fn(client: Any, **gen: Any) -> Callable[[str], str | None]:
    """``judge(prompt) -> str | None`` over a :class:`rlpost.rewards.judges.Judge`, the evaluator shape the env and
    :class:`rlpost.rewards.md_execution.MDExecutionReward` take."""
    if not hasattr(client, "complete"):
        raise TypeError(f"as_judge_fn needs an object with complete(prompts) (a Judge), got {type(client).__name__}.")
    return lambda prompt: client.complete([prompt], **gen)[0]


class HFGenerator:
    """``generate(messages) -> str`` with a transformers causal LM and its tokenizer's chat template.

    Args:
        model: / tokenizer: a loaded model and tokenizer (``rlpost.models.load_causal_lm``/``load_tokenizer``).
        max_new_tokens: answer length limit.
        temperature: 0 (default) decodes greedily; above 0 samples.
        max_context: positions the model can attend to; default ``model.config.max_position_embeddings``. When the
            conversation plus ``max_new_tokens`` does not fit, the oldest prompt tokens are dropped (with a warning)
            so that long revision loops degrade instead of failing.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_new_tokens: int = 1024, temperature: float = 0.0,
                 max_context: int | None = None) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"HFGenerator: max_new_tokens must be >= 1, got {max_new_tokens}.")
        self.model, self.tokenizer = model, tokenizer
        self.temperature = float(temperature)
        limit = max_context or getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.max_context = int(limit) if limit else None
        # a tiny test model cannot hold a long answer: keep at least half its context for the prompt
        self.max_new_tokens = min(max_new_tokens, self.max_context // 2) if self.max_context else max_new_tokens

    def __call__(self, messages: list[Message]) -> str:
        import torch

        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)["input_ids"]
        if self.max_context and ids.shape[1] + self.max_new_tokens > self.max_context:
            keep = self.max_context - self.max_new_tokens
            logger.warning("HFGenerator: prompt of %d tokens cut to its last %d to fit max_context=%d",
                           ids.shape[1], keep, self.max_context)
            ids = ids[:, -keep:]
        ids = ids.to(self.model.device)
        sampling = {"do_sample": True, "temperature": self.temperature} if self.temperature > 0 else {
            "do_sample": False}
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=self.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id, **sampling)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------------------------
# The episode record
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class RoundRecord:
    """One generate → check → run → evaluate round.

    ``stage`` is the stage that failed (one of extract / potentials / syntax / run / physics / judge) or
    ``"success"``; ``error`` its message; ``passed`` the stages passed; ``result`` a JSON-safe summary of the LAMMPS
    run (absent when nothing ran).
    """

    round: int
    stage: str
    reward: float
    error: str = ""
    passed: list[str] = field(default_factory=list)
    script: str | None = None
    missing_potentials: dict[str, list[str]] = field(default_factory=dict)
    physics_problems: list[str] = field(default_factory=list)
    judge: dict[str, Any] | None = None
    result: dict[str, Any] | None = None

    @property
    def success(self) -> bool:
        return self.stage == "success"


@dataclass
class Trajectory:
    """A whole episode: the conversation, one :class:`RoundRecord` per round, and the outcome."""

    task: str
    messages: list[Message] = field(default_factory=list)
    rounds: list[RoundRecord] = field(default_factory=list)
    max_rounds: int = 5
    final_reward: str = "last"

    @property
    def success(self) -> bool:
        return bool(self.rounds) and self.rounds[-1].success

    @property
    def reward(self) -> float:
        if not self.rounds:
            return 0.0
        if self.final_reward == "best":
            return max(r.reward for r in self.rounds)
        return self.rounds[-1].reward

    @property
    def scripts(self) -> list[str | None]:
        return [r.script for r in self.rounds]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "success": self.success, "reward": self.reward, "num_rounds": len(self.rounds),
                "max_rounds": self.max_rounds, "final_reward": self.final_reward,
                "rounds": [asdict(r) for r in self.rounds], "messages": self.messages}

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, default=str)


def _run_summary(result: Any, tail_rows: int = 3) -> dict[str, Any]:
    """What a trajectory keeps of a LammpsResult: status and error, atom count, executed runs and the end-of-run
    thermo values of the last runs (from the LAMMPS API, not the log), and the sandbox report (which kernel
    mechanisms were enforced, which skipped)."""
    thermo = {name: values[-tail_rows:] for name, values in api_thermo(result.runs).items()}
    return {"ok": result.ok, "stage": result.stage, "error": result.error, "failed_line": result.failed_line,
            "natoms": result.natoms, "wall_s": round(result.wall_s, 3), "timed_out": result.timed_out,
            "warnings": list(result.warnings), "n_runs": result.n_runs, "steps": result.steps,
            "thermo_tail": thermo, "sandbox": result.sandbox}


# ---------------------------------------------------------------------------------------------------------------
# The env
# ---------------------------------------------------------------------------------------------------------------
class MDRuntimeEnv:
    """MDAgent2's runtime loop as a multi-turn env (see the module docstring for the stages and rewards).

    Args:
        executor: a :class:`rlpost.rewards.lammps.LammpsExecutor`; None builds one with ``potentials_dir`` and
            ``executor_options`` (closed by :meth:`close`).
        potentials_dir: local potential files; the potential check and the sandbox both use it. With an
            ``executor`` given, its own ``potentials_dir`` is the default.
        judge: optional evaluator ``judge(prompt: str) -> str | None`` (:func:`as_judge_fn` over a Judge). None
            (default) scores by stages and succeeds when the run and the physics checks pass.
        max_rounds: generate attempts per episode (MDAgent2's ``MAX_GENERATE_CODE_TIME = 5``).
        pass_reward: with a judge, the reward that counts as success (MDAgent2's ``PASS_REWARD = 1.0``, a 30/30
            rubric; lower it to stop earlier).
        syntax_check: ``"static"`` (default: the sandbox's safety/syntax pass, no process) or ``"lammps"`` (run
            LAMMPS for ``syntax_timeout_s``; an error within that time fails the stage, a timeout passes it; a
            script that finishes in that time is not run again).
        syntax_timeout_s: MDAgent2's 3 s.
        final_reward: episode reward, ``"last"`` (default) or ``"best"`` round.
        system_prompt: first message of each episode (None: no system message).
        temp_bounds: physics check's temperature range (see :func:`physics_report`).
        judge_template: format string with ``{task}``, ``{code}``, ``{result}`` (default: MDAgent2's rubric).
        num_suggestions: nearest local names listed for a missing potential.
        executor_options: keyword arguments of ``LammpsExecutor`` when ``executor`` is None.
    """

    def __init__(self, executor: Any = None, *, potentials_dir: str | os.PathLike | None = None,
                 judge: Callable[[str], str | None] | None = None, max_rounds: int = 5, pass_reward: float = 1.0,
                 syntax_check: str = "static", syntax_timeout_s: float = 3.0, final_reward: str = "last",
                 system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, temp_bounds: tuple[float, float] = (0.0, 1e5),
                 judge_template: str = DEFAULT_JUDGE_TEMPLATE, num_suggestions: int = 5,
                 executor_options: Mapping[str, Any] | None = None) -> None:
        if max_rounds < 1:
            raise ValueError(f"MDRuntimeEnv: max_rounds must be >= 1, got {max_rounds}.")
        if syntax_check not in ("static", "lammps"):
            raise ValueError(f"MDRuntimeEnv: syntax_check must be 'static' or 'lammps', got {syntax_check!r}.")
        if final_reward not in ("last", "best"):
            raise ValueError(f"MDRuntimeEnv: final_reward must be 'last' or 'best', got {final_reward!r}.")
        if judge is not None and not callable(judge):
            raise TypeError("MDRuntimeEnv: judge must be a callable judge(prompt) -> str; wrap a Judge client with "
                            "as_judge_fn(client).")
        self._own_executor = executor is None
        if executor is None:
            from rlpost.rewards.lammps import LammpsExecutor  # heavy optional dependency, imported on use

            executor = LammpsExecutor(potentials_dir=potentials_dir, **dict(executor_options or {}))
        elif executor_options:
            raise ValueError("MDRuntimeEnv: pass either an executor or executor_options, not both.")
        elif potentials_dir is not None and executor.potentials_dir is not None and \
                os.path.realpath(potentials_dir) != os.path.realpath(executor.potentials_dir):
            raise ValueError(f"MDRuntimeEnv: potentials_dir {potentials_dir!r} differs from the executor's "
                             f"{executor.potentials_dir!r}; the check and the sandbox must see the same files.")
        self.executor = executor
        self.potentials_dir = potentials_dir if potentials_dir is not None else executor.potentials_dir
        self.judge = judge
        self.max_rounds = max_rounds
        self.pass_reward = float(pass_reward)
        self.syntax_check = syntax_check
        self.syntax_timeout_s = float(syntax_timeout_s)
        self.final_reward = final_reward
        self.system_prompt = system_prompt
        self.temp_bounds = temp_bounds
        self.judge_template = judge_template
        self.num_suggestions = num_suggestions
        self._syntax_executor = None
        self.trajectory: Trajectory | None = None
        self.done = True

    # -- episode API -------------------------------------------------------------------------------------------
    def reset(self, task: str | None = None, prompt: Any = None, problem: str | None = None, **row: Any) -> str:
        """Start an episode; returns the task prompt (the first user message).

        Accepts a dataset row: ``task`` (MD-EvalBench), ``problem`` (MD-CodeGen) or ``prompt`` (a string, or chat
        messages whose last user turn is the task); other fields are ignored.
        """
        text = task if task is not None else problem
        if text is None and prompt is not None:
            if isinstance(prompt, str):
                text = prompt
            else:
                users = [m.get("content") for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
                text = users[-1] if users else None
        if not isinstance(text, str) or not text.strip():
            raise ValueError("MDRuntimeEnv.reset needs the task text as task=..., problem=... or prompt=... "
                             f"(got fields {sorted(['task', 'prompt', 'problem', *row])} with no text).")
        messages = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        messages.append({"role": "user", "content": text})
        self.trajectory = Trajectory(text, messages, max_rounds=self.max_rounds, final_reward=self.final_reward)
        self.done = False
        return text

    @property
    def messages(self) -> list[Message]:
        """The conversation so far (what the generator sees next)."""
        return [] if self.trajectory is None else self.trajectory.messages

    def step(self, completion: str | None) -> tuple[str, float, bool, dict[str, Any]]:
        """One round on the generator's answer: ``(observation, reward, done, info)``.

        ``observation`` is the feedback (added to the conversation as the next user message unless ``done``),
        ``reward`` the round's reward, ``info`` holds ``round`` (the :class:`RoundRecord`), ``success`` and, when
        done, ``final_reward``.
        """
        if self.trajectory is None or self.done:
            raise RuntimeError("MDRuntimeEnv.step called on a finished episode; call reset(task=...) first.")
        traj = self.trajectory
        traj.messages.append({"role": "assistant", "content": completion or ""})
        record = self._evaluate(completion or "", len(traj.rounds) + 1)
        traj.rounds.append(record)
        self.done = record.success or len(traj.rounds) >= self.max_rounds
        observation = self._feedback(record)
        if not self.done:
            traj.messages.append({"role": "user", "content": observation})
        info = {"round": record, "success": record.success}
        if self.done:
            info["final_reward"] = traj.reward
        return observation, record.reward, self.done, info

    def run(self, generate: Generator, task: str | None = None, on_round: Callable[[RoundRecord], None] | None
            = None, **row: Any) -> Trajectory:
        """A whole episode with ``generate(messages) -> str``; ``on_round`` sees each record (for printing).

        A generator that raises ends the episode with that error in the last record instead of propagating it, so a
        batch of episodes survives one broken call.
        """
        self.reset(task=task, **row)
        while not self.done:
            try:
                answer = generate([dict(m) for m in self.messages])
            except Exception as error:  # noqa: BLE001 - report, do not crash the loop
                logger.warning("md_runtime: generator failed: %r", error)
                record = RoundRecord(len(self.trajectory.rounds) + 1, "generate", 0.0,
                                     error=f"generator failed: {error!r}")
                self.trajectory.rounds.append(record)
                self.done = True
                if on_round is not None:
                    on_round(record)
                break
            _obs, _reward, _done, info = self.step(answer)
            if on_round is not None:
                on_round(info["round"])
        return self.trajectory

    def close(self) -> None:
        """Shut down executors this env built."""
        if self._own_executor:
            self.executor.close()
        if self._syntax_executor is not None:
            self._syntax_executor.close()

    # -- one round ---------------------------------------------------------------------------------------------
    def _evaluate(self, completion: str, index: int) -> RoundRecord:
        found = find_script(completion)
        if found is None:
            return RoundRecord(index, "extract", 0.0, error="no LAMMPS script found in the answer")
        script = found.code
        passed = ["extract"]
        pots = check_potentials(script, self.potentials_dir, self.num_suggestions)
        if not pots.ok:
            return RoundRecord(index, "potentials", 0.0, error=pots.message(), passed=passed, script=script,
                               missing_potentials=pots.missing)
        passed.append("potentials")
        result, error = self._syntax(script)
        if error is not None:
            return RoundRecord(index, "syntax", 0.0, error=error, passed=passed, script=script,
                               result=None if result is None else _run_summary(result))
        passed.append("syntax")
        if result is None:
            result = self.executor.run(script)
        if result.stage == "rejected":  # only reachable with syntax_check="lammps" settings that differ
            return RoundRecord(index, "syntax", 0.0, error=result.error or "rejected", passed=passed,
                               script=script, result=_run_summary(result))
        summary = _run_summary(result)
        weights = DEFAULT_STAGE_WEIGHTS
        stages = score_stages(result, script, temp_bounds=self.temp_bounds)  # md_execution's rule
        if not stages["run"]:
            reward = weights["launch"] if stages["launch"] else 0.0
            return RoundRecord(index, "run", reward, error=stages["error"], passed=passed, script=script,
                               result=summary)
        passed.append("run")
        report = stages["report"]
        reward = weights["launch"] + weights["run"] + (weights["physics"] if report.ok else 0.0)
        record = RoundRecord(index, "physics", reward, error="; ".join(report.problems), passed=passed,
                             script=script, physics_problems=list(report.problems), result=summary)
        if report.ok:
            passed.append("physics")
            record.stage = "success"
        if self.judge is not None:
            self._apply_judge(record, self.trajectory.task, script, result, report)
        return record

    def _syntax(self, script: str) -> tuple[Any, str | None]:
        """``(result or None, error or None)``; a result comes back when LAMMPS already ran the whole script."""
        ex = self.executor
        if self.syntax_check == "static":
            # the executor's own rules and options, every problem at once (the run would stop at the first)
            problems = static_check(script, potentials_dir=ex.potentials_dir, max_run_steps=ex.max_run_steps,
                                    cap_run_steps=ex.cap_run_steps, allow_variable_paths=ex.allow_variable_paths,
                                    jump_files_as_self=ex.jump_files_as_self)
            if problems:
                return None, "rejected before running: " + "; ".join(str(p) for p in problems)
            return None, None
        if self._syntax_executor is None:
            from rlpost.rewards.lammps import LammpsExecutor

            self._syntax_executor = LammpsExecutor(
                timeout_s=self.syntax_timeout_s, memory_mb=ex.memory_mb, potentials_dir=ex.potentials_dir,
                max_atoms=ex.max_atoms, max_run_steps=ex.max_run_steps, cap_run_steps=ex.cap_run_steps,
                allow_variable_paths=ex.allow_variable_paths, jump_files_as_self=ex.jump_files_as_self,
                workers=1, workdir_root=ex.workdir_root, max_log_chars=ex.max_log_chars,
                allow_weaker=ex.allow_weaker, sandbox_mechanisms=ex.sandbox_mechanisms)
        quick = self._syntax_executor.run(script)
        if quick.timed_out:  # still running after the window: it launched, MDAgent2 counts that as OK
            return None, None
        if quick.ok:
            return quick, None
        if quick.stage == "launch":
            return quick, f"the sandbox could not start LAMMPS: {quick.error}"
        where = f" (script line {quick.failed_line})" if quick.failed_line is not None else ""
        return quick, f"{quick.error or quick.stage}{where}"

    def _apply_judge(self, record: RoundRecord, task: str, script: str, result: Any, report: Any) -> None:
        prompt = self.judge_template.format(task=task, code=script, result=result_summary(result, report))
        try:
            verdict = parse_rubric(self.judge(prompt))
        except Exception as error:  # noqa: BLE001 - an evaluator outage keeps the stage score
            logger.warning("md_runtime: judge call failed: %r", error)
            verdict = None
        if verdict is None:
            record.judge = {"error": "the judge's answer held no rubric score; stage reward kept"}
            return
        record.judge = {"module": verdict.module, "penalty": verdict.penalty, "reasons": verdict.reasons}
        record.reward = verdict.reward
        if record.stage == "success" and verdict.reward < self.pass_reward:
            record.stage = "judge"
            reasons = "; ".join(verdict.reasons) or "no penalty reasons given"
            record.error = (f"evaluator score {verdict.reward:.3f} < {self.pass_reward:g} (module "
                            f"{verdict.module:g}, penalty {verdict.penalty:g}): {reasons}")
        elif record.stage == "success":
            record.passed.append("judge")

    @staticmethod
    def _feedback(record: RoundRecord) -> str:
        if record.success:
            return "The script ran and passed every check."
        fix = ("Fix it, keep the parts that were correct, and answer with the complete corrected script as JSON "
               '{"code": ..., "checkout_filename_list": [...]}.')
        heads = {
            "extract": "Your answer held no LAMMPS script. Answer with JSON {\"code\": ...} or a ```lammps block.",
            "potentials": f"The potential check failed. {record.error}",
            "syntax": f"The script failed the syntax check: {record.error}.",
            "run": f"LAMMPS stopped with an error: {record.error}.",
            "physics": f"The run finished but the physics checks failed: {record.error}.",
            "judge": f"The run finished but the evaluation found problems: {record.error}.",
            "generate": f"The generator failed: {record.error}.",
        }
        head = heads.get(record.stage, record.error)
        return head if record.stage == "extract" else f"{head} {fix}"


# ---------------------------------------------------------------------------------------------------------------
# TRL environment_factory shape
# ---------------------------------------------------------------------------------------------------------------
TOOL_INSTRUCTIONS = ("\n\nCheck and run your LAMMPS script by calling the run_lammps tool with the complete script; "
                     "it reports missing potential files, syntax errors, LAMMPS errors and physics problems. Revise "
                     "and call it again until it reports success (at most {max_rounds} calls).")


class MDToolEnv:
    """The runtime as a TRL ``GRPOTrainer(environment_factory=...)`` environment (TRL 1.16, experimental there).

    TRL builds one instance per rollout, calls ``reset(**row)`` and appends the returned text to the prompt's last
    user message, exposes every public method except ``reset``/``get_reward`` as a tool, and scores the rollout
    with ``get_reward()``. Each ``run_lammps`` call is one runtime round; calls after ``max_rounds`` (or after
    success) are refused. The model must be able to call tools: a chat template that renders ``tools``, tool calls
    and tool turns, plus a response template TRL parses calls with (Qwen's work as they are; rlpost's tiny
    tokenizer has both, see :func:`rlpost.models.factory.enable_tool_calling`). ``tests/test_md_tool_grpo.py``
    runs it inside :class:`rlpost.trainers.GRPOTrainer`.

    Args:
        runtime: an :class:`MDRuntimeEnv`; None builds one from ``runtime_options`` (with ``system_prompt=None``:
            the dataset's prompt is the conversation).
    """

    def __init__(self, runtime: MDRuntimeEnv | None = None, **runtime_options: Any) -> None:
        if runtime is None:
            runtime_options.setdefault("system_prompt", None)
            runtime = MDRuntimeEnv(**runtime_options)
        elif runtime_options:
            raise ValueError("MDToolEnv: pass either a runtime or runtime options, not both.")
        self._runtime = runtime

    def reset(self, **row: Any) -> str | None:
        self._runtime.reset(**row)
        return TOOL_INSTRUCTIONS.format(max_rounds=self._runtime.max_rounds)

    def run_lammps(self, script: str) -> str:
        """Check and run a LAMMPS input script in a sandbox, and report what went wrong.

        Args:
            script: The complete LAMMPS input script; potential files are referred to as potentials/<file name>.

        Returns:
            Success, or the failed stage with its error message and what to fix.
        """
        if self._runtime.done:
            return "No more runs: the script already succeeded or the attempt limit was reached."
        observation, _reward, _done, info = self._runtime.step(f"```lammps\n{script}\n```")
        record = info["round"]
        return f"[round {record.round}, stage {record.stage}] {observation}"

    def get_reward(self) -> float:
        traj = self._runtime.trajectory
        return 0.0 if traj is None else traj.reward

    @property
    def trajectory(self) -> Trajectory | None:
        return self._runtime.trajectory


def md_tool_env_factory(**runtime_options: Any) -> Callable[[], MDToolEnv]:
    """A zero-argument factory for ``GRPOTrainer(environment_factory=...)``.

    The executor is built once and shared by every instance (its pool bounds concurrent LAMMPS runs), unless one
    is passed as ``executor``.
    """
    if runtime_options.get("executor") is None:
        from rlpost.rewards.lammps import LammpsExecutor

        runtime_options["executor"] = LammpsExecutor(potentials_dir=runtime_options.get("potentials_dir"),
                                                     **dict(runtime_options.pop("executor_options", None) or {}))
    return lambda: MDToolEnv(**runtime_options)
