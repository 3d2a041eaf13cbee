"""Tests of the OpenAI-compatible backend against the loopback fake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
import math
from typing import Any

import aiohttp
import pytest

from custom_components.llm_router.engine.errors import (
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
from custom_components.llm_router.engine.models import (
    BackendConfig,
    BackendKind,
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
from custom_components.llm_router.engine.openai import OpenAIBackend
from tests.conftest import deadline_once
from tests.fakes.base import Endless, Reply, closed_port_url, unanswered_url
from tests.fakes.openai_server import FakeOpenAI

ASK = ChatRequest(messages=(ChatMessage("user", "Turn on the kitchen light"),))
LIGHT = {"name": "kitchen light"}
LIGHT_ON = {"name": "HassTurnOn", "arguments": LIGHT}
FAN_OFF = {"name": "HassTurnOff", "arguments": {"area": "bedroom", "domain": ["fan"]}}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def llama() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(llama_cpp=True) as server:
        yield server


def backend(session: aiohttp.ClientSession, url: str, **config: Any) -> OpenAIBackend:
    options: dict[str, Any] = {"model": "fake-model", **config}
    return OpenAIBackend(
        BackendConfig(name="gpu", kind=BackendKind.OPENAI, url=url, **options), session
    )


async def collect_into(
    seen: list[StreamEvent], target: OpenAIBackend, request: ChatRequest = ASK
) -> None:
    """Stream into seen, keeping what arrived before a failure."""
    async for event in target.chat(request):
        seen.append(event)


async def collect(
    target: OpenAIBackend, request: ChatRequest = ASK
) -> list[StreamEvent]:
    seen: list[StreamEvent] = []
    await collect_into(seen, target, request)
    return seen


def text_of(events: list[StreamEvent], kind: type[TextDelta | ReasoningDelta]) -> str:
    return "".join(event.text for event in events if isinstance(event, kind))


async def test_streams_text_then_usage_stats(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.script(Reply(text="The light is on.", prompt_tokens=31, completion_tokens=6))

    events = await collect(backend(session, fake.url))

    assert [type(event) for event in events] == [TextDelta] * 4 + [ServerStats]
    assert text_of(events, TextDelta) == "The light is on."
    # Token counts only: the router measures durations itself.
    assert events[-1] == ServerStats(
        prompt_tokens=31, completion_tokens=6, output_chunks=4
    )


async def test_connection_is_kept_for_the_next_request(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    """The stream is read to its end, so the next request reuses the connection."""
    client = backend(session, fake.url)
    await collect(client)
    await collect(client)

    first, second = (r["peer"] for r in fake.requests if r["method"] == "POST")
    assert first == second


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_fields_become_reasoning_deltas(
    session: aiohttp.ClientSession, field: str
) -> None:
    async with FakeOpenAI(reasoning_field=field) as server:
        server.script(Reply(thinking="The user wants light.", text="Done."))
        events = await collect(backend(session, server.url))

    assert text_of(events, ReasoningDelta) == "The user wants light."
    assert text_of(events, TextDelta) == "Done."
    first_text = next(i for i, e in enumerate(events) if isinstance(e, TextDelta))
    assert all(isinstance(e, ReasoningDelta) for e in events[:first_text])


async def test_inline_think_is_left_in_the_text(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.script(Reply(thinking="Hmm.", text="Done.", inline_think="open"))

    events = await collect(backend(session, fake.url))

    assert text_of(events, TextDelta) == "Hmm.</think>Done."
    assert not any(isinstance(event, ReasoningDelta) for event in events)


@pytest.mark.parametrize("index", [True, False])
async def test_tool_calls_streamed_in_fragments_arrive_whole_once(
    session: aiohttp.ClientSession, index: bool
) -> None:
    async with FakeOpenAI(tool_call_index=index) as server:
        server.script(Reply(text="", tool_calls=[LIGHT_ON, FAN_OFF | {"id": "call_9"}]))
        events = await collect(backend(session, server.url))

    assert events[:-1] == [
        ToolCallDelta(
            (
                ToolCall("call_fake0", "HassTurnOn", LIGHT),
                ToolCall(
                    "call_9", "HassTurnOff", {"area": "bedroom", "domain": ["fan"]}
                ),
            )
        )
    ]
    assert isinstance(events[-1], ServerStats)


@pytest.mark.parametrize("arguments", ['{"name": "kitch', "[1, 2]"])
async def test_tool_call_arguments_that_are_no_json_object_are_bad(
    fake: FakeOpenAI, session: aiohttp.ClientSession, arguments: str
) -> None:
    fake.script(
        Reply(text="", tool_calls=[{"name": "HassTurnOn", "arguments": arguments}])
    )

    with pytest.raises(BadResponse, match="HassTurnOn"):
        await collect(backend(session, fake.url))


async def test_llama_cpp_timings_give_server_durations(
    llama: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    llama.script(
        Reply(
            prompt_tokens=120,
            completion_tokens=20,
            prompt_seconds=0.3,
            generation_seconds=0.5,
        )
    )

    events = await collect(backend(session, llama.url))

    stats = events[-1]
    assert isinstance(stats, ServerStats)
    assert (stats.prompt_tokens, stats.completion_tokens) == (120, 20)
    assert stats.prompt_seconds == pytest.approx(0.3)
    assert stats.completion_tokens is not None
    assert stats.generation_seconds is not None
    # The rate the router derives is the one llama.cpp reports.
    rate = stats.completion_tokens / stats.generation_seconds
    assert rate == pytest.approx(40.0)


async def test_llama_cpp_prompt_cache_counts_apart(
    session: aiohttp.ClientSession,
) -> None:
    """llama-server times only the prompt tokens its cache did not hold."""
    turn = ChatRequest(
        messages=(
            ChatMessage("system", " ".join(["You control a smart home."] * 20)),
            ChatMessage("user", "Turn on the kitchen light"),
        )
    )
    async with FakeOpenAI(llama_cpp=True, prompt_cache=True) as llama:
        llama.script(Reply(prompt_seconds=0.4), Reply(prompt_seconds=0.04))
        first, second = [
            (await collect(backend(session, llama.url), turn))[-1] for _ in range(2)
        ]

    assert isinstance(first, ServerStats)
    assert isinstance(second, ServerStats)
    assert first.prompt_cached_tokens == 0
    assert first.prompt_tokens == 105
    # The same prompt again: all of it cached but the last token.
    assert (second.prompt_cached_tokens, second.prompt_tokens) == (104, 1)
    assert second.prompt_seconds == pytest.approx(0.04)


async def test_a_connection_the_server_closed_after_a_stream_is_not_a_failure(
    session: aiohttp.ClientSession,
) -> None:
    """llama-server closes the connection after each streamed answer.

    The next request, sent at once on the pooled connection, found it
    closed ("Server disconnected") and failed; it goes once more on a new one.
    """
    async with FakeOpenAI(llama_cpp=True, closes_after_stream=True) as llama:
        target = backend(session, llama.url)
        answers = [text_of(await collect(target), TextDelta) for _ in range(3)]
        await target.probe()

    assert answers == ["Hello from the fake."] * 3
    assert len(llama.chat_bodies) == 3


async def test_stats_unknown_when_the_server_reports_none(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI(usage_in_stream=False) as server:
        events = await collect(backend(session, server.url))

    assert events[-1] == ServerStats(output_chunks=4)


@pytest.mark.parametrize(
    ("reply", "chunks"),
    [
        (Reply(thinking="Hmm, the light.", text="Done."), 4),
        (Reply(text="", tool_calls=[LIGHT_ON]), 5),  # the name, 4 argument pieces
    ],
)
async def test_output_chunks_count_chunks_not_events(
    fake: FakeOpenAI, session: aiohttp.ClientSession, reply: Reply, chunks: int
) -> None:
    fake.script(reply)

    events = await collect(backend(session, fake.url))

    assert isinstance(events[-1], ServerStats)
    assert events[-1].output_chunks == chunks


async def test_request_body(fake: FakeOpenAI, session: aiohttp.ClientSession) -> None:
    schema = {"type": "object", "properties": {"on": {"type": "boolean"}}}
    call = ToolCall("call_1", "HassTurnOn", {"name": "kitchen light"})
    request = ChatRequest(
        messages=(
            ChatMessage("system", "You control a home."),
            ChatMessage("user", "Turn on the kitchen light"),
            ChatMessage("assistant", "", tool_calls=(call,)),
            ChatMessage("tool", '{"success": true}', tool_call_id="call_1"),
        ),
        tools=(
            ToolSpec("HassTurnOn", "Turns on a device", {"type": "object"}),
            ToolSpec("GetLiveContext", None, {"type": "object"}),
        ),
        response_schema=schema,
    )

    await collect(backend(session, fake.url), request)

    assert fake.chat_bodies == [
        {
            "model": "fake-model",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [
                {"role": "system", "content": "You control a home."},
                {"role": "user", "content": "Turn on the kitchen light"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {
                                "name": "HassTurnOn",
                                "arguments": '{"name": "kitchen light"}',
                            },
                        }
                    ],
                },
                {
                    "role": "tool",
                    "tool_call_id": "call_1",
                    "content": '{"success": true}',
                },
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "HassTurnOn",
                        "description": "Turns on a device",
                        "parameters": {"type": "object"},
                    },
                },
                {
                    "type": "function",
                    "function": {
                        "name": "GetLiveContext",
                        "parameters": {"type": "object"},
                    },
                },
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": schema},
            },
        }
    ]


CLOSED = {
    "type": "object",
    "properties": {
        "on": {"type": "boolean"},
        "rooms": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["on", "rooms"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("schema", "strict"),
    [
        (CLOSED, True),
        ({**CLOSED, "additionalProperties": True}, False),
        ({**CLOSED, "required": ["on"]}, False),
        ({**CLOSED, "required": "on"}, False),
        (
            {
                **CLOSED,
                "properties": {
                    "rooms": {"type": "array", "items": {"type": "object"}},
                    "on": {"type": "boolean"},
                },
            },
            False,
        ),
        ({"$defs": {"x": {"type": ["object", "null"]}}, "anyOf": []}, False),
        ({"type": "string"}, True),
    ],
)
async def test_strict_only_for_schemas_openai_can_enforce(
    fake: FakeOpenAI,
    session: aiohttp.ClientSession,
    schema: dict[str, Any],
    strict: bool,
) -> None:
    """OpenAI refuses strict mode for a schema with an open object."""
    fake.script(Reply(text='{"on": true, "rooms": []}'))
    request = ChatRequest(ASK.messages, response_schema=schema)

    events = await collect(backend(session, fake.url), request)

    assert text_of(events, TextDelta) == '{"on": true, "rooms": []}'
    json_schema = fake.chat_bodies[0]["response_format"]["json_schema"]
    assert json_schema.get("strict", False) is strict


async def test_service_refusing_stream_options_is_asked_without(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI(refuses_stream_options=True) as server:
        target = backend(session, server.url)
        first = await collect(target)
        second = await collect(target)

    assert text_of(first, TextDelta) == text_of(second, TextDelta) != ""
    assert ["stream_options" in body for body in server.chat_bodies] == [
        True,
        False,
        False,
    ]


async def test_server_that_took_stream_options_keeps_them(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    """A bad request later is not a reason to drop them, nor to ask twice."""
    target = backend(session, fake.url)
    await collect(target)
    fake.script(Reply(status=400, error="too long"))
    with pytest.raises(BadRequest):
        await collect(target)
    await collect(target)

    assert ["stream_options" in body for body in fake.chat_bodies] == [True] * 3


async def test_bad_request_before_stream_options_are_known(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    """Refused with and without them: the request was at fault, not they."""
    fake.script(Reply(status=400, error="too long"), Reply(status=400, error="still"))
    target = backend(session, fake.url)
    with pytest.raises(BadRequest, match="still"):
        await collect(target)
    await collect(target)

    assert ["stream_options" in body for body in fake.chat_bodies] == [
        True,
        False,
        True,
    ]


async def test_no_tools_no_tools_field(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    await collect(backend(session, fake.url))

    assert "tools" not in fake.chat_bodies[0]
    assert "response_format" not in fake.chat_bodies[0]


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_url_with_or_without_v1(
    fake: FakeOpenAI, session: aiohttp.ClientSession, suffix: str
) -> None:
    await collect(backend(session, fake.url + suffix))

    assert [request["path"] for request in fake.requests] == ["/v1/chat/completions"]


@pytest.mark.parametrize("api", ["/v1beta/openai", "/openai/v1", "/api/v2/"])
async def test_url_naming_its_api_version_is_taken_as_it_is(
    session: aiohttp.ClientSession, api: str
) -> None:
    async with FakeOpenAI(api=api.rstrip("/")) as server:
        events = await collect(backend(session, server.url + api))
        assert await backend(session, server.url + api).list_models() == ["fake-model"]

    assert text_of(events, TextDelta) == "Hello from the fake."


async def test_api_key_sent_as_bearer(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key="sk-right") as server:
        await collect(backend(session, server.url, api_key="sk-right"))

    assert server.requests[0]["headers"]["Authorization"] == "Bearer sk-right"


async def test_missing_api_key_fails_auth(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(api_key="sk-right") as server:
        with pytest.raises(AuthFailed, match="HTTP 401"):
            await collect(backend(session, server.url))

    assert "Authorization" not in server.requests[0]["headers"]


async def test_wrong_api_key_fails_auth_without_leaking_it(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI(api_key="sk-right") as server:
        with pytest.raises(AuthFailed) as caught:
            await collect(backend(session, server.url, api_key="sk-wrong-123"))

    assert "sk-wrong-123" not in str(caught.value)
    assert "Incorrect API key provided" in caught.value.message


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        (Reply(status=500, error="boom"), BackendServerError, "HTTP 500: boom"),
        (Reply(status=429, error="slow down"), BackendServerError, "HTTP 429"),
        (Reply(status=403, error="forbidden"), AuthFailed, "HTTP 403"),
        (Reply(status=400, error="bad temperature"), BadRequest, "bad temperature"),
        (
            Reply(status=400, error="the request exceeds the available context size"),
            BadRequest,
            "HTTP 400: the request exceeds",
        ),
        (Reply(status=413, error="too large"), BadRequest, "HTTP 413"),
        (Reply(status=422, error="invalid schema"), BadRequest, "HTTP 422"),
        (Reply(status=405, error="not allowed"), BadResponse, "HTTP 405"),
        (
            Reply(status=400, error="model 'qwen3:8b' not found"),
            ModelNotFound,
            "qwen3:8b",
        ),
        (
            Reply(
                status=400,
                error="registry.ollama.ai/library/gemma3 does not support tools",
            ),
            CapabilityUnsupported,
            "does not support tools",
        ),
    ],
)
async def test_error_statuses(
    fake: FakeOpenAI,
    session: aiohttp.ClientSession,
    reply: Reply,
    error: type[BackendError],
    message: str,
) -> None:
    fake.script(reply, reply)  # a first 400 is retried without stream_options

    with pytest.raises(error, match=message) as caught:
        await collect(backend(session, fake.url))

    assert type(caught.value) is error


async def test_unknown_model_is_model_not_found(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(ModelNotFound, match="HTTP 404: The model `qwen3:8b`"):
        await collect(backend(session, fake.url, model="qwen3:8b"))


async def test_llama_cpp_without_jinja_rejects_tools(
    session: aiohttp.ClientSession,
) -> None:
    request = ChatRequest(ASK.messages, tools=(ToolSpec("HassTurnOn", None, {}),))
    async with FakeOpenAI(llama_cpp=True, jinja=False) as server:
        with pytest.raises(CapabilityUnsupported) as caught:
            await collect(backend(session, server.url), request)

    assert caught.value.capability == "tools"
    assert caught.value.message == "HTTP 500: tools param requires --jinja flag"


async def test_llama_cpp_loading_is_a_server_error(
    llama: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    llama.loading = True

    with pytest.raises(BackendServerError, match="HTTP 503: Loading model"):
        await collect(backend(session, llama.url))
    with pytest.raises(BackendServerError, match="HTTP 503: Loading model"):
        await backend(session, llama.url).probe()


@pytest.mark.parametrize("server", [{}, {"llama_cpp": True}])
async def test_error_inside_the_stream(
    session: aiohttp.ClientSession, server: dict[str, Any]
) -> None:
    async with FakeOpenAI(**server) as fake:
        fake.script(Reply(error="the request exceeds the available context size"))
        with pytest.raises(BackendServerError, match="exceeds the available context"):
            await collect(backend(session, fake.url))


async def test_connection_refused(session: aiohttp.ClientSession) -> None:
    with pytest.raises(BackendUnreachable, match=r"^connection refused$"):
        await collect(backend(session, closed_port_url()))


async def test_connect_timeout_is_unreachable(session: aiohttp.ClientSession) -> None:
    with unanswered_url() as url, pytest.raises(BackendUnreachable, match="timed out"):
        await collect(backend(session, url, connect_timeout=0.2))


async def test_invalid_url_is_unreachable(session: aiohttp.ClientSession) -> None:
    with pytest.raises(BackendUnreachable, match="invalid URL"):
        await collect(backend(session, "gpu-server:8080"))


async def test_tls_to_a_plain_http_server_is_unreachable(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(BackendUnreachable, match="cannot connect"):
        await collect(backend(session, fake.url.replace("http:", "https:")))


async def test_closed_before_answering_is_unreachable(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    # Closed before an answer twice: a stale connection is ruled out.
    fake.script(Reply(drop_after_chunks=0), Reply(drop_after_chunks=0))

    with pytest.raises(BackendUnreachable, match="Server disconnected"):
        await collect(backend(session, fake.url))
    assert len(fake.chat_bodies) == 2


async def test_dropped_mid_stream_is_bad_response(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.script(Reply(text="one two three four", drop_after_chunks=2))
    seen: list[StreamEvent] = []

    with pytest.raises(BadResponse, match="mid-response"):
        await collect_into(seen, backend(session, fake.url))

    assert text_of(seen, TextDelta) == "one two"


async def test_stream_without_done_is_bad_response(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI(streams=False) as server:
        with pytest.raises(BadResponse, match=r"before \[DONE\]"):
            await collect(backend(session, server.url))


@pytest.mark.parametrize(
    "done_line",
    [b"data: [DONE]", None],
    ids=["done-without-newline", "finish-reason-then-close"],
)
async def test_complete_answer_however_the_stream_ends(
    session: aiohttp.ClientSession, done_line: bytes | None
) -> None:
    async with FakeOpenAI(done_line=done_line) as server:
        server.script(Reply(text="All done.", prompt_tokens=5, completion_tokens=2))
        events = await collect(backend(session, server.url))

    assert text_of(events, TextDelta) == "All done."
    assert events[-1] == ServerStats(
        prompt_tokens=5, completion_tokens=2, output_chunks=2
    )


async def test_stream_closed_before_its_finish_reason_is_bad_response(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI(usage_in_stream=False, done_line=None) as server:
        server.final_fields = {"choices": []}  # no finish_reason either
        with pytest.raises(BadResponse, match=r"before \[DONE\]"):
            await collect(backend(session, server.url))


@pytest.mark.parametrize(
    ("server", "final_fields", "stats"),
    [
        ({}, {"usage": {"total_tokens": 12}}, ServerStats()),
        (
            {},
            {"usage": {"prompt_tokens": 7, "completion_tokens": "2"}},
            ServerStats(prompt_tokens=7),
        ),
        ({}, {"usage": "n/a"}, ServerStats()),
        (
            {"llama_cpp": True},
            {"timings": {"prompt_n": 3}},
            ServerStats(prompt_tokens=3),
        ),
        (
            {"llama_cpp": True},
            {"timings": {"predicted_n": 4, "predicted_ms": True, "prompt_ms": -1}},
            ServerStats(completion_tokens=4),
        ),
        ({"llama_cpp": True}, {"timings": [], "usage": None}, ServerStats()),
    ],
)
async def test_usage_and_timings_in_unexpected_shapes_are_unknown(
    session: aiohttp.ClientSession,
    server: dict[str, Any],
    final_fields: dict[str, Any],
    stats: ServerStats,
) -> None:
    async with FakeOpenAI(**server) as fake:
        fake.final_fields = final_fields
        events = await collect(backend(session, fake.url))

    assert text_of(events, TextDelta) == "Hello from the fake."
    assert events[-1] == replace(stats, output_chunks=4)


async def test_malformed_chunk_is_bad_response(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.script(Reply(text="one two three", malformed_after_chunks=1))

    with pytest.raises(BadResponse, match="malformed"):
        await collect(backend(session, fake.url))


MIB = 1024 * 1024


async def test_overlong_stream_line_is_bad_response(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.script(Reply(text="x" * MIB))

    with pytest.raises(BadResponse, match="stream line longer than 1024 KiB"):
        await collect(backend(session, fake.url))


async def test_error_body_is_read_only_up_to_a_limit(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    """A server that sends an endless error body does not hold the request."""
    fake.endless["/v1/chat/completions"] = Endless(
        status=500, head=b'{"error": {"message": "' + b"x" * 100_000
    )

    async with asyncio.timeout(10):  # a bound on a hang, not a measurement
        with pytest.raises(BackendServerError, match="HTTP 500"):
            await collect(backend(session, fake.url))


async def test_model_list_larger_than_a_mebibyte_is_bad_response(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.endless["/v1/models"] = Endless(head=b'{"data": [' + b" " * MIB)

    with pytest.raises(BadResponse, match="larger than 1024 KiB"):
        await backend(session, fake.url, stall_timeout=1.0).list_models()


async def test_never_answering_server_is_cancelled_by_outer_deadline(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.script(Reply(stall_before_first=math.inf))
    target = backend(session, fake.url)

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await collect(target)

    # The connection was released: the next request goes through.
    assert text_of(await collect(target), TextDelta) == "Hello from the fake."


async def test_stall_mid_stream_is_cancelled_by_outer_deadline(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    fake.script(Reply(text="one two three", stall_after_chunks=1))
    seen: list[StreamEvent] = []

    with pytest.raises(TimeoutError):
        # The first chunk, then the stall.
        await deadline_once(
            lambda: seen, collect_into(seen, backend(session, fake.url))
        )

    assert seen == [TextDelta("one")]


@pytest.mark.parametrize(
    "wire", [{"write_size": 3}, {"keepalive": True}, {"crlf": True, "write_size": 1}]
)
async def test_sse_split_across_reads_comments_and_crlf(
    session: aiohttp.ClientSession, wire: dict[str, Any]
) -> None:
    async with FakeOpenAI(**wire) as server:
        server.script(Reply(thinking="Hmm…", text="Grüße!", tool_calls=[LIGHT_ON]))
        events = await collect(backend(session, server.url))

    assert text_of(events, ReasoningDelta) == "Hmm…"
    assert text_of(events, TextDelta) == "Grüße!"
    assert ToolCallDelta((ToolCall("call_fake0", "HassTurnOn", LIGHT),)) in events


@pytest.mark.parametrize(
    "server", [{}, {"llama_cpp": True}, {"litellm": True}], ids=str
)
async def test_probe_and_model_check_cost_one_models_request(
    session: aiohttp.ClientSession, server: dict[str, Any]
) -> None:
    """Never /health: LiteLLM's runs a completion on every model."""
    async with FakeOpenAI(**server) as fake:
        target = backend(session, fake.url)
        assert await target.probe() == ProbeResult()
        await target.check_model()
        assert [request["path"] for request in fake.requests] == ["/v1/models"]

        # Without a probe before it, the check asks by itself.
        await target.check_model()
        assert await target.list_models() == ["fake-model"]
        assert len(fake.requests) == 3


async def test_model_check(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(models=("qwen3:8b",)) as fake:
        await backend(session, fake.url, model="qwen3:8b").check_model()
        with pytest.raises(ModelNotFound, match="'llama3'"):
            await backend(session, fake.url, model="llama3").check_model()
    async with FakeOpenAI(models=()) as fake:  # serves whatever it loaded
        await backend(session, fake.url, model="llama3").check_model()


async def test_llama_cpp_takes_any_model_name(session: aiohttp.ClientSession) -> None:
    """llama-server lists its model by path and answers under any name."""
    async with FakeOpenAI(llama_cpp=True, models=("/models/qwen3-8b.gguf",)) as fake:
        target = backend(session, fake.url, model="qwen3")
        await target.check_model()
        await target.probe()
        await target.check_model()


async def test_probe_of_a_url_without_the_api_is_bad_response(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(BadResponse, match="HTTP 404"):
        await backend(session, fake.url + "/elsewhere").probe()


async def test_probe_of_a_slow_server_times_out(
    session: aiohttp.ClientSession,
) -> None:
    async with FakeOpenAI() as server:
        server.metadata_delay = math.inf
        with pytest.raises(BackendTimeout, match="no answer in time"):
            await backend(session, server.url, stall_timeout=0.2).probe()


async def test_probe_connection_refused(session: aiohttp.ClientSession) -> None:
    with pytest.raises(BackendUnreachable, match="connection refused"):
        await backend(session, closed_port_url()).probe()


async def test_list_models(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAI(models=("qwen3:8b", "llama3.2:3b"), api_key="k") as server:
        models = await backend(session, server.url, api_key="k").list_models()

    assert models == ["qwen3:8b", "llama3.2:3b"]


@pytest.mark.parametrize("answer", ["<html>Open WebUI</html>", '{"models": []}'])
async def test_list_models_unexpected_answer(
    fake: FakeOpenAI, session: aiohttp.ClientSession, answer: str
) -> None:
    fake.models_body = answer

    with pytest.raises(BadResponse, match="/v1/models"):
        await backend(session, fake.url).list_models()


async def test_model_details_unknown_capabilities(
    fake: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    assert await backend(session, fake.url).model_details() == ModelDetails(None)
    assert fake.requests == []
