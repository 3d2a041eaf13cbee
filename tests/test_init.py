"""Setup, recovery, unload and reload of a router entry."""

from __future__ import annotations

from datetime import timedelta

from homeassistant.components import conversation
from homeassistant.config_entries import ConfigEntryState
from homeassistant.const import EVENT_HOMEASSISTANT_STOP
from homeassistant.core import Context, HomeAssistant
from homeassistant.helpers import device_registry as dr, intent
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import async_fire_time_changed

from custom_components.llm_router.engine.errors import ErrorKind
from tests.conftest import (
    backend,
    gpu_and_pi,
    probe_backends,
    router_entry,
    setup_router,
    until,
)
from tests.fakes.base import closed_port_url
from tests.fakes.ollama_server import FakeOllama

AGENT = "conversation.llm_router"


async def ask(hass: HomeAssistant, text: str) -> conversation.ConversationResult:
    return await conversation.async_converse(
        hass, text, None, Context(), agent_id=AGENT
    )


async def test_setup_with_every_backend_down_then_recovers(hass: HomeAssistant) -> None:
    url = closed_port_url()
    entry = await setup_router(
        hass, router_entry(backend("Pi", "ollama", url, "llama3.2", 1))
    )
    assert entry.state is ConfigEntryState.LOADED
    state = entry.runtime_data.router.states["Pi"]
    await until(lambda: state.online is False)

    async with FakeOllama() as pi:
        await pi.stop()
        await pi.start(int(url.rsplit(":", 1)[1]))  # the Pi's Ollama starts late
        async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=31))
        await until(lambda: state.online is True)
        result = await ask(hass, "Hello")
    assert result.response.speech["plain"]["speech"] == "Hello from the fake."


async def test_unload_and_reload(hass: HomeAssistant, ollama: FakeOllama) -> None:
    entry = await setup_router(hass, gpu_and_pi(ollama.url))
    router = entry.runtime_data.router
    await until(lambda: router.states["GPU server"].online is False)
    assert router._cooldowns  # a probe is scheduled for the GPU server

    assert await hass.config_entries.async_unload(entry.entry_id)
    assert entry.state is ConfigEntryState.NOT_LOADED
    assert not router._cooldowns
    assert not router._probes
    assert hass.states.get(AGENT).state == "unavailable"

    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.runtime_data.router is not router
    result = await ask(hass, "Hello")
    assert result.response.speech["plain"]["speech"] == "Hello from the fake."


async def test_stopping_home_assistant_closes_the_router(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    entry = await setup_router(hass, gpu_and_pi(ollama.url))
    router = entry.runtime_data.router
    await until(lambda: router.states["GPU server"].online is False)
    assert router._cooldowns

    hass.bus.async_fire(EVENT_HOMEASSISTANT_STOP)
    await hass.async_block_till_done()

    assert not router._cooldowns
    assert not await router.async_probe("Pi")
    assert router.states["Pi"].last_error is not None
    assert router.states["Pi"].last_error.kind is ErrorKind.CLOSED
    assert not router._cooldowns


async def test_agent_controls_home_only_with_an_llm_api(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    pi = backend("Pi", "ollama", ollama.url, "llama3.2", 1)
    entry = await setup_router(hass, router_entry(pi, llm_api=["assist"]))
    state = hass.states.get(AGENT)
    assert state is not None
    assert (
        state.attributes["supported_features"]
        == conversation.ConversationEntityFeature.CONTROL
    )
    hass.config_entries.async_update_entry(
        entry, options={**entry.options, "llm_hass_api": []}
    )
    await hass.async_block_till_done()
    assert hass.states.get(AGENT).attributes["supported_features"] == 0


async def test_broken_prompt_template_is_reported(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    pi = backend("Pi", "ollama", ollama.url, "llama3.2", 1)
    await setup_router(hass, router_entry(pi, prompt="{{ broken"))
    result = await ask(hass, "Hello")
    assert result.response.response_type is intent.IntentResponseType.ERROR
    assert ollama.chat_bodies == []


async def test_backend_devices_hang_off_the_router_device(
    hass: HomeAssistant, ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    entry = await setup_router(
        hass, router_entry(backend("Pi", "ollama", ollama.url, "deepseek-r1:1.5b", 1))
    )
    registry = dr.async_get(hass)
    router = registry.async_get_device_by_identifier(
        ("llm_router", entry.entry_id), entry.entry_id
    )
    pi = registry.async_get_device_by_identifier(("llm_router", "pi"), entry.entry_id)
    assert router is not None
    assert pi is not None
    assert pi.via_device_id == router.id
    assert "non existing `via_device`" not in caplog.text


async def test_first_choice_model_is_loaded_at_start(hass: HomeAssistant) -> None:
    async with FakeOllama(load_seconds=0.01) as pi:
        entry = await setup_router(
            hass,
            router_entry(
                backend("Pi", "ollama", pi.url, "llama3.2", 1, keep_warm=None)
            ),
        )
        await probe_backends(hass, entry)
        await until(lambda: pi.loads == 1)
        assert [body["messages"] for body in pi.chat_bodies] == [[]]
        await hass.config_entries.async_unload(entry.entry_id)
