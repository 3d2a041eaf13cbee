"""Whether each backend answers."""

from __future__ import annotations

from homeassistant.components.binary_sensor import BinarySensorEntity
from homeassistant.components.binary_sensor.const import BinarySensorDeviceClass
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .entity import LLMRouterBackendEntity
from .runtime import LLMRouterConfigEntry

# Entities only read router state; requests are queued by the router itself.
PARALLEL_UPDATES = 0


async def async_setup_entry(
    hass: HomeAssistant,
    entry: LLMRouterConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    """Add one online sensor per backend."""
    for coordinator in entry.runtime_data.coordinators.values():
        async_add_entities(
            [BackendOnlineSensor(entry, coordinator, "online")],
            config_subentry_id=coordinator.subentry_id,
        )


class BackendOnlineSensor(LLMRouterBackendEntity, BinarySensorEntity):
    """On while the backend answers probes and requests.

    It stays available while the server is down: saying so is its point.
    """

    _attr_device_class = BinarySensorDeviceClass.CONNECTIVITY
    _attr_translation_key = "online"

    @property
    def available(self) -> bool:
        """Always available."""
        return True

    @property
    def is_on(self) -> bool | None:
        """Whether the backend answered last time it was asked."""
        return self.backend.online
