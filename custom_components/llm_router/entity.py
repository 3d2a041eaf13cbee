"""Entity bases of the LLM Router integration."""

from __future__ import annotations

from homeassistant.components.sensor import SensorEntity
from homeassistant.core import callback
from homeassistant.helpers.device_registry import DeviceEntryType, DeviceInfo
from homeassistant.helpers.entity import Entity
from homeassistant.helpers.update_coordinator import CoordinatorEntity

from .const import DOMAIN
from .coordinator import BackendHealthCoordinator
from .engine.models import BackendKind
from .engine.state import BackendState
from .engine.urls import without_credentials
from .runtime import LLMRouterConfigEntry

MANUFACTURERS = {
    BackendKind.OLLAMA: "Ollama",
    BackendKind.OPENAI: "OpenAI-compatible server",
}


def router_device_identifier(entry: LLMRouterConfigEntry) -> tuple[str, str]:
    """How the device registry knows the router's own device."""
    return (DOMAIN, entry.entry_id)


class ShowsChanges(Entity):
    """Writes its state on a change of router state only when what it shows changed.

    Routed requests change the router's state many times a second under
    load; a write costs far more than comparing what would be written.
    """

    _shown: object = None

    def _showing(self) -> object:
        """What the entity's state shows."""
        # A sensor's state is its native value converted: the same for the same.
        value = self.native_value if isinstance(self, SensorEntity) else self.state
        return (self.available, value, self.extra_state_attributes)

    async def async_added_to_hass(self) -> None:
        """What the platform writes when it adds the entity is shown already."""
        await super().async_added_to_hass()
        self._shown = self._showing()

    @callback
    def async_write_if_changed(self) -> None:
        """Write the state unless it would show what it shows already."""
        shown = self._showing()
        if shown != self._shown:
            self._shown = shown
            self.async_write_ha_state()


class LLMRouterEntity(Entity):
    """An entity of the router's device."""

    _attr_has_entity_name = True

    def __init__(self, entry: LLMRouterConfigEntry, key: str) -> None:
        """Attach the entity to the router's device."""
        self.entry = entry
        self._attr_unique_id = f"{entry.entry_id}_{key}"
        self._attr_device_info = DeviceInfo(
            identifiers={router_device_identifier(entry)},
            name=entry.title,
            manufacturer="LLM Router",
            model="Router",
            entry_type=DeviceEntryType.SERVICE,
        )


class LLMRouterStateEntity(LLMRouterEntity, ShowsChanges):
    """A router entity whose state follows the answered requests."""

    _attr_should_poll = False

    async def async_added_to_hass(self) -> None:
        """Update when an answered request was counted."""
        await super().async_added_to_hass()
        self.async_on_remove(
            self.entry.runtime_data.async_add_listener(self.async_write_if_changed)
        )


class LLMRouterBackendEntity(CoordinatorEntity[BackendHealthCoordinator], ShowsChanges):
    """An entity of one backend's device.

    Updated by its health probes and by the routed requests it took part in.
    """

    _attr_has_entity_name = True

    def __init__(
        self,
        entry: LLMRouterConfigEntry,
        coordinator: BackendHealthCoordinator,
        key: str,
    ) -> None:
        """Attach the entity to its backend's device."""
        super().__init__(coordinator)
        self.entry = entry
        config = self.backend.config
        self._attr_unique_id = f"{coordinator.subentry_id}_{key}"
        self._attr_device_info = DeviceInfo(
            identifiers={(DOMAIN, coordinator.subentry_id)},
            name=config.name,
            manufacturer=MANUFACTURERS[config.kind],
            model=config.model,
            sw_version=self.backend.version,
            configuration_url=without_credentials(config.url),
            via_device_id=entry.runtime_data.router_device_id,
        )

    @property
    def backend(self) -> BackendState:
        """What the router knows about this entity's backend."""
        return self.coordinator.router.states[self.coordinator.backend_name]

    async def async_added_to_hass(self) -> None:
        """Also update on routed requests, not only on probes."""
        await super().async_added_to_hass()
        self.async_on_remove(
            self.entry.runtime_data.async_add_backend_listener(
                self.coordinator.backend_name, self._handle_coordinator_update
            )
        )

    @callback
    def _handle_coordinator_update(self) -> None:
        self.async_write_if_changed()
