"""A real OpenAI-compatible HTTP server for judge tests: deterministic answers chosen by the prompt's content.

It serves ``POST /v1/chat/completions`` on 127.0.0.1 (a free port) from a thread. The last message's content
selects the behaviour, by the first directive it holds:

- ``FAIL=n``: HTTP 500 for the first n requests with this exact content, then the normal answer;
- ``RATE=n@s``: HTTP 429 with ``Retry-After: s`` for the first n requests with this content;
- ``SLEEP=s``: wait s seconds, then the normal answer;
- ``BADBODY``: HTTP 200 whose body is not JSON;
- ``NONSENSE``: a valid response whose answer text is ``"banana banana"``;
- ``JSON``: the answer is a fenced, slightly broken JSON object (trailing comma, Python ``True``);
- ``ECHO``: the answer is the request's JSON (minus messages), to check what the client sent;
- otherwise: ``"Answer: Yes."`` when the content holds "red", else ``"**No**"``.

The server counts requests (in total and per content) and the most requests ever in flight at once.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["JudgeServer", "closed_port_url"]


def closed_port_url() -> str:
    """A base URL on 127.0.0.1 where nothing listens (the port was bound, then released): connection refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, b'{"error": "not found"}')
            return
        state = self.server.state
        with state.lock:
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            reply = self._answer(state)
        finally:
            # Out of flight before the reply is written: once the client has it, it may send its next request, and
            # counting this handler until its thread resumes would over-count concurrency under load.
            with state.lock:
                state.in_flight -= 1
        self._send(*reply)

    def _answer(self, state: "_State") -> tuple[int, bytes, dict[str, str] | None]:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = str(payload["messages"][-1]["content"])
        with state.lock:
            state.requests += 1
            state.by_content[content] += 1
            seen = state.by_content[content]
            state.auth.append(self.headers.get("Authorization"))
            state.payloads.append(payload)
        if match := re.search(r"FAIL=(\d+)", content):
            if seen <= int(match.group(1)):
                return 500, b'{"error": "internal error"}', None
        elif match := re.search(r"RATE=(\d+)@([\d.]+)", content):
            if seen <= int(match.group(1)):
                return 429, b'{"error": "rate limited"}', {"Retry-After": match.group(2)}
        elif match := re.search(r"SLEEP=([\d.]+)", content):
            time.sleep(float(match.group(1)))
        if "BADBODY" in content:
            return 200, b"<html>gateway error</html>", None
        if "NONSENSE" in content:
            text = "banana banana"
        elif "JSON" in content:
            text = 'Here you go:\n```json\n{"score": 7, "ok": True,}\n```'
        elif "ECHO" in content:
            text = json.dumps({k: v for k, v in payload.items() if k != "messages"}, sort_keys=True)
        else:
            text = "Answer: Yes." if "red" in content.lower() else "**No**"
        response = {
            "id": f"cmpl-{state.requests}",
            "object": "chat.completion",
            "model": payload.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        }
        return 200, json.dumps(response).encode(), None


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.by_content: Counter[str] = Counter()
        self.auth: list[str | None] = []
        self.payloads: list[dict] = []


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stopping must not wait for a handler that is still sleeping
    state: _State


class JudgeServer:
    """Start with ``with JudgeServer() as server:``; ``server.base_url`` is the ``/v1`` root to give a judge."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = _State()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def state(self) -> _State:
        return self._server.state

    def __enter__(self) -> "JudgeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
