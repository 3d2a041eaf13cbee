"""What the recorder keeps of the integration's entities."""

from __future__ import annotations

from datetime import timedelta

from homeassistant.components.recorder import Recorder
from homeassistant.components.recorder.history import get_significant_states
from homeassistant.core import HomeAssistant
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.components.recorder.common import (
    async_wait_recording_done,
)

from tests.conftest import backend, probe_backends, router_entry, setup_router
from tests.fakes.ollama_server import FakeOllama, RunningModel


@pytest.fixture(autouse=True)
def _custom_integrations(
    recorder_mock: Recorder, enable_custom_integrations: None
) -> None:
    """The recorder's database must exist before Home Assistant starts."""


async def test_loaded_model_details_are_not_recorded(hass: HomeAssistant) -> None:
    async with FakeOllama(running=[RunningModel("llama3.2:latest")]) as pi:
        entry = await setup_router(
            hass, router_entry(backend("Pi", "ollama", pi.url, "llama3.2", 1))
        )
        await probe_backends(hass, entry)
    state = hass.states.get("sensor.pi_loaded_model")
    assert state is not None
    assert state.attributes["size_vram"]
    await async_wait_recording_done(hass)
    history = await hass.async_add_executor_job(
        get_significant_states,
        hass,
        dt_util.utcnow() - timedelta(hours=1),
        None,
        ["sensor.pi_loaded_model"],
    )
    recorded = history["sensor.pi_loaded_model"][-1]
    assert recorded.state == "llama3.2:latest"
    assert "size_vram" not in recorded.attributes
    assert "expires_at" not in recorded.attributes
