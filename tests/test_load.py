"""Load: 50 concurrent conversation turns, and an event loop that never blocks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

from homeassistant.components import conversation
from homeassistant.core import Context, HomeAssistant

from tests.conftest import backend, probe_backends, router_entry, setup_router
from tests.fakes.base import Reply
from tests.fakes.openai_server import FakeOpenAI

TURNS = 50
MAX_LOOP_LAG = 0.050
TICK = 0.002


@dataclass
class LoopLag:
    """The largest delay between a ticker's scheduled and actual wake-ups."""

    worst: float = 0.0
    ticks: int = 0


@asynccontextmanager
async def measured_loop_lag() -> AsyncIterator[LoopLag]:
    """Measure the event loop's lag while the block runs.

    Without asyncio's debug mode, which the test harness turns on: it
    records a stack for every callback, a cost Home Assistant does not have.
    """
    loop = asyncio.get_running_loop()
    debug = loop.get_debug()
    loop.set_debug(False)
    lag = LoopLag()

    async def tick() -> None:
        while True:
            scheduled = loop.time() + TICK
            await asyncio.sleep(TICK)
            lag.worst = max(lag.worst, loop.time() - scheduled)
            lag.ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        yield lag
    finally:
        ticker.cancel()
        with suppress(asyncio.CancelledError):
            await ticker
        loop.set_debug(debug)


async def test_fifty_concurrent_turns(hass: HomeAssistant) -> None:
    async with FakeOpenAI() as server:
        server.default_reply = Reply(text="The lamp is on.")
        gpu = backend(
            "GPU server", "openai", server.url, "fake-model", 1, max_parallel=TURNS
        )
        entry = await setup_router(hass, router_entry(gpu))
        await probe_backends(hass, entry)

        async def turn(number: int) -> str:
            result = await conversation.async_converse(
                hass,
                f"Is lamp {number} on?",
                None,
                Context(),
                agent_id="conversation.llm_router",
            )
            return str(result.response.speech["plain"]["speech"])

        await turn(0)  # the first turn loads what Home Assistant loads once
        async with measured_loop_lag() as lag:
            answers = await asyncio.gather(*(turn(n) for n in range(1, TURNS + 1)))

    assert answers == ["The lamp is on."] * TURNS
    assert len(server.chat_bodies) == TURNS + 1
    assert lag.ticks > 0
    print(f"max loop lag {lag.worst * 1000:.1f} ms over {lag.ticks} ticks")
    assert lag.worst < MAX_LOOP_LAG
