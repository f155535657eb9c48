"""A local OpenAI-compatible endpoint serving scripted replies, for the LLM tests.

:class:`LlmTestServer` is a stdlib :class:`~http.server.ThreadingHTTPServer` on 127.0.0.1 (a free
port, in a thread) answering ``POST /v1/chat/completions`` from a queue of :class:`Scripted`
replies (the default one when the queue is empty) and ``GET /v1/models``. It records every
request it receives (path, headers, JSON body) and the most requests it ever had in progress at
once, so tests can assert what was sent, how often and how concurrently. The ``llm_server``
fixture (registered in tests/conftest.py) gives a started one and stops it afterwards.

Shortcuts for the scripted cases: :func:`text_reply`, :func:`status_reply` (429 with
``Retry-After``, 500s), :func:`slow_reply`, :func:`huge_reply`, :func:`malformed_reply`.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass(frozen=True)
class Scripted:
    """One scripted answer: a status, the reply's text (or a raw body), headers, a delay."""

    status: int = 200
    text: str = "ok"
    body: bytes | None = None  # sent as it is, instead of a completion built from ``text``
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    prompt_tokens: int = 11
    completion_tokens: int = 7


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict | None
    at: float


def text_reply(text: str = "ok", **kw) -> Scripted:
    """A 200 completion holding ``text`` (its usage: ``prompt_tokens``, ``completion_tokens``)."""
    return Scripted(text=text, **kw)


def status_reply(
    status: int, retry_after: str | None = None, message: str | None = None, **kw
) -> Scripted:
    """An error status with an OpenAI-style error body (its ``message``: ``scripted STATUS``
    unless given), and ``Retry-After`` when given."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    text = message if message is not None else f"scripted {status}"
    body = json.dumps({"error": {"message": text, "type": "scripted"}}).encode()
    return Scripted(status=status, body=body, headers=headers, **kw)


def slow_reply(delay_s: float, text: str = "late") -> Scripted:
    """A completion sent only after ``delay_s`` seconds."""
    return Scripted(text=text, delay_s=delay_s)


def huge_reply(chars: int = 300_000) -> Scripted:
    """A completion whose text is ``chars`` characters long."""
    return Scripted(text="x" * chars, completion_tokens=chars // 4)


def malformed_reply() -> Scripted:
    """A 200 whose JSON body is cut off."""
    return Scripted(body=b'{"id": "cmpl-1", "choices": [{"message": {"content": "unfinished')


def completion_body(model: str, reply: Scripted) -> bytes:
    """The JSON of a chat completion as OpenAI's API sends it."""
    return json.dumps(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "total_tokens": reply.prompt_tokens + reply.completion_tokens,
            },
        }
    ).encode()


class LlmTestServer:
    """The scripted endpoint; :attr:`base_url` is its ``/v1`` URL once :meth:`start` returned."""

    def __init__(self, default: Scripted | None = None) -> None:
        self.default = default or text_reply()
        #: ``responder(body) -> Scripted``: answers requests when the queue is empty (instead
        #: of ``default``), e.g. with an edit of the parent the prompt shows.
        self.responder: Callable[[dict | None], Scripted] | None = None
        #: ``request_responder(received) -> Scripted``: as ``responder`` but seeing the whole
        #: request (headers too: a retry carries the same ``X-Kernelmap-Request``); it answers
        #: first when both are set.
        self.request_responder: Callable[[Received], Scripted] | None = None
        self.requests: list[Received] = []
        self.max_concurrent = 0
        self._queue: deque[Scripted] = deque()
        self._lock = threading.Lock()
        self._active = 0
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``."""
        assert self._httpd is not None, "start the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def completions(self) -> list[Received]:
        """The ``POST /v1/chat/completions`` requests received, in order."""
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def script(self, *replies: Scripted) -> None:
        """Queue ``replies``; each completion request takes the next one."""
        with self._lock:
            self._queue.extend(replies)

    def start(self) -> LlmTestServer:
        """Bind a free loopback port and serve in a daemon thread."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # The headers and the body are two writes: with Nagle's algorithm the body waits
            # for the client's delayed ACK of the headers (40 ms on Linux), which a real
            # endpoint (uvicorn, vLLM) does not make its clients wait.
            disable_nagle_algorithm = True

            def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
                pass  # the tests assert on logs; the server keeps quiet

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    server._record(self, None)
                    self._send(200, json.dumps({"object": "list", "data": []}).encode(), {})
                else:
                    self._send(404, b'{"error": {"message": "not found"}}', {})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, b'{"error": {"message": "not found"}}', {})
                    return
                reply = server._enter(self, body)
                try:
                    if reply.delay_s and server._stopping.wait(reply.delay_s):
                        return
                    model = (body or {}).get("model", "unknown")
                    payload = (
                        reply.body if reply.body is not None else completion_body(model, reply)
                    )
                    self._send(reply.status, payload, reply.headers)
                except OSError:
                    pass  # the client gave up (a timeout test): nothing to answer
                finally:
                    server._leave()

            def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="llm-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; slow replies still waiting are dropped."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _record(self, handler: BaseHTTPRequestHandler, body: dict | None) -> None:
        with self._lock:
            self.requests.append(
                Received(
                    handler.command, handler.path, dict(handler.headers), body, time.monotonic()
                )
            )

    def _enter(self, handler: BaseHTTPRequestHandler, body: dict | None) -> Scripted:
        received = Received(
            handler.command, handler.path, dict(handler.headers), body, time.monotonic()
        )
        with self._lock:
            self.requests.append(received)
            self._active += 1
            self.max_concurrent = max(self.max_concurrent, self._active)
            if self._queue:
                return self._queue.popleft()
            responder, request_responder = self.responder, self.request_responder
        try:
            if request_responder is not None:
                return request_responder(received)
            if responder is not None:
                return responder(body)
        except Exception as e:  # a test's bug: answer it visibly rather than hang
            return status_reply(500, text=f"responder failed: {e!r}")
        return self.default

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1


@pytest.fixture
def llm_server() -> Iterator[LlmTestServer]:
    """A started :class:`LlmTestServer` answering ``"ok"`` unless scripted otherwise."""
    server = LlmTestServer().start()
    yield server
    server.stop()
