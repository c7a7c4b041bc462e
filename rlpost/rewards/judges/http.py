"""A judge behind any OpenAI-compatible chat endpoint (vLLM ``serve``, SGLang, llama.cpp server, OpenAI itself).

Standard library only (``urllib.request``): one POST to ``{base_url}/chat/completions`` per prompt, up to
``max_concurrency`` in flight, retried on connection errors, timeouts, HTTP 429 and 5xx with exponential backoff
(honouring ``Retry-After``), all inside a hard per-prompt deadline. A prompt that cannot be answered in time yields
None and is counted in :class:`~rlpost.rewards.judges.base.JudgeStats`; nothing raises and nothing waits past the
deadline (plus a small grace for thread hand-off).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from rlpost.rewards.judges.base import BaseJudge, Message
from rlpost.rewards.runner import run_calls

__all__ = ["OpenAIJudge"]

logger = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))
# the worker enforces the deadline itself; the runner's cut-off is only the backstop for a server that keeps a
# socket alive by trickling bytes (urllib's timeout is per blocking read, not per request)
_GRACE_S = 0.5
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class _Attempt(Exception):
    """One failed attempt: ``retry`` says whether another one may help, ``wait_s`` is a server-requested delay."""

    def __init__(self, message: str, *, retry: bool, timeout: bool = False, wait_s: float | None = None) -> None:
        super().__init__(message)
        self.retry, self.timeout, self.wait_s = retry, timeout, wait_s


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: a number (fractions accepted) or an HTTP date."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


class OpenAIJudge(BaseJudge):
    """Chat-completions judge over HTTP.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` for ``vllm serve``; ``/chat/completions`` is
            appended.
        model: the served model name sent in each request (and part of the cache key).
        api_key: sent as ``Authorization: Bearer <key>``; None sends no header (local servers need none).
        max_concurrency: requests in flight at once. "Batching" here means a list of prompts runs concurrently:
            the chat API takes one conversation per request, and vLLM batches concurrent requests server-side.
        timeout_s: limit of one HTTP attempt (connect and each read).
        max_retries: attempts after the first, on connection errors, timeouts, 429 and 5xx.
        backoff_s: wait before retry k (k = 0, 1, ...) is ``backoff_s * 2**k``, or the server's ``Retry-After``
            when it sends one; never past the deadline.
        deadline_s: hard limit per prompt over all attempts and waits. None (default) allows every attempt its
            full time: ``timeout_s * (max_retries + 1)`` plus the backoff waits.
        temperature: default sampling temperature (0.0: the judge is deterministic and its answers cacheable).
        max_tokens: default answer length limit.
        cache: / cache_dir: / system_prompt: see :class:`~rlpost.rewards.judges.base.BaseJudge`.
        extra_body: more fields sent with every request (``seed``, ``top_p``, vLLM's ``guided_json``, ...).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 30.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        deadline_s: float | None = None,
        temperature: float = 0.0,
        max_tokens: int = 512,
        cache: bool = True,
        cache_dir: str | Path | None = None,
        system_prompt: str | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(cache=cache, cache_dir=cache_dir, system_prompt=system_prompt)
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"OpenAIJudge: base_url must start with http:// or https://, got {base_url!r}.")
        for name, value in (("max_concurrency", max_concurrency), ("timeout_s", timeout_s)):
            if not value > 0:
                raise ValueError(f"OpenAIJudge: {name} must be > 0, got {value}.")
        if max_retries < 0 or backoff_s < 0:
            raise ValueError(f"OpenAIJudge: max_retries and backoff_s must be >= 0, got {max_retries}, {backoff_s}.")
        if deadline_s is None:
            deadline_s = timeout_s * (max_retries + 1) + backoff_s * (2**max_retries - 1)
        if not deadline_s > 0:
            raise ValueError(f"OpenAIJudge: deadline_s must be > 0 or None, got {deadline_s}.")
        self.url = base_url.rstrip("/") + "/chat/completions"
        # a local server must not be reached through an HTTP_PROXY meant for the internet
        local = urllib.parse.urlsplit(self.url).hostname in _LOOPBACK
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}) if local else
                                                   urllib.request.ProxyHandler())
        self._last_error = ""
        self.model_id = model
        self.api_key = api_key
        self.max_concurrency = int(max_concurrency)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.deadline_s = float(deadline_s)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})

    def __repr__(self) -> str:
        return f"OpenAIJudge(url={self.url!r}, model={self.model_id!r})"

    def _default_gen(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, **self.extra_body}

    def _generate(self, conversations: list[list[Message]], gen: dict[str, Any]) -> list[str | None]:
        bodies = [self._body(c, gen) for c in conversations]
        calls = [lambda b=b: self._ask_one(b) for b in bodies]
        results = run_calls(calls, max_concurrency=self.max_concurrency, timeout_s=self.deadline_s + _GRACE_S,
                            use_threads=True)
        answers: list[str | None] = []
        for result in results:
            if result.status == "ok":
                answers.append(result.value)
                continue
            # _ask_one never raises and stops at its deadline; reaching here means a socket kept alive past it by
            # a trickling server (the abandoned worker may count its own failure later) or a bug
            self.stats.add("failures")
            if result.status == "timeout":
                self.stats.add("timeouts")
            else:
                self._last_error = repr(result.error)
            answers.append(None)
        missing = sum(answer is None for answer in answers)
        if missing:  # one line per batch, not per prompt: a down server would flood the log
            logger.warning("OpenAIJudge %s: %d of %d prompts got no answer (last error: %s)", self.url, missing,
                           len(answers), self._last_error)
        return answers

    def _body(self, messages: list[Message], gen: dict[str, Any]) -> bytes:
        try:
            return json.dumps({"model": self.model_id, "messages": messages, **gen}).encode()
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"OpenAIJudge sends messages as JSON and cannot encode them ({error}). Give images as "
                "{'type': 'image_url', 'image_url': {'url': 'data:image/png;base64,...'}} parts, or use LocalJudge "
                "for PIL images."
            ) from None

    def _ask_one(self, body: bytes) -> str | None:
        """Answer one request body within the deadline, or return None after counting the failure."""
        deadline = time.monotonic() + self.deadline_s
        last: _Attempt | None = None
        for attempt in range(self.max_retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if attempt:
                self.stats.add("retries")
            self.stats.add("requests")
            try:
                return self._post(body, min(self.timeout_s, remaining))
            except _Attempt as error:
                last = error
            if not last.retry or attempt == self.max_retries:
                break
            wait = last.wait_s if last.wait_s is not None else self.backoff_s * 2**attempt
            if time.monotonic() + wait >= deadline:
                break  # the wait alone would cross the deadline: give up now rather than at the deadline
            time.sleep(wait)
        self.stats.add("failures")
        if last is None or last.timeout:
            self.stats.add("timeouts")
        self._last_error = "deadline passed" if last is None else str(last)  # for the batch's log line only
        return None

    def _post(self, body: bytes, timeout: float) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            try:
                detail = error.read(300).decode("utf-8", "replace")
            except (OSError, http.client.HTTPException):
                detail = ""
            raise _Attempt(
                f"HTTP {error.code}: {detail}",
                retry=error.code in _RETRY_STATUS,
                wait_s=_retry_after(error.headers.get("Retry-After")) if error.headers else None,
            ) from None
        except (TimeoutError, socket.timeout) as error:
            raise _Attempt(f"timed out after {timeout:.2f}s", retry=True, timeout=True) from error
        except urllib.error.URLError as error:
            is_timeout = isinstance(error.reason, (TimeoutError, socket.timeout))
            raise _Attempt(f"cannot reach the server: {error.reason}", retry=True, timeout=is_timeout) from None
        except (OSError, http.client.HTTPException) as error:  # reset, closed or cut mid-response
            raise _Attempt(f"connection failed: {error!r}", retry=True) from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            # a 200 whose body is not a chat completion will not improve on retry
            raise _Attempt(f"not a chat-completions response: {raw[:200]!r}", retry=False) from None
        if not isinstance(content, str):
            raise _Attempt(f"the response holds no text content: {raw[:200]!r}", retry=False)
        return content
