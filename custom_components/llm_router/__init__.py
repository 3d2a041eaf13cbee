"""LLM Router: one conversation agent, several local LLM servers."""

from __future__ import annotations

from datetime import timedelta

from homeassistant.const import CONF_URL, EVENT_HOMEASSISTANT_STOP, Platform
from homeassistant.core import Event, HomeAssistant
from homeassistant.helpers import (
    config_validation as cv,
    device_registry as dr,
    issue_registry as ir,
)
from homeassistant.helpers.typing import ConfigType

from .const import (
    CONF_ALWAYS_ON,
    CONF_PROBE_INTERVAL,
    DEFAULT_PROBE_INTERVAL,
    DOMAIN,
    LOGGER,
)
from .coordinator import BackendHealthCoordinator
from .downtime import DATA_DOWNTIME, Downtime
from .engine.urls import without_credentials
from .entity import router_device_identifier
from .issues import (
    async_delete_backend_issues,
    async_delete_orphan_issues,
    async_known_backends,
    invalid_url_issue_id,
)
from .migration import async_migrate
from .runtime import LLMRouterConfigEntry, create_router
from .services import async_setup_services

PLATFORMS = (
    Platform.AI_TASK,
    Platform.BINARY_SENSOR,
    Platform.CONVERSATION,
    Platform.SENSOR,
)
CONFIG_SCHEMA = cv.config_entry_only_config_schema(DOMAIN)


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Register the actions and load the backends' downtime, once for all."""
    async_setup_services(hass)
    hass.data[DATA_DOWNTIME] = await Downtime.async_load(hass)
    return True


async def async_migrate_entry(hass: HomeAssistant, entry: LLMRouterConfigEntry) -> bool:
    """Bring an entry stored by an older version up to date."""
    async_migrate(hass, entry)
    return True


async def async_setup_entry(hass: HomeAssistant, entry: LLMRouterConfigEntry) -> bool:
    """Set up a router; its backends may still be down (they are probed)."""
    # Backend devices link to the router's device: it must exist first. Its
    # entities fill in the rest of its details.
    router_device = dr.async_get(hass).async_get_or_create(
        config_entry_id=entry.entry_id, identifiers={router_device_identifier(entry)}
    )
    data = create_router(hass, entry, router_device.id)
    entry.runtime_data = data
    entry.async_on_unload(data.router.close)

    # Home Assistant does not unload entries when it stops.
    async def _async_close_router(_: Event) -> None:
        await data.router.close()

    entry.async_on_unload(
        hass.bus.async_listen_once(EVENT_HOMEASSISTANT_STOP, _async_close_router)
    )
    interval = timedelta(
        seconds=entry.options.get(CONF_PROBE_INTERVAL, DEFAULT_PROBE_INTERVAL)
    )
    for name, subentry_id in data.backend_subentries.items():
        coordinator = BackendHealthCoordinator(
            hass,
            entry,
            router=data.router,
            backend_name=name,
            subentry_id=subentry_id,
            interval=interval,
            downtime=hass.data[DATA_DOWNTIME],
            always_on=entry.subentries[subentry_id].data.get(CONF_ALWAYS_ON, True),
        )
        data.coordinators[name] = coordinator
        # Learn who is up without delaying setup: a server that is down
        # opens its breaker, so the first turn does not wait for it.
        entry.async_create_background_task(
            hass, coordinator.async_refresh(), f"llm_router probe {name}"
        )
    _async_report_unusable_backends(hass, entry)
    # Forget what is kept of backends that no router has any more.
    backends = async_known_backends(hass)
    async_delete_orphan_issues(hass, backends)
    hass.data[DATA_DOWNTIME].async_keep_only(backends)
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    entry.async_on_unload(entry.add_update_listener(_async_reload))
    return True


async def async_unload_entry(hass: HomeAssistant, entry: LLMRouterConfigEntry) -> bool:
    """Unload a router."""
    return await hass.config_entries.async_unload_platforms(entry, PLATFORMS)


async def async_remove_entry(hass: HomeAssistant, entry: LLMRouterConfigEntry) -> None:
    """Remove the router's repair issues with it."""
    for subentry_id in entry.subentries:
        async_delete_backend_issues(hass, subentry_id)


async def _async_reload(hass: HomeAssistant, entry: LLMRouterConfigEntry) -> None:
    """Backends or options changed: rebuild the router."""
    await hass.config_entries.async_reload(entry.entry_id)


def _async_report_unusable_backends(
    hass: HomeAssistant, entry: LLMRouterConfigEntry
) -> None:
    """Raise a repair issue for each backend left out for its URL; clear the rest."""
    unusable = entry.runtime_data.unusable
    for subentry_id, subentry in entry.subentries.items():
        issue_id = invalid_url_issue_id(subentry_id)
        if (error := unusable.get(subentry_id)) is None:
            ir.async_delete_issue(hass, DOMAIN, issue_id)
            continue
        LOGGER.error("Backend %s is left out: %s", subentry.title, error)
        ir.async_create_issue(
            hass,
            DOMAIN,
            issue_id,
            is_fixable=False,
            severity=ir.IssueSeverity.ERROR,
            translation_key="invalid_url",
            translation_placeholders={
                "backend": subentry.title,
                "url": without_credentials(str(subentry.data[CONF_URL])),
            },
        )
