"""Backend for servers speaking the OpenAI chat-completions API.

Covers llama.cpp's llama-server, vLLM, LM Studio, Ollama's /v1 and hosted
OpenAI-compatible services. The HTTP session is shared (Home Assistant's)
and never closed here.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
import json
import logging
import math
import re
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .backend import Backend
from .errors import (
    REQUEST_REFUSED,
    AuthFailed,
    BackendError,
    BackendServerError,
    BackendTimeout,
    BackendUnreachable,
    BadRequest,
    BadResponse,
    CapabilityUnsupported,
    ModelNotFound,
)
from .limits import MAX_ERROR_BODY, MAX_LINE, MAX_METADATA, read_at_most, read_whole
from .models import (
    BackendConfig,
    ChatMessage,
    ChatRequest,
    ModelDetails,
    ProbeResult,
    ReasoningDelta,
    ServerStats,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
)

_LOGGER = logging.getLogger(__name__)

# llama.cpp without --jinja, Ollama's /v1 and vLLM without a tool parser.
_TOOLS_REJECTED = re.compile(
    r"--jinja|does not support tools|--enable-auto-tool-choice", re.IGNORECASE
)
_MODEL_MISSING = re.compile(r"model\b.*\b(not found|does not exist)", re.IGNORECASE)
_VERSION = re.compile(r"v\d+\w*")


def _api_base(url: str) -> str:
    """Where the API lives: the URL, or its /v1 when it names no version.

    Versions: /v1, Gemini's /v1beta/openai, Groq's /openai/v1.
    """
    base = url.rstrip("/")
    if any(map(_VERSION.fullmatch, urlsplit(base).path.split("/"))):
        return base
    return base + "/v1"


class OpenAIBackend(Backend):
    """An OpenAI-compatible server, reached over a shared aiohttp session."""

    def __init__(self, config: BackendConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(config)
        self._session = session
        self._api = _api_base(config.url)
        self._headers = (
            {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        )
        self._probed_listing: _Listing | None = None
        self._takes_stream_options: bool | None = None
        """Whether the server accepts stream_options; None until one says."""

    async def chat(self, request: ChatRequest) -> AsyncGenerator[StreamEvent]:
        """Stream a completion from the API's /chat/completions."""
        body = self._chat_body(request)
        _LOGGER.debug("%s: chat request %s", self.name, body)
        async with AsyncExitStack() as stack:
            async with self._until_closed():
                response = await self._send_chat(stack, body)
            stream = _Stream(self.config.api_key)
            lines = await stack.enter_async_context(aclosing(_lines(response.content)))
            waits = stack.enter_context(self._stream_waits())
            while True:
                line = await waits.next(lines)
                if line is None:
                    # Some servers close after the finish_reason without [DONE].
                    if not stream.finished:
                        raise BadResponse("stream ended before [DONE]")
                    break
                if not line.startswith(b"data:"):
                    continue  # blank separators, ": keep-alive" comments, fields
                payload = line.removeprefix(b"data:").strip()
                if payload == b"[DONE]":
                    break
                for event in stream.feed(payload):
                    yield event
        for event in stream.finish():
            yield event

    async def probe(self) -> ProbeResult:
        """GET /v1/models, which every server answers cheaply.

        Not /health: a LiteLLM proxy answers it by running a completion on
        every model. The listing serves the model check that follows.
        """
        self._probed_listing = await self._listing()
        return ProbeResult()

    async def list_models(self) -> list[str]:
        """Model ids from /v1/models."""
        return (await self._latest_listing()).models

    async def check_model(self) -> ModelDetails:
        """Raise ModelNotFound unless the server lists the configured model.

        llama-server lists its one model by file path or alias and answers
        under any name: it always passes, as does a server listing none.
        """
        listing = await self._latest_listing()
        listed = listing.models and not listing.llama_cpp
        if listed and self.config.model not in listing.models:
            raise ModelNotFound(f"model '{self.config.model}' not found")
        return await self.model_details()

    async def _latest_listing(self) -> _Listing:
        """The listing the last probe fetched, once; else a new one."""
        listing, self._probed_listing = self._probed_listing, None
        return listing or await self._listing()

    async def _listing(self) -> _Listing:
        async with (
            self._until_closed(),
            self._call("GET", "/models", read_timeout=True) as response,
        ):
            answer = await read_whole(response, MAX_METADATA)
        try:
            data = json.loads(answer)["data"]
            return _Listing(
                models=[str(model["id"]) for model in data],
                llama_cpp=any(model.get("owned_by") == "llamacpp" for model in data),
            )
        except (ValueError, LookupError, TypeError, AttributeError) as err:
            raise BadResponse("unexpected /v1/models answer") from err

    async def model_details(self) -> ModelDetails:
        """OpenAI-compatible servers do not report model capabilities."""
        return ModelDetails(capabilities=None)

    async def _send_chat(
        self, stack: AsyncExitStack, body: dict[str, Any]
    ) -> aiohttp.ClientResponse:
        """Send a chat request; its response stays open as long as stack.

        Some hosted services refuse stream_options, with a bare 422 or 400:
        refused before the server ever took it, the request is sent once
        more without it, and if that goes through, never with it again.
        """
        # No read timeout: the router enforces first-token and stall deadlines.
        chat = partial(self._call, "POST", "/chat/completions")
        try:
            response = await stack.enter_async_context(chat(body=body))
        except BadRequest:
            if self._takes_stream_options is not None:
                raise
            body.pop("stream_options")
            response = await stack.enter_async_context(chat(body=body))
            self._takes_stream_options = False
        else:
            self._takes_stream_options = "stream_options" in body
        return response

    def _chat_body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [_message(message) for message in request.messages],
            "stream": True,
        }
        if self._takes_stream_options is not False:
            body["stream_options"] = {"include_usage": True}
        # max_tokens counts reasoning too: while thinking, the router caps.
        if self.config.max_tokens is not None and not request.think:
            body["max_tokens"] = self.config.max_tokens
        if request.tools:
            body["tools"] = [_tool(tool) for tool in request.tools]
        if request.response_schema is not None:
            schema = dict(request.response_schema)
            json_schema: dict[str, Any] = {"name": "response", "schema": schema}
            # OpenAI refuses strict mode for schemas it cannot enforce.
            if _strict_ready(schema):
                json_schema["strict"] = True
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": json_schema,
            }
        return body

    @asynccontextmanager
    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        read_timeout: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request and turn every failure into a BackendError.

        read_timeout bounds each read by the stall timeout; only for cheap
        calls, chat deadlines belong to the router.
        """
        timeout = aiohttp.ClientTimeout(
            sock_connect=self.config.connect_timeout,
            sock_read=self.config.stall_timeout if read_timeout else None,
        )
        send = partial(
            self._session.request,
            method,
            self._api + path,
            json=body,
            headers=self._headers,
            timeout=timeout,
        )
        answered = False
        try:
            async with AsyncExitStack() as stack:
                try:
                    response = await stack.enter_async_context(send())
                except aiohttp.ServerDisconnectedError:
                    # Closed before any answer: llama-server closes the
                    # connection after each stream although it said
                    # keep-alive, and a request sent at once on it from the
                    # pool finds it so. Once more, on a new connection.
                    _LOGGER.debug("%s: connection closed, sending again", self.name)
                    response = await stack.enter_async_context(send())
                if response.status >= 400:
                    error = await read_at_most(response, MAX_ERROR_BODY)
                    text = error.decode(errors="replace")
                    raise _status_error(
                        response.status,
                        _error_text(_parse(text)),
                        secret=self.config.api_key,
                        chat=body is not None,
                    )
                answered = True
                yield response
        except (aiohttp.ClientError, TimeoutError) as err:
            raise _transport_error(err, answered=answered) from err


def _status_error(
    status: int, message: str, *, secret: str | None, chat: bool
) -> BackendError:
    """Map an HTTP error status, or an error inside a stream."""
    if secret:
        message = message.replace(secret, "***")
    text = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    if _TOOLS_REJECTED.search(message):
        return CapabilityUnsupported("tools", text)
    if status in (401, 403):
        return AuthFailed(text)
    # A 404 on chat is the model; on other paths the URL is wrong.
    if (status == 404 and chat) or _MODEL_MISSING.search(message):
        return ModelNotFound(text)
    if status == 429 or status >= 500:
        return BackendServerError(text)
    if status in REQUEST_REFUSED:
        return BadRequest(text)
    return BadResponse(text)


def _strict_ready(schema: Any) -> bool:
    """Whether OpenAI's strict mode takes a JSON schema.

    It wants every object closed (additionalProperties false) with all of
    its properties required, down to nested and referenced schemas.
    """
    if isinstance(schema, list):
        return all(map(_strict_ready, schema))
    if not isinstance(schema, Mapping):
        return True
    properties = _mapping(schema.get("properties"))
    types = schema.get("type")
    if properties or "object" in (types if isinstance(types, list) else [types]):
        required = schema.get("required")
        if schema.get("additionalProperties") is not False or not (
            isinstance(required, list) and set(map(str, required)) == set(properties)
        ):
            return False
    children = [
        *properties.values(),
        *_mapping(schema.get("$defs")).values(),
        *_mapping(schema.get("definitions")).values(),
        *(schema.get(key) for key in ("items", "anyOf", "allOf", "oneOf")),
    ]
    return all(map(_strict_ready, children))


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _transport_error(err: Exception, *, answered: bool) -> BackendError:
    """Map what aiohttp raises to a BackendError."""
    if isinstance(err, aiohttp.ClientConnectorError):
        if isinstance(err.os_error, ConnectionRefusedError):
            return BackendUnreachable("connection refused")
        return BackendUnreachable(f"cannot connect: {err.os_error.strerror or err}")
    if isinstance(err, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return BackendUnreachable(f"invalid URL: {err}")
    if isinstance(err, aiohttp.ConnectionTimeoutError):
        return BackendUnreachable("connect timed out")
    if isinstance(err, TimeoutError):
        return BackendTimeout("no answer in time")
    if answered:
        return BadResponse("connection lost mid-response")
    return BackendUnreachable(f"connection failed: {str(err) or type(err).__name__}")


def _parse(text: str) -> Any:
    """JSON if the text is JSON, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()


def _error_text(body: Any) -> str:
    """Pick the human part of an error body: OpenAI, llama.cpp, vLLM or plain."""
    if isinstance(body, dict):
        body = body.get("error", body)
    if isinstance(body, dict):
        body = body.get("message", body)
    return str(body)[:200]


async def _lines(content: aiohttp.StreamReader) -> AsyncGenerator[bytes]:
    """Lines of a byte stream, however the network split it.

    A CR of a CRLF ending stays; callers strip what they parse. A line longer
    than MAX_LINE is a BadResponse rather than memory held without bound.
    """
    pending = bytearray()
    async for data in content.iter_any():
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            pending += data[start:end]
            _check_line(pending)
            yield bytes(pending)
            pending.clear()
            start = end + 1
        pending += data[start:]
        _check_line(pending)
    if pending:  # the last line may lack its newline
        yield bytes(pending)


def _check_line(line: bytearray) -> None:
    if len(line) > MAX_LINE:
        raise BadResponse(f"stream line longer than {MAX_LINE // 1024} KiB")


def _message(message: ChatMessage) -> dict[str, Any]:
    if message.role == "tool":
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id,
            "content": message.content,
        }
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": json.dumps(call.arguments),
                },
            }
            for call in message.tool_calls
        ]
    return wire


def _tool(tool: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": dict(tool.parameters)}
    if tool.description is not None:
        function["description"] = tool.description
    return {"type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class _Listing:
    """What /v1/models says."""

    models: list[str]
    llama_cpp: bool


@dataclass
class _PartialCall:
    """A tool call whose pieces are still arriving."""

    id: str
    name: str = ""
    arguments: str = ""


class _Stream:
    """Turns chat.completion.chunk objects into stream events."""

    def __init__(self, secret: str | None) -> None:
        self._secret = secret
        self._calls: dict[int, _PartialCall] = {}
        self._timings: ServerStats | None = None
        self._usage: ServerStats | None = None
        self._output_chunks = 0
        self._cut_at_cap = False
        self.finished = False
        """Whether a finish_reason came: the answer is complete."""

    def feed(self, payload: bytes) -> list[StreamEvent]:
        """Events carried by one data line."""
        try:
            chunk = json.loads(payload)
            if error := chunk.get("error"):
                code = error.get("code") if isinstance(error, dict) else None
                raise _status_error(
                    code if isinstance(code, int) else 500,
                    _error_text(chunk),
                    secret=self._secret,
                    chat=True,
                )
            # Statistics are optional: a field in another shape is unknown.
            if isinstance(timings := chunk.get("timings"), dict):  # llama.cpp
                self._timings = ServerStats(
                    prompt_tokens=_count(timings.get("prompt_n")),
                    prompt_cached_tokens=_count(timings.get("cache_n")),
                    completion_tokens=_count(timings.get("predicted_n")),
                    prompt_seconds=_seconds(timings.get("prompt_ms")),
                    generation_seconds=_seconds(timings.get("predicted_ms")),
                )
            if isinstance(usage := chunk.get("usage"), dict):
                self._usage = ServerStats(
                    prompt_tokens=_count(usage.get("prompt_tokens")),
                    completion_tokens=_count(usage.get("completion_tokens")),
                )
            events: list[StreamEvent] = []
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                output = self._delta(delta)
                self._output_chunks += bool(output or delta.get("tool_calls"))
                events += output
                reason = choice.get("finish_reason")
                self.finished = self.finished or bool(reason)
                self._cut_at_cap = self._cut_at_cap or reason == "length"
            return events
        except (ValueError, LookupError, AttributeError, TypeError) as err:
            raise BadResponse("malformed stream chunk") from err

    def _delta(self, delta: dict[str, Any]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        # llama.cpp and DeepSeek say reasoning_content; vLLM and OpenRouter reasoning.
        if reasoning := delta.get("reasoning_content") or delta.get("reasoning"):
            events.append(ReasoningDelta(str(reasoning)))
        if content := delta.get("content"):
            events.append(TextDelta(str(content)))
        for piece in delta.get("tool_calls") or ():
            index = piece.get("index")
            if index is None:  # Gemini: an id starts a call, other pieces continue
                new = piece.get("id") or not self._calls
                index = len(self._calls) if new else next(reversed(self._calls))
            call = self._calls.setdefault(index, _PartialCall(f"call_{index}"))
            call.id = piece.get("id") or call.id
            function = piece.get("function") or {}
            call.name += function.get("name") or ""
            call.arguments += function.get("arguments") or ""
        return events

    def finish(self) -> list[StreamEvent]:
        """Close the stream: the tool calls (if any), then the server's stats."""
        events: list[StreamEvent] = []
        if self._calls:
            events.append(ToolCallDelta(tuple(map(_tool_call, self._calls.values()))))
        stats = self._timings or self._usage or ServerStats()
        events.append(
            replace(
                stats, output_chunks=self._output_chunks, cut_at_cap=self._cut_at_cap
            )
        )
        return events


def _count(value: Any) -> int | None:
    """A token count, if value is one."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _seconds(milliseconds: Any) -> float | None:
    """Seconds from a duration in milliseconds, if value is one."""
    if isinstance(milliseconds, int | float) and not isinstance(milliseconds, bool):
        return milliseconds / 1000 if 0 <= milliseconds < math.inf else None
    return None


def _tool_call(call: _PartialCall) -> ToolCall:
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError as err:
        raise BadResponse(f"tool call {call.name!r}: arguments are not JSON") from err
    if not isinstance(arguments, dict):
        raise BadResponse(f"tool call {call.name!r}: arguments are not an object")
    return ToolCall(id=call.id, name=call.name, arguments=arguments)
