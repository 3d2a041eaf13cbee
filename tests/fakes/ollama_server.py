"""A loopback fake of Ollama's native API, after docs/api.md.

POST /api/chat streams NDJSON message chunks and a final chunk with
done_reason and the durations in nanoseconds (or answers one object when
stream is false). Errors are {"error": "..."} with Ollama's status codes and
texts: 404 for an unknown model, 400 when tools or thinking are asked of a
model without that capability. Also GET /api/version, /api/tags, /api/ps and
POST /api/show (with capabilities, unless the model's capabilities are None,
as servers before 0.6.4 answer).

With load_seconds, models are loaded and unloaded as Ollama does: a chat
for a model that is not loaded first waits that long (headers go out only
once it is loaded) and reports it as load_duration; the model then stays
for the request's keep_alive (five minutes by default), and /api/ps lists
it with its expires_at. A chat without messages only loads the model. With
parallel, at most that many chats are answered at once; the rest queue.

A Reply with status 200 and an error sends {"error": ...} inside the stream
after the text instead of the final chunk, as Ollama does when the runner
fails mid-generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
import json
import math
import re
import time
from typing import Any

from aiohttp import web

from .base import FakeServer, Reply, answer_pieces, paced, words

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_MODELS: dict[str, Sequence[str] | None] = {
    "llama3.2:latest": ("completion", "tools"),
    "qwen3:latest": ("completion", "tools", "thinking"),
    "gemma2:latest": ("completion",),
}
# A line that is not JSON, as a broken proxy might pass on.
MALFORMED_LINE = b'{"model":"oops","message":{"role":"assistant","content":"cut\n'
_DETAILS = {
    "parent_model": "",
    "format": "gguf",
    "family": "llama",
    "families": ["llama"],
    "parameter_size": "3.2B",
    "quantization_level": "Q4_K_M",
}
_DIGEST = "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72"
_SIZE = 2019393189


@dataclass(frozen=True)
class RunningModel:
    """A model the fake reports as loaded in /api/ps."""

    name: str
    size_vram: int = _SIZE
    expires_at: str = "2030-01-01T12:00:00Z"


# The request's key that says whether its answer is compressed.
GZIP = web.RequestKey("gzip", bool)


@dataclass(frozen=True)
class Override:
    """A canned answer for a path: delay (math.inf: never), then status and body.

    body None, after the delay, lets the normal handler answer; bytes are sent
    as they are, anything else as JSON.
    """

    status: int = 200
    body: Any = None
    delay: float = 0.0


class FakeOllama(FakeServer):
    """Ollama server on 127.0.0.1.

    models maps names to capabilities (None: the server does not report
    them, nor refuses anything); names without a tag mean ":latest".
    requests records every request as {"method", "path", "headers", "body"}.
    api_key, when set, makes every path answer 401 without that bearer
    token, as ollama.com does.
    """

    def __init__(
        self,
        *,
        models: Mapping[str, Sequence[str] | None] = DEFAULT_MODELS,
        version: str = "0.12.6",
        running: Sequence[RunningModel] = (),
        api_key: str | None = None,
        load_seconds: float | None = None,
        parallel: int | None = None,
    ) -> None:
        super().__init__()
        self.models = {_tagged(name): caps for name, caps in models.items()}
        self.load_seconds = load_seconds
        # Loaded models and when they unload (time.monotonic()).
        self.loaded: dict[str, float] = {}
        self.loads = 0
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(parallel) if parallel else None
        # Chats accepted and not done: how long each takes once it has a
        # slot, and when the one being answered started (parallel=1).
        self._durations: dict[int, float] = {}
        self._answering: tuple[int, float] | None = None
        self.version = version
        self.running = list(running)
        self.api_key = api_key
        self.overrides: dict[str, Override] = {}
        self.gzip = False
        """Compress every answer, as a reverse proxy in front may."""
        self.app.middlewares.append(self._record)
        self.app.router.add_post("/api/chat", self._chat)
        self.app.router.add_get("/api/version", self._version)
        self.app.router.add_get("/api/tags", self._tags)
        self.app.router.add_post("/api/show", self._show)
        self.app.router.add_get("/api/ps", self._ps)

    @property
    def chat_bodies(self) -> list[dict[str, Any]]:
        """Bodies of the chat requests received, in order."""
        return [r["body"] for r in self.requests if r["path"] == "/api/chat"]

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        await self.record(request)
        request[GZIP] = self.gzip
        response = await self._answer(request, handler)
        if self.gzip and not response.prepared:
            response.enable_compression(web.ContentCoding.gzip)
        return response

    async def _answer(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        if (endless := await self.endless_response(request)) is not None:
            return endless
        if self.api_key is not None and (
            request.headers.get("Authorization") != f"Bearer {self.api_key}"
        ):
            return _error(401, "unauthorized")
        if (override := self.overrides.get(request.path)) is not None:
            await asyncio.sleep(override.delay)
            if isinstance(override.body, bytes):
                return web.Response(
                    status=override.status,
                    body=override.body,
                    content_type="application/json",
                )
            if override.body is not None:
                return web.json_response(override.body, status=override.status)
        return await handler(request)

    def _model(self, name: str) -> tuple[str, Sequence[str] | None] | None:
        """The full name and capabilities of an installed model."""
        tagged = _tagged(name)
        if tagged not in self.models:
            return None
        return tagged, self.models[tagged]

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self.version})

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [_listing(name) for name in self.models]})

    async def _ps(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        running = [*self.running]
        for name, until in self.loaded.items():
            if until > now:
                expires = (
                    "2318-01-01T00:00:00Z"  # what Ollama says for "forever"
                    if math.isinf(until)
                    else datetime.fromtimestamp(time.time() + until - now, UTC)
                    .isoformat()
                    .replace("+00:00", "Z")
                )
                running.append(RunningModel(name, expires_at=expires))
        return web.json_response(
            {
                "models": [
                    {
                        **_listing(model.name),
                        "expires_at": model.expires_at,
                        "size_vram": model.size_vram,
                    }
                    for model in running
                ]
            }
        )

    @property
    def free_at(self) -> float:
        """When every accepted chat is expected to be done (time.monotonic())."""
        now = time.monotonic()
        left = sum(self._durations.values())
        if self._answering is not None:
            key, since = self._answering
            left -= min(self._durations[key], now - since)
        return now + left

    def is_loaded(self, name: str) -> bool:
        """Whether a model is loaded now (always, without load modelling)."""
        return (
            self.load_seconds is None
            or self.loaded.get(_tagged(name), 0.0) > time.monotonic()
        )

    async def _load(self, tagged: str) -> float:
        """Load a model unless it is loaded; the seconds this waited."""
        if self.is_loaded(tagged):
            return 0.0
        started = time.perf_counter()
        if (task := self._loading.get(tagged)) is None:
            task = asyncio.get_running_loop().create_task(self._loading_model(tagged))
            self._loading[tagged] = task
            task.add_done_callback(lambda _: self._loading.pop(tagged, None))
        await asyncio.shield(task)
        return time.perf_counter() - started

    async def _loading_model(self, tagged: str) -> None:
        assert self.load_seconds is not None
        await asyncio.sleep(self.load_seconds)
        self.loads += 1
        self.loaded[tagged] = time.monotonic() + _DEFAULT_KEEP_ALIVE

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """One of the server's parallel slots; waits in its queue for one."""
        if self._slots is None:
            yield
            return
        async with self._slots:
            yield

    def _keep(self, tagged: str, keep_alive: Any) -> None:
        """The model stays loaded for keep_alive from now."""
        if self.load_seconds is not None:
            self.loaded[tagged] = time.monotonic() + _keep_alive_seconds(keep_alive)

    async def _show(self, request: web.Request) -> web.Response:
        name = request["body"].get("model", "")
        if (found := self._model(name)) is None:
            return _error(404, f"model '{name}' not found")
        tagged, caps = found
        show: dict[str, Any] = {
            "modelfile": f'# Modelfile generated by "ollama show"\nFROM {tagged}\n',
            "parameters": 'stop "<|eot_id|>"',
            "template": "{{ .Prompt }}",
            "details": _DETAILS,
            "model_info": {"general.architecture": "llama"},
            "modified_at": "2025-05-04T17:37:44.706015396-07:00",
        }
        if caps is not None:
            show["capabilities"] = list(caps)
        return web.json_response(show)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        body = request["body"]
        name = body.get("model", "")
        if (found := self._model(name)) is None:
            return _error(404, f"model '{name}' not found")
        tagged, caps = found
        think = body.get("think")
        if caps is not None:
            if "thinking" in caps:
                think = True if think is None else think
            elif think:
                return _error(400, f"{json.dumps(name)} does not support thinking")
            if body.get("tools") and "tools" not in caps:
                return _error(400, f"{_registry_name(tagged)} does not support tools")
        if not body.get("messages"):
            await self._load(tagged)
            self._keep(tagged, body.get("keep_alive"))
            return web.json_response(
                {
                    "model": name,
                    "created_at": _now(),
                    "message": {"role": "assistant", "content": ""},
                    "done_reason": "load",
                    "done": True,
                }
            )
        reply = self.next_reply(body)
        if reply.status != 200:
            return _error(reply.status, reply.error or "error")
        answer = _Answer(reply, body, thinks=caps is not None and bool(think))
        if body.get("stream", True):
            load = 0.0 if self.is_loaded(tagged) else self.load_seconds or 0.0
            pace = reply.tokens_per_second
            key = id(answer)
            self._durations[key] = (
                load
                + reply.stall_before_first
                + (len(answer.messages) / pace if pace else 0.0)
            )
            try:
                async with self._slot():
                    self._answering = (key, time.monotonic())
                    answer.load_seconds = await self._load(tagged)
                    response = await _stream(request, answer, started)
            finally:
                del self._durations[key]
                if self._answering and self._answering[0] == key:
                    self._answering = None
            self._keep(tagged, body.get("keep_alive"))
            return response
        await asyncio.sleep(reply.stall_before_first)
        first = time.perf_counter()
        return web.json_response(
            {**answer.final(first - started, 0.0), "message": answer.whole_message}
        )


class _Answer:
    """What the fake says to one chat request, as chunks and as a whole."""

    def __init__(self, reply: Reply, body: dict[str, Any], *, thinks: bool) -> None:
        self.reply = reply
        self.body = body
        self.load_seconds = 0.0
        thinking, text = answer_pieces(reply)
        if not thinks:
            thinking = []
        self.messages: list[dict[str, Any]] = [
            {"role": "assistant", "content": "", "thinking": piece}
            for piece in thinking
        ]
        self.messages += [{"role": "assistant", "content": piece} for piece in text]
        # num_predict counts every generated token, reasoning included.
        self.done_reason = "stop"
        limit = (body.get("options") or {}).get("num_predict", reply.length_after)
        if limit is not None and 0 <= limit < len(self.messages):
            self.messages = self.messages[:limit]
            self.done_reason = "length"
        self.calls = [
            {
                "id": f"call_fake{index}",
                "function": {
                    "index": index,
                    "name": call["name"],
                    "arguments": call["arguments"],
                },
            }
            for index, call in enumerate(reply.tool_calls)
        ]
        if self.calls:
            self.messages.append(
                {"role": "assistant", "content": "", "tool_calls": self.calls}
            )
        self.whole_message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(text),
        }
        if thinking:
            self.whole_message["thinking"] = "".join(thinking)
        if self.calls:
            self.whole_message["tool_calls"] = self.calls

    def chunk(self, message: dict[str, Any]) -> dict[str, Any]:
        """One streamed chunk."""
        return {
            "model": self.body["model"],
            "created_at": _now(),
            "message": message,
            "done": False,
        }

    def final(self, prompt_seconds: float, generation_seconds: float) -> dict[str, Any]:
        """The last chunk: done, its reason and the statistics in nanoseconds.

        Scripted durations win over the measured ones.
        """
        reply = self.reply
        load = reply.load_seconds or self.load_seconds
        prompt = _first(reply.prompt_seconds, prompt_seconds)
        generation = _first(reply.generation_seconds, generation_seconds)
        prompt_tokens = _first(
            reply.prompt_tokens,
            sum(
                len(words(message.get("content") or ""))
                for message in self.body.get("messages") or ()
            ),
        )
        return {
            "model": self.body["model"],
            "created_at": _now(),
            "message": {"role": "assistant", "content": ""},
            "done_reason": self.done_reason,
            "done": True,
            "total_duration": _ns(load + prompt + generation),
            "load_duration": _ns(load),
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": _ns(prompt),
            "eval_count": _first(reply.completion_tokens, len(self.messages)),
            "eval_duration": _ns(generation),
        }


async def _stream(
    request: web.Request, answer: _Answer, started: float
) -> web.StreamResponse:
    """NDJSON chunks; the headers go out with the first one, as Ollama's do."""
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    if request[GZIP]:
        response.enable_compression(web.ContentCoding.gzip)
    first: float | None = None

    async def write(data: bytes) -> None:
        nonlocal first
        if not response.prepared:
            await response.prepare(request)
            first = time.perf_counter()
        await response.write(data)

    async def send(message: dict[str, Any] | None) -> None:
        if message is not None:
            await write(_line(answer.chunk(message)))
        elif answer.reply.error:
            await write(_line({"error": answer.reply.error}))
        else:
            now = time.perf_counter()
            start = now if first is None else first
            await write(_line(answer.final(start - started, now - start)))

    chunks: list[dict[str, Any] | None] = [*answer.messages, None]
    try:
        async for index in paced(answer.reply, chunks, send):
            if index == answer.reply.malformed_after_chunks:
                await write(MALFORMED_LINE)
    except ConnectionResetError:
        assert request.transport is not None
        request.transport.abort()
        return response
    await response.write_eof()
    return response


_DEFAULT_KEEP_ALIVE = 300.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _keep_alive_seconds(value: Any) -> float:
    """Ollama's keep_alive: seconds as a number, or a duration; negative: forever."""
    if value is None:
        return _DEFAULT_KEEP_ALIVE
    if isinstance(value, int | float):
        return math.inf if value < 0 else float(value)
    if str(value).startswith("-"):
        return math.inf
    return sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(str(value)))


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _listing(name: str) -> dict[str, Any]:
    """A model as /api/tags and /api/ps list it."""
    return {
        "name": name,
        "model": name,
        "modified_at": "2025-05-04T17:37:44.706015396-07:00",
        "size": _SIZE,
        "digest": _DIGEST,
        "details": _DETAILS,
    }


def _tagged(name: str) -> str:
    """The name with its tag; Ollama means ":latest" when there is none."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _registry_name(tagged: str) -> str:
    """The full name Ollama puts in capability errors."""
    match tagged.count("/"):
        case 0:
            return f"registry.ollama.ai/library/{tagged}"
        case 1:
            return f"registry.ollama.ai/{tagged}"
        case _:
            return tagged


def _first[T](scripted: T | None, measured: T) -> T:
    return measured if scripted is None else scripted


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"
