"""Whether each backend's server answers."""

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
    """Add one connection sensor per backend."""
    for coordinator in entry.runtime_data.coordinators.values():
        # The unique ID keeps the sensor's first name, "online", so entities
        # made before the rename stay the same entities.
        async_add_entities(
            [BackendConnectionSensor(entry, coordinator, "online")],
            config_subentry_id=coordinator.subentry_id,
        )


class BackendConnectionSensor(LLMRouterBackendEntity, BinarySensorEntity):
    """Connected while the backend answers probes and requests.

    Named "Connection", so Home Assistant's connectivity states read right:
    "Connection: Disconnected".

    It stays available while the server is down: saying so is its point.
    """

    _attr_device_class = BinarySensorDeviceClass.CONNECTIVITY
    _attr_translation_key = "connection"

    @property
    def available(self) -> bool:
        """Always available."""
        return True

    @property
    def is_on(self) -> bool | None:
        """Whether the backend answered last time it was asked."""
        return self.backend.online
