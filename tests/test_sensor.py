"""Telemetry entities: values, transitions, restored counters."""

from __future__ import annotations

from datetime import timedelta

from homeassistant.components import conversation
from homeassistant.core import Context, HomeAssistant, State
from homeassistant.helpers import device_registry as dr, entity_registry as er
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import (
    async_fire_time_changed,
    mock_restore_cache_with_extra_data,
)
from syrupy.assertion import SnapshotAssertion

from tests.conftest import (
    backend,
    entities_updated,
    gpu_and_pi,
    probe_backends,
    router_entry,
    setup_router,
    until,
)
from tests.fakes.base import Reply
from tests.fakes.ollama_server import FakeOllama, RunningModel
from tests.fakes.openai_server import FakeOpenAI

AGENT = "conversation.llm_router"


async def ask(hass: HomeAssistant, text: str) -> None:
    await conversation.async_converse(hass, text, None, Context(), agent_id=AGENT)


def value(hass: HomeAssistant, entity_id: str) -> str:
    state = hass.states.get(entity_id)
    assert state is not None, entity_id
    return state.state


@pytest.fixture
async def pi_server() -> FakeOllama:
    async with FakeOllama(
        version="0.12.6",
        running=[RunningModel("llama3.2:latest", size_vram=2_019_000_000)],
    ) as server:
        yield server  # type: ignore[misc]


async def test_entities(
    hass: HomeAssistant,
    entity_registry: er.EntityRegistry,
    device_registry: dr.DeviceRegistry,
    snapshot: SnapshotAssertion,
    pi_server: FakeOllama,
    openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    entry = await setup_router(hass, gpu_and_pi(pi_server.url, openai.url))
    await probe_backends(hass, entry)
    entries = sorted(
        er.async_entries_for_config_entry(entity_registry, entry.entry_id),
        key=lambda e: e.entity_id,
    )
    for entity_entry in entries:
        assert entity_entry == snapshot(name=f"{entity_entry.entity_id}-entry")
        assert hass.states.get(entity_entry.entity_id) == snapshot(
            name=f"{entity_entry.entity_id}-state"
        )
    pi_device = device_registry.async_get_device_by_identifier(
        ("llm_router", "pi"), entry.entry_id
    )
    assert pi_device is not None
    assert (pi_device.name, pi_device.model, pi_device.manufacturer) == (
        "Pi",
        "llama3.2",
        "Ollama",
    )
    assert pi_device.sw_version == "0.12.6"
    assert pi_device.configuration_url == pi_server.url
    assert (pi_device.config_entry_id, pi_device.config_subentry_id) == (
        entry.entry_id,
        "pi",
    )
    router = device_registry.async_get_device_by_identifier(
        ("llm_router", "router"), entry.entry_id
    )
    assert router is not None
    assert pi_device.via_device_id == router.id
    # The router's device exists before any backend's names it as its hub.
    assert router.created_at < pi_device.created_at
    assert "non existing `via_device`" not in caplog.text


async def test_values_after_a_fallback_turn(
    hass: HomeAssistant, pi_server: FakeOllama
) -> None:
    entry = await setup_router(hass, gpu_and_pi(pi_server.url))
    await probe_backends(hass, entry)
    # Known server-side numbers: 93 tokens in 10.7 s, 412 prompt tokens in 0.8 s.
    pi_server.script(
        Reply(
            text="The hall light is off.",
            completion_tokens=93,
            generation_seconds=10.7,
            prompt_tokens=412,
            prompt_seconds=0.8,
        )
    )
    await ask(hass, "Is the hall light on?")
    await entities_updated(hass)
    eval_rate = 93 / 10.7
    generation = float(value(hass, "sensor.pi_generation_speed"))
    assert generation == pytest.approx(eval_rate, rel=0.01)
    assert float(value(hass, "sensor.pi_prompt_speed")) == pytest.approx(
        412 / 0.8, rel=0.01
    )
    assert float(value(hass, "sensor.pi_time_to_first_token")) > 0
    assert float(value(hass, "sensor.pi_time_to_first_answer_word")) > 0
    assert float(value(hass, "sensor.pi_response_time")) > 0
    # Learnt from the answer: 412 prompt tokens at 515 tok/s for a short request.
    predicted = hass.states.get("sensor.pi_predicted_time_to_first_answer_word")
    assert predicted is not None
    assert float(predicted.state) > 0
    assert predicted.attributes["prompt"] == pytest.approx(13 / (412 / 0.8), abs=0.01)
    assert predicted.attributes["think"] is False
    assert value(hass, "sensor.pi_requests_sent") == "1"
    assert value(hass, "sensor.pi_failed_requests") == "0"
    assert value(hass, "sensor.pi_last_error") == "none"
    # The setup probe found the GPU server down: the turn skipped it, and the
    # counters say so rather than looking like a healthy idle server.
    assert value(hass, "sensor.gpu_server_requests_sent") == "0"
    assert value(hass, "sensor.gpu_server_skipped_requests") == "1"
    last_error = hass.states.get("sensor.gpu_server_last_error")
    assert last_error is not None
    assert last_error.state == "unreachable"
    assert last_error.attributes["message"] == "connection refused"
    assert value(hass, "binary_sensor.gpu_server_connection") == "off"
    assert value(hass, "binary_sensor.pi_connection") == "on"
    assert value(hass, "sensor.llm_router_last_backend") == "Pi"
    assert value(hass, "sensor.llm_router_fallbacks") == "1"
    assert value(hass, "sensor.gpu_server_generation_speed") == "unknown"
    assert hass.states.get("sensor.gpu_server_loaded_model") is None  # Ollama only
    loaded = hass.states.get("sensor.pi_loaded_model")
    assert loaded is not None
    assert loaded.state == "llama3.2:latest"
    assert loaded.attributes["size_vram"] == 2_019_000_000


async def test_connection_follows_the_server(
    hass: HomeAssistant, pi_server: FakeOllama
) -> None:
    entry = await setup_router(
        hass, router_entry(backend("Pi", "ollama", pi_server.url, "llama3.2", 1))
    )
    coordinator = entry.runtime_data.coordinators["Pi"]
    await until(lambda: value(hass, "binary_sensor.pi_connection") == "on")
    await pi_server.stop()
    await coordinator.async_refresh()
    assert value(hass, "binary_sensor.pi_connection") == "off"  # off, not unavailable
    assert coordinator.update_interval == timedelta(seconds=10)  # faster while down
    assert value(hass, "sensor.pi_generation_speed") == "unknown"
    # No time to an answer word that will not come.
    predicted = "sensor.pi_predicted_time_to_first_answer_word"
    assert value(hass, predicted) == "unavailable"
    await pi_server.start(pi_server.port)
    await coordinator.async_refresh()
    assert value(hass, "binary_sensor.pi_connection") == "on"
    assert float(value(hass, predicted)) > 0
    assert coordinator.update_interval == timedelta(seconds=30)


async def test_counters_survive_restart(
    hass: HomeAssistant, pi_server: FakeOllama
) -> None:
    mock_restore_cache_with_extra_data(
        hass,
        [
            (
                State("sensor.pi_requests_sent", "41"),
                {"native_value": 41, "native_unit_of_measurement": None},
            ),
            (
                State("sensor.pi_failed_requests", "2"),
                {"native_value": 2, "native_unit_of_measurement": None},
            ),
            (
                State("sensor.gpu_server_skipped_requests", "5"),
                {"native_value": 5, "native_unit_of_measurement": None},
            ),
            (
                State("sensor.llm_router_fallbacks", "7"),
                {"native_value": 7, "native_unit_of_measurement": None},
            ),
        ],
    )
    entry = await setup_router(hass, gpu_and_pi(pi_server.url))
    assert value(hass, "sensor.pi_requests_sent") == "41"
    assert value(hass, "sensor.llm_router_fallbacks") == "7"
    # The probe finds the GPU server down, so the turn skips it.
    await probe_backends(hass, entry)
    await ask(hass, "Hello")
    await entities_updated(hass)
    assert value(hass, "sensor.pi_requests_sent") == "42"
    assert value(hass, "sensor.pi_failed_requests") == "2"
    assert value(hass, "sensor.gpu_server_skipped_requests") == "6"
    assert value(hass, "sensor.llm_router_fallbacks") == "8"


async def test_probe_interval_option(
    hass: HomeAssistant, pi_server: FakeOllama
) -> None:
    entry = await setup_router(
        hass,
        router_entry(
            backend("Pi", "ollama", pi_server.url, "llama3.2", 1), probe_interval=60
        ),
    )
    await probe_backends(hass, entry)
    assert value(hass, "binary_sensor.pi_connection") == "on"
    assert entry.runtime_data.coordinators["Pi"].update_interval == timedelta(
        seconds=60
    )
    probes = len([r for r in pi_server.requests if r["path"] == "/api/version"])
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=55))
    await hass.async_block_till_done()
    assert len([r for r in pi_server.requests if r["path"] == "/api/version"]) == probes
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=61))
    await until(
        lambda: (
            len([r for r in pi_server.requests if r["path"] == "/api/version"])
            == probes + 1
        )
    )


async def test_prompt_speed_unavailable_without_prompt_tokens(
    hass: HomeAssistant,
) -> None:
    """A minimal server reports no usage in the stream: no prompt speed ever."""
    async with FakeOpenAI(usage_in_stream=False) as server:
        await setup_router(
            hass,
            router_entry(backend("GPU server", "openai", server.url, "fake-model", 1)),
        )
        assert value(hass, "sensor.gpu_server_prompt_speed") == "unknown"
        await ask(hass, "Hello")
        await entities_updated(hass)
    assert value(hass, "sensor.gpu_server_prompt_speed") == "unavailable"
    assert float(value(hass, "sensor.gpu_server_generation_speed")) > 0


async def test_prompt_speed_kept_through_answers_from_the_prompt_cache(
    hass: HomeAssistant,
) -> None:
    """llama.cpp's second turn reads the prompt from its cache: no new speed."""
    async with FakeOpenAI(llama_cpp=True, prompt_cache=True) as server:
        await setup_router(
            hass, router_entry(backend("Pi", "openai", server.url, "smollm2", 1))
        )
        server.script(Reply(prompt_seconds=0.5), Reply(prompt_seconds=0.04))
        await ask(hass, "Hello")
        await entities_updated(hass)
        measured = value(hass, "sensor.pi_prompt_speed")
        await ask(hass, "Hello")
        await entities_updated(hass)
        [first, second] = [r["body"] for r in server.requests if "messages" in str(r)]

    assert first["messages"] == second["messages"]  # so all but one word cached
    assert float(measured) > 0
    assert value(hass, "sensor.pi_prompt_speed") == measured


async def test_last_error_says_why_a_backend_went_down(
    hass: HomeAssistant, openai: FakeOpenAI
) -> None:
    entry = await setup_router(
        hass, router_entry(backend("GPU server", "openai", openai.url, "fake-model", 1))
    )
    await hass.async_block_till_done(wait_background_tasks=True)  # setup's probe
    assert value(hass, "sensor.gpu_server_last_error") == "none"
    openai.api_key = "rotated"
    await entry.runtime_data.coordinators["GPU server"].async_refresh()
    assert value(hass, "binary_sensor.gpu_server_connection") == "off"
    assert value(hass, "sensor.gpu_server_failed_health_checks") == "1"
    last_error = hass.states.get("sensor.gpu_server_last_error")
    assert last_error is not None
    assert last_error.state == "auth_failed"
    assert last_error.attributes["message"]
