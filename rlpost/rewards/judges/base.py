"""What every judge shares: the :class:`Judge` protocol, its counters, the response cache and the ask-helpers.

A backend implements one method, ``_generate(conversations, gen) -> list[str | None]``; :class:`BaseJudge` adds
prompt normalisation, de-duplication, caching and the structured helpers on top, so the HTTP and local judges
behave the same to a reward module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from rlpost.rewards.judges.parsing import extract_json, extract_score, extract_yes_no

__all__ = ["BaseJudge", "Judge", "JudgeStats", "Prompt", "ResponseCache", "to_messages"]

logger = logging.getLogger(__name__)

Message = dict[str, Any]
# a bare string is one user turn; a list of {"role", "content"} dicts is a whole conversation
Prompt = str | Sequence[Message]

CACHE_FILENAME = "judge-cache.sqlite3"


class JudgeStats:
    """Thread-safe counters a reward module can log as metrics (``judge.stats.as_dict()``).

    - ``requests``: backend calls attempted (HTTP attempts including retries; generate batches locally);
    - ``retries``: attempts beyond the first for one prompt;
    - ``failures``: prompts answered None for any reason (down server, HTTP error, garbage body, timeout);
    - ``timeouts``: the subset of ``failures`` whose last attempt ran out of time;
    - ``cache_hits``: prompts served from the cache without a backend call;
    - ``parse_failures``: answers that came back but held no JSON / yes-no / score (``ask_*`` helpers).
    """

    FIELDS = ("requests", "retries", "failures", "timeouts", "cache_hits", "parse_failures")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.FIELDS, 0)

    def add(self, field: str, n: int = 1) -> None:
        if field not in self._counts:
            raise KeyError(f"JudgeStats has no counter {field!r}; the counters are {list(self.FIELDS)}.")
        with self._lock:
            self._counts[field] += n

    def __getattr__(self, name: str) -> int:
        counts = self.__dict__.get("_counts", {})
        if name in counts:
            return counts[name]
        raise AttributeError(name)

    def as_dict(self) -> dict[str, int]:
        """A snapshot of every counter."""
        with self._lock:
            return dict(self._counts)

    def reset(self) -> dict[str, int]:
        """Zero the counters and return their values before the reset (per-step metrics)."""
        with self._lock:
            before, self._counts = self._counts, dict.fromkeys(self.FIELDS, 0)
        return before

    def __repr__(self) -> str:
        return f"JudgeStats({self.as_dict()})"


def to_messages(prompt: Prompt, system_prompt: str | None = None) -> list[Message]:
    """One prompt as chat messages: a string becomes one user turn; ``system_prompt`` is prepended unless the
    conversation already starts with a system message."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, Sequence) and all(isinstance(m, Mapping) and "role" in m for m in prompt):
        messages = [dict(m) for m in prompt]
    else:
        raise TypeError(
            f"a judge prompt must be a string or a list of {{'role', 'content'}} message dicts, got "
            f"{type(prompt).__name__}: {str(prompt)[:80]!r}."
        )
    if system_prompt is not None and (not messages or messages[0].get("role") != "system"):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def _stable(value: Any) -> Any:
    """JSON fallback for cache keys: images hash by their pixels, so equal images share an entry."""
    tobytes = getattr(value, "tobytes", None)
    if callable(tobytes):
        return {"sha256": hashlib.sha256(tobytes()).hexdigest(), "size": str(getattr(value, "size", "")),
                "mode": str(getattr(value, "mode", getattr(value, "dtype", "")))}
    raise TypeError(f"cannot build a cache key from a {type(value).__name__}")


class ResponseCache:
    """Judge answers keyed by (model, messages, generation parameters): in memory, and in one SQLite file when
    ``cache_dir`` is given so answers survive restarts and are shared by processes.

    Only answers are stored; a failed call (None) is not, so it is retried next time. SQLite access goes through
    one connection guarded by a lock (``check_same_thread=False``), which makes the cache safe across the judge's
    worker threads; WAL journaling lets several processes read while one writes.
    """

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self._memory: dict[str, str] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self.path: Path | None = None
        if cache_dir is not None:
            self.path = Path(cache_dir) / CACHE_FILENAME
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)")
            self._db.commit()

    @staticmethod
    def key(model: str, messages: list[Message], gen: Mapping[str, Any]) -> str | None:
        """The cache key, or None when the messages hold something that cannot be hashed (then no caching)."""
        try:
            payload = json.dumps({"model": model, "messages": messages, "gen": dict(gen)}, sort_keys=True,
                                 default=_stable)
        except (TypeError, ValueError):
            return None
        return hashlib.sha256(payload.encode()).hexdigest()

    def get(self, key: str) -> str | None:
        with self._lock:
            if key in self._memory:
                return self._memory[key]
            if self._db is None:
                return None
            row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
            if row is not None:
                self._memory[key] = row[0]
            return None if row is None else row[0]

    def put(self, key: str, answer: str) -> None:
        with self._lock:
            self._memory[key] = answer
            if self._db is not None:
                self._db.execute("INSERT OR REPLACE INTO answers (key, answer) VALUES (?, ?)", (key, answer))
                self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            if self._db is not None:
                return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
            return len(self._memory)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


@runtime_checkable
class Judge(Protocol):
    """What a judge-based reward relies on. Every method takes a batch and returns one entry per prompt, None
    where the judge failed or its answer could not be read; none of them raises for a bad answer or hangs."""

    stats: JudgeStats

    def complete(self, prompts: Sequence[Prompt], **gen: Any) -> list[str | None]: ...

    def ask_json(
        self, prompts: Sequence[Prompt], schema_keys: Sequence[str] | None = None, **gen: Any
    ) -> list[dict | None]: ...

    def ask_yes_no(self, prompts: Sequence[Prompt], **gen: Any) -> list[bool | None]: ...


class BaseJudge:
    """Shared judge behaviour over a backend's ``_generate``.

    Subclasses set ``self.model_id`` (part of the cache key) and implement
    ``_generate(conversations: list[list[Message]], gen: dict) -> list[str | None]``, which must count its own
    ``requests``/``retries``/``failures``/``timeouts`` and never raise for a per-prompt failure.

    Args:
        cache: keep answers in memory (and on disk with ``cache_dir``), and send a prompt repeated within one
            call only once. On by default: judges run greedy, so a repeated prompt has one answer. Generation
            parameters are part of the key. Turn it off to draw several independent samples of one prompt at
            ``temperature > 0`` (e.g. majority voting).
        cache_dir: folder for the SQLite cache file (``judge-cache.sqlite3``); None keeps the cache in memory.
        system_prompt: prepended to every conversation that has no system message.
    """

    model_id: str = ""

    def __init__(self, *, cache: bool = True, cache_dir: str | Path | None = None,
                 system_prompt: str | None = None) -> None:
        if cache_dir is not None and not cache:
            raise ValueError("cache_dir was given but cache=False; drop cache_dir or set cache=True.")
        self.stats = JudgeStats()
        self.cache = ResponseCache(cache_dir) if cache else None
        self.system_prompt = system_prompt

    def _default_gen(self) -> dict[str, Any]:
        """Generation parameters used when a call does not override them (part of the cache key)."""
        return {}

    def _generate(self, conversations: list[list[Message]], gen: dict[str, Any]) -> list[str | None]:
        raise NotImplementedError(f"{type(self).__name__} must implement _generate(conversations, gen).")

    def complete(self, prompts: Sequence[Prompt], **gen: Any) -> list[str | None]:
        """The judge's raw answer to each prompt (None where it failed).

        Args:
            prompts: strings (one user turn each) or chat message lists.
            **gen: generation parameters for this call, overriding the judge's defaults (``temperature``,
                ``max_tokens``, and anything the backend accepts).
        """
        if isinstance(prompts, (str, Mapping)):
            raise TypeError("judge methods take a list of prompts; wrap a single prompt as [prompt].")
        conversations = [to_messages(p, self.system_prompt) for p in prompts]
        params = {**self._default_gen(), **gen}
        answers: list[str | None] = [None] * len(conversations)
        # with the cache on: one backend call per distinct uncached prompt, fanned back out to its duplicates
        groups: dict[Any, list[int]] = {}
        for i, conversation in enumerate(conversations):
            key = ResponseCache.key(self.model_id, conversation, params) if self.cache is not None else None
            cached = self.cache.get(key) if key is not None else None
            if cached is not None:
                answers[i] = cached
                self.stats.add("cache_hits")
                continue
            groups.setdefault(key if key is not None else ("uncached", i), []).append(i)
        if groups:
            fresh = self._generate([conversations[idx[0]] for idx in groups.values()], params)
            for (key, idx), answer in zip(groups.items(), fresh, strict=True):
                for j in idx:
                    answers[j] = answer
                if answer is not None and isinstance(key, str):
                    self.cache.put(key, answer)
        return answers

    def _parse_all(self, texts: list[str | None], parse) -> list[Any]:
        values = []
        for text in texts:
            value = parse(text) if text is not None else None
            if text is not None and value is None:
                self.stats.add("parse_failures")
            values.append(value)
        return values

    def ask_json(
        self, prompts: Sequence[Prompt], schema_keys: Sequence[str] | None = None, **gen: Any
    ) -> list[dict | None]:
        """Each answer read as a JSON object (see :func:`~rlpost.rewards.judges.parsing.extract_json`).

        Args:
            schema_keys: keys the object must hold; an object missing any of them counts as a parse failure.
        """
        required = tuple(schema_keys or ())

        def parse(text: str) -> dict | None:
            value = extract_json(text)
            return value if value is not None and all(k in value for k in required) else None

        return self._parse_all(self.complete(prompts, **gen), parse)

    def ask_yes_no(self, prompts: Sequence[Prompt], **gen: Any) -> list[bool | None]:
        """Each answer read as a yes/no verdict (see :func:`~rlpost.rewards.judges.parsing.extract_yes_no`)."""
        return self._parse_all(self.complete(prompts, **gen), extract_yes_no)

    def ask_score(self, prompts: Sequence[Prompt], lo: float, hi: float, **gen: Any) -> list[float | None]:
        """Each answer read as a score in ``[lo, hi]`` (see :func:`~rlpost.rewards.judges.parsing.extract_score`)."""
        return self._parse_all(self.complete(prompts, **gen), lambda text: extract_score(text, lo, hi))
