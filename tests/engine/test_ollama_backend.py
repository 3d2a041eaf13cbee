"""Tests of the Ollama backend against the loopback Ollama fake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
import math
import ssl
from typing import Any

import aiohttp
import ollama
import pytest

from custom_components.llm_router.engine.errors import (
    AuthFailed,
    BackendClosed,
    BackendError,
    BackendServerError,
    BackendTimeout,
    BackendUnreachable,
    BadRequest,
    BadResponse,
    CapabilityUnsupported,
    ModelNotFound,
)
from custom_components.llm_router.engine.models import (
    BackendConfig,
    BackendKind,
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
from custom_components.llm_router.engine.ollama import OllamaBackend, parse_keep_alive
from tests.conftest import deadline_once
from tests.fakes.base import (
    Endless,
    Reply,
    closed_port_url,
    self_signed_tls,
    unanswered_url,
)
from tests.fakes.ollama_server import FakeOllama, Override, RunningModel

ASK = ChatRequest(messages=(ChatMessage("user", "Turn on the kitchen light"),))
LIGHT = {"name": "kitchen light"}
LIGHT_ON = {"name": "HassTurnOn", "arguments": LIGHT}
FAN_OFF = {"name": "HassTurnOff", "arguments": {"area": "bedroom", "domain": ["fan"]}}
LIGHT_TOOL = ToolSpec(
    "HassTurnOn",
    "Turns on a device",
    {
        "type": "object",
        "properties": {"name": {"type": "string", "description": "Device name"}},
        "required": ["name"],
    },
)
KEY = "sk-secret-123"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fake() -> AsyncIterator[FakeOllama]:
    async with FakeOllama() as server:
        yield server


Make = Callable[..., OllamaBackend]


def on_session(
    url: str,
    session: aiohttp.ClientSession,
    *,
    verify: ssl.SSLContext | bool = True,
    **config: Any,
) -> OllamaBackend:
    """A backend for url on session; its model llama3.2 unless config says."""
    options: dict[str, Any] = {"model": "llama3.2", **config}
    return OllamaBackend(
        BackendConfig(name="pi", kind=BackendKind.OLLAMA, url=url, **options),
        session,
        verify=verify,
    )


@pytest.fixture
async def make(session: aiohttp.ClientSession) -> AsyncIterator[Make]:
    """Build backends on the shared session; closed after the test."""
    built: list[OllamaBackend] = []

    def build(
        url: str, *, verify: ssl.SSLContext | bool = True, **config: Any
    ) -> OllamaBackend:
        built.append(on_session(url, session, verify=verify, **config))
        return built[-1]

    yield build
    for target in built:
        await target.close()


async def collect(
    target: OllamaBackend, request: ChatRequest = ASK
) -> list[StreamEvent]:
    return [event async for event in target.chat(request)]


async def collect_into(
    seen: list[StreamEvent], target: OllamaBackend, request: ChatRequest = ASK
) -> None:
    async for event in target.chat(request):
        seen.append(event)


def text_of(events: list[StreamEvent]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


def reasoning_of(events: list[StreamEvent]) -> str:
    return "".join(event.text for event in events if isinstance(event, ReasoningDelta))


# Streaming


async def test_streams_text_then_one_stats(fake: FakeOllama, make: Make) -> None:
    fake.script(Reply(text="The kitchen light is on."))

    events = await collect(make(fake.url))

    assert text_of(events) == "The kitchen light is on."
    assert len([e for e in events if isinstance(e, TextDelta)]) == 5  # word by word
    assert isinstance(events[-1], ServerStats)
    assert [e for e in events if isinstance(e, ServerStats)] == [events[-1]]


async def test_connection_is_kept_for_the_next_request(
    fake: FakeOllama, make: Make
) -> None:
    """The stream is read to its end, so the next request reuses the connection."""
    client = make(fake.url)
    await collect(client)
    await collect(client)

    first, second = (r["peer"] for r in fake.requests if r["path"] == "/api/chat")
    assert first == second


@asynccontextmanager
async def traced_session(sent: list[str]) -> AsyncIterator[aiohttp.ClientSession]:
    """A session that notes each request it starts to send: "GET /api/ps"."""

    async def started(
        session: aiohttp.ClientSession,
        context: object,
        request: aiohttp.TraceRequestStartParams,
    ) -> None:
        sent.append(f"{request.method} {request.url.path}")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(started)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        yield session


async def test_requests_go_through_the_given_session(fake: FakeOllama) -> None:
    """Chat and metadata alike: the shared session's connections, never closed."""
    sent: list[str] = []
    async with traced_session(sent) as session:
        target = on_session(fake.url, session)
        await collect(target)
        await target.probe()
        await target.list_models()
        await target.model_details()
        await target.close()

        assert not session.closed
    assert sent == [
        "POST /api/chat",
        "GET /api/version",
        "GET /api/ps",
        "GET /api/tags",
        "POST /api/show",
    ]


async def test_a_request_lets_the_loop_run_before_it_is_sent(
    fake: FakeOllama,
) -> None:
    """Turns that start together do not hold the loop for all their sends."""
    happened: list[str] = []
    async with traced_session(happened) as session:
        target = on_session(fake.url, session)
        asyncio.get_running_loop().call_soon(happened.append, "the loop ran")

        await target.list_models()
        await target.close()

    assert happened == ["the loop ran", "GET /api/tags"]


async def test_compressed_answers_are_read(fake: FakeOllama, make: Make) -> None:
    """A proxy in front may gzip what Ollama says: decoded once, as sent."""
    fake.gzip = True
    fake.script(Reply(thinking="The user wants light.", text="Done."))
    target = make(fake.url, model="qwen3")

    events = await collect(target, ChatRequest(ASK.messages, think=True))

    assert (reasoning_of(events), text_of(events)) == ("The user wants light.", "Done.")
    assert (await target.probe()).version == "0.12.6"
    assert "llama3.2:latest" in await target.list_models()


async def test_thinking_arrives_as_reasoning_before_text(
    fake: FakeOllama, make: Make
) -> None:
    fake.script(Reply(thinking="The user wants light.", text="Done."))

    events = await collect(
        make(fake.url, model="qwen3"), ChatRequest(ASK.messages, think=True)
    )

    assert reasoning_of(events) == "The user wants light."
    assert text_of(events) == "Done."
    kinds = [type(e) for e in events]
    assert kinds.index(TextDelta) > max(
        i for i, kind in enumerate(kinds) if kind is ReasoningDelta
    )


@pytest.mark.parametrize(
    ("inline", "expected"),
    [
        (True, "<think>Light, kitchen.</think>It is on."),
        ("open", "Light, kitchen.</think>It is on."),
    ],
)
async def test_inline_think_tags_stay_in_the_text(
    fake: FakeOllama, make: Make, inline: bool | str, expected: str
) -> None:
    fake.script(
        Reply(thinking="Light, kitchen.", text="It is on.", inline_think=inline)
    )

    events = await collect(make(fake.url))

    assert text_of(events) == expected
    assert not reasoning_of(events)


async def test_tool_calls_get_ids(fake: FakeOllama, make: Make) -> None:
    fake.script(Reply(text="", tool_calls=[LIGHT_ON, FAN_OFF]))

    events = await collect(
        make(fake.url), ChatRequest(ASK.messages, tools=(LIGHT_TOOL,))
    )

    [delta] = [e for e in events if isinstance(e, ToolCallDelta)]
    assert [(call.name, call.arguments) for call in delta.calls] == [
        ("HassTurnOn", LIGHT),
        ("HassTurnOff", {"area": "bedroom", "domain": ["fan"]}),
    ]
    ids = [call.id for call in delta.calls]
    assert all(ids)
    assert len(set(ids)) == 2
    assert isinstance(events[-1], ServerStats)


async def test_stats_come_from_the_final_chunk_in_seconds(
    fake: FakeOllama, make: Make
) -> None:
    fake.script(
        Reply(
            prompt_tokens=120,
            completion_tokens=40,
            prompt_seconds=0.5,
            generation_seconds=2.0,
            load_seconds=1.25,
        )
    )

    stats = (await collect(make(fake.url)))[-1]

    assert stats == ServerStats(
        prompt_tokens=120,
        completion_tokens=40,
        prompt_seconds=0.5,
        generation_seconds=2.0,
        load_seconds=1.25,
        output_chunks=4,
    )
    assert isinstance(stats, ServerStats)
    assert stats.completion_tokens is not None
    assert stats.generation_seconds
    assert stats.completion_tokens / stats.generation_seconds == 20.0


async def test_final_chunk_without_statistics(fake: FakeOllama, make: Make) -> None:
    fake.overrides["/api/chat"] = Override(
        body=b'{"model":"llama3.2","created_at":"2025-01-01T00:00:00Z",'
        b'"message":{"role":"assistant","content":"Hi"},"done":true}\n'
    )

    events = await collect(make(fake.url))

    assert events == [TextDelta("Hi"), ServerStats(output_chunks=1)]


# What the backend sends


async def test_request_body(fake: FakeOllama, make: Make) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    target = make(fake.url, keep_alive="30m", num_ctx=8192)

    await collect(target, ChatRequest(ASK.messages, response_schema=schema))

    [body] = fake.chat_bodies
    assert body["model"] == "llama3.2"
    assert body["stream"] is True
    assert body["messages"] == [
        {"role": "user", "content": "Turn on the kitchen light"}
    ]
    assert body["keep_alive"] == "30m"
    assert body["options"] == {"num_ctx": 8192}
    assert body["format"] == schema
    assert not body.get("tools")
    assert "think" not in body


async def test_optional_fields_are_left_out(fake: FakeOllama, make: Make) -> None:
    await collect(make(fake.url))

    [body] = fake.chat_bodies
    assert not {"keep_alive", "options", "format", "think"} & body.keys()


@pytest.mark.parametrize(
    ("configured", "requested", "sent"),
    [
        (False, None, None),
        (True, None, True),
        (False, True, True),
        (True, False, False),
        (False, False, False),
    ],
)
async def test_think_flag(
    fake: FakeOllama,
    make: Make,
    configured: bool,
    requested: bool | None,
    sent: bool | None,
) -> None:
    target = make(fake.url, model="qwen3", think=configured)

    await collect(target, ChatRequest(ASK.messages, think=requested))

    assert fake.chat_bodies[0].get("think") == sent


async def test_tools_and_tool_messages(fake: FakeOllama, make: Make) -> None:
    bare_tool = ToolSpec("GetTime", None, {"type": "object", "properties": {}})
    conversation = (
        ChatMessage("system", "You control a home."),
        ChatMessage("user", "Turn on the kitchen light"),
        ChatMessage(
            "assistant", "", tool_calls=(ToolCall("call_1", "HassTurnOn", LIGHT),)
        ),
        ChatMessage(
            "tool", '{"success": true}', tool_call_id="call_1", tool_name="HassTurnOn"
        ),
    )

    await collect(
        make(fake.url),
        ChatRequest(conversation, tools=(LIGHT_TOOL, bare_tool)),
    )

    [body] = fake.chat_bodies
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "HassTurnOn",
                "description": "Turns on a device",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "description": "Device name"}
                    },
                    "required": ["name"],
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "GetTime",
                "parameters": {"type": "object", "properties": {}},
            },
        },
    ]
    tool_result: dict[str, Any] = {"role": "tool", "content": '{"success": true}'}
    if "tool_name" in ollama.Message.model_fields:  # ollama >= 0.5.2
        tool_result["tool_name"] = "HassTurnOn"
    assert body["messages"] == [
        {"role": "system", "content": "You control a home."},
        {"role": "user", "content": "Turn on the kitchen light"},
        {
            "role": "assistant",
            "tool_calls": [{"function": {"name": "HassTurnOn", "arguments": LIGHT}}],
        },
        tool_result,
    ]


async def test_api_key_is_sent_as_bearer_token(make: Make) -> None:
    async with FakeOllama(api_key=KEY) as fake:
        target = make(fake.url, api_key=KEY)

        await collect(target)
        await target.probe()

    assert {r["path"] for r in fake.requests} == {
        "/api/chat",
        "/api/version",
        "/api/ps",
    }
    assert all(r["headers"]["Authorization"] == f"Bearer {KEY}" for r in fake.requests)


# Failures


async def test_refused_connection(make: Make) -> None:
    target = make(closed_port_url())

    for call in (collect(target), target.probe(), target.list_models()):
        with pytest.raises(BackendUnreachable, match=r"^connection refused$"):
            await call


async def test_connect_timeout_means_unreachable(
    make: Make,
) -> None:
    with unanswered_url() as url:
        target = make(url, connect_timeout=0.2)

        for call in (collect(target), target.probe(), target.model_details()):
            with pytest.raises(BackendUnreachable, match=r"^connect timed out$"):
                await call


async def test_server_that_never_answers_can_be_cancelled(
    fake: FakeOllama, make: Make
) -> None:
    fake.script(Reply(stall_before_first=math.inf), Reply(text="Back again."))
    target = make(fake.url)
    seen: list[StreamEvent] = []

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await collect_into(seen, target)

    assert seen == []
    assert text_of(await collect(target)) == "Back again."


async def test_stall_mid_stream_can_be_cancelled(fake: FakeOllama, make: Make) -> None:
    fake.script(Reply(text="one two three four", stall_after_chunks=2))
    seen: list[StreamEvent] = []

    with pytest.raises(TimeoutError):
        # Two chunks, then the stall.
        await deadline_once(lambda: len(seen) == 2, collect_into(seen, make(fake.url)))

    assert seen == [TextDelta("one"), TextDelta(" two")]


async def test_drop_mid_stream(fake: FakeOllama, make: Make) -> None:
    fake.script(Reply(text="one two three four", drop_after_chunks=2))
    seen: list[StreamEvent] = []

    with pytest.raises(BadResponse, match=r"^connection lost mid-answer$"):
        await collect_into(seen, make(fake.url))

    assert seen == [TextDelta("one"), TextDelta(" two")]


async def test_drop_before_answering(fake: FakeOllama, make: Make) -> None:
    fake.script(Reply(drop_after_chunks=0))

    with pytest.raises(BackendUnreachable, match=r"^connection lost$"):
        await collect(make(fake.url))


async def test_drop_before_the_final_chunk(fake: FakeOllama, make: Make) -> None:
    fake.script(Reply(text="one two", drop_after_chunks=2))

    with pytest.raises(BadResponse, match="mid-answer"):
        await collect(make(fake.url))


async def test_stream_ending_without_final_chunk(fake: FakeOllama, make: Make) -> None:
    fake.overrides["/api/chat"] = Override(
        body=b'{"model":"llama3.2","created_at":"2025-01-01T00:00:00Z",'
        b'"message":{"role":"assistant","content":"Hi"},"done":false}\n'
    )

    with pytest.raises(BadResponse, match="before its final chunk"):
        await collect(make(fake.url))


async def test_malformed_chunk(fake: FakeOllama, make: Make) -> None:
    fake.script(Reply(text="one two three", malformed_after_chunks=1))

    with pytest.raises(BadResponse, match=r"^malformed answer$"):
        await collect(make(fake.url))


async def test_unknown_model(fake: FakeOllama, make: Make) -> None:
    target = make(fake.url, model="mistral")

    for call in (collect(target), target.model_details(), target.check_model()):
        with pytest.raises(ModelNotFound, match=r"^model 'mistral' not found$"):
            await call


async def test_check_model_resolves_the_default_tag(
    fake: FakeOllama, make: Make
) -> None:
    await make(fake.url, model="qwen3").check_model()

    assert fake.requests[-1]["path"] == "/api/show"


async def test_tools_unsupported(fake: FakeOllama, make: Make) -> None:
    target = make(fake.url, model="gemma2")

    with pytest.raises(CapabilityUnsupported) as caught:
        await collect(target, ChatRequest(ASK.messages, tools=(LIGHT_TOOL,)))

    assert caught.value.capability == "tools"
    assert caught.value.message == "model 'gemma2' does not support tools"


async def test_thinking_unsupported(fake: FakeOllama, make: Make) -> None:
    with pytest.raises(CapabilityUnsupported) as caught:
        await collect(make(fake.url), ChatRequest(ASK.messages, think=True))

    assert caught.value.capability == "thinking"
    assert caught.value.message == "model 'llama3.2' does not support thinking"


@pytest.mark.parametrize(
    ("status", "error", "expected", "message"),
    [
        (
            500,
            "llama runner process has terminated: exit status 2",
            BackendServerError,
            "HTTP 500: llama runner process has terminated: exit status 2",
        ),
        (
            503,
            "server busy, please try again.  maximum pending requests exceeded",
            BackendServerError,
            "HTTP 503: server busy, please try again.  maximum pending requests exceeded",
        ),
        (429, "too many requests", BackendServerError, "HTTP 429: too many requests"),
        (401, "unauthorized", AuthFailed, "HTTP 401: unauthorized"),
        (403, "forbidden", AuthFailed, "HTTP 403: forbidden"),
        (
            400,
            'invalid format: expected "json" or a JSON schema',
            BadRequest,
            'HTTP 400: invalid format: expected "json" or a JSON schema',
        ),
        (
            413,
            "request entity too large",
            BadRequest,
            "HTTP 413: request entity too large",
        ),
        (422, "unprocessable", BadRequest, "HTTP 422: unprocessable"),
        (405, "method not allowed", BadResponse, "HTTP 405: method not allowed"),
    ],
)
async def test_error_statuses(
    fake: FakeOllama,
    make: Make,
    status: int,
    error: str,
    expected: type[BackendError],
    message: str,
) -> None:
    fake.script(Reply(status=status, error=error))

    with pytest.raises(expected) as caught:
        await collect(make(fake.url))

    assert type(caught.value) is expected
    assert caught.value.message == message


async def test_error_inside_the_stream(fake: FakeOllama, make: Make) -> None:
    fake.script(
        Reply(text="Yes I", error="an error was encountered while running the model")
    )
    seen: list[StreamEvent] = []

    with pytest.raises(BackendServerError) as caught:
        await collect_into(seen, make(fake.url))

    assert caught.value.message == "an error was encountered while running the model"
    assert text_of(seen) == "Yes I"


async def test_wrong_api_key(make: Make) -> None:
    async with FakeOllama(api_key="right") as fake:
        target = make(fake.url, api_key=KEY)

        for call in (collect(target), target.probe(), target.list_models()):
            with pytest.raises(AuthFailed, match=r"^HTTP 401: unauthorized$"):
                await call


async def test_api_key_is_masked_in_messages(fake: FakeOllama, make: Make) -> None:
    fake.script(Reply(status=500, error=f"upstream rejected key {KEY}\nstack trace"))

    with pytest.raises(BackendServerError) as caught:
        await collect(make(fake.url, api_key=KEY))

    assert caught.value.message == "HTTP 500: upstream rejected key ***"


async def test_not_found_outside_a_model_call_is_a_bad_response(
    fake: FakeOllama, make: Make
) -> None:
    fake.overrides["/api/tags"] = Override(status=404, body=b"404 page not found")
    fake.overrides["/api/version"] = Override(status=404, body=b"404 page not found")
    target = make(fake.url)

    for call in (target.list_models(), target.probe()):
        with pytest.raises(BadResponse, match=r"^HTTP 404: 404 page not found$"):
            await call


async def test_empty_error_body(fake: FakeOllama, make: Make) -> None:
    fake.overrides["/api/ps"] = Override(status=502, body=b"")

    with pytest.raises(BackendServerError, match=r"^HTTP 502$"):
        await make(fake.url).probe()


@pytest.mark.parametrize("path", ["/api/version", "/api/ps"])
async def test_silent_metadata_request_times_out(
    fake: FakeOllama, make: Make, path: str
) -> None:
    fake.overrides[path] = Override(delay=math.inf)
    target = make(fake.url, connect_timeout=0.2, stall_timeout=0.2)

    with pytest.raises(BackendTimeout, match=r"^no answer in time$"):
        await target.probe()


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/api/version", b"<html>Ollama is running</html>", "^malformed answer$"),
        ("/api/version", {"name": "ollama"}, "^no version in the /api/version answer$"),
        ("/api/ps", {"models": 5}, "^malformed answer$"),
    ],
)
async def test_malformed_metadata(
    fake: FakeOllama, make: Make, path: str, body: Any, message: str
) -> None:
    fake.overrides[path] = Override(body=body)

    with pytest.raises(BadResponse, match=message):
        await make(fake.url).probe()


@pytest.mark.parametrize(
    ("endless", "error", "message"),
    [
        (
            Endless(status=500, head=b'{"error": "' + b"x" * 100_000),
            BackendServerError,
            "^HTTP 500",
        ),
        (
            Endless(head=b'{"version": "' + b"0" * 1024 * 1024),
            BadResponse,
            "^answer larger than 1024 KiB$",
        ),
    ],
)
async def test_version_answer_is_read_only_up_to_a_limit(
    fake: FakeOllama,
    make: Make,
    endless: Endless,
    error: type[BackendError],
    message: str,
) -> None:
    fake.endless["/api/version"] = endless

    with pytest.raises(error, match=message):
        await make(fake.url, connect_timeout=1.0).probe()


MIB = 1024 * 1024
TOO_LARGE = Endless(head=b'{"models": [' + b" " * MIB)


@pytest.mark.parametrize(
    ("path", "endless", "call", "error", "message"),
    [
        (
            "/api/chat",
            Endless(status=500, head=b'{"error": "' + b"x" * 100_000),
            collect,
            BackendServerError,
            "^HTTP 500",
        ),
        (
            "/api/chat",
            Endless(
                head=b'{"message": {"role": "assistant", "content": "' + b"x" * MIB
            ),
            collect,
            BadResponse,
            "^stream line longer than 1024 KiB$",
        ),
        ("/api/tags", TOO_LARGE, OllamaBackend.list_models, BadResponse, "larger"),
        ("/api/show", TOO_LARGE, OllamaBackend.model_details, BadResponse, "larger"),
        ("/api/ps", TOO_LARGE, OllamaBackend.probe, BadResponse, "larger"),
    ],
)
async def test_client_reads_are_bounded(
    fake: FakeOllama,
    make: Make,
    path: str,
    endless: Endless,
    call: Callable[[OllamaBackend], Awaitable[object]],
    error: type[BackendError],
    message: str,
) -> None:
    """What the ollama client reads is bounded: an endless answer cannot hold it."""
    fake.endless[path] = endless

    async with asyncio.timeout(10):  # a bound on a hang, not a measurement
        with pytest.raises(error, match=message):
            await call(make(fake.url))


async def test_unexpected_failure_is_a_bad_response(
    make: Make,
) -> None:
    # The config flow takes only http and https: aiohttp refuses this one.
    target = make("ftp://127.0.0.1:1")

    with pytest.raises(BadResponse, match=r"^request failed: ftp://127\.0\.0\.1:1/"):
        await collect(target)


async def test_untrusted_certificate(make: Make) -> None:
    fake = FakeOllama()
    fake.ssl_context, _ = self_signed_tls()
    async with fake:
        target = make(fake.url)

        for call in (collect(target), target.probe(), target.list_models()):
            with pytest.raises(
                BackendUnreachable,
                match=r"^certificate not trusted \(self-signed certificate\)$",
            ):
                await call


@pytest.mark.parametrize("trust", ["context", "no verification"])
async def test_verify_trusts_a_certificate(make: Make, trust: str) -> None:
    fake = FakeOllama()
    fake.ssl_context, client = self_signed_tls()
    async with fake:
        target = make(fake.url, verify=client if trust == "context" else False)

        assert text_of(await collect(target)) == "Hello from the fake."
        assert (await target.probe()).version == "0.12.6"


async def test_tls_to_a_plain_server(fake: FakeOllama, make: Make) -> None:
    target = make(fake.url.replace("http://", "https://"))

    for call in (collect(target), target.probe()):
        with pytest.raises(BackendUnreachable, match=r"^TLS handshake failed \(.+\)$"):
            await call


# Probe and metadata


async def test_probe_reports_version_and_loaded_models(
    make: Make,
) -> None:
    running = [RunningModel("qwen3:latest", size_vram=5_137_025_024)]
    async with FakeOllama(version="0.9.6", running=running) as fake:
        result = await make(fake.url).probe()

    assert result == ProbeResult(
        version="0.9.6",
        loaded_models=(
            LoadedModel("qwen3:latest", 5_137_025_024, "2030-01-01T12:00:00+00:00"),
        ),
    )


async def test_probe_with_nothing_loaded(fake: FakeOllama, make: Make) -> None:
    assert await make(fake.url).probe() == ProbeResult(version="0.12.6")


async def test_list_models(fake: FakeOllama, make: Make) -> None:
    assert await make(fake.url).list_models() == [
        "llama3.2:latest",
        "qwen3:latest",
        "gemma2:latest",
    ]


@pytest.mark.parametrize(
    ("model", "capabilities"),
    [
        ("qwen3", {Capability.TOOLS, Capability.THINKING}),
        ("llama3.2:latest", {Capability.TOOLS}),
        ("gemma2", set()),
    ],
)
async def test_model_details(
    fake: FakeOllama,
    make: Make,
    model: str,
    capabilities: set[Capability],
) -> None:
    details = await make(fake.url, model=model).model_details()

    assert details == ModelDetails(capabilities=frozenset(capabilities))


async def test_old_server_reports_no_capabilities(
    make: Make,
) -> None:
    async with FakeOllama(models={"llama3.2": None}) as fake:
        target = make(fake.url)

        assert await target.model_details() == ModelDetails(capabilities=None)
        # ...nor refuses tools or thinking up front.
        events = await collect(
            target, ChatRequest(ASK.messages, tools=(LIGHT_TOOL,), think=True)
        )
    assert isinstance(events[-1], ServerStats)


async def test_close_keeps_the_shared_session(
    fake: FakeOllama, session: aiohttp.ClientSession, make: Make
) -> None:
    target = make(fake.url)

    await target.close()

    assert not session.closed
    for call in (collect(target), target.probe(), target.list_models()):
        with pytest.raises(BackendClosed, match=r"^closed$"):
            await call


async def test_fake_answers_whole_messages_without_streaming(
    fake: FakeOllama, session: aiohttp.ClientSession
) -> None:
    fake.script(
        Reply(
            thinking="Hmm.", text="Done.", tool_calls=[LIGHT_ON], generation_seconds=1.0
        )
    )

    async with session.post(
        f"{fake.url}/api/chat",
        json={
            "model": "qwen3",
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": False,
        },
    ) as response:
        answer = await response.json()

    assert answer["message"] == {
        "role": "assistant",
        "content": "Done.",
        "thinking": "Hmm.",
        "tool_calls": [{"id": "call_fake0", "function": {"index": 0, **LIGHT_ON}}],
    }
    assert answer["done"] is True
    assert answer["eval_duration"] == 1_000_000_000


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("30m", "30m"),
        (" 1h30m ", "1h30m"),
        ("-1", -1),
        ("3600", 3600),
        ("1.5h", "1.5h"),
    ],
)
def test_parse_keep_alive(value: str, parsed: str | int) -> None:
    assert parse_keep_alive(value) == parsed


@pytest.mark.parametrize("value", ["", "forever", "1d", "m30"])
def test_parse_keep_alive_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_keep_alive(value)
