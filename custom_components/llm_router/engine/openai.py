"""Backend for servers speaking the OpenAI chat-completions API.

Covers llama.cpp's llama-server, vLLM, LM Studio, Ollama's /v1 and hosted
OpenAI-compatible services. The HTTP session is shared (Home Assistant's)
and never closed here.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
import json
import logging
import re
from typing import Any

import aiohttp

from .backend import Backend
from .errors import (
    AuthFailed,
    BackendError,
    BackendServerError,
    BackendTimeout,
    BackendUnreachable,
    BadResponse,
    CapabilityUnsupported,
    ModelNotFound,
)
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


class OpenAIBackend(Backend):
    """An OpenAI-compatible server, reached over a shared aiohttp session."""

    def __init__(self, config: BackendConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(config)
        self._session = session
        # Users paste the URL with or without the /v1 the API lives under.
        self._root = config.url.rstrip("/").removesuffix("/v1").rstrip("/")
        self._headers = (
            {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        )

    async def chat(self, request: ChatRequest) -> AsyncGenerator[StreamEvent]:
        """Stream a completion from /v1/chat/completions."""
        body = self._chat_body(request)
        _LOGGER.debug("%s: chat request %s", self.name, body)
        # No read timeout: the router enforces first-token and stall deadlines.
        async with self._call("POST", "/v1/chat/completions", body=body) as response:
            stream = _Stream(self.config.api_key)
            async for line in _lines(response.content):
                if not line.startswith(b"data:"):
                    continue  # blank separators, ": keep-alive" comments, fields
                payload = line.removeprefix(b"data:").strip()
                if payload == b"[DONE]":
                    for event in stream.finish():
                        yield event
                    return
                for event in stream.feed(payload):
                    yield event
            raise BadResponse("stream ended before [DONE]")

    async def probe(self) -> ProbeResult:
        """GET /health (llama.cpp), else /v1/models for servers without it."""
        async with self._call(
            "GET", "/health", read_timeout=True, missing_ok=True
        ) as response:
            if response.status != 404:
                return ProbeResult()
        await self.list_models()
        return ProbeResult()

    async def list_models(self) -> list[str]:
        """Model ids from /v1/models."""
        async with self._call("GET", "/v1/models", read_timeout=True) as response:
            answer = await response.read()
        try:
            return [str(model["id"]) for model in json.loads(answer)["data"]]
        except (ValueError, LookupError, TypeError) as err:
            raise BadResponse("unexpected /v1/models answer") from err

    async def model_details(self) -> ModelDetails:
        """OpenAI-compatible servers do not report model capabilities."""
        return ModelDetails(capabilities=None)

    def _chat_body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [_message(message) for message in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.config.max_tokens is not None:
            body["max_tokens"] = self.config.max_tokens
        if request.tools:
            body["tools"] = [_tool(tool) for tool in request.tools]
        if request.response_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": "response",
                    "schema": dict(request.response_schema),
                    "strict": True,
                },
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
        missing_ok: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send one request and turn every failure into a BackendError.

        read_timeout bounds each read by the stall timeout; only for cheap
        calls, chat deadlines belong to the router. missing_ok hands a 404
        to the caller instead of raising.
        """
        timeout = aiohttp.ClientTimeout(
            sock_connect=self.config.connect_timeout,
            sock_read=self.config.stall_timeout if read_timeout else None,
        )
        answered = False
        try:
            async with self._session.request(
                method,
                self._root + path,
                json=body,
                headers=self._headers,
                timeout=timeout,
            ) as response:
                if response.status >= 400 and not (
                    missing_ok and response.status == 404
                ):
                    text = await response.text(errors="replace")
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
    return BadResponse(text)


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


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Lines of a byte stream, however the network split it.

    A CR of a CRLF ending stays; callers strip what they parse.
    """
    pending = b""
    async for data in content.iter_any():
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            yield line


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
            if timings := chunk.get("timings"):  # llama.cpp
                self._timings = ServerStats(
                    prompt_tokens=timings["prompt_n"],
                    completion_tokens=timings["predicted_n"],
                    prompt_seconds=timings["prompt_ms"] / 1000,
                    generation_seconds=timings["predicted_ms"] / 1000,
                )
            if usage := chunk.get("usage"):
                self._usage = ServerStats(
                    prompt_tokens=usage["prompt_tokens"],
                    completion_tokens=usage["completion_tokens"],
                )
            return [
                event
                for choice in chunk.get("choices") or ()
                for event in self._delta(choice.get("delta") or {})
            ]
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
        events.append(self._timings or self._usage or ServerStats())
        return events


def _tool_call(call: _PartialCall) -> ToolCall:
    try:
        arguments = json.loads(call.arguments or "{}")
    except ValueError as err:
        raise BadResponse(f"tool call {call.name!r}: arguments are not JSON") from err
    if not isinstance(arguments, dict):
        raise BadResponse(f"tool call {call.name!r}: arguments are not an object")
    return ToolCall(id=call.id, name=call.name, arguments=arguments)
