"""State writes per turn: once per entity whose shown state changed, no more."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from homeassistant.components import conversation
from homeassistant.const import EVENT_STATE_CHANGED, EVENT_STATE_REPORTED
from homeassistant.core import Context, Event, HomeAssistant, callback

from custom_components.llm_router.engine.errors import BackendUnreachable
from custom_components.llm_router.updates import UPDATE_INTERVAL
from tests.conftest import (
    backend,
    entities_updated,
    probe_backends,
    router_entry,
    setup_router,
)
from tests.fakes.base import Reply
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI

AGENT = "conversation.llm_router"
PREDICTION = "sensor.gpu_server_predicted_time_to_first_answer_word"


@contextmanager
def state_writes(hass: HomeAssistant) -> Iterator[tuple[Counter[str], Counter[str]]]:
    """Count writes per entity: those that changed the state, and the rest."""
    changed: Counter[str] = Counter()
    unchanged: Counter[str] = Counter()

    @callback
    def count(event: Event[dict[str, str]]) -> None:
        into = changed if event.event_type == EVENT_STATE_CHANGED else unchanged
        into[event.data["entity_id"]] += 1

    @callback
    def every(_: object) -> bool:
        return True  # state_reported is listened to only with a filter

    removers = [
        hass.bus.async_listen(event_type, count, every)
        for event_type in (EVENT_STATE_CHANGED, EVENT_STATE_REPORTED)
    ]
    try:
        yield changed, unchanged
    finally:
        for remove in removers:
            remove()


async def ask(hass: HomeAssistant) -> None:
    await conversation.async_converse(
        hass, "Is the lamp on?", None, Context(), agent_id=AGENT
    )


async def two_backends(hass: HomeAssistant, gpu_url: str, pi_url: str) -> None:
    entry = await setup_router(
        hass,
        router_entry(
            backend("GPU server", "openai", gpu_url, "fake-model", 1),
            backend("Pi", "ollama", pi_url, "llama3.2", 2),
        ),
    )
    await probe_backends(hass, entry)


async def test_a_turn_writes_only_what_it_changed_once(
    hass: HomeAssistant, openai: FakeOpenAI, ollama: FakeOllama
) -> None:
    await two_backends(hass, openai.url, ollama.url)
    await ask(hass)
    await entities_updated(hass)
    with state_writes(hass) as (changed, unchanged):
        await ask(hass)
        await entities_updated(hass)
    # The GPU server answered: its measurements and request count are new.
    assert changed["sensor.gpu_server_requests_sent"] == 1
    assert changed["sensor.gpu_server_response_time"] == 1
    assert max(changed.values()) == 1
    # Nothing the same as before was written again, and the Pi, which took
    # no part, wrote nothing.
    assert not unchanged
    assert not [
        entity
        for entity in changed
        if entity.startswith(("sensor.pi_", "binary_sensor.pi_"))
    ]
    # Same backend as last time, no fallback: the router's sensors stay.
    assert "sensor.llm_router_last_backend" not in changed
    assert "sensor.llm_router_fallbacks" not in changed


async def test_a_turn_after_a_quiet_second_shows_at_once(
    hass: HomeAssistant, openai: FakeOpenAI, ollama: FakeOllama
) -> None:
    await two_backends(hass, openai.url, ollama.url)
    await entities_updated(hass)
    await asyncio.sleep(UPDATE_INTERVAL)  # at least a quiet second, on any machine
    await ask(hass)
    await hass.async_block_till_done()
    assert hass.states.get("sensor.gpu_server_requests_sent").state == "1"


async def test_a_burst_of_turns_writes_each_sensor_once_more_at_most(
    hass: HomeAssistant, openai: FakeOpenAI, ollama: FakeOllama
) -> None:
    await two_backends(hass, openai.url, ollama.url)
    entry = hass.config_entries.async_entries("llm_router")[0]
    router = entry.runtime_data.router
    with state_writes(hass) as (changed, unchanged):
        for _ in range(5):
            await ask(hass)
        await hass.async_block_till_done()
        # Within the second after the probes' update: nothing shown yet ...
        assert not unchanged
        assert "sensor.gpu_server_requests_sent" not in changed
        # ... then the last turn's figures, once.
        await entities_updated(hass)
    assert changed["sensor.gpu_server_requests_sent"] == 1
    assert changed[PREDICTION] == 1
    assert hass.states.get("sensor.gpu_server_requests_sent").state == "5"
    state = hass.states.get(PREDICTION)
    assert state is not None
    forecast = router.forecast("GPU server")
    assert float(state.state) == round(forecast.total * 1000, 1)
    assert state.attributes["prompt"] == round(forecast.prompt, 3)


async def test_a_failure_in_a_burst_shows_at_once(
    hass: HomeAssistant, openai: FakeOpenAI, ollama: FakeOllama
) -> None:
    await two_backends(hass, openai.url, ollama.url)
    await ask(hass)  # just updated: the next answer waits for the second's end
    openai.script(Reply(status=500, error="overloaded"))
    await ask(hass)  # the GPU server fails, the Pi answers
    await hass.async_block_till_done()
    assert hass.states.get("sensor.gpu_server_failed_requests").state == "1"
    assert hass.states.get("sensor.gpu_server_last_error").state != "none"


async def test_a_prediction_shows_a_backend_going_down_at_once(
    hass: HomeAssistant, openai: FakeOpenAI, ollama: FakeOllama
) -> None:
    await two_backends(hass, openai.url, ollama.url)
    await ask(hass)  # predicted just now: the next prediction waits a second
    router = hass.config_entries.async_entries("llm_router")[0].runtime_data.router
    gpu = router.states["GPU server"]
    for _ in range(gpu.breaker.failure_threshold):
        gpu.breaker.record_failure(BackendUnreachable("connection refused"))
    router.notify({"GPU server"})
    state = hass.states.get(PREDICTION)
    assert state is not None
    assert state.state == "unavailable"
