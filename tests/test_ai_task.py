"""The AI Task entity: routed generation, structured output."""

from __future__ import annotations

import json

from homeassistant.components import ai_task
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
import probatio
import pytest

from tests.conftest import backend, gpu_and_pi, router_entry, setup_router
from tests.fakes.base import Reply, closed_port_url
from tests.fakes.ollama_server import FakeOllama

ENTITY = "ai_task.llm_router_ai_task"
BRIEFING = probatio.Schema(
    {probatio.Required("greeting"): str, probatio.Required("reminders"): [str]}
)


@pytest.fixture
async def routed(hass: HomeAssistant, ollama: FakeOllama) -> FakeOllama:
    await setup_router(hass, gpu_and_pi(ollama.url))
    return ollama


async def test_generate_text_with_fallback(
    hass: HomeAssistant, routed: FakeOllama
) -> None:
    routed.script(Reply(text="Good morning!"))
    result = await ai_task.async_generate_data(
        hass, task_name="greet", entity_id=ENTITY, instructions="Say good morning."
    )
    assert result.data == "Good morning!"
    assert hass.states.get("sensor.llm_router_last_backend").state == "Pi"


@pytest.mark.parametrize("wrap", ["{}", "```json\n{}\n```"])
async def test_structured_output(
    hass: HomeAssistant, routed: FakeOllama, wrap: str
) -> None:
    answer = json.dumps({"greeting": "Morning!", "reminders": ["Bins out"]})
    routed.script(Reply(text=wrap.format(answer) if wrap != "{}" else answer))
    result = await ai_task.async_generate_data(
        hass,
        task_name="briefing",
        entity_id=ENTITY,
        instructions="Morning briefing.",
        structure=BRIEFING,
    )
    assert result.data == {"greeting": "Morning!", "reminders": ["Bins out"]}
    schema = routed.chat_bodies[0]["format"]
    assert schema["type"] == "object"
    assert set(schema["properties"]) == {"greeting", "reminders"}


@pytest.mark.parametrize(
    "text", ["Here is your briefing: Morning!", json.dumps({"greeting": 3})]
)
async def test_invalid_structured_output(
    hass: HomeAssistant, routed: FakeOllama, text: str
) -> None:
    routed.script(Reply(text=text))
    with pytest.raises(
        HomeAssistantError, match="not valid JSON of the requested structure"
    ):
        await ai_task.async_generate_data(
            hass,
            task_name="briefing",
            entity_id=ENTITY,
            instructions="Morning briefing.",
            structure=BRIEFING,
        )


async def test_every_backend_down(hass: HomeAssistant) -> None:
    await setup_router(
        hass, router_entry(backend("Pi", "ollama", closed_port_url(), "llama3.2", 1))
    )
    with pytest.raises(HomeAssistantError, match="None of the language model servers"):
        await ai_task.async_generate_data(
            hass, task_name="greet", entity_id=ENTITY, instructions="Say hi."
        )


async def test_answer_that_breaks_off_is_asked_again_elsewhere(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    """Nobody heard the partial answer, so the next backend answers in full."""
    async with FakeOllama() as gpu:
        await setup_router(hass, gpu_and_pi(ollama.url, gpu.url, gpu_kind="ollama"))
        gpu.script(Reply(text="Good morning, the bins", drop_after_chunks=2))
        ollama.script(Reply(text="Good morning! Bins out today."))
        result = await ai_task.async_generate_data(
            hass, task_name="greet", entity_id=ENTITY, instructions="Say good morning."
        )
    assert result.data == "Good morning! Bins out today."
    assert hass.states.get("sensor.llm_router_last_backend").state == "Pi"
