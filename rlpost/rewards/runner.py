"""Run reward calls with bounded concurrency and a per-call timeout, never letting one call crash or stall the step.

A call that raises is reported as ``"error"``; a call still running at its deadline is reported as ``"timeout"`` and
**abandoned**: Python threads cannot be killed, so the worker thread keeps running in the background until its
function returns (it is a daemon thread, so it never blocks interpreter exit). The caller gets control back at the
deadline, which is what keeps training moving. A reward that can truly hang (code execution, simulators, network
calls) must therefore enforce its own hard limit as well - a subprocess with a kill timeout, a socket timeout - or
abandoned threads will pile up and hold their resources.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Literal

__all__ = ["CallResult", "run_calls", "resolve_awaitable"]


@dataclass(frozen=True)
class CallResult:
    """Outcome of one call: ``status`` is ``"ok"`` (``value`` holds the return), ``"error"`` (``error`` holds the
    exception) or ``"timeout"`` (the call was abandoned at its deadline)."""

    status: Literal["ok", "error", "timeout"]
    value: Any = None
    error: BaseException | None = None


def resolve_awaitable(value: Any) -> Any:
    """Return ``value``, first running it to completion if it is awaitable (an ``async`` reward's coroutine).

    ``asyncio.run`` refuses to start inside a running event loop, so when the current thread already runs one (a
    notebook, an async eval harness) the coroutine runs on a fresh loop in a helper thread instead.
    """
    if not inspect.isawaitable(value):
        return value

    async def _await() -> Any:
        return await value

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await())
    (result,) = run_calls([lambda: asyncio.run(_await())], max_concurrency=1, timeout_s=None, use_threads=True)
    if result.status == "error":
        raise result.error  # type: ignore[misc]
    return result.value


def _call_inline(fn: Callable[[], Any]) -> CallResult:
    try:
        return CallResult("ok", value=resolve_awaitable(fn()))
    except Exception as error:  # noqa: BLE001 - the failure policy turns any reward error into a counted None
        return CallResult("error", error=error)


def run_calls(
    calls: list[Callable[[], Any]],
    *,
    max_concurrency: int = 1,
    timeout_s: float | None = None,
    use_threads: bool | None = None,
) -> list[CallResult]:
    """Run zero-argument ``calls`` and return one :class:`CallResult` per call, in order. Never raises for a call.

    Args:
        calls: the work, one closure per call.
        max_concurrency: how many calls run at once. Calls that timed out stop counting against this limit when
            they are abandoned, so after hangs more threads than this may exist (see the module docstring).
        timeout_s: per-call limit in seconds, measured from the moment the call starts (not while it waits for a
            slot). None means no limit.
        use_threads: None (default) runs in the caller's thread when ``max_concurrency <= 1`` and there is no
            timeout (cheap rewards pay no thread cost), and in daemon worker threads otherwise (a timeout can only be
            enforced from outside the call).
    """
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}.")
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}.")
    if use_threads is None:
        use_threads = max_concurrency > 1 or timeout_s is not None
    if not use_threads:
        return [_call_inline(fn) for fn in calls]

    results: list[CallResult | None] = [None] * len(calls)
    finished: queue.SimpleQueue[int] = queue.SimpleQueue()  # one queue per run: late, abandoned calls cannot leak
    pending = deque(range(len(calls)))
    running: dict[int, float] = {}  # call index -> deadline (monotonic seconds, inf without timeout)
    outcomes: dict[int, CallResult] = {}

    def worker(index: int) -> None:
        outcomes[index] = _call_inline(calls[index])
        finished.put(index)

    while pending or running:
        while pending and len(running) < max_concurrency:
            index = pending.popleft()
            running[index] = time.monotonic() + timeout_s if timeout_s is not None else float("inf")
            threading.Thread(target=worker, args=(index,), name=f"rlpost-reward-{index}", daemon=True).start()
        wait = min(running.values()) - time.monotonic()
        try:
            index = finished.get(timeout=None if wait == float("inf") else max(wait, 0.0))
            if index in running:  # an abandoned call that finishes late is ignored
                del running[index]
                results[index] = outcomes[index]
        except queue.Empty:
            now = time.monotonic()
            for index in [i for i, deadline in running.items() if deadline <= now]:
                del running[index]
                # a call that finished just as its deadline passed keeps its result
                results[index] = outcomes.get(index, CallResult("timeout"))
    return results  # type: ignore[return-value]
