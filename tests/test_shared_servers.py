"""Routers on one server share its max_parallel and its circuit breaker."""

from __future__ import annotations

import asyncio
import math
from typing import Any

from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.llm_router.engine.models import ChatMessage, ChatRequest
from tests.conftest import backend, probe_backends, router_entry, setup_router, until
from tests.fakes.base import Reply
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI


async def two_routers(
    hass: HomeAssistant, *backends: dict[str, Any]
) -> tuple[MockConfigEntry, MockConfigEntry]:
    first = await setup_router(hass, router_entry(*backends))
    second = await setup_router(hass, router_entry(*backends, entry_id="second"))
    await probe_backends(hass, first)
    await probe_backends(hass, second)
    return first, second


async def ask(hass: HomeAssistant, router: MockConfigEntry) -> dict[str, Any]:
    response = await hass.services.async_call(
        "llm_router",
        "ask",
        {"text": "Hi", "config_entry_id": router.entry_id},
        blocking=True,
        return_response=True,
    )
    assert response is not None
    return dict(response)


async def test_routers_queue_for_the_same_server(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    first, second = await two_routers(
        hass, backend("Pi", "ollama", ollama.url, "llama3.2", 1, max_parallel=1)
    )
    ollama.script(Reply(stall_before_first=math.inf))

    async def hold_the_slot() -> None:
        request = ChatRequest(messages=(ChatMessage("user", "Take your time"),))
        async for _event in first.runtime_data.router.route(request):
            pass

    holder = asyncio.create_task(hold_the_slot())
    try:
        await until(lambda: len(ollama.chat_bodies) == 1)
        waiting = asyncio.create_task(ask(hass, second))
        await until(lambda: second.runtime_data.router.states["Pi"].waiting == 1)
        assert len(ollama.chat_bodies) == 1  # the second router waits its turn
    finally:
        holder.cancel()
    response = await waiting
    assert response["response"] == "Hello from the fake."
    assert len(ollama.chat_bodies) == 2


async def test_a_failing_server_is_skipped_by_every_router(
    hass: HomeAssistant, ollama: FakeOllama, openai: FakeOpenAI
) -> None:
    first, second = await two_routers(
        hass,
        backend("GPU server", "openai", openai.url, "fake-model", 1),
        backend("Pi", "ollama", ollama.url, "llama3.2", 2),
    )
    failing = Reply(status=500, error="CUDA out of memory")
    openai.script(failing, failing, failing)
    for _ in range(3):
        assert (await ask(hass, first))["backend"] == "Pi"

    response = await ask(hass, second)
    assert response["backend"] == "Pi"
    assert response["attempts"][0]["outcome"] == "circuit_open"
    assert len(openai.chat_bodies) == 3
