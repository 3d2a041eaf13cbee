"""A loopback fake of an OpenAI-compatible chat server, optionally llama.cpp.

Follows the chat-completions API: SSE chunks `data: {json}\\n\\n` of
chat.completion.chunk objects, a usage chunk when stream_options asks for it,
then `data: [DONE]`. With llama_cpp=True it adds what llama-server does:
/health (503 while loading), `timings` in the last chunk, the llama.cpp error
body shape, a public /v1/models, and any model name accepted.

A Reply with status 200 and an error sends that error (code 500) inside the
stream after the text, then ends without [DONE], as llama.cpp does when
generation fails. Tool calls in a Reply are {"name", "arguments", "id"?};
arguments given as a string are sent verbatim (to script broken JSON).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
import itertools
import json
import time
from typing import Any

from aiohttp import web

from .base import FakeServer, Reply, paced, words

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "unavailable_error",
}
_ROLES = {"system", "developer", "user", "assistant", "tool"}
# A data line that is not JSON.
MALFORMED_CHUNK = b'data: {"choices": [{"delta": {"content": "oops\n\n'


class FakeOpenAI(FakeServer):
    """OpenAI chat-completions server on 127.0.0.1.

    Options: jinja=False rejects tools as llama-server without --jinja;
    write_size splits every SSE write into pieces of that many bytes;
    streams=False answers stream requests with a whole completion and
    usage_in_stream=False ignores stream_options, as minimal servers do;
    keepalive sends ": keep-alive" comments between chunks, as OpenRouter;
    crlf ends SSE lines with CRLF, as sse-starlette servers do;
    tool_call_index=False leaves tool_calls[].index out, as Gemini does;
    api is where the API lives (Gemini: /v1beta/openai);
    refuses_stream_options answers 422 to requests with stream_options, as
    some hosted services do;
    litellm=True adds LiteLLM's /health, which runs a completion on every
    model (here it just answers as if it had);
    done_line is how the stream ends (b"data: [DONE]" without its newline,
    or None for servers that just close after the finish_reason);
    prompt_cache=True (llama.cpp) keeps the last prompt, as llama-server
    does: the next prompt's words in common with it are cached, not
    processed (timings' cache_n; prompt_n counts the rest, at least one);
    closes_after_stream=True closes the connection after each streamed
    answer although its headers said keep-alive, as llama-server does: a
    client that sends its next request on it at once finds it closed.

    Mutable state: loading (llama.cpp) answers 503 everywhere;
    metadata_delay holds /health and /v1/models back; models_body replaces
    the /v1/models answer with raw text (say, a web page); final_fields are
    merged into the stream's last chunk (say, usage in an odd shape).

    requests records every request as {"method", "path", "headers", "body"}
    (headers: Authorization and Content-Type when sent; body: the parsed
    JSON, the raw text if not JSON, or None).
    """

    def __init__(
        self,
        *,
        models: tuple[str, ...] = ("fake-model",),
        api_key: str | None = None,
        reasoning_field: str = "reasoning_content",
        llama_cpp: bool = False,
        jinja: bool = True,
        write_size: int | None = None,
        streams: bool = True,
        usage_in_stream: bool = True,
        keepalive: bool = False,
        crlf: bool = False,
        tool_call_index: bool = True,
        done_line: bytes | None = b"data: [DONE]\n\n",
        litellm: bool = False,
        api: str = "/v1",
        refuses_stream_options: bool = False,
        prompt_cache: bool = False,
        closes_after_stream: bool = False,
    ) -> None:
        super().__init__()
        self.models = list(models)
        self.api_key = api_key
        self.reasoning_field = reasoning_field
        self.llama_cpp = llama_cpp
        self.jinja = jinja
        self.write_size = write_size
        self.streams = streams
        self.usage_in_stream = usage_in_stream
        self.keepalive = keepalive
        self.crlf = crlf
        self.tool_call_index = tool_call_index
        self.done_line = done_line
        self.refuses_stream_options = refuses_stream_options
        self.prompt_cache = prompt_cache
        self.closes_after_stream = closes_after_stream
        self._cached_prompt: list[str] = []
        self.loading = False
        self.metadata_delay = 0.0
        self.models_body: str | None = None
        self.final_fields: dict[str, Any] = {}
        self.app.middlewares.append(self._record)
        self.api = api
        self.app.router.add_post(f"{api}/chat/completions", self._chat)
        self.app.router.add_get(f"{api}/models", self._models)
        if llama_cpp:
            self.app.router.add_get("/health", self._health)
        if litellm:
            self.app.router.add_get("/health", self._litellm_health)

    @property
    def chat_bodies(self) -> list[dict[str, Any]]:
        """Bodies of the chat requests received, in order."""
        return [
            request["body"]
            for request in self.requests
            if request["path"] == f"{self.api}/chat/completions"
        ]

    @web.middleware
    async def _record(
        self, request: web.Request, handler: _Handler
    ) -> web.StreamResponse:
        await self.record(request)
        if (endless := await self.endless_response(request)) is not None:
            return endless
        public = {"/health", f"{self.api}/models"} if self.llama_cpp else set()
        if (
            self.api_key is not None
            and request.path not in public
            and (denied := self._check_key(request.headers.get("Authorization")))
        ):
            return denied
        return await handler(request)

    def _check_key(self, given: str | None) -> web.Response | None:
        if given == f"Bearer {self.api_key}":
            return None
        if self.llama_cpp:
            return self._error(401, "Invalid API Key")
        if given is None:
            message = (
                "You didn't provide an API key. You need to provide your API key"
                " in an Authorization header using Bearer auth."
            )
        else:  # OpenAI masks the key; echoing it whole is the harder test.
            message = f"Incorrect API key provided: {given.removeprefix('Bearer ')}."
        return self._error(
            401, message, type_="invalid_request_error", code="invalid_api_key"
        )

    def _error(
        self,
        status: int,
        message: str,
        *,
        type_: str | None = None,
        code: str | None = None,
    ) -> web.Response:
        """An error in the OpenAI (or llama.cpp) shape."""
        return web.json_response(
            {"error": self._error_body(status, message, type_, code)}, status=status
        )

    def _error_body(
        self, status: int, message: str, type_: str | None, code: str | None
    ) -> dict[str, Any]:
        type_ = type_ or _ERROR_TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        if self.llama_cpp:
            return {"code": status, "message": message, "type": type_}
        return {"message": message, "type": type_, "param": None, "code": code}

    async def _health(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.metadata_delay)
        if self.loading:
            return self._error(503, "Loading model")
        return web.json_response({"status": "ok"})

    async def _litellm_health(self, request: web.Request) -> web.Response:
        endpoints = [{"model": model} for model in self.models]
        return web.json_response(
            {
                "healthy_endpoints": endpoints,
                "unhealthy_endpoints": [],
                "healthy_count": len(endpoints),
                "unhealthy_count": 0,
            }
        )

    async def _models(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.metadata_delay)
        if self.loading:
            return self._error(503, "Loading model")
        if self.models_body is not None:
            return web.Response(text=self.models_body, content_type="text/html")
        owner = "llamacpp" if self.llama_cpp else "fake"
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": model, "object": "model", "created": 0, "owned_by": owner}
                    for model in self.models
                ],
            }
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        body = request["body"]
        if self.loading:
            return self._error(503, "Loading model")
        if isinstance(body, str):
            return self._error(400, "We could not parse the JSON body of your request.")
        if problem := _invalid(body):
            return self._error(400, problem)
        if self.refuses_stream_options and "stream_options" in body:
            return self._error(422, "Unprocessable Entity")
        # llama-server serves its one model under any name.
        if not self.llama_cpp and body["model"] not in self.models:
            return self._error(
                404,
                f"The model `{body['model']}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        if self.llama_cpp and body.get("tools") and not self.jinja:
            return self._error(500, "tools param requires --jinja flag")
        reply = self.next_reply(body)
        if reply.status != 200:
            return self._error(reply.status, reply.error or "error")
        answer = _Answer(reply, body, self.reasoning_field, self.tool_call_index)
        if self.prompt_cache:
            answer.cached = _common_prefix(self._cached_prompt, answer.prompt_words)
            self._cached_prompt = answer.prompt_words
        if body.get("stream") and self.streams:
            return await self._stream(request, answer, started)
        await asyncio.sleep(reply.stall_before_first)
        return web.json_response(self._completion(answer, started))

    async def _stream(
        self, request: web.Request, answer: _Answer, started: float
    ) -> web.StreamResponse:
        writer = _Writer(request, self.write_size, b"\r\n" if self.crlf else b"\n")

        async def send(delta: dict[str, Any] | None) -> None:
            if self.keepalive:
                await writer.write(b": keep-alive\n\n")
            if delta is not None:
                await writer.write(_sse(self._chunk(answer, delta)))
            elif answer.reply.error:
                error = self._error_body(500, answer.reply.error, None, None)
                await writer.write(_sse({"error": error}))
            else:
                await self._finish(answer, writer, started)

        chunks: list[dict[str, Any] | None] = [*answer.deltas, None]
        try:
            async for index in paced(answer.reply, chunks, send):
                if index == answer.reply.malformed_after_chunks:
                    await writer.write(MALFORMED_CHUNK)
        except ConnectionResetError:
            assert request.transport is not None
            request.transport.abort()
            return writer.response
        await writer.response.write_eof()
        if self.closes_after_stream:
            assert request.transport is not None
            request.transport.close()
        return writer.response

    async def _finish(self, answer: _Answer, writer: _Writer, started: float) -> None:
        """Final chunk, usage chunk when asked, llama.cpp timings, [DONE]."""
        now = time.perf_counter()
        first = now if writer.first_write is None else writer.first_write
        chunks = [self._chunk(answer, {}, finish_reason=answer.finish_reason)]
        if self.usage_in_stream and (answer.body.get("stream_options") or {}).get(
            "include_usage"
        ):
            chunks[0]["usage"] = None
            chunks.append(
                {**self._chunk(answer, {}), "choices": [], "usage": answer.usage}
            )
        if self.llama_cpp:
            chunks[-1]["timings"] = answer.timings(first - started, now - first)
        chunks[-1].update(self.final_fields)
        for chunk in chunks:
            await writer.write(_sse(chunk))
        if self.done_line is not None:
            await writer.write(self.done_line)

    def _chunk(
        self, answer: _Answer, delta: dict[str, Any], finish_reason: str | None = None
    ) -> dict[str, Any]:
        return {
            "id": answer.id,
            "object": "chat.completion.chunk",
            "created": answer.created,
            "model": answer.body["model"],
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
        }

    def _completion(self, answer: _Answer, started: float) -> dict[str, Any]:
        """A whole (stream: false) chat.completion object."""
        message: dict[str, Any] = {
            "role": "assistant",
            "content": answer.content or None,
        }
        if answer.reasoning:
            message[self.reasoning_field] = answer.reasoning
        if answer.calls:
            message["tool_calls"] = answer.calls
        completion: dict[str, Any] = {
            "id": answer.id,
            "object": "chat.completion",
            "created": answer.created,
            "model": answer.body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": answer.finish_reason,
                }
            ],
            "usage": answer.usage,
        }
        if self.llama_cpp:
            completion["timings"] = answer.timings(time.perf_counter() - started, 0.0)
        return completion


class _Writer:
    """Writes an SSE response, sending the headers with the first bytes."""

    def __init__(
        self, request: web.Request, write_size: int | None, newline: bytes
    ) -> None:
        self.request = request
        self.write_size = write_size
        self.newline = newline
        self.response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        self.first_write: float | None = None

    async def write(self, data: bytes) -> None:
        """Send data; a server that stalls before this has sent nothing at all."""
        if not self.response.prepared:
            await self.response.prepare(self.request)
            self.first_write = time.perf_counter()
        # JSON escapes newlines in strings: every raw one ends an SSE line.
        data = data.replace(b"\n", self.newline)
        size = self.write_size or len(data)
        for offset in range(0, len(data), size):
            await self.response.write(data[offset : offset + size])
            await asyncio.sleep(0)  # let the client read each piece on its own


class _Answer:
    """What the fake says to one chat request, as deltas and as a whole."""

    _ids = itertools.count(1)

    def __init__(
        self,
        reply: Reply,
        body: dict[str, Any],
        reasoning_field: str,
        tool_call_index: bool,
    ) -> None:
        self.reply = reply
        self.body = body
        self.id = f"chatcmpl-fake{next(self._ids)}"
        self.cached = 0
        """Prompt words llama.cpp's prompt cache held."""
        self.created = int(time.time())
        self.deltas: list[dict[str, Any]] = []
        think_pieces = words(reply.thinking)
        if reply.inline_think and reply.thinking:
            opening = [] if reply.inline_think == "open" else ["<think>"]
            text_pieces = [*opening, *think_pieces, "</think>", *words(reply.text)]
            self.reasoning = ""
        else:
            self.deltas += [{reasoning_field: piece} for piece in think_pieces]
            text_pieces = words(reply.text)
            self.reasoning = reply.thinking
        self.content = "".join(text_pieces)
        self.deltas += [{"content": piece} for piece in text_pieces]
        self.calls = [
            {
                "id": call.get("id", f"call_fake{index}"),
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": call["arguments"]
                    if isinstance(call["arguments"], str)
                    else json.dumps(call["arguments"]),
                },
            }
            for index, call in enumerate(reply.tool_calls)
        ]
        for index, call in enumerate(self.calls):
            self.deltas += _call_deltas(index if tool_call_index else None, call)
        self.finish_reason = "tool_calls" if self.calls else "stop"
        limit = body.get("max_tokens")
        if isinstance(limit, int) and 0 <= limit < len(self.deltas):
            self.deltas = self.deltas[:limit]
            self.finish_reason = "length"
        if self.deltas:
            self.deltas[0] = {"role": "assistant", **self.deltas[0]}

    @property
    def usage(self) -> dict[str, int]:
        """The OpenAI usage object."""
        prompt = self.reply.prompt_tokens
        if prompt is None:
            prompt = len(self.prompt_words)
        completion = self.reply.completion_tokens
        if completion is None:
            completion = len(self.deltas)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    @property
    def prompt_words(self) -> list[str]:
        """The prompt as the fake tokenizes it: its messages' words."""
        return [
            word
            for message in self.body["messages"]
            if isinstance(message.get("content"), str)
            for word in words(message["content"])
        ]

    def timings(
        self, prompt_seconds: float, generation_seconds: float
    ) -> dict[str, Any]:
        """llama.cpp's timings object; scripted durations win over measured ones."""
        if self.reply.prompt_seconds is not None:
            prompt_seconds = self.reply.prompt_seconds
        if self.reply.generation_seconds is not None:
            generation_seconds = self.reply.generation_seconds
        usage = self.usage
        prompt_n, predicted_n = usage["prompt_tokens"], usage["completion_tokens"]
        # llama-server always processes the prompt's last token again.
        cache_n = min(self.cached, prompt_n - 1) if prompt_n else 0
        prompt_n -= cache_n
        prompt_ms, predicted_ms = prompt_seconds * 1000, generation_seconds * 1000
        return {
            "cache_n": cache_n,
            "prompt_n": prompt_n,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
            "prompt_per_second": 1e3 / prompt_ms * prompt_n if prompt_ms else 0.0,
            "predicted_n": predicted_n,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / predicted_n
            if predicted_n
            else 0.0,
            "predicted_per_second": 1e3 / predicted_ms * predicted_n
            if predicted_ms
            else 0.0,
        }


def _call_deltas(index: int | None, call: dict[str, Any]) -> list[dict[str, Any]]:
    """One tool call as OpenAI streams it: id and name, then argument pieces."""
    position = {} if index is None else {"index": index}
    arguments = call["function"]["arguments"]
    step = max(1, len(arguments) // 3)
    pieces = [
        arguments[offset : offset + step] for offset in range(0, len(arguments), step)
    ]
    head = {
        **position,
        "id": call["id"],
        "type": "function",
        "function": {"name": call["function"]["name"], "arguments": ""},
    }
    return [
        {"tool_calls": [head]},
        *(
            {"tool_calls": [{**position, "function": {"arguments": piece}}]}
            for piece in pieces
        ),
    ]


def _common_prefix(first: list[str], second: list[str]) -> int:
    """How many leading items the two lists share."""
    same = (a == b for a, b in zip(first, second, strict=False))
    return sum(1 for _ in itertools.takewhile(bool, same))


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def _invalid(body: Any) -> str | None:
    """Why OpenAI would reject this request body with a 400, if it would."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    if not isinstance(body.get("model"), str):
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array"
    if body.get("stream_options") is not None and not body.get("stream"):
        return (
            "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        )
    call_ids: set[str] = set()
    for index, message in enumerate(messages):
        if problem := _invalid_message(index, message, call_ids):
            return problem
    for index, tool in enumerate(body.get("tools") or ()):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(function, dict)
            or tool.get("type") != "function"
            or not isinstance(function.get("name"), str)
        ):
            return f"Missing required parameter: 'tools[{index}].function.name'."
    response_format = body.get("response_format")
    if response_format is not None:
        kind = (
            response_format.get("type") if isinstance(response_format, dict) else None
        )
        if kind not in ("text", "json_object", "json_schema"):
            return f"Invalid value: '{kind}'. Supported values are: 'json_object', 'json_schema', and 'text'."
        schema = response_format.get("json_schema")
        if kind == "json_schema" and not (
            isinstance(schema, dict)
            and isinstance(schema.get("name"), str)
            and isinstance(schema.get("schema"), dict)
        ):
            return "Missing required parameter: 'response_format.json_schema'."
        if (
            kind == "json_schema"
            and schema.get("strict")
            and (problem := _not_strict(schema["schema"]))
        ):
            return f"Invalid schema for response_format 'response': In context=(), {problem}"
    return None


def _not_strict(schema: Any) -> str | None:
    """Why OpenAI's strict mode refuses a schema (objects by properties, items)."""
    if not isinstance(schema, dict):
        return None
    properties = schema.get("properties", {})
    if schema.get("type") == "object":
        if schema.get("additionalProperties") is not False:
            return "'additionalProperties' is required to be supplied and to be false."
        if set(schema.get("required", [])) != set(properties):
            return "'required' is required to be supplied and to be an array including every key in properties."
    for child in [*properties.values(), schema.get("items")]:
        if problem := _not_strict(child):
            return problem
    return None


def _invalid_message(index: int, message: Any, call_ids: set[str]) -> str | None:
    where = f"messages[{index}]"
    if not isinstance(message, dict) or message.get("role") not in _ROLES:
        return f"Invalid value for '{where}.role'."
    if message["role"] == "tool":
        if message.get("tool_call_id") not in call_ids:
            return (
                "Invalid parameter: messages with role 'tool' must be a response"
                " to a preceeding message with 'tool_calls'."
            )
        return None
    for position, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(function, dict)
            or call.get("type") != "function"
            or not isinstance(call.get("id"), str)
        ):
            return f"Missing required parameter: '{where}.tool_calls[{position}].type'."
        if not isinstance(function.get("arguments"), str):
            return (
                f"Invalid type for '{where}.tool_calls[{position}].function.arguments':"
                " expected a string."
            )
        call_ids.add(call["id"])
    return None
