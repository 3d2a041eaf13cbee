"""Bad URLs: refused in the flows, survived at setup, normalized everywhere."""

from __future__ import annotations

from homeassistant.config_entries import SOURCE_USER, ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import device_registry as dr, issue_registry as ir
from homeassistant.setup import async_setup_component
import pytest

from custom_components.llm_router.const import DOMAIN, SUBENTRY_BACKEND
from tests.conftest import backend, form_input, router_entry, setup_router
from tests.fakes.ollama_server import FakeOllama
from tests.test_config_flow import MODEL_STEP, start_flow

BAD_URLS = ["http://host:99999", "http://[::1", "http://::1:11434", "ftp://host"]


@pytest.fixture(autouse=True)
async def _core(hass: HomeAssistant) -> None:
    await async_setup_component(hass, "homeassistant", {})


@pytest.mark.parametrize("url", BAD_URLS)
async def test_first_backend_with_a_bad_url(hass: HomeAssistant, url: str) -> None:
    result = await start_flow(hass, {"name": "Pi", "kind": "ollama", "url": url})
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {"base": "invalid_url"}


@pytest.mark.parametrize("url", BAD_URLS)
async def test_switched_off_backend_with_a_bad_url(
    hass: HomeAssistant, ollama: FakeOllama, url: str
) -> None:
    entry = await setup_router(
        hass, router_entry(backend("Pi", "ollama", ollama.url, "llama3.2", 2))
    )
    result = await hass.config_entries.subentries.async_init(
        (entry.entry_id, SUBENTRY_BACKEND), context={"source": SOURCE_USER}
    )
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"],
        {"name": "GPU server", "kind": "ollama", "url": url, "skip_check": True},
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {"base": "invalid_url"}


async def test_url_without_scheme_is_stored_normalized(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    host = ollama.url.removeprefix("http://")
    result = await start_flow(hass, {"name": "Pi", "kind": "ollama", "url": host})
    assert result["step_id"] == "model"
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], form_input(result, **MODEL_STEP)
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    (subentry,) = result["result"].subentries.values()
    assert subentry.data["url"] == ollama.url


async def test_stored_url_without_scheme_works_and_links_the_device(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    host = ollama.url.removeprefix("http://")
    entry = await setup_router(
        hass, router_entry(backend("Pi", "ollama", host, "llama3.2", 1))
    )
    assert entry.state is ConfigEntryState.LOADED
    device = dr.async_get(hass).async_get_device_by_identifier(
        (DOMAIN, "pi"), entry.entry_id
    )
    assert device is not None
    assert device.configuration_url == ollama.url
    assert hass.states.get("binary_sensor.pi_connection") is not None


async def test_stored_bad_url_leaves_only_that_backend_out(
    hass: HomeAssistant, ollama: FakeOllama, issue_registry: ir.IssueRegistry
) -> None:
    entry = await setup_router(
        hass,
        router_entry(
            backend("GPU server", "ollama", "http://gpu:99999", "qwen3", 1),
            backend("Pi", "ollama", ollama.url, "llama3.2", 2),
        ),
    )
    assert entry.state is ConfigEntryState.LOADED
    assert list(entry.runtime_data.router.states) == ["Pi"]
    issue = issue_registry.async_get_issue(DOMAIN, "invalid_url_gpu_server")
    assert issue is not None
    assert issue.translation_placeholders == {
        "backend": "GPU server",
        "url": "http://gpu:99999",
    }
    response = await hass.services.async_call(
        DOMAIN, "ask", {"text": "Hi"}, blocking=True, return_response=True
    )
    assert response is not None
    assert response["backend"] == "Pi"

    gpu = entry.subentries["gpu_server"]
    hass.config_entries.async_update_subentry(
        entry, gpu, data={**gpu.data, "url": "http://gpu:8000"}
    )
    await hass.async_block_till_done()
    assert issue_registry.async_get_issue(DOMAIN, "invalid_url_gpu_server") is None
    assert list(entry.runtime_data.router.states) == ["GPU server", "Pi"]
