"""Closing a router (reload, removal, shutdown) against the loopback fakes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
import math

import aiohttp
import pytest

from custom_components.llm_router.engine.errors import ErrorKind
from custom_components.llm_router.engine.models import (
    BackendConfig,
    BackendKind,
    ChatMessage,
    ChatRequest,
    TextDelta,
)
from custom_components.llm_router.engine.ollama import OllamaBackend
from custom_components.llm_router.engine.openai import OpenAIBackend
from custom_components.llm_router.engine.outcomes import (
    AllBackendsFailed,
    Interrupted,
    RouterEvent,
)
from custom_components.llm_router.engine.router import Router
from custom_components.llm_router.engine.servers import Server
from custom_components.llm_router.engine.settings import RouterSettings
from custom_components.llm_router.engine.turn import Turn
from tests.conftest import until
from tests.fakes.base import Reply
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI

ASK = ChatRequest(messages=(ChatMessage("user", "Is the door locked?"),))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def run(turn: Turn) -> tuple[list[RouterEvent], BaseException | None]:
    events: list[RouterEvent] = []
    try:
        async for event in turn:
            events.append(event)
    except AllBackendsFailed as err:
        return events, err
    return events, None


async def test_close_ends_turns_in_flight_and_schedules_nothing_after(
    session: aiohttp.ClientSession,
) -> None:
    """A reload while a turn waits: the old router must not probe forever."""
    async with FakeOllama() as pi_server, FakeOpenAI() as gpu_server:
        pi_server.script(Reply(stall_before_first=math.inf))
        gpu_server.script(Reply(text="It is locked.", stall_after_chunks=1))
        pi = OllamaBackend(
            BackendConfig("Pi", BackendKind.OLLAMA, pi_server.url, "llama3.2"),
            session,
        )
        gpu = OpenAIBackend(
            BackendConfig("GPU", BackendKind.OPENAI, gpu_server.url, "fake-model"),
            session,
        )
        router = Router(
            [pi, gpu], settings=RouterSettings(failure_threshold=1, cooldown=0.01)
        )
        waiting = router.route(ASK, backend="Pi")  # no first token yet
        queued = router.route(ASK, backend="Pi")  # for the Pi's one slot
        speaking = router.route(ASK, backend="GPU")  # stalled mid-answer
        tasks = [asyncio.create_task(run(turn)) for turn in (waiting, queued, speaking)]
        await until(lambda: pi_server.chat_bodies and gpu_server.chat_bodies)
        await until(lambda: router.states["Pi"].waiting == 1)

        async with asyncio.timeout(5):  # a bound on a hang, not a measurement
            await router.close()
            outcomes = await asyncio.gather(*tasks)

        for events, error in outcomes[:2]:
            assert events == []
            assert isinstance(error, AllBackendsFailed)
            assert [a.error_kind for a in error.attempts] == [ErrorKind.CLOSED]
        events, error = outcomes[2]
        assert error is None
        assert events[0] == TextDelta("It")
        assert isinstance(events[-1], Interrupted)
        assert events[-1].error.kind is ErrorKind.CLOSED

        # Probed after the close, a backend fails; nothing is scheduled.
        assert not await router.async_probe("Pi")
        router.request_probe("GPU")
        assert not router._cooldowns
        assert not router._probes
        requests = len(pi_server.requests) + len(gpu_server.requests)
        await asyncio.sleep(0.05)  # several cooldowns
        assert len(pi_server.requests) + len(gpu_server.requests) == requests
        assert all(state.slots._value == 1 for state in router.states.values())


async def test_closing_one_router_leaves_a_shared_server_healthy(
    session: aiohttp.ClientSession,
) -> None:
    """A reload of one router is no failure of the server other routers use."""
    async with FakeOllama() as pi_server:
        pi_server.script(Reply(stall_before_first=math.inf))
        config = BackendConfig("Pi", BackendKind.OLLAMA, pi_server.url, "llama3.2")
        shared = Server.create(max_parallel=2, failure_threshold=1)
        closing = Router([OllamaBackend(config, session)], servers={"Pi": shared})
        staying = Router([OllamaBackend(config, session)], servers={"Pi": shared})
        task = asyncio.create_task(run(closing.route(ASK)))
        await until(lambda: pi_server.chat_bodies)

        await closing.close()
        _, error = await task
        assert not await closing.async_probe("Pi")

        assert isinstance(error, AllBackendsFailed)
        assert staying.states["Pi"].breaker.allows()
        assert shared.breaker.consecutive_failures == 0
        await staying.close()
