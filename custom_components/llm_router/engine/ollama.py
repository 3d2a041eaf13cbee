"""Backend for Ollama's native API, through the official ollama client.

Chat streams from /api/chat; the health probe asks /api/version over the
shared aiohttp session (never closed here), then /api/ps for what is loaded.
"""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
)
from contextlib import aclosing
from dataclasses import replace
from functools import partial
import json
import logging
import os
import re
import ssl
from types import TracebackType
from typing import Any, cast
import uuid

import aiohttp
import ollama

# Imported here, not at first use: pydantic resolves ValidationError lazily,
# an import that would block the event loop.
from pydantic import ValidationError
from yarl import URL

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
from .limits import MAX_ERROR_BODY, MAX_METADATA, read_at_most, read_whole
from .models import (
    BackendConfig,
    Capability,
    ChatMessage,
    ChatRequest,
    LoadedModel,
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
from .ollama_http import SessionTransport
from .urls import OLLAMA_PORT

_LOGGER = logging.getLogger(__name__)


class OllamaBackend(Backend):
    """An Ollama server, reached with ollama.AsyncClient."""

    # Asked to think, Ollama parses the reasoning out or refuses (400).
    splits_reasoning = True
    switches_thinking = True
    loads_models = True

    def __init__(
        self,
        config: BackendConfig,
        session: aiohttp.ClientSession,
        *,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        super().__init__(config)
        self._session = session
        self._verify = verify
        self._headers = (
            {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        )
        self._base_url = server_url(config.url)
        self._client = ollama.AsyncClient(
            host=str(self._base_url),
            transport=SessionTransport(
                session, verify=verify, connect_timeout=config.connect_timeout
            ),
            headers=self._headers,
        )

    async def chat(self, request: ChatRequest) -> AsyncGenerator[StreamEvent]:
        """Stream a chat completion from /api/chat."""
        arguments = self._chat_arguments(request)
        _LOGGER.debug("%s: chat request %s", self.name, arguments)
        failures = _Failures(self.config, model_call=True)
        output_chunks = 0
        with failures, self._stream_waits() as waits:
            # The client sends the request when the stream is first iterated,
            # so connection errors surface in the loop.
            stream = await self._client.chat(**arguments, stream=True)
            # Closed here, not by the garbage collector, so that nothing of
            # the request outlives the answer.
            async with aclosing(cast(AsyncGenerator[ollama.ChatResponse], stream)):
                while True:
                    part = await waits.next(stream)
                    if part is None:
                        break
                    failures.answering = True
                    events = _events(part.message)
                    output_chunks += bool(events)
                    for event in events:
                        yield event
                    if part.done:
                        yield replace(_stats(part), output_chunks=output_chunks)
                        # Read to the end, so that the connection is kept
                        # for the next request instead of dropped.
                        await waits.next(stream)
                        return
            raise BadResponse("answer ended before its final chunk")

    async def load_model(self) -> None:
        """A chat request without messages: Ollama loads the model, answers nothing."""
        arguments: dict[str, Any] = {"model": self.config.model, "messages": []}
        if self.config.keep_alive is not None:
            arguments["keep_alive"] = self.config.keep_alive
        with _Failures(self.config, model_call=True):
            async with asyncio.timeout(self.config.first_token_timeout):
                await self._client.chat(**arguments)

    async def probe(self) -> ProbeResult:
        """GET /api/version, then the loaded models from /api/ps."""
        timeout = aiohttp.ClientTimeout(
            connect=self.config.connect_timeout, sock_read=self.config.connect_timeout
        )
        with _Failures(self.config, model_call=False):
            async with (
                self._until_closed(),
                self._session.get(
                    str(self._base_url / "api" / "version"),
                    headers=self._headers,
                    timeout=timeout,
                    ssl=self._verify,
                ) as response,
            ):
                if response.status != 200:
                    error = await read_at_most(response, MAX_ERROR_BODY)
                    raise ollama.ResponseError(
                        error.decode(errors="replace"), response.status
                    )
                version = _version(await read_whole(response, MAX_METADATA))
        running = await self._metadata(self._client.ps)
        return ProbeResult(
            version=version,
            loaded_models=tuple(
                LoadedModel(
                    name=model.model or model.name or "",
                    size_vram=None if model.size_vram is None else int(model.size_vram),
                    expires_at=None
                    if model.expires_at is None
                    else model.expires_at.isoformat(),
                )
                for model in running.models
            ),
        )

    async def list_models(self) -> list[str]:
        """Names of the installed models, from /api/tags."""
        listing = await self._metadata(self._client.list)
        return [model.model for model in listing.models if model.model]

    async def model_details(self) -> ModelDetails:
        """Capabilities from /api/show; None when the server does not say."""
        shown = await self._metadata(
            partial(self._client.show, self.config.model), model_call=True
        )
        if shown.capabilities is None:
            return ModelDetails(capabilities=None)
        return ModelDetails(
            capabilities=frozenset(
                Capability(name) for name in shown.capabilities if name in Capability
            )
        )

    async def check_model(self) -> ModelDetails:
        """Ask /api/show, which resolves the name as chat does (no tag: latest)."""
        return await self.model_details()

    async def close(self) -> None:
        """End the requests in flight and close the ollama client."""
        await super().close()
        await self._client.close()  # type: ignore[no-untyped-call]

    async def _metadata[T](
        self, call: Callable[[], Awaitable[T]], *, model_call: bool = False
    ) -> T:
        """Await a cheap request, bounded by the stall timeout."""
        with _Failures(self.config, model_call=model_call):
            async with self._until_closed(), asyncio.timeout(self.config.stall_timeout):
                return await call()

    def _chat_arguments(self, request: ChatRequest) -> dict[str, Any]:
        config = self.config
        arguments: dict[str, Any] = {
            "model": config.model,
            "messages": [_message(message) for message in request.messages],
        }
        if request.tools:
            arguments["tools"] = [_tool(tool) for tool in request.tools]
        think = config.think if request.think is None else request.think
        # An explicit false stops thinking models (Ollama's default is to think).
        if think or request.think is False:
            arguments["think"] = think
        if config.keep_alive is not None:
            arguments["keep_alive"] = config.keep_alive
        options: dict[str, Any] = {}
        if config.num_ctx is not None:
            options["num_ctx"] = config.num_ctx
        # num_predict counts reasoning too: while thinking, the router caps.
        if config.max_tokens is not None and not think:
            options["num_predict"] = config.max_tokens
        if options:
            arguments["options"] = options
        if request.response_schema is not None:
            arguments["format"] = dict(request.response_schema)
        return arguments


class _Failures:
    """Turns whatever ollama or aiohttp raise into a BackendError.

    model_call: the request names the configured model, so a 404 means that
    model is missing. answering: the stream had started, so a lost
    connection cut the answer short.
    """

    def __init__(self, config: BackendConfig, *, model_call: bool) -> None:
        self._config = config
        self._model_call = model_call
        self.answering = False

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(exc, Exception) and not isinstance(exc, BackendError):
            raise self._translate(exc) from exc

    def _translate(self, err: Exception) -> BackendError:
        if isinstance(err, ollama.ResponseError):
            return self._status_error(err.status_code, str(err.error))
        if isinstance(err, aiohttp.ConnectionTimeoutError):
            return BackendUnreachable("connect timed out")
        if isinstance(err, TimeoutError):
            return BackendTimeout("no answer in time")
        if isinstance(err, aiohttp.ClientConnectorError):
            return BackendUnreachable(_connect_failure(err))
        if isinstance(
            err,
            aiohttp.ClientConnectionError
            | aiohttp.ClientPayloadError
            | ConnectionError,
        ):
            if self.answering:
                return BadResponse("connection lost mid-answer")
            return BackendUnreachable("connection lost")
        if isinstance(err, json.JSONDecodeError | ValidationError):
            return BadResponse("malformed answer")
        _LOGGER.debug("%s: unexpected failure", self._config.name, exc_info=err)
        return BadResponse(f"request failed: {_short(str(err)) or type(err).__name__}")

    def _status_error(self, status: int, text: str) -> BackendError:
        """Map an HTTP error, or an error line inside the stream (status -1)."""
        if self._config.api_key:
            text = text.replace(self._config.api_key, "***")
        text = _short(text)
        prefix = f"HTTP {status}" if status > 0 else ""
        detail = f"{prefix}: {text}" if prefix and text else prefix or text
        model = self._config.model
        for capability in Capability:
            if f"does not support {capability}" in text:
                return CapabilityUnsupported(
                    capability.value, f"model '{model}' does not support {capability}"
                )
        if status in (401, 403):
            return AuthFailed(detail)
        if self._model_call and (status == 404 or "not found" in text.lower()):
            return ModelNotFound(f"model '{model}' not found")
        if status == 429 or status >= 500 or status < 0:
            return BackendServerError(detail)
        if status in REQUEST_REFUSED:
            return BadRequest(detail)
        return BadResponse(detail)


def _connect_failure(err: BaseException) -> str:
    """Why connecting failed, from the error at the root of err."""
    root = err
    while (cause := root.__cause__ or root.__context__) is not None:
        root = cause
    if isinstance(root, ssl.SSLCertVerificationError):
        return f"certificate not trusted ({root.verify_message})"
    if isinstance(root, ssl.SSLError):
        return f"TLS handshake failed ({root.reason.lower().replace('_', ' ')})"
    errno = root.errno if isinstance(root, OSError) else None
    # Name lookup failures carry negative codes, without an OS message.
    return os.strerror(errno).lower() if errno and errno > 0 else "cannot connect"


def _short(text: str) -> str:
    """The first line of a server's message, within reason."""
    lines = text.strip().splitlines()
    return lines[0][:200] if lines else ""


def _version(body: bytes) -> str:
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("version"), str):
        raise BadResponse("no version in the /api/version answer")
    return str(data["version"])


def _message(message: ChatMessage) -> dict[str, Any]:
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        wire["tool_calls"] = [
            {"function": {"name": call.name, "arguments": dict(call.arguments)}}
            for call in message.tool_calls
        ]
    # Ollama matches tool results by name (ollama >= 0.5.2 passes it on).
    if message.tool_name:
        wire["tool_name"] = message.tool_name
    return wire


def _tool(tool: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": dict(tool.parameters)}
    if tool.description is not None:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _events(message: ollama.Message) -> list[StreamEvent]:
    """The events in one chunk's message; inline <think> tags stay in the text."""
    events: list[StreamEvent] = []
    if message.thinking:
        events.append(ReasoningDelta(message.thinking))
    if message.content:
        events.append(TextDelta(message.content))
    if message.tool_calls:
        # Ollama gives calls no ids; the conversation needs them.
        events.append(
            ToolCallDelta(
                tuple(
                    ToolCall(
                        id=f"call_{uuid.uuid4().hex[:12]}",
                        name=call.function.name,
                        arguments=dict(call.function.arguments),
                    )
                    for call in message.tool_calls
                )
            )
        )
    return events


def _stats(done: ollama.ChatResponse) -> ServerStats:
    """The statistics of the final chunk; Ollama counts nanoseconds."""
    return ServerStats(
        cut_at_cap=done.done_reason == "length",
        prompt_tokens=done.prompt_eval_count,
        completion_tokens=done.eval_count,
        prompt_seconds=_seconds(done.prompt_eval_duration),
        generation_seconds=_seconds(done.eval_duration),
        load_seconds=_seconds(done.load_duration),
    )


def _seconds(nanoseconds: int | None) -> float | None:
    return None if nanoseconds is None else nanoseconds / 1e9


def server_url(url: str) -> URL:
    """The server's base URL as the ollama client reads a host.

    Without a scheme it means http on Ollama's port; with one, that scheme's
    default port.
    """
    if "://" in url:
        return URL(url.rstrip("/"))
    parsed = URL(f"http://{url}".rstrip("/"))
    return parsed if parsed.explicit_port else parsed.with_port(OLLAMA_PORT)


_SECONDS = re.compile(r"-?\d+")
_GO_DURATION = re.compile(r"-?(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+")


def parse_keep_alive(value: str) -> str | int:
    """A keep_alive Ollama accepts: a Go duration, or whole seconds as a number.

    Ollama rejects a bare number sent as a string ("3600"), so those become
    ints. Raises ValueError for anything else.
    """
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return int(value)
    if _GO_DURATION.fullmatch(value):
        return value
    raise ValueError(f"not a duration: {value!r}")
