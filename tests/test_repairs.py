"""Repair issues: a backend unreachable for long, a missing model."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from freezegun.api import FrozenDateTimeFactory
from homeassistant.core import HomeAssistant
from homeassistant.helpers import issue_registry as ir
from homeassistant.util import dt as dt_util

from tests.conftest import backend, probe_backends, router_entry, setup_router
from tests.fakes.base import closed_port_url
from tests.fakes.ollama_server import FakeOllama


async def test_unreachable_for_over_an_hour(
    hass: HomeAssistant,
    issue_registry: ir.IssueRegistry,
    freezer: FrozenDateTimeFactory,
) -> None:
    url = closed_port_url()
    entry = await setup_router(
        hass, router_entry(backend("Pi", "ollama", url, "llama3.2", 1))
    )
    coordinator = entry.runtime_data.coordinators["Pi"]
    await probe_backends(hass, entry)
    freezer.tick(timedelta(minutes=59))
    await coordinator.async_refresh()
    assert issue_registry.async_get_issue("llm_router", "unreachable_pi") is None

    freezer.tick(timedelta(minutes=2))
    await coordinator.async_refresh()
    issue = issue_registry.async_get_issue("llm_router", "unreachable_pi")
    assert issue is not None
    assert issue.translation_placeholders == {"backend": "Pi", "url": url}

    async with FakeOllama() as server:
        await server.stop()
        await server.start(int(url.rsplit(":", 1)[1]))
        await coordinator.async_refresh()
    assert issue_registry.async_get_issue("llm_router", "unreachable_pi") is None


async def test_missing_model(
    hass: HomeAssistant, issue_registry: ir.IssueRegistry, ollama: FakeOllama
) -> None:
    entry = await setup_router(
        hass, router_entry(backend("Pi", "ollama", ollama.url, "deepseek-r1:1.5b", 1))
    )
    await probe_backends(hass, entry)
    issue = issue_registry.async_get_issue("llm_router", "model_missing_pi")
    assert issue is not None
    assert issue.severity is ir.IssueSeverity.ERROR
    ollama.models["deepseek-r1:1.5b"] = ["completion", "thinking"]
    await entry.runtime_data.coordinators["Pi"].async_refresh()
    assert issue_registry.async_get_issue("llm_router", "model_missing_pi") is None


async def test_issues_of_removed_backends_are_dropped(
    hass: HomeAssistant, issue_registry: ir.IssueRegistry, ollama: FakeOllama
) -> None:
    entry = await setup_router(
        hass,
        router_entry(
            backend("Pi", "ollama", ollama.url, "deepseek-r1:1.5b", 1),
            backend("Pi 2", "ollama", ollama.url, "llama3.2", 2),
        ),
    )
    await probe_backends(hass, entry)
    assert issue_registry.async_get_issue("llm_router", "model_missing_pi")
    hass.config_entries.async_remove_subentry(entry, "pi")
    await hass.async_block_till_done()
    await probe_backends(hass, entry)
    assert issue_registry.async_get_issue("llm_router", "model_missing_pi") is None


async def test_issues_removed_with_the_router(
    hass: HomeAssistant, issue_registry: ir.IssueRegistry, ollama: FakeOllama
) -> None:
    entry = await setup_router(
        hass, router_entry(backend("Pi", "ollama", ollama.url, "deepseek-r1:1.5b", 1))
    )
    await probe_backends(hass, entry)
    assert issue_registry.async_get_issue("llm_router", "model_missing_pi")
    await hass.config_entries.async_remove(entry.entry_id)
    assert issue_registry.async_get_issue("llm_router", "model_missing_pi") is None


async def test_backend_that_sleeps_on_purpose_raises_no_issue(
    hass: HomeAssistant,
    issue_registry: ir.IssueRegistry,
    freezer: FrozenDateTimeFactory,
) -> None:
    entry = await setup_router(
        hass,
        router_entry(
            backend(
                "GPU server", "ollama", closed_port_url(), "qwen3", 1, always_on=False
            )
        ),
    )
    await probe_backends(hass, entry)
    freezer.tick(timedelta(hours=12))
    await probe_backends(hass, entry)
    assert (
        issue_registry.async_get_issue("llm_router", "unreachable_gpu_server") is None
    )
    assert hass.states.is_state("binary_sensor.gpu_server_connection", "off")


async def test_downtime_survives_a_restart(
    hass: HomeAssistant,
    issue_registry: ir.IssueRegistry,
    hass_storage: dict[str, Any],
) -> None:
    went_down = dt_util.utcnow() - timedelta(minutes=61)
    hass_storage["llm_router.downtime"] = {
        "version": 1,
        "minor_version": 1,
        "key": "llm_router.downtime",
        "data": {"pi": went_down.isoformat(), "removed_backend": went_down.isoformat()},
    }
    entry = await setup_router(
        hass, router_entry(backend("Pi", "ollama", closed_port_url(), "llama3.2", 1))
    )
    await probe_backends(hass, entry)
    assert issue_registry.async_get_issue("llm_router", "unreachable_pi") is not None
    assert hass_storage["llm_router.downtime"]["data"] == {"pi": went_down.isoformat()}


async def test_downtime_is_stored_until_the_backend_answers(
    hass: HomeAssistant, hass_storage: dict[str, Any]
) -> None:
    url = closed_port_url()
    entry = await setup_router(
        hass, router_entry(backend("Pi", "ollama", url, "llama3.2", 1))
    )
    await probe_backends(hass, entry)
    assert "pi" in hass_storage["llm_router.downtime"]["data"]

    async with FakeOllama() as server:
        await server.stop()
        await server.start(int(url.rsplit(":", 1)[1]))
        await probe_backends(hass, entry)
    assert hass_storage["llm_router.downtime"]["data"] == {}
