"""Entity base of the LLM Router integration."""

from __future__ import annotations

from homeassistant.helpers.device_registry import DeviceEntryType, DeviceInfo
from homeassistant.helpers.entity import Entity

from .const import DOMAIN
from .runtime import LLMRouterConfigEntry


class LLMRouterEntity(Entity):
    """An entity of a router's device."""

    _attr_has_entity_name = True

    def __init__(self, entry: LLMRouterConfigEntry, key: str) -> None:
        """Attach the entity to the router's device."""
        self.entry = entry
        self._attr_unique_id = f"{entry.entry_id}_{key}"
        self._attr_device_info = DeviceInfo(
            identifiers={(DOMAIN, entry.entry_id)},
            name=entry.title,
            manufacturer="LLM Router",
            model="Router",
            entry_type=DeviceEntryType.SERVICE,
        )
