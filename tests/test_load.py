"""Load: 50 concurrent conversation turns, nothing blocking the event loop.

What holds on any machine is asserted: every answer, the request count, no
task left behind, and no blocking call, detected as Home Assistant detects
one (block_async_io's loop protection, which a real Home Assistant enables
at start, reporting us by name; tests/reports.py fails the test on it), with
asyncio's debug mode on as the test harness sets it. How long the loop lags
meanwhile depends on the machine: bench/loop_lag.py measures it, as a ratio
to Home Assistant's own agent in the same run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from homeassistant import block_async_io
from homeassistant.components import conversation
from homeassistant.core import Context, HomeAssistant
import pytest

from tests.conftest import backend, probe_backends, router_entry, setup_router
from tests.fakes.base import Reply
from tests.fakes.openai_server import FakeOpenAI
from tests.reports import IntegrationReports

TURNS = 50
INTEGRATION = Path(__file__).parents[1] / "custom_components" / "llm_router"


@pytest.fixture
def loop_protection(
    disable_block_async_io: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Home Assistant's detection of blocking calls in the event loop.

    The test plugin leaves it off, and under tests it skips file, import and
    SSL calls: here it checks all that a real Home Assistant checks.
    disable_block_async_io restores the patched functions afterwards.
    """
    monkeypatch.setattr(block_async_io, "_IN_TESTS", False)
    block_async_io.enable()


def created_by_us(task: asyncio.Task[object]) -> bool:
    """Whether our code created the task (debug mode records where)."""
    created_at = task._source_traceback or ()
    return any(str(INTEGRATION) in frame.filename for frame in created_at)


async def converse(hass: HomeAssistant, text: str) -> str:
    """One turn through the router's agent; the spoken answer."""
    result = await conversation.async_converse(
        hass, text, None, Context(), agent_id="conversation.llm_router"
    )
    return str(result.response.speech["plain"]["speech"])


@pytest.mark.usefixtures("loop_protection")
async def test_fifty_concurrent_turns(hass: HomeAssistant) -> None:
    assert asyncio.get_running_loop().get_debug()
    async with FakeOpenAI() as server:
        server.default_reply = Reply(text="The lamp is on.")
        gpu = backend(
            "GPU server", "openai", server.url, "fake-model", 1, max_parallel=TURNS
        )
        entry = await setup_router(hass, router_entry(gpu))
        await probe_backends(hass, entry)
        await converse(hass, "Is lamp 0 on?")  # loads what loads once
        before = asyncio.all_tasks()

        answers = await asyncio.gather(
            *(converse(hass, f"Is lamp {n} on?") for n in range(1, TURNS + 1))
        )
        await hass.async_block_till_done()
        new_tasks = asyncio.all_tasks() - before
        left_behind = [task for task in new_tasks if created_by_us(task)]

    assert answers == ["The lamp is on."] * TURNS
    assert len(server.chat_bodies) == TURNS + 1
    assert [f"Is lamp {n} on?" for n in range(TURNS + 1)] == sorted(
        (body["messages"][-1]["content"] for body in server.chat_bodies),
        key=lambda text: int(text.split()[2]),
    )
    assert left_behind == []


@pytest.mark.usefixtures("loop_protection")
async def test_loop_protection_reports_a_blocking_call_of_ours(
    hass: HomeAssistant, integration_reports: IntegrationReports
) -> None:
    """The check above can fail: I/O in the loop from our code is reported."""
    blocking = compile(
        "open('/dev/null').close()", str(INTEGRATION / "blocking.py"), "exec"
    )

    exec(blocking, {})

    assert len(integration_reports.reports) == 1
    assert "Detected blocking call to open" in integration_reports.reports[0]
    integration_reports.reports.clear()
