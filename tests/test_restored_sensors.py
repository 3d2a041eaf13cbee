"""Measurements survive reloads and restarts until the next one."""

from __future__ import annotations

from homeassistant.components import conversation
from homeassistant.core import Context, HomeAssistant, State
from pytest_homeassistant_custom_component.common import (
    mock_restore_cache_with_extra_data,
)

from tests.conftest import backend, entities_updated, router_entry, setup_router
from tests.fakes.base import Reply
from tests.fakes.ollama_server import FakeOllama

MEASUREMENTS = (
    "sensor.pi_generation_speed",
    "sensor.pi_prompt_speed",
    "sensor.pi_time_to_first_token",
    "sensor.pi_response_time",
    "sensor.llm_router_last_backend",
)


def states(hass: HomeAssistant) -> dict[str, str]:
    return {
        entity_id: state.state
        for entity_id in MEASUREMENTS
        if (state := hass.states.get(entity_id)) is not None
    }


async def test_measurements_survive_an_option_change(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    entry = await setup_router(
        hass, router_entry(backend("Pi", "ollama", ollama.url, "llama3.2", 1))
    )
    ollama.script(Reply(completion_tokens=40, generation_seconds=2.0))
    await conversation.async_converse(
        hass, "Hello", None, Context(), agent_id="conversation.llm_router"
    )
    await entities_updated(hass)
    measured = states(hass)
    assert measured["sensor.pi_generation_speed"] == "20.0"
    assert measured["sensor.llm_router_last_backend"] == "Pi"

    hass.config_entries.async_update_entry(
        entry, options={**entry.options, "max_history": 3}
    )  # reloads the router
    await hass.async_block_till_done()
    assert entry.runtime_data.router.states["Pi"].last_stats is None
    assert states(hass) == measured


async def test_measurements_survive_a_restart(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    mock_restore_cache_with_extra_data(
        hass,
        [
            (
                State("sensor.pi_generation_speed", "8.5"),
                {"native_value": 8.5, "native_unit_of_measurement": "tok/s"},
            ),
            (
                State("sensor.pi_time_to_first_token", "250"),
                {"native_value": 250, "native_unit_of_measurement": "ms"},
            ),
            (
                State("sensor.llm_router_last_backend", "Pi"),
                {"native_value": "Pi", "native_unit_of_measurement": None},
            ),
        ],
    )
    entry = await setup_router(
        hass, router_entry(backend("Pi", "ollama", ollama.url, "llama3.2", 1))
    )
    restored = states(hass)
    assert restored["sensor.pi_generation_speed"] == "8.5"
    assert restored["sensor.pi_time_to_first_token"] == "250"
    assert restored["sensor.llm_router_last_backend"] == "Pi"
    assert restored["sensor.pi_response_time"] == "unknown"
    assert entry.runtime_data.last_backend == "Pi"

    ollama.script(Reply(completion_tokens=40, generation_seconds=4.0))
    await conversation.async_converse(
        hass, "Hello", None, Context(), agent_id="conversation.llm_router"
    )
    await entities_updated(hass)
    assert hass.states.get("sensor.pi_generation_speed").state == "10.0"
