"""LLM Router: one conversation agent, several local LLM servers."""

from __future__ import annotations

from homeassistant.const import Platform
from homeassistant.core import HomeAssistant

from .runtime import LLMRouterConfigEntry, create_router

PLATFORMS = (Platform.CONVERSATION,)


async def async_setup_entry(hass: HomeAssistant, entry: LLMRouterConfigEntry) -> bool:
    """Set up a router; its backends may still be down (they are probed)."""
    entry.runtime_data = create_router(hass, entry)
    router = entry.runtime_data.router
    entry.async_on_unload(router.close)
    # Learn who is up without delaying setup; an unreachable backend's
    # breaker opens, so the first turn does not wait for it.
    for name in router.states:
        router.request_probe(name)
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    entry.async_on_unload(entry.add_update_listener(_async_reload))
    return True


async def async_unload_entry(hass: HomeAssistant, entry: LLMRouterConfigEntry) -> bool:
    """Unload a router."""
    return await hass.config_entries.async_unload_platforms(entry, PLATFORMS)


async def _async_reload(hass: HomeAssistant, entry: LLMRouterConfigEntry) -> None:
    """Backends or options changed: rebuild the router."""
    await hass.config_entries.async_reload(entry.entry_id)
