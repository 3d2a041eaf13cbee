"""Fixtures shared by all tests."""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from datetime import timedelta
import logging
from typing import Any

from homeassistant.config_entries import ConfigSubentryData
from homeassistant.const import CONF_API_KEY, CONF_LLM_HASS_API, CONF_NAME, CONF_URL
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import section
from homeassistant.setup import async_setup_component
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_time_changed,
)
from pytest_homeassistant_custom_component.syrupy import HomeAssistantSnapshotExtension
from syrupy.assertion import SnapshotAssertion

from custom_components.llm_router.config_flow import DEFAULT_OPTIONS
from custom_components.llm_router.const import (
    CONF_KIND,
    CONFIG_ENTRY_VERSION,
    DOMAIN,
    SUBENTRY_BACKEND,
)
from custom_components.llm_router.engine.models import BackendKind
from custom_components.llm_router.forms import model_form, nest
from custom_components.llm_router.updates import UPDATE_INTERVAL
from tests.fakes.base import closed_port_url
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI
from tests.reports import IntegrationReports


@pytest.fixture(autouse=True)
def _loopback_sockets(socket_enabled: None) -> None:
    """Let tests reach the loopback fakes (the HA test plugin blocks sockets)."""


@pytest.fixture(autouse=True)
def integration_reports() -> Iterator[IntegrationReports]:
    """Fail the test when Home Assistant reports deprecated or blocking use."""
    reports = IntegrationReports()
    root = logging.getLogger()
    root.addHandler(reports)
    try:
        yield reports
    finally:
        root.removeHandler(reports)
    reports.fail_if_any()


@pytest.fixture
def snapshot(snapshot: SnapshotAssertion) -> SnapshotAssertion:
    """Snapshots in Home Assistant's format, in tests/snapshots.

    The plugin's own override of syrupy's fixture is shadowed by syrupy's.
    """
    return snapshot.use_extension(HomeAssistantSnapshotExtension)


@pytest.fixture(autouse=True)
def _custom_integrations(enable_custom_integrations: None) -> None:
    """Let Home Assistant load this custom integration."""


@pytest.fixture
async def ollama() -> AsyncIterator[FakeOllama]:
    """A fake Ollama server (the Pi)."""
    async with FakeOllama() as server:
        yield server


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAI]:
    """A fake OpenAI-compatible server (the GPU box)."""
    async with FakeOpenAI() as server:
        yield server


def _field_names(schema: Any) -> set[str]:
    """The names of a form's fields, those in its sections included."""
    names: set[str] = set()
    for marker, value in schema.schema.items():
        if isinstance(value, section):
            names |= _field_names(value.schema)
        else:
            names.add(str(marker))
    return names


# What a backend subentry stores: the first step's fields and the model step's.
BACKEND_SETTINGS = frozenset(
    {CONF_NAME, CONF_KIND, CONF_URL, CONF_API_KEY}.union(
        *(_field_names(model_form(kind, [], {})[0]) for kind in BackendKind)
    )
)


def refuse_unknown(given: Iterable[str], known: Iterable[str], what: str) -> None:
    """A misspelt or renamed key fails the test instead of testing nothing."""
    if unknown := sorted(set(given) - set(known)):
        raise TypeError(f"not {what}: {', '.join(unknown)}")


def backend(
    name: str, kind: str, url: str, model: str, priority: int, **extra: Any
) -> dict[str, Any]:
    """Data of a backend subentry."""
    refuse_unknown(extra, BACKEND_SETTINGS, "a backend setting")
    return {
        "name": name,
        "kind": kind,
        "url": url,
        "model": model,
        "priority": priority,
        "max_parallel": 1,
        "connect_timeout": 3.0,
        "first_token_timeout": 30.0,
        "thinking": "off",
        # Loading models in the background would race the tests' fakes;
        # tests of warm models turn it on.
        "keep_warm": False,
        **extra,
    }


def form_input(form: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """Fields for a shown form, nested in its sections as the browser sends them.

    Fields not given keep their defaults, as in the browser.
    """
    refuse_unknown(fields, _field_names(form["data_schema"]), "a field of this form")
    return nest(form["data_schema"], fields)


def router_entry(
    *backends: dict[str, Any],
    llm_api: list[str] | None = None,
    entry_id: str = "router",
    version: int = CONFIG_ENTRY_VERSION,
    **options: Any,
) -> MockConfigEntry:
    """A router config entry with these backends as subentries."""
    return MockConfigEntry(
        domain=DOMAIN,
        version=version,
        title="LLM Router",
        entry_id=entry_id,
        data={},
        options={**DEFAULT_OPTIONS, CONF_LLM_HASS_API: llm_api or [], **options},
        subentries_data=[
            ConfigSubentryData(
                data=data,
                # Subentry IDs are unique across routers.
                subentry_id=data["name"].lower().replace(" ", "_")
                if entry_id == "router"
                else f"{entry_id}_{data['name'].lower()}",
                subentry_type=SUBENTRY_BACKEND,
                title=data["name"],
                unique_id=None,
            )
            for data in backends
        ],
    )


def gpu_and_pi(
    pi_url: str,
    gpu_url: str | None = None,
    *,
    gpu_kind: str = "openai",
    options: Mapping[str, Any] | None = None,
    **gpu: Any,
) -> MockConfigEntry:
    """The README's router: a GPU server first, then an Ollama Pi.

    Without gpu_url, the GPU server is one that refuses connections. gpu:
    more fields of the GPU server; options: the router's.
    """
    gpu_model = "fake-model" if gpu_kind == "openai" else "llama3.2"
    return router_entry(
        backend(
            "GPU server", gpu_kind, gpu_url or closed_port_url(), gpu_model, 1, **gpu
        ),
        backend("Pi", "ollama", pi_url, "llama3.2", 2),
        **(options or {}),
    )


async def setup_router(hass: HomeAssistant, entry: MockConfigEntry) -> MockConfigEntry:
    """Add and set up a router entry."""
    await async_setup_component(hass, "homeassistant", {})
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    # Setup's first health checks run in the background; a test that stops
    # a fake while one still talks to it would race it.
    await hass.async_block_till_done(wait_background_tasks=True)
    return entry


async def entities_updated(hass: HomeAssistant) -> None:
    """Let the backends' rate-limited entity updates that are due run now."""
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=UPDATE_INTERVAL))
    await hass.async_block_till_done()


async def until(condition: Callable[[], object], seconds: float = 5.0) -> None:
    """Wait until condition() holds; bounded, so a bug fails instead of hanging."""
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.005)


async def deadline_once(
    condition: Callable[[], object], awaitable: Awaitable[object]
) -> None:
    """Await under a deadline that passes as soon as condition() holds.

    An outer deadline at a chosen point of a stream, not at a wall-clock
    time a slower machine could reach before that point.
    """
    async with asyncio.timeout(None) as deadline:
        running = asyncio.ensure_future(awaitable)
        await until(condition)
        deadline.reschedule(asyncio.get_running_loop().time())
        await running


async def probe_backends(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    """Run every backend's health check now, as its schedule would.

    Tests call this rather than waiting for the first check, which setup
    starts in the background.
    """
    for coordinator in entry.runtime_data.coordinators.values():
        await coordinator.async_refresh()
    await hass.async_block_till_done()
