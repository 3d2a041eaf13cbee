"""The openai backend against llama.cpp's own server (llama-server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
import json
import time
import urllib.request

import aiohttp
import pytest

from custom_components.llm_router.engine.models import (
    BackendConfig,
    BackendKind,
    ChatMessage,
    ChatRequest,
    ServerStats,
    StreamEvent,
    TextDelta,
)
from custom_components.llm_router.engine.openai import OpenAIBackend
from custom_components.llm_router.engine.reasoning import ReasoningSplitter
from custom_components.llm_router.engine.stats import StreamClock, summarize
from tests.e2e.servers import LLM_MODEL, Server

pytestmark = pytest.mark.e2e

QUESTION = ChatRequest(
    messages=(
        ChatMessage("system", "You are a helpful assistant. Answer briefly."),
        ChatMessage("user", "What colour is the sky on a clear day?"),
    )
)


@pytest.fixture
async def backend(llm_server: Server) -> AsyncIterator[OpenAIBackend]:
    """The openai backend pointed at the real server."""
    config = BackendConfig(
        name="Pi", kind=BackendKind.OPENAI, url=llm_server.url, model=LLM_MODEL
    )
    async with aiohttp.ClientSession() as session:
        yield OpenAIBackend(config, session)


async def timed_chat(
    backend: OpenAIBackend, request: ChatRequest = QUESTION
) -> tuple[list[StreamEvent], StreamClock]:
    """Stream one completion, noting when each piece of text arrived."""
    clock = StreamClock(started=time.monotonic())
    events: list[StreamEvent] = []
    async for event in backend.chat(request):
        if isinstance(event, TextDelta):
            clock.token(time.monotonic())
        events.append(event)
    return events, clock


async def test_lists_and_probes_the_served_model(backend: OpenAIBackend) -> None:
    assert await backend.list_models() == [LLM_MODEL]
    await backend.probe()


async def test_streams_an_answer_and_measures_speed(backend: OpenAIBackend) -> None:
    events, clock = await timed_chat(backend)
    *deltas, last = events

    assert isinstance(last, ServerStats)
    assert all(isinstance(delta, TextDelta) for delta in deltas)
    assert len(deltas) > 1  # streamed piece by piece, not in one block
    assert "".join(d.text for d in deltas if isinstance(d, TextDelta)).strip()
    # llama-server's last chunk carries usage and its timings: the counts
    # and speeds are the server's own.
    assert last.output_chunks == len(deltas)
    stats = summarize(last, clock, time.monotonic())
    assert stats.server_reported
    assert stats.completion_tokens is not None
    assert stats.completion_tokens > 0
    assert stats.prompt_tokens is not None
    assert stats.prompt_tokens > 0
    assert stats.generation_speed is not None
    assert stats.generation_speed > 0
    assert stats.prompt_speed is not None
    assert stats.prompt_speed > 0
    assert stats.time_to_first_token is not None


@pytest.mark.parametrize("expect_reasoning", [False, True])
async def test_reasoning_splitter_passes_a_plain_answer_through(
    backend: OpenAIBackend, expect_reasoning: bool
) -> None:
    events, _ = await timed_chat(backend)
    pieces = [event.text for event in events if isinstance(event, TextDelta)]

    splitter = ReasoningSplitter(expect_reasoning=expect_reasoning)
    splits = [splitter.feed(piece) for piece in pieces] + [splitter.flush()]

    assert "".join(split.reasoning for split in splits) == ""
    assert "".join(split.answer for split in splits) == "".join(pieces).lstrip()


async def test_an_answer_from_the_prompt_cache_measures_no_prompt_speed(
    backend: OpenAIBackend,
) -> None:
    # The same prompt twice: llama-server's cache holds all of it the second
    # time, and the tokens it processes again time nothing worth a speed.
    first, second = [(await timed_chat(backend))[0][-1] for _ in range(2)]

    assert isinstance(first, ServerStats)
    assert isinstance(second, ServerStats)
    assert first.prompt_tokens is not None
    assert second.prompt_cached_tokens is not None
    assert second.prompt_tokens is not None
    assert second.prompt_cached_tokens > second.prompt_tokens
    assert second.prompt_cached_tokens + second.prompt_tokens == (
        (first.prompt_cached_tokens or 0) + first.prompt_tokens
    )
    now = time.monotonic()
    assert summarize(second, StreamClock(started=now), now).prompt_speed is None


def test_health_says_ok_as_the_fake_does(llm_server: Server) -> None:
    """GET /health, which the harness waits for: {"status": "ok"} once loaded."""
    with urllib.request.urlopen(llm_server.url + "/health", timeout=10) as response:
        assert response.status == 200
        assert json.loads(response.read()) == {"status": "ok"}
