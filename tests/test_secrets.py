"""Secrets stay on the server: API keys and credentials inside URLs."""

from __future__ import annotations

import json

from homeassistant.core import HomeAssistant
from homeassistant.helpers import config_validation as cv, device_registry as dr
import probatio
from pytest_homeassistant_custom_component.components.diagnostics import (
    get_diagnostics_for_config_entry,
)
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator

from custom_components.llm_router.const import DOMAIN
from tests.conftest import backend, form_input, router_entry, setup_router
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI

KEY = "sk-secret-42"


async def test_reconfigure_keeps_the_api_key_without_showing_it(
    hass: HomeAssistant,
) -> None:
    async with FakeOpenAI(api_key=KEY) as server:
        entry = await setup_router(
            hass,
            router_entry(
                backend(
                    "GPU server", "openai", server.url, "fake-model", 1, api_key=KEY
                )
            ),
        )
        result = await entry.start_subentry_reconfigure_flow(hass, "gpu_server")
        # What the browser receives.
        form = probatio.to_field_list(
            result["data_schema"], custom_serializer=cv.custom_serializer
        )
        assert KEY not in json.dumps(form)

        subentries = hass.config_entries.subentries
        result = await subentries.async_configure(
            result["flow_id"],
            {"name": "GPU server", "kind": "openai", "url": server.url},
        )
        assert result["step_id"] == "model"
        result = await subentries.async_configure(
            result["flow_id"],
            form_input(result, model="fake-model", priority=1, max_parallel=2),
        )
        assert result["reason"] == "reconfigure_successful"
        assert entry.subentries["gpu_server"].data["api_key"] == KEY
        assert entry.subentries["gpu_server"].data["max_parallel"] == 2


async def test_credentials_in_urls_are_not_shown(
    hass: HomeAssistant, hass_client: ClientSessionGenerator, ollama: FakeOllama
) -> None:
    url = ollama.url.replace("http://", "http://ada:hunter2@")
    entry = await setup_router(
        hass, router_entry(backend("Pi", "ollama", url, "llama3.2", 1))
    )
    diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, entry)
    assert "hunter2" not in json.dumps(diagnostics)
    assert diagnostics["backends"]["Pi"]["config"]["url"] == ollama.url
    device = dr.async_get(hass).async_get_device_by_identifier(
        (DOMAIN, "pi"), entry.entry_id
    )
    assert device is not None
    assert device.configuration_url == ollama.url
