"""Low-reward trajectory recycling (MDAgent2's "Trace Module", issue 6 item 4).

MDAgent2's MD-GRPO diagram (spec mdagent2.md §4.2) sends rollouts and rewards through a *score filter*; failing
prompts are *rewritten* into a new question q′ carrying the failure context and *update the train data*. The paper's
rule is unreleased, so this module fills it in with the spec's suggested defaults [I]:

- a prompt is recycled when the **max** reward over its completions in a batch (its GRPO group) is below
  ``threshold`` (default 0.5 on the 0-1 scale); ``group_reduce="mean"`` is the other reading of the figure;
- the new prompt is the original one rendered through ``template`` with the failure context: the ``error`` and
  ``penalty`` fields of the info of the group's best completion (the failure nearest to success), and optionally
  passed through ``rewriter`` (an LLM call ``str -> str``), standing in for MDAgent2's LLM rewrite;
- one pending entry per source prompt (a newer failure replaces it: dedupe by source) and a recycled prompt that
  fails again is re-rendered from its *source*, so contexts never nest; a source that later scores above the
  threshold is dropped from the buffer (solved);
- the buffer holds at most ``capacity`` entries and evicts **oldest first** (FIFO) - stale failure contexts describe
  an older policy; each entry is served once (:meth:`RecyclingBuffer.sample` removes it).

Feeding recycled prompts back, ``mix_ratio`` is the share of served prompts that are recycled while the buffer has
entries; a credit counter spreads them evenly (``0.25`` -> every 4th prompt), with no randomness.

Plugging into TRL's GRPO (in-process rewards; not TRL's async worker, which pickles reward functions)::

    buffer = RecyclingBuffer(capacity=256, threshold=0.5, mix_ratio=0.25)
    reward = buffer.wrap(get_reward("md_execution"))          # scores as before, and records failures
    train = recycling_dataset(dataset, buffer, seed=0)         # endless stream: base prompts + recycled ones
    trainer = GRPOTrainer(..., reward_funcs=[to_trl(reward)], train_dataset=train,
                          args=GRPOConfig(max_steps=..., shuffle_dataset=False, ...))

TRL repeats each streamed prompt ``num_generations`` times, so a recycled prompt forms a whole group.
``shuffle_dataset=False`` because the stream shuffles the base data each epoch itself, while TRL's buffered shuffle
would draw ~1000 prompts ahead and delay recycled ones by as much. A recycled prompt reaches the model at the next
prompt fetch after its failure was scored (TRL prefetches one generation batch), i.e. with a lag of 1-2 steps.
For custom loops, :meth:`RecyclingBuffer.mix` replaces a share of a batch of prompts directly.
"""

from __future__ import annotations

import json
import math
import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from rlpost.rewards.base import RewardModule, RewardOutput

__all__ = ["DEFAULT_TEMPLATE", "RecordingReward", "RecycledPrompt", "RecyclingBuffer", "recycling_dataset"]

DEFAULT_TEMPLATE = (
    "{prompt}\n\n"
    "Note: an earlier answer to this task scored {reward:.2f} out of 1 and failed as follows:\n"
    "{context}\n"
    "Write a corrected, complete answer that avoids these problems."
)
# batch columns that describe one completion, not the prompt record that gets recycled
_COMPLETION_COLUMNS = frozenset({"completion", "completion_ids", "completion_messages", "prompt_messages",
                                 "group_id"})


def _key(prompt: Any) -> str:
    """A hashable identity for a prompt given as text or chat messages."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, default=str)


def _render(prompt: Any, text_fn: Callable[[str], str]) -> Any:
    """Apply ``text_fn`` to the prompt text: the string itself, or the last user message of a chat prompt."""
    if isinstance(prompt, str):
        return text_fn(prompt)
    if isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt):
        messages = [dict(m) for m in prompt]
        for message in reversed(messages):
            if message.get("role") == "user" and isinstance(message.get("content"), str):
                message["content"] = text_fn(message["content"])
                return messages
        raise ValueError("cannot recycle a chat prompt without a text user message; give prompts as strings or "
                         "with a {'role': 'user', 'content': str} turn.")
    raise TypeError(f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__}.")


@dataclass
class RecycledPrompt:
    """A pending recycled prompt.

    Attributes:
        record: the source record (every dataset column, e.g. a reference solution) with its prompt replaced.
        source: the original prompt.
        reward: the group reward that sent it here.
        context: the failure context written into the prompt.
    """

    record: dict
    source: Any
    reward: float
    context: str


class RecyclingBuffer:
    """Bounded buffer that turns low-reward prompts into new prompts with their failure context.

    Args:
        capacity: most pending entries; the oldest is evicted first when full.
        threshold: a prompt whose group reward (``group_reduce`` over its completions) is below this is recycled.
        mix_ratio: share of served prompts that are recycled while the buffer holds entries, in [0, 1).
        template: format string with ``{prompt}``, ``{context}``, ``{reward}`` and any info key (missing ones
            read as "").
        group_reduce: ``"max"`` (default: recycle only when no completion reached the threshold) or ``"mean"``.
        prompt_key: the record column holding the prompt.
        context_keys: info keys listed in ``{context}``, one ``key: value`` line each (empty values skipped).
        max_context_chars: each context value is cut to this many characters (LAMMPS errors can be long).
        rewriter: optional ``str -> str`` (e.g. an LLM) applied to the rendered text.
    """

    def __init__(self, capacity: int = 256, threshold: float = 0.5, mix_ratio: float = 0.25,
                 template: str = DEFAULT_TEMPLATE, *, group_reduce: str = "max", prompt_key: str = "prompt",
                 context_keys: Sequence[str] = ("error", "penalty"), max_context_chars: int = 1000,
                 rewriter: Callable[[str], str] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"RecyclingBuffer capacity must be >= 1, got {capacity}.")
        if not 0.0 <= mix_ratio < 1.0:
            raise ValueError(f"RecyclingBuffer mix_ratio must be in [0, 1), got {mix_ratio}: 1 would starve the "
                             "base data.")
        if group_reduce not in ("max", "mean"):
            raise ValueError(f"RecyclingBuffer group_reduce must be 'max' or 'mean', got {group_reduce!r}.")
        if "{prompt}" not in template:
            raise ValueError("RecyclingBuffer template needs a {prompt} placeholder for the original prompt.")
        self.capacity = capacity
        self.threshold = float(threshold)
        self.mix_ratio = float(mix_ratio)
        self.template = template
        self.group_reduce = group_reduce
        self.prompt_key = prompt_key
        self.context_keys = tuple(context_keys)
        self.max_context_chars = max_context_chars
        self.rewriter = rewriter
        self._pending: OrderedDict[str, RecycledPrompt] = OrderedDict()
        # served recycled prompt -> its source record, so a repeat failure is re-rendered from the source; bounded
        # like the buffer (a few batches of served prompts are enough to cover TRL's lag)
        self._origins: OrderedDict[str, dict] = OrderedDict()
        self._credit = 0.0
        self.stats = {"added": 0, "evicted": 0, "served": 0, "solved": 0}

    def __len__(self) -> int:
        return len(self._pending)

    # -- filling ----------------------------------------------------------------------------------------------
    def add(self, samples: Sequence[Any], rewards: Sequence[float | None],
            infos: Sequence[Mapping[str, Any] | None] | None = None,
            group_ids: Sequence[Any] | None = None) -> int:
        """Score-filter one batch of rollouts; returns how many prompts entered the buffer.

        Args:
            samples: one per completion: the prompt record (a dict with ``prompt_key``) or the bare prompt.
            rewards: one per completion; None (not scored) is ignored.
            infos: one dict per completion with the failure context (``error``, ``penalty``, ...), or None.
            group_ids: completions sharing an id share a prompt; None groups by the prompt itself.
        """
        n = len(samples)
        infos = [None] * n if infos is None else list(infos)
        if len(rewards) != n or len(infos) != n or (group_ids is not None and len(group_ids) != n):
            raise ValueError(f"RecyclingBuffer.add got {n} samples, {len(rewards)} rewards and {len(infos)} infos"
                             f"{'' if group_ids is None else f' and {len(group_ids)} group ids'}; give one each.")
        records = [dict(s) if isinstance(s, Mapping) else {self.prompt_key: s} for s in samples]
        groups: OrderedDict[Any, list[int]] = OrderedDict()
        for i, record in enumerate(records):
            if self.prompt_key not in record:
                raise KeyError(f"RecyclingBuffer.add: sample {i} has no '{self.prompt_key}' field; set prompt_key.")
            gid = _key(record[self.prompt_key]) if group_ids is None else group_ids[i]
            groups.setdefault(gid, []).append(i)
        added = 0
        for members in groups.values():
            scored = [i for i in members if rewards[i] is not None and math.isfinite(rewards[i])]
            if not scored:
                continue
            values = [float(rewards[i]) for i in scored]
            group_reward = max(values) if self.group_reduce == "max" else sum(values) / len(values)
            best = max(scored, key=lambda i: rewards[i])
            source = self._origins.get(_key(records[best][self.prompt_key]), records[best])
            source_key = _key(source[self.prompt_key])
            if group_reward >= self.threshold:
                if self._pending.pop(source_key, None) is not None:
                    self.stats["solved"] += 1
                continue
            self._push(source_key, source, group_reward, infos[best] or {})
            added += 1
        return added

    def _push(self, source_key: str, source: dict, reward: float, info: Mapping[str, Any]) -> None:
        lines = []
        for key in self.context_keys:
            value = info.get(key)
            if value is not None and str(value).strip():
                lines.append(f"- {key}: {str(value).strip()[: self.max_context_chars]}")
        context = "\n".join(lines) if lines else "- (no error message; the answer was judged incomplete)"
        fields = {k: "" if v is None else v for k, v in info.items()}

        def text_fn(prompt_text: str) -> str:
            text = self.template.format_map(_Blank({**fields, "prompt": prompt_text, "context": context,
                                                    "reward": reward}))
            return self.rewriter(text) if self.rewriter is not None else text

        record = dict(source)
        record[self.prompt_key] = _render(source[self.prompt_key], text_fn)
        self._pending.pop(source_key, None)  # re-inserted at the end: a fresh failure is the newest entry
        self._pending[source_key] = RecycledPrompt(record, source[self.prompt_key], reward, context)
        self.stats["added"] += 1
        while len(self._pending) > self.capacity:
            self._pending.popitem(last=False)
            self.stats["evicted"] += 1

    # -- serving ----------------------------------------------------------------------------------------------
    def sample(self, k: int) -> list[dict]:
        """Remove and return up to ``k`` recycled records, oldest first."""
        out = []
        while self._pending and len(out) < k:
            _, entry = self._pending.popitem(last=False)
            self._origins[_key(entry.record[self.prompt_key])] = {**entry.record, self.prompt_key: entry.source}
            while len(self._origins) > 4 * self.capacity:
                self._origins.popitem(last=False)
            out.append(entry.record)
        self.stats["served"] += len(out)
        return out

    def _next_slot(self) -> dict | None:
        """A recycled record for the next served slot, or None to serve a base prompt (the mix_ratio credit)."""
        # capped at one slot: an empty buffer builds no debt that would later serve recycled prompts in a burst
        self._credit = min(self._credit + self.mix_ratio, 1.0)
        if self._credit >= 1.0 - 1e-9 and self._pending:  # 1e-9: ten additions of 0.1 sum to 0.999...
            self._credit -= 1.0
            return self.sample(1)[0]
        return None

    def mix(self, batch: Sequence[Any]) -> list[Any]:
        """The batch with a ``mix_ratio`` share of its slots replaced by recycled prompts (same length).

        Items may be records (dicts) or bare prompts; a bare prompt's slot gets the recycled prompt alone.
        """
        out = []
        for item in batch:
            recycled = self._next_slot()
            if recycled is None:
                out.append(item)
            else:
                out.append(recycled if isinstance(item, Mapping) else recycled[self.prompt_key])
        return out

    def stream(self, records: Iterable[Mapping[str, Any]]) -> Iterator[dict]:
        """Yield ``records`` with recycled ones interleaved; base records are delayed, never dropped."""
        for record in records:
            recycled = self._next_slot()
            while recycled is not None:
                yield recycled
                recycled = self._next_slot()
            yield dict(record)

    def wrap(self, module: RewardModule) -> "RecordingReward":
        """``module`` with every scored batch fed to :meth:`add` (see :class:`RecordingReward`)."""
        return RecordingReward(module, self)


class _Blank(dict):
    """format_map mapping where a placeholder without a value reads as ""."""

    def __missing__(self, key: str) -> str:
        return ""


class RecordingReward(RewardModule):
    """A reward module that scores exactly like ``module`` and feeds each batch to a :class:`RecyclingBuffer`.

    Prompt records are the batch's prompt plus its dataset columns (completion columns left out), so a recycled
    record keeps e.g. its reference solution; infos are the module's per-sample columns (``md_execution`` writes
    ``error`` and ``penalty``). Name, fields and granularity are the module's, so logging is unchanged.
    Completions are grouped by their prompt (not by ``group_ids``), so a prompt counts once however the caller
    numbers its groups.
    """

    description = "Records low-reward prompts for recycling, scoring like the wrapped module."

    def __init__(self, module: RewardModule, buffer: RecyclingBuffer) -> None:
        if not isinstance(module, RewardModule):
            raise TypeError(f"RecordingReward wraps a RewardModule, got {type(module).__name__}; use from_trl first.")
        self.module = module
        self.buffer = buffer
        self.requires = tuple(dict.fromkeys(["prompt", *module.required_columns().values()]))
        self.granularity = module.granularity
        self.description = module.description or self.description
        super().__init__(name=module.name)

    def score_batch(self, batch: dict[str, list], group_ids: list[int]) -> RewardOutput:
        output = self.module(batch, group_ids)  # the module's own failure policy and limits apply
        n = len(group_ids)
        prompts = batch.get("prompt_messages", batch["prompt"])
        others = [k for k in batch if k not in _COMPLETION_COLUMNS and k != "prompt"]
        records = [{**{k: batch[k][i] for k in others}, "prompt": prompts[i]} for i in range(n)]
        if self.buffer.prompt_key != "prompt":
            for record in records:
                record[self.buffer.prompt_key] = record.pop("prompt")
        infos = [{c: values[i] for c, values in output.columns.items()} for i in range(n)]
        self.buffer.add(records, output.scores, infos)
        return output


def recycling_dataset(dataset: Any, buffer: RecyclingBuffer, *, epochs: int | None = None, seed: int | None = 0):
    """A ``datasets.IterableDataset`` streaming ``dataset`` (shuffled each epoch) mixed with ``buffer``'s prompts.

    Args:
        dataset: a ``datasets.Dataset`` (its features are kept) or any sequence of record dicts.
        buffer: the buffer to draw recycled prompts from (read live while training runs).
        epochs: passes over ``dataset``; None streams forever (TRL then needs ``max_steps``).
        seed: per-epoch shuffle seed (``seed + epoch``); None keeps the order.
    """
    import datasets  # optional at import time; only this helper needs it

    def generate():
        epoch = 0
        while epochs is None or epoch < epochs:
            if seed is not None and isinstance(dataset, datasets.Dataset):
                order = dataset.shuffle(seed=seed + epoch)
            elif seed is not None:
                order = list(dataset)
                random.Random(seed + epoch).shuffle(order)
            else:
                order = dataset
            yield from buffer.stream(order)
            epoch += 1

    if isinstance(dataset, datasets.Dataset):
        features = dataset.features
    else:  # records: their columns typed over all of them, so the stream knows its columns without being read
        records = list(dataset)
        features = datasets.Dataset.from_list(records).features if records else None
        dataset = records
    return datasets.IterableDataset.from_generator(generate, features=features)
