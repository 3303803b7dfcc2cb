"""A fake OpenAI-compatible chat-completions server on 127.0.0.1 with scripted replies.

Tests, demos and benchmarks point the real ``openai`` client at it, so requests go over a real
socket through the client's own parsing, error mapping and timeouts::

    from peo.testing.fakellm import FakeLLMServer, Reply

    with FakeLLMServer([Reply.tool_call("search", {"query": "x"}), Reply.text("All done.")]) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        ...
        assert server.calls == 2

The server is standard library only (``ThreadingHTTPServer`` in a daemon thread), so it works
from sync and async code alike. Endpoints: ``POST /v1/chat/completions`` (non-streaming) and
``GET /v1/models``. Each request body received at chat/completions is recorded in
:attr:`FakeLLMServer.requests`, including those refused (401, 404, 400); only accepted requests
consume a scripted reply (or call the script callable).

How the openai client surfaces each reply (with ``max_retries=0``): ``Reply.error(429, ...)``
raises ``openai.RateLimitError`` (``exc.response.headers["retry-after"]``), ``Reply.error(500,
...)`` ``openai.InternalServerError``, a wrong model ``openai.NotFoundError``, a missing or wrong
key ``openai.AuthenticationError``, ``Reply.hang`` past the client's timeout
``openai.APITimeoutError``; ``Reply.malformed`` (sent as ``application/json``) raises
``json.JSONDecodeError`` from the client, which is not an ``openai.OpenAIError``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

__all__ = ["FakeLLMServer", "Reply", "Script"]

# (id or None for an automatic "call_<n>", function name, arguments as a JSON string)
ToolCallSpec = tuple[str | None, str, str]

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "invalid_request_error", 409: "conflict_error", 422: "invalid_request_error",
                429: "rate_limit_error"}
_PHRASES = {status.value: status.phrase for status in HTTPStatus}
_ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}


@dataclass(frozen=True)
class Reply:
    """What the server answers to one chat-completions request; build one with the class methods."""

    kind: str  # "message", "error" or "malformed"
    content: str | None = None
    calls: tuple[ToolCallSpec, ...] = ()  # (id or None, name, arguments JSON string)
    finish_reason: str | None = None  # None: "tool_calls" when there are tool calls, else "stop"
    status: int = 200
    message: str = ""
    error_type: str | None = None
    error_code: str | None = None
    retry_after: float | None = None
    body: bytes = b""
    content_type: str = "application/json"
    delay: float = 0.0  # seconds to wait before answering (cut short when the server stops)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    headers: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def text(cls, content: str, *, finish_reason: str = "stop", delay: float = 0.0,
             prompt_tokens: int | None = None, completion_tokens: int | None = None) -> Reply:
        """An assistant message with ``content``."""
        return cls("message", content=content, finish_reason=finish_reason, delay=delay,
                   prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    @classmethod
    def tool_call(cls, name: str, arguments: dict[str, Any] | None = None, id: str | None = None, *,
                  content: str | None = None, delay: float = 0.0,
                  prompt_tokens: int | None = None, completion_tokens: int | None = None) -> Reply:
        """One tool call; ``arguments`` become a JSON string; ``id`` is ``call_<n>`` when None."""
        return cls("message", content=content, calls=((id, name, json.dumps(arguments or {})),), delay=delay,
                   prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    @classmethod
    def tool_calls(cls, calls: Iterable[tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], str]], *,
                   content: str | None = None, delay: float = 0.0,
                   prompt_tokens: int | None = None, completion_tokens: int | None = None) -> Reply:
        """Several tool calls in one message: ``(name, arguments)`` or ``(name, arguments, id)`` each."""
        specs: list[ToolCallSpec] = []
        for call in calls:
            call_id = call[2] if len(call) == 3 else None
            specs.append((call_id, call[0], json.dumps(call[1])))
        return cls("message", content=content, calls=tuple(specs), delay=delay,
                   prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    @classmethod
    def raw_tool_call(cls, name: str, arguments: str, id: str | None = None, *,
                      prompt_tokens: int | None = None, completion_tokens: int | None = None) -> Reply:
        """One tool call whose ``arguments`` string is sent verbatim (malformed JSON on purpose)."""
        return cls("message", calls=((id, name, arguments),),
                   prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    @classmethod
    def error(cls, status: int, message: str, *, retry_after: float | None = None, type: str | None = None,
              code: str | None = None, delay: float = 0.0) -> Reply:
        """An OpenAI-style error body ``{"error": {"message", "type", "code"}}`` with HTTP ``status``."""
        return cls("error", status=status, message=message, retry_after=retry_after, delay=delay,
                   error_type=type or _ERROR_TYPES.get(status, "server_error" if status >= 500 else "api_error"),
                   error_code=code or _ERROR_CODES.get(status))

    @classmethod
    def malformed(cls, body: str | bytes = "this is not json", *, status: int = 200,
                  content_type: str = "application/json") -> Reply:
        """A response whose body is not JSON (labelled JSON by default, so the client tries to parse it)."""
        return cls("malformed", status=status, content_type=content_type,
                   body=body.encode() if isinstance(body, str) else body)

    @classmethod
    def hang(cls, seconds: float) -> Reply:
        """Sleep ``seconds`` (or until the server stops), then answer 200 with the text ``late``."""
        return cls.text("late", delay=seconds)

    def with_headers(self, **headers: str) -> Reply:
        """This reply with extra response headers (``x_request_id="r1"`` -> ``x-request-id: r1``)."""
        extra = tuple((k.replace("_", "-"), v) for k, v in headers.items())
        return replace(self, headers=self.headers + extra)


Script = Sequence[Reply] | Callable[[dict[str, Any]], Reply]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # many concurrent clients connect at once (the default backlog is 5)
    fake: FakeLLMServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (timeouts) is expected; nothing to print


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no delayed-ACK stalls on small answers
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        fake = self.server.fake
        if self.path.split("?")[0].rstrip("/") != "/v1/models":
            self._read_body()
            return self._send_error(Reply.error(404, f"Unknown path {self.path}", code="not_found"))
        if not self._authorized():
            return None
        models = [] if fake.model is None else [fake.model]
        self._send_json(200, {"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "peo-fake"} for m in models]})
        return None

    def do_POST(self) -> None:
        raw = self._read_body()
        if self.path.split("?")[0].rstrip("/") != "/v1/chat/completions":
            return self._send_error(Reply.error(404, f"Unknown path {self.path}", code="not_found"))
        try:
            body = json.loads(raw)
        except ValueError:
            return self._send_error(Reply.error(400, "The request body is not valid JSON", code="invalid_json"))
        if not isinstance(body, dict):
            return self._send_error(Reply.error(400, "The request body must be a JSON object", code="invalid_json"))
        fake = self.server.fake
        fake._record(body)
        if not self._authorized():
            return None
        if body.get("stream"):
            return self._send_error(Reply.error(400, "Streaming is not supported by the fake LLM server",
                                                code="stream_not_supported"))
        model = body.get("model")
        if fake.model is not None and model != fake.model:
            return self._send_error(Reply.error(404, f"The model `{model}` does not exist"))
        reply, n = fake._next_reply(body)
        if reply.delay > 0 and fake._stopping.wait(reply.delay):
            self.close_connection = True  # the server is stopping: drop the hung request
            return None
        if reply.kind == "error":
            return self._send_error(reply)
        if reply.kind == "malformed":
            return self._send(reply.status, reply.body, reply.content_type, reply.headers)
        return self._send_json(200, fake._completion(reply, body, n), reply.headers)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _authorized(self) -> bool:
        key = self.server.fake.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._send_error(Reply.error(401, "Incorrect API key provided"))
        return False

    def _send_error(self, reply: Reply) -> None:
        headers = reply.headers
        if reply.retry_after is not None:
            headers = (*headers, ("Retry-After", f"{reply.retry_after:g}"))
        error = {"message": reply.message, "type": reply.error_type, "param": None, "code": reply.error_code}
        self._send_json(reply.status, {"error": error}, headers)

    def _send_json(self, status: int, payload: dict[str, Any], headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send(self, status: int, data: bytes, content_type: str, headers: tuple[tuple[str, str], ...]) -> None:
        # One write for the status line, headers and body (cheaper than send_response/send_header).
        phrase = _PHRASES.get(status, "")
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
        head = (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
                f"{lines}\r\n")
        self.wfile.write(head.encode("latin-1") + data)


class FakeLLMServer:
    """An OpenAI-compatible HTTP server on 127.0.0.1 answering chat completions from a script.

    ``script`` is a sequence of :class:`Reply` (answered in order; once exhausted every request
    gets HTTP 500 ``script_exhausted``) or a callable ``(request_body) -> Reply`` called once per
    accepted request, under a lock. ``model``: requests naming another model get 404 (None
    accepts any). ``api_key``: when set, requests without ``Authorization: Bearer <api_key>``
    get 401. ``port=0`` lets the OS choose a free port. Exceptions raised by a script callable
    become HTTP 500 replies and are kept in :attr:`errors`.
    """

    def __init__(self, script: Script = (), *, model: str | None = "fake-model", api_key: str | None = None,
                 port: int = 0) -> None:
        self.model = model
        self.api_key = api_key
        self._port = port
        self._responder: Callable[[dict[str, Any]], Reply] | None = None
        self._replies: list[Reply] = []
        if callable(script):
            self._responder = script
        else:
            self._replies = list(script)
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._answered = 0  # accepted requests (completion ids)
        self._cursor = 0  # next reply of a sequence script
        self._call_ids = 0
        self._errors: list[BaseException] = []
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _HTTPServer(("127.0.0.1", self._port), _Handler)
        httpd.fake = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fakellm:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: wakes hung replies, shuts open connections down and closes the socket."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # its handler thread sees EOF and closes it
            except OSError:
                pass
        httpd.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.stop()

    # -- inspection --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeLLMServer is not running: call start() or use it as a context manager")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every JSON body received at /v1/chat/completions, in order (a copy of the list)."""
        with self._lock:
            return list(self._requests)

    @property
    def calls(self) -> int:
        return len(self._requests)

    @property
    def open_connections(self) -> int:
        """Client connections open right now (keep-alive reuses them)."""
        with self._lock:
            return len(self._connections)

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions raised by a script callable (each answered with HTTP 500)."""
        with self._lock:
            return list(self._errors)

    @property
    def remaining(self) -> int:
        """Scripted replies not yet answered (0 for a callable script)."""
        with self._lock:
            return max(0, len(self._replies) - self._cursor) if self._responder is None else 0

    def add(self, *replies: Reply) -> None:
        """Append replies to a sequence script."""
        if self._responder is not None:
            raise TypeError("add() needs a sequence script; this server answers with a callable")
        with self._lock:
            self._replies.extend(replies)

    # -- used by the handler threads ---------------------------------------------------------

    def _track(self, conn: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _record(self, body: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(body)

    def _next_reply(self, body: dict[str, Any]) -> tuple[Reply, int]:
        with self._lock:
            n = self._answered
            self._answered += 1
            if self._responder is not None:
                try:
                    reply = self._responder(body)
                    if not isinstance(reply, Reply):
                        raise TypeError(f"the script callable returned {reply!r}, not a Reply")
                except Exception as exc:
                    self._errors.append(exc)
                    return Reply.error(500, f"FakeLLMServer script raised {exc!r}", code="script_error"), n
                return reply, n
            if self._cursor < len(self._replies):
                self._cursor += 1
                return self._replies[self._cursor - 1], n
            return Reply.error(500, f"FakeLLMServer script exhausted after {len(self._replies)} "
                               f"replies: {len(self._requests)} requests came", code="script_exhausted"), n

    def _completion(self, reply: Reply, body: dict[str, Any], n: int) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.calls:
            calls = []
            with self._lock:
                for call_id, name, arguments in reply.calls:
                    if call_id is None:
                        self._call_ids += 1
                        call_id = f"call_{self._call_ids}"
                    function = {"name": name, "arguments": arguments}
                    calls.append({"id": call_id, "type": "function", "function": function})
            message["tool_calls"] = calls
            produced = json.dumps(calls)
        else:
            produced = reply.content or ""
        prompt = reply.prompt_tokens
        if prompt is None:
            prompt = max(1, len(json.dumps(body.get("messages", []))) // 4)
        completion = reply.completion_tokens
        if completion is None:
            completion = max(1, len(produced) // 4)
        finish = reply.finish_reason or ("tool_calls" if reply.calls else "stop")
        return {
            "id": f"chatcmpl-{n + 1}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model if self.model is not None else str(body.get("model", "fake-model")),
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }
