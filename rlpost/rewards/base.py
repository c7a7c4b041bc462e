"""The reward-module contract, its failure policy, the TRL adapters and weighted composition.

A reward module scores a batch laid out as columns (``dict[str, list]``, one entry per sample) plus one group id per
sample, and returns a :class:`RewardOutput`. The same module runs inside rlpost's GRPO trainers (through
:func:`to_trl`), in an eval run, or in a plain script (``module(batch, group_ids)``). The design follows the reward
APIs surveyed in ``specs/anchors.md`` §B5/§E3: declared input fields (Flow-Factory ``required_fields``, verifiers'
name injection), explicit pointwise/groupwise granularity with group ids, ``None`` for "not applicable" (TRL), and
metrics plus table columns returned beside the scores.

Failure policy (applied by :meth:`RewardModule.__call__`, the entry point every caller uses):

- a call that raises, or runs past ``timeout_s``, yields ``None`` for the samples it covered - one sample for a
  pointwise module's ``score_one``, the whole batch for a ``score_batch`` call - and the samples are counted in the
  ``failures`` / ``timeouts`` metrics; a NaN/inf or non-numeric score yields ``None`` for that sample (pointwise) or
  for every sample of its group (groupwise) and is counted in ``nonfinite`` (``failures`` for non-numeric);
- training goes on: nothing raises and nothing waits longer than the timeout. Python threads cannot be killed, so a
  timed-out call is abandoned in a daemon thread (see :mod:`rlpost.rewards.runner`); rewards that execute code must
  enforce their own subprocess limits;
- programming errors still raise: wrong-length output (:class:`RewardLengthError`), missing fields
  (:class:`MissingFieldError`) and an unimplemented scoring method.
"""

from __future__ import annotations

import functools
import logging
import math
import types
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Literal, Mapping, Sequence

from rlpost.rewards.runner import CallResult, resolve_awaitable, run_calls

__all__ = [
    "ALWAYS_AVAILABLE_FIELDS",
    "FAILURE_METRICS",
    "MissingFieldError",
    "RewardError",
    "RewardLengthError",
    "RewardModule",
    "RewardOutput",
    "TRLRewardFunction",
    "WeightedSum",
    "as_text",
    "from_trl",
    "to_trl",
    "validate_fields",
]

logger = logging.getLogger(__name__)

# Fields every trainer hands to a reward, whatever the dataset holds. ``*_messages`` are the raw prompt/completion
# values (message lists for conversational datasets, else the same strings), kept beside their text form.
ALWAYS_AVAILABLE_FIELDS = (
    "prompt", "completion", "completion_ids", "group_id", "prompt_messages", "completion_messages",
)
# Per-call counters of samples nulled by the failure policy, always present in RewardModule.__call__'s metrics.
FAILURE_METRICS = ("failures", "timeouts", "nonfinite")
_TEXT_FIELDS = ("prompt", "completion")


@dataclass
class RewardOutput:
    """What a reward module returns for a batch of N samples.

    Attributes:
        scores: N values; ``None`` means "not applicable" (TRL turns it into NaN and skips the sample for this
            reward).
        metrics: scalars for this batch. :func:`to_trl` logs a name ``m`` as ``rewards/<module>/m``; a name that
            already starts with ``rewards/`` is logged verbatim (how :class:`WeightedSum` reports its components).
        columns: extra completions-table columns, each a list of N values; logged as ``<module>/<column>``.
    """

    scores: list[float | None]
    metrics: dict[str, float] = field(default_factory=dict)
    columns: dict[str, list] = field(default_factory=dict)


class RewardError(Exception):
    """Base class of the reward errors that signal a programming or configuration mistake (these are raised)."""


class MissingFieldError(RewardError, ValueError):
    """A reward requires a field that the batch or dataset does not have."""


class RewardLengthError(RewardError, ValueError):
    """A reward returned a different number of scores (or column values) than there are samples."""


# Raised through the failure policy: they mean the code or the configuration is wrong, not that one sample failed.
_PROGRAMMING_ERRORS = (RewardError, NotImplementedError)


def _content_text(content: Any) -> str:
    if content is None:  # e.g. an assistant turn that only holds tool calls
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal parts: [{"type": "text", "text": ...}, {"type": "image"}]
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def as_text(value: Any, role: str | None = None) -> str:
    """The text a reward should read from a prompt or completion given as a string or as chat messages.

    Args:
        value: a string, one message dict, or a list of ``{"role", "content"}`` messages (TRL's conversational
            format). ``None`` reads as ``""``.
        role: take the last message with this role. None (default) takes the last ``assistant`` or ``user``
            message, so a completion reads as the final answer and a prompt as the last question, skipping
            system and tool turns; without either role it falls back to the last message.

    Returns:
        The message content; list-of-parts content is joined from its text parts.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return _content_text(value.get("content"))
    if isinstance(value, (list, tuple)):
        if not all(isinstance(m, dict) for m in value):
            raise TypeError(
                f"as_text expects a string or a list of message dicts, got a list holding "
                f"{sorted({type(m).__name__ for m in value})}. Pass completions as strings or as "
                '[{"role": "assistant", "content": "..."}].'
            )
        roles = (role,) if role is not None else ("assistant", "user")
        for message in reversed(value):
            if message.get("role") in roles:
                return _content_text(message.get("content"))
        if role is None and value:
            return _content_text(value[-1].get("content"))
        return ""
    raise TypeError(f"as_text expects a string or chat messages, got {type(value).__name__}.")


def _coerce_score(score: Any) -> tuple[float | None, str | None]:
    """(score as float or None, failure-metric name when the value had to be dropped)."""
    if score is None:
        return None, None
    try:
        value = float(score)  # accepts bool, int, numpy scalars and 0-d tensors
    except (TypeError, ValueError):
        return None, "failures"
    if not math.isfinite(value):
        return None, "nonfinite"
    return value, None


def _batch_size(batch: Mapping[str, Sequence], group_ids: Sequence[int] | None, name: str) -> int:
    sizes = {key: len(values) for key, values in batch.items() if values is not None}
    if group_ids is not None:
        sizes["group_ids"] = len(group_ids)
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"reward '{name}' got columns of different lengths: {sizes}. Every batch field (and group_ids) must hold "
            f"one value per sample."
        )
    return next(iter(sizes.values()), 0)


class RewardModule:
    """Base class of every rlpost reward: declare the fields you read, implement one scoring method.

    Class attributes (override in subclasses; ``name``, ``timeout_s`` and ``max_concurrency`` can also be set per
    instance through ``__init__``):

    - ``name``: registry key and logging name (``rewards/<name>/mean``).
    - ``description``: one line, shown by ``rlpost list rewards``.
    - ``requires``: batch fields read, e.g. ``("completion", "answer")``; checked before every call and, through
      :func:`validate_fields`, against the dataset before training starts.
    - ``granularity``: ``"pointwise"`` (each sample alone: implement ``score_one``) or ``"groupwise"`` (scores
      depend on the other samples of the group: implement ``score_batch``).
    - ``timeout_s``: limit per call (per ``score_one`` sample, or per ``score_batch`` batch); None = no limit. A
      pointwise batch of N samples therefore waits at most ceil(N / max_concurrency) × timeout_s.
    - ``max_concurrency``: concurrent ``score_one`` calls; 1 calls them one by one in the caller's thread (unless a
      timeout is set, which needs a worker thread to enforce). Above 1, ``score_one`` must be thread-safe.

    Pointwise modules implement ``score_one(sample) -> float | None``; modules that score a whole batch at once
    (groupwise ones, or batch-efficient models) implement ``score_batch(batch, group_ids) -> RewardOutput``. Call
    the module itself (``module(batch, group_ids)``): that validates the fields, runs, and applies the failure
    policy of the module docstring.

    Args:
        field_map: module field -> dataset column, to read e.g. ``answer`` from a ``solution`` column without code.
        name: instance name (two instances of one class need distinct names to log separately).
        timeout_s: overrides the class ``timeout_s``.
        max_concurrency: overrides the class ``max_concurrency``.
    """

    name: str = ""
    description: str = ""
    requires: tuple[str, ...] = ("completion",)
    granularity: Literal["pointwise", "groupwise"] = "pointwise"
    timeout_s: float | None = None
    max_concurrency: int = 1
    field_map: Mapping[str, str] = types.MappingProxyType({})

    _UNSET: ClassVar[object] = object()

    def __init__(
        self,
        *,
        field_map: Mapping[str, str] | None = None,
        name: str | None = None,
        timeout_s: float | None | object = _UNSET,
        max_concurrency: int | None = None,
    ) -> None:
        if name is not None:
            self.name = name
        if timeout_s is not RewardModule._UNSET:
            self.timeout_s = timeout_s  # type: ignore[assignment]
        if max_concurrency is not None:
            self.max_concurrency = max_concurrency
        self.field_map = dict(field_map or {})
        self._check_declaration()

    def _check_declaration(self) -> None:
        cls = type(self).__name__
        if not self.name:
            raise ValueError(f"{cls} has no name. Set the class attribute `name` or register it with @register_reward.")
        if self.granularity not in ("pointwise", "groupwise"):
            raise ValueError(
                f"reward '{self.name}': granularity must be 'pointwise' or 'groupwise', got {self.granularity!r}."
            )
        if self.max_concurrency < 1:
            raise ValueError(f"reward '{self.name}': max_concurrency must be >= 1, got {self.max_concurrency}.")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"reward '{self.name}': timeout_s must be > 0 or None, got {self.timeout_s}.")
        unknown = sorted(set(self.field_map) - set(self.requires))
        if unknown:
            raise ValueError(
                f"reward '{self.name}': field_map renames {unknown}, which it does not require. "
                f"Its required fields are {list(self.requires)}."
            )
        if self._uses_default_score_batch():
            if self.granularity == "groupwise":
                raise TypeError(f"groupwise reward '{self.name}' ({cls}) must implement score_batch(batch, group_ids).")
            if type(self).score_one is RewardModule.score_one:
                raise TypeError(f"pointwise reward '{self.name}' ({cls}) must implement score_one(sample).")

    def __repr__(self) -> str:
        cls = type(self).__name__
        return f"{cls}(name={self.name!r}, requires={self.requires!r}, granularity={self.granularity!r})"

    # -- scoring methods a subclass implements --------------------------------------------------------------------
    def score_one(self, sample: dict[str, Any]) -> float | None:
        """Score one sample (a dict holding every batch field for that sample). Pointwise modules implement this."""
        raise NotImplementedError(f"reward '{self.name}' ({type(self).__name__}) must implement score_one(sample).")

    def score_batch(self, batch: dict[str, list], group_ids: list[int]) -> RewardOutput:
        """Score a batch. The default maps ``score_one`` over the samples, ``max_concurrency`` at a time, each call
        under ``timeout_s``; a sample whose call raises or times out scores None and is counted."""
        if type(self).score_one is RewardModule.score_one:
            raise NotImplementedError(
                f"reward '{self.name}' ({type(self).__name__}) must implement score_one(sample) (pointwise) or "
                f"score_batch(batch, group_ids) (groupwise or batched)."
            )
        samples = [{key: values[i] for key, values in batch.items()} for i in range(len(group_ids))]
        results = run_calls(
            [functools.partial(self.score_one, sample) for sample in samples],
            max_concurrency=self.max_concurrency,
            timeout_s=self.timeout_s,
        )
        _raise_programming_error(results)
        counts = _count_failures(results, self.name)
        return RewardOutput([r.value if r.status == "ok" else None for r in results], metrics=counts)

    # -- the entry point ----------------------------------------------------------------------------------------
    def required_columns(self) -> dict[str, str]:
        """Required module field -> the batch/dataset column it is read from (after ``field_map``)."""
        return {f: self.field_map.get(f, f) for f in self.requires}

    def __call__(self, batch: Mapping[str, Sequence], group_ids: Sequence[int] | None = None) -> RewardOutput:
        """Score ``batch`` (column -> one value per sample) with the failure policy applied.

        Args:
            batch: columns, each a list of N values. ``prompt``/``completion`` may be strings or chat messages.
            group_ids: N group ids (any ints, not necessarily contiguous); None puts each sample in its own group.

        Returns:
            N scores (None = not applicable or failed), the module's metrics plus the ``failures``, ``timeouts`` and
            ``nonfinite`` counts, and the module's columns.
        """
        n = _batch_size(batch, group_ids, self.name)
        group_ids = list(range(n)) if group_ids is None else list(group_ids)
        present = {key for key, values in batch.items() if values is not None}
        _raise_missing(self, present | {"group_id"} | {f"{k}_messages" for k in _TEXT_FIELDS if k in present})
        counts = dict.fromkeys(FAILURE_METRICS, 0)
        if n == 0:
            return RewardOutput([], metrics=counts)
        view = self._module_view(batch, group_ids)

        if self._uses_default_score_batch():
            output = self.score_batch(view, group_ids)  # isolates failures per sample itself
        else:
            (result,) = run_calls([lambda: self.score_batch(view, group_ids)], timeout_s=self.timeout_s)
            _raise_programming_error([result])
            if result.status == "ok":
                output = result.value
            else:
                counts.update(_count_failures([result], self.name, samples=n))
                output = RewardOutput([None] * n)
        output = self._check_output(output, n)

        scores, dropped = self._drop_invalid(output.scores, group_ids)
        for reason in dropped:
            counts[reason] += 1
        metrics = dict(output.metrics)
        for key, value in counts.items():
            metrics[key] = metrics.get(key, 0) + value
        return RewardOutput(scores, metrics=metrics, columns=dict(output.columns))

    # -- helpers -----------------------------------------------------------------------------------------------
    def _uses_default_score_batch(self) -> bool:
        return type(self).score_batch is RewardModule.score_batch

    def _module_view(self, batch: Mapping[str, Sequence], group_ids: list[int]) -> dict[str, list]:
        """The batch as the module sees it: field_map applied, prompt/completion as text, raw values kept."""
        view = {key: list(values) for key, values in batch.items() if values is not None}
        for module_field, column in self.field_map.items():
            view[module_field] = view[column]
        for key in _TEXT_FIELDS:
            if key not in view:
                continue
            raw_key = f"{key}_messages"
            # keep an existing raw column (a WeightedSum passes on its already-normalized view) unless remapped
            if raw_key not in view or key in self.field_map:
                view[raw_key] = view[key]
            view[key] = [as_text(v) for v in view[key]]
        view["group_id"] = group_ids
        return view

    def _check_output(self, output: Any, n: int) -> RewardOutput:
        if isinstance(output, (list, tuple)):  # a bare score list is accepted from score_batch
            output = RewardOutput(list(output))
        if not isinstance(output, RewardOutput):
            raise TypeError(
                f"reward '{self.name}': score_batch must return a RewardOutput (or a list of scores), "
                f"got {type(output).__name__}."
            )
        if len(output.scores) != n:
            raise RewardLengthError(
                f"reward '{self.name}' returned {len(output.scores)} scores for a batch of {n} samples; "
                f"score_batch must return exactly one score (or None) per sample."
            )
        for column, values in output.columns.items():
            if len(values) != n:
                raise RewardLengthError(
                    f"reward '{self.name}' returned column '{column}' with {len(values)} values for a batch of {n} "
                    f"samples; every column needs one value per sample."
                )
        return output

    def _drop_invalid(self, raw_scores: list, group_ids: list[int]) -> tuple[list[float | None], list[str]]:
        """Scores as floats, NaN/inf/non-numeric ones dropped to None (with the whole group for groupwise modules).
        Returns the scores and one failure-metric name per dropped sample."""
        scores: list[float | None] = []
        reasons: dict[int, str] = {}
        for i, raw in enumerate(raw_scores):
            value, reason = _coerce_score(raw)
            scores.append(value)
            if reason is not None:
                reasons[i] = reason
        if self.granularity == "groupwise" and reasons:
            # a bad score makes the group's relative scores meaningless, so the whole group is dropped
            bad_groups = {group_ids[i]: reason for i, reason in reasons.items()}
            for i, group in enumerate(group_ids):
                if group in bad_groups and i not in reasons and scores[i] is not None:
                    reasons[i] = bad_groups[group]
                    scores[i] = None
        if reasons:
            logger.warning(
                "reward %r: dropped %d score(s) to None (%s).", self.name, len(reasons), sorted(set(reasons.values()))
            )
        return scores, list(reasons.values())


def _raise_programming_error(results: list[CallResult]) -> None:
    for result in results:
        if result.status == "error" and isinstance(result.error, _PROGRAMMING_ERRORS):
            raise result.error


def _count_failures(results: list[CallResult], name: str, samples: int = 1) -> dict[str, int]:
    """Failure counters for calls that each covered ``samples`` samples; logs the first error once."""
    errors = [r.error for r in results if r.status == "error"]
    timeouts = sum(r.status == "timeout" for r in results)
    if errors:
        logger.warning(
            "reward %r: %d call(s) raised and score None; first error: %r", name, len(errors), errors[0],
            exc_info=errors[0],
        )
    if timeouts:
        logger.warning("reward %r: %d call(s) timed out and score None (threads abandoned).", name, timeouts)
    return {"failures": len(errors) * samples, "timeouts": timeouts * samples}


def _missing_message(module: RewardModule, module_field: str, column: str, available: Iterable[str]) -> str:
    mapped = f" (its '{module_field}' field, mapped by field_map)" if column != module_field else ""
    article = "an" if column[:1].lower() in "aeiou" else "a"
    fix = "fix `field_map`" if mapped else "map it with `field_map`"
    fix = f"Add {article} '{column}' column to the dataset or {fix}."
    return (
        f"reward '{module.name}' requires dataset field '{column}'{mapped}, which is missing. "
        f"Available fields: {sorted(available)}. {fix}"
    )


def _raise_missing(module: RewardModule, available: set[str]) -> None:
    problems = [
        _missing_message(module, f, column, available)
        for f, column in module.required_columns().items()
        if column not in available
    ]
    if problems:
        raise MissingFieldError("\n".join(problems))


def validate_fields(modules: RewardModule | Iterable[RewardModule], available_fields: Iterable[str]) -> None:
    """Check, before training, that every field the modules require is available.

    Args:
        modules: one module or several.
        available_fields: the dataset's columns. :data:`ALWAYS_AVAILABLE_FIELDS` (what the trainer itself passes)
            are added.

    Raises:
        MissingFieldError: naming each reward and missing field, the available fields and the fix.
    """
    modules = [modules] if isinstance(modules, RewardModule) else list(modules)
    available = set(available_fields) | set(ALWAYS_AVAILABLE_FIELDS)
    problems = []
    for module in modules:
        try:
            _raise_missing(module, available)
        except MissingFieldError as error:
            problems.append(str(error))
    if problems:
        raise MissingFieldError("\n".join(problems))


# ---------------------------------------------------------------------------------------------------------------
# TRL adapters
# ---------------------------------------------------------------------------------------------------------------
def _metric_name(module_name: str, metric: str) -> str:
    return metric if metric.startswith("rewards/") else f"rewards/{module_name}/{metric}"


class TRLRewardFunction:
    """A :class:`RewardModule` as a synchronous TRL reward function; build it with :func:`to_trl`.

    A callable object rather than a closure so it pickles (TRL's async GRPO ships rewards to a worker process);
    TRL reads its ``__name__`` for the ``rewards/<name>/mean`` metric.
    """

    def __init__(self, module: RewardModule, num_generations: int | None = None) -> None:
        if num_generations is not None and num_generations < 1:
            raise ValueError(f"num_generations must be >= 1 or None, got {num_generations}.")
        self.module = module
        self.num_generations = num_generations
        self.__name__ = self.__qualname__ = module.name

    def __repr__(self) -> str:
        return f"to_trl({self.module!r}, num_generations={self.num_generations})"

    def group_ids(self, n: int, group_id: Sequence[int] | None) -> list[int]:
        if group_id is not None:
            return list(group_id)
        if self.num_generations is not None:
            return [i // self.num_generations for i in range(n)]  # TRL lays out G consecutive completions per prompt
        return list(range(n))

    def __call__(
        self,
        prompts: list | None = None,
        completions: list | None = None,
        completion_ids: list | None = None,
        trainer_state: Any = None,
        log_extra: Callable[[str, list], None] | None = None,
        log_metric: Callable[[str, float], None] | None = None,
        **columns: list,
    ) -> list[float | None]:
        if completions is None:
            raise ValueError(f"reward '{self.module.name}' was called without `completions`.")
        group_id = columns.pop("group_id", None)
        batch = {"prompt": prompts, "completion": completions, "completion_ids": completion_ids, **columns}
        batch = {key: values for key, values in batch.items() if values is not None}
        output = self.module(batch, self.group_ids(len(completions), group_id))
        if log_metric is not None:
            for metric, value in output.metrics.items():
                log_metric(_metric_name(self.module.name, metric), float(value))
        if log_extra is not None:
            for column, values in output.columns.items():
                log_extra(f"{self.module.name}/{column}", list(values))
        return list(output.scores)


def to_trl(module: RewardModule, num_generations: int | None = None) -> TRLRewardFunction:
    """Adapt ``module`` to TRL's reward-function signature.

    The result is called as ``fn(prompts=, completions=, completion_ids=, trainer_state=, log_extra=, log_metric=,
    **dataset_columns) -> list[float | None]`` and is named ``module.name``. Group ids come from the ``group_id``
    column when the caller passes one (rlpost's GRPOTrainer does), else ``i // num_generations`` when
    ``num_generations`` is given (TRL's contiguous layout), else each sample is its own group. Module metrics go to
    ``log_metric`` (see :class:`RewardOutput` for names), columns to ``log_extra``. ``trainer_state`` is not passed
    on: modules score samples, not training progress.
    """
    if not isinstance(module, RewardModule):
        raise TypeError(
            f"to_trl expects a RewardModule, got {type(module).__name__}. Wrap plain functions with from_trl."
        )
    return TRLRewardFunction(module, num_generations)


class _TRLFunctionReward(RewardModule):
    """A TRL-style reward function as a module: the batch is passed back as TRL keyword arguments."""

    description = "TRL reward function"

    def __init__(self, fn: Callable, *, requires: tuple[str, ...], description: str, granularity: str, **options):
        self.fn = fn
        self.requires = tuple(requires)
        self.description = description
        self.granularity = granularity  # type: ignore[assignment]
        super().__init__(**options)

    def score_batch(self, batch: dict[str, list], group_ids: list[int]) -> RewardOutput:
        metrics: dict[str, float] = {}
        columns: dict[str, list] = {}
        # the raw values, so functions that index messages (trl.rewards.*: completion[0]["content"]) still work
        text_fields = {*_TEXT_FIELDS, *(f"{k}_messages" for k in _TEXT_FIELDS), "completion_ids"}
        kwargs = {key: values for key, values in batch.items() if key not in text_fields}
        scores = self.fn(
            prompts=batch.get("prompt_messages"),
            completions=batch.get("completion_messages"),
            completion_ids=batch.get("completion_ids"),
            trainer_state=None,
            log_extra=lambda column, values: columns.__setitem__(column, list(values)),
            log_metric=lambda name, value: metrics.__setitem__(name, float(value)),
            **kwargs,
        )
        return RewardOutput(list(resolve_awaitable(scores)), metrics=metrics, columns=columns)


def _callable_name(fn: Callable) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


def from_trl(
    fn: Callable,
    name: str | None = None,
    requires: tuple[str, ...] = ("prompt", "completion"),
    description: str | None = None,
    granularity: Literal["pointwise", "groupwise"] = "pointwise",
    **options: Any,
) -> RewardModule:
    """Wrap a TRL-style reward function (``trl.rewards.*``, open-r1 rewards, your own; sync or ``async``) as a module.

    The function receives ``prompts``/``completions`` exactly as the caller gave them (message lists stay message
    lists), ``completion_ids``, every other batch column (``group_id`` included) as keyword lists,
    ``trainer_state=None`` and ``log_extra``/``log_metric`` hooks whose values become the output's columns and
    metrics. It scores the whole batch in one call, so one exception nulls the whole batch.

    Args:
        fn: the reward function.
        name: module name; defaults to the function's ``__name__`` (what TRL would log).
        requires: batch fields the function reads.
        description: one line for ``rlpost list rewards``; defaults to the first docstring line.
        granularity: ``"pointwise"`` (default: NaN drops only that sample) or ``"groupwise"`` for functions whose
            scores are relative within a group.
        **options: ``field_map``, ``timeout_s`` (for the whole call) of :class:`RewardModule`.
    """
    if not callable(fn):
        raise TypeError(f"from_trl expects a callable reward function, got {type(fn).__name__}.")
    doc = (getattr(fn, "__doc__", None) or "").strip()
    if description is None:
        description = doc.splitlines()[0] if doc else f"TRL reward function {_callable_name(fn)}"
    return _TRLFunctionReward(
        fn,
        name=name or _callable_name(fn),
        requires=requires,
        description=description,
        granularity=granularity,
        **options,
    )


# ---------------------------------------------------------------------------------------------------------------
# Composition
# ---------------------------------------------------------------------------------------------------------------
class WeightedSum(RewardModule):
    """Score = Σ_k w_k·s_k over the components that scored the sample; None when every component returned None.

    Skipping a None component (rather than counting it as 0) matches TRL's ``nansum`` over reward functions, so a
    multi-task batch where a reward does not apply keeps the other rewards' scale. Each component runs through its
    own ``__call__`` (its own fields, field_map, timeouts and failure policy); components run concurrently when any
    of them is slow (``max_concurrency > 1`` or a timeout), so the slowest sets the latency rather than the sum.

    Metrics: ``rewards/<component>/mean`` (over the samples it scored) and each component's metrics as
    ``rewards/<component>/<metric>``; columns: ``<component>`` (its scores) and ``<component>/<column>``.

    Args:
        modules: the components; their names must be distinct.
        weights: one per component; None = all 1.0.
        name: this module's name (default ``"weighted_sum"``).
    """

    description = "Weighted sum of reward modules (None components skipped)."
    granularity = "pointwise"

    def __init__(
        self, modules: Sequence[RewardModule], weights: Sequence[float] | None = None, name: str = "weighted_sum"
    ) -> None:
        self.modules = list(modules)
        if not self.modules or not all(isinstance(m, RewardModule) for m in self.modules):
            raise TypeError(
                "WeightedSum needs a non-empty list of RewardModule objects (wrap functions with from_trl)."
            )
        self.weights = [1.0] * len(self.modules) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.modules):
            raise ValueError(
                f"WeightedSum got {len(self.weights)} weights for {len(self.modules)} modules; give one each."
            )
        names = [m.name for m in self.modules]
        if len(set(names)) != len(names):
            raise ValueError(
                f"WeightedSum components need distinct names to log separately, got {names}. "
                f"Pass name=... to a component."
            )
        # a groupwise component's NaN already dropped its group; the sum itself is pointwise unless one is groupwise
        if any(m.granularity == "groupwise" for m in self.modules):
            self.granularity = "groupwise"
        self.requires = tuple(dict.fromkeys(c for m in self.modules for c in m.required_columns().values()))
        super().__init__(name=name)

    def score_batch(self, batch: dict[str, list], group_ids: list[int]) -> RewardOutput:
        slow = any(m.max_concurrency > 1 or m.timeout_s is not None for m in self.modules)
        results = run_calls(
            [functools.partial(m, batch, group_ids) for m in self.modules],
            max_concurrency=len(self.modules) if slow else 1,
            use_threads=slow,
        )
        for result in results:
            if result.status == "error":  # component __call__ only raises for programming errors
                raise result.error  # type: ignore[misc]
        outputs: list[RewardOutput] = [r.value for r in results]

        scores: list[float | None] = []
        for i in range(len(group_ids)):
            terms = [w * out.scores[i] for w, out in zip(self.weights, outputs) if out.scores[i] is not None]
            scores.append(sum(terms) if terms else None)

        metrics: dict[str, float] = {}
        columns: dict[str, list] = {}
        for module, out in zip(self.modules, outputs):
            present = [s for s in out.scores if s is not None]
            if present:
                metrics[f"rewards/{module.name}/mean"] = sum(present) / len(present)
            for metric, value in out.metrics.items():
                metrics[_metric_name(module.name, metric)] = value
            columns[module.name] = list(out.scores)
            for column, values in out.columns.items():
                columns[f"{module.name}/{column}"] = list(values)
        return RewardOutput(scores, metrics=metrics, columns=columns)
