"""Per-backend throughput and timing sensors, and the router's own."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
import math
from typing import Any

from homeassistant.components.sensor import (
    RestoreSensor,
    SensorDeviceClass,
    SensorEntity,
    SensorEntityDescription,
    SensorStateClass,
)
from homeassistant.const import EntityCategory, UnitOfTime
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from homeassistant.helpers.typing import StateType

from .coordinator import BackendHealthCoordinator
from .engine.errors import ErrorKind
from .engine.models import BackendKind
from .engine.predictor import Forecast
from .engine.state import BackendState
from .engine.wake import Power, PowerState
from .entity import LLMRouterBackendEntity, LLMRouterStateEntity
from .runtime import LLMRouterConfigEntry, LLMRouterData

# Entities only read router state; requests are queued by the router itself.
PARALLEL_UPDATES = 0

TOKENS_PER_SECOND = "tok/s"


@dataclass(frozen=True, kw_only=True)
class BackendSensorDescription(SensorEntityDescription):
    """A sensor read from what the router knows about a backend."""

    value_fn: Callable[[BackendState], StateType]
    available_fn: Callable[[BackendState], bool] = lambda state: True


def _loaded_model(state: BackendState) -> StateType:
    names = [model.name for model in state.loaded_models]
    # The configured model first: Ollama may list it with a ":latest" tag.
    configured = [
        n for n in names if n.split(":")[0] == state.config.model.split(":")[0]
    ]
    return next(iter(configured or names), None)


def _loaded_model_attributes(state: BackendState) -> Mapping[str, Any]:
    name = _loaded_model(state)
    model = next((m for m in state.loaded_models if m.name == name), None)
    return {
        "size_vram": model.size_vram if model else None,
        "expires_at": model.expires_at if model else None,
    }


BACKEND_SENSORS: tuple[BackendSensorDescription, ...] = (
    BackendSensorDescription(
        key="generation_speed",
        translation_key="generation_speed",
        native_unit_of_measurement=TOKENS_PER_SECOND,
        state_class=SensorStateClass.MEASUREMENT,
        suggested_display_precision=1,
        value_fn=lambda s: s.last_stats.generation_speed if s.last_stats else None,
    ),
    BackendSensorDescription(
        key="prompt_speed",
        translation_key="prompt_speed",
        native_unit_of_measurement=TOKENS_PER_SECOND,
        state_class=SensorStateClass.MEASUREMENT,
        suggested_display_precision=1,
        # The last one measured: llama.cpp's answers from its prompt cache
        # measure none. Servers that report no prompt timing (vLLM) never
        # have one: unavailable, rather than unknown forever, once that shows.
        value_fn=lambda s: s.prompt_speed,
        available_fn=lambda s: (
            s.last_stats is None
            or s.prompt_speed is not None
            or s.last_stats.prompt_cached_tokens is not None
        ),
    ),
    BackendSensorDescription(
        key="time_to_first_token",
        translation_key="time_to_first_token",
        device_class=SensorDeviceClass.DURATION,
        native_unit_of_measurement=UnitOfTime.MILLISECONDS,
        state_class=SensorStateClass.MEASUREMENT,
        suggested_display_precision=0,
        value_fn=lambda s: (
            s.last_stats.time_to_first_token * 1000
            if s.last_stats and s.last_stats.time_to_first_token is not None
            else None
        ),
    ),
    BackendSensorDescription(
        key="time_to_first_word",
        translation_key="time_to_first_word",
        device_class=SensorDeviceClass.DURATION,
        native_unit_of_measurement=UnitOfTime.MILLISECONDS,
        state_class=SensorStateClass.MEASUREMENT,
        suggested_display_precision=0,
        # Reasoning and model loads are no words: this is what a voice user waits.
        value_fn=lambda s: (
            s.last_first_word * 1000 if s.last_first_word is not None else None
        ),
    ),
    BackendSensorDescription(
        key="response_time",
        translation_key="response_time",
        device_class=SensorDeviceClass.DURATION,
        native_unit_of_measurement=UnitOfTime.SECONDS,
        state_class=SensorStateClass.MEASUREMENT,
        suggested_display_precision=2,
        value_fn=lambda s: s.last_stats.response_time if s.last_stats else None,
    ),
)
NO_ERROR = "none"
LAST_ERROR = BackendSensorDescription(
    key="last_error",
    translation_key="last_error",
    device_class=SensorDeviceClass.ENUM,
    # A skip is not an error of the server; its breaker opened on one.
    options=[
        NO_ERROR,
        *(kind for kind in ErrorKind if kind is not ErrorKind.CIRCUIT_OPEN),
    ],
    entity_category=EntityCategory.DIAGNOSTIC,
    value_fn=lambda s: s.last_error.kind if s.last_error else NO_ERROR,
)
PREDICTED_FIRST_WORD = SensorEntityDescription(
    key="predicted_first_word",
    translation_key="predicted_first_word",
    device_class=SensorDeviceClass.DURATION,
    native_unit_of_measurement=UnitOfTime.MILLISECONDS,
    state_class=SensorStateClass.MEASUREMENT,
    suggested_display_precision=0,
)
POWER_STATE = BackendSensorDescription(
    key="power_state",
    translation_key="power_state",
    device_class=SensorDeviceClass.ENUM,
    options=list(PowerState),
    value_fn=lambda s: s.power.state(s.online),
)
LOADED_MODEL = BackendSensorDescription(
    key="loaded_model",
    translation_key="loaded_model",
    entity_category=EntityCategory.DIAGNOSTIC,
    value_fn=_loaded_model,
)


@dataclass(frozen=True, kw_only=True)
class CounterDescription(SensorEntityDescription):
    """A counter that survives restarts, kept in an attribute of its owner.

    Sensors read it there, and seed it there after a restore.
    """

    attribute: str


BACKEND_COUNTERS: tuple[CounterDescription, ...] = (
    CounterDescription(
        key="requests",
        translation_key="requests",
        state_class=SensorStateClass.TOTAL_INCREASING,
        attribute="requests",
    ),
    CounterDescription(
        key="failures",
        translation_key="failures",
        state_class=SensorStateClass.TOTAL_INCREASING,
        attribute="failures",
    ),
    CounterDescription(
        key="skipped_requests",
        translation_key="skipped_requests",
        state_class=SensorStateClass.TOTAL_INCREASING,
        attribute="skipped",
    ),
    CounterDescription(
        key="failed_health_checks",
        translation_key="failed_health_checks",
        state_class=SensorStateClass.TOTAL_INCREASING,
        entity_category=EntityCategory.DIAGNOSTIC,
        attribute="failed_probes",
    ),
)

FALLBACKS = CounterDescription(
    key="fallbacks",
    translation_key="fallbacks",
    state_class=SensorStateClass.TOTAL_INCREASING,
    attribute="fallbacks",
)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: LLMRouterConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    """Add the backends' sensors and the router's."""
    for coordinator in entry.runtime_data.coordinators.values():
        kind = coordinator.router.states[coordinator.backend_name].config.kind
        entities: list[SensorEntity] = [
            MeasurementSensor(entry, coordinator, description)
            for description in BACKEND_SENSORS
        ]
        entities.append(LastErrorSensor(entry, coordinator, LAST_ERROR))
        entities.append(PredictionSensor(entry, coordinator, PREDICTED_FIRST_WORD))
        if kind is BackendKind.OLLAMA:  # only Ollama says what it has loaded
            entities.append(LoadedModelSensor(entry, coordinator, LOADED_MODEL))
        entities += [
            BackendCounter(entry, coordinator, description)
            for description in BACKEND_COUNTERS
        ]
        power = coordinator.router.states[coordinator.backend_name].power
        if power.can_wake or power.config.sleep is not None:
            entities.append(BackendSensor(entry, coordinator, POWER_STATE))
        if power.can_wake:
            entities += [
                LastWokenSensor(entry, coordinator, "last_woken"),
                WakeTimeSensor(entry, coordinator, "wake_time"),
            ]
        async_add_entities(entities, config_subentry_id=coordinator.subentry_id)
    async_add_entities([LastBackendSensor(entry), RouterCounter(entry, FALLBACKS)])


class BackendSensor(LLMRouterBackendEntity, SensorEntity):
    """A sensor of one backend."""

    entity_description: BackendSensorDescription

    def __init__(
        self,
        entry: LLMRouterConfigEntry,
        coordinator: BackendHealthCoordinator,
        description: BackendSensorDescription,
    ) -> None:
        """Create the sensor."""
        super().__init__(entry, coordinator, description.key)
        self.entity_description = description

    @property
    def available(self) -> bool:
        """Whether the backend can have a value for this sensor."""
        return super().available and self.entity_description.available_fn(self.backend)

    @property
    def native_value(self) -> StateType:
        """The sensor's value."""
        return self.entity_description.value_fn(self.backend)


class MeasurementSensor(BackendSensor, RestoreSensor):
    """The last measurement; until there is one, the one before a reload."""

    _restored: StateType = None

    async def async_added_to_hass(self) -> None:
        """Restore the last measured value."""
        await super().async_added_to_hass()
        last = await self.async_get_last_sensor_data()
        if last is not None and isinstance(last.native_value, int | float):
            self._restored = last.native_value

    @property
    def native_value(self) -> StateType:
        """The newest measurement, or the restored one."""
        if self.backend.last_stats is None:
            return self._restored
        return super().native_value


class LastErrorSensor(BackendSensor):
    """Why the backend last failed, with the server's or client's own words."""

    @property
    def extra_state_attributes(self) -> Mapping[str, Any]:
        """The error's message, such as "connection refused"."""
        error = self.backend.last_error
        return {"message": error.message if error else None}


class PredictionSensor(LLMRouterBackendEntity, SensorEntity):
    """The backend's predicted time to the first answer word of a short request.

    Its parts (queue, model load, prompt, reasoning, network) are attributes.
    Predicted when what it depends on changed, not at every state write.
    """

    _forecast: Forecast

    _unrecorded_attributes = frozenset(
        {"queue", "load", "prompt", "reasoning", "network", "think"}
    )

    def __init__(
        self,
        entry: LLMRouterConfigEntry,
        coordinator: BackendHealthCoordinator,
        description: SensorEntityDescription,
    ) -> None:
        """Create the sensor."""
        super().__init__(entry, coordinator, description.key)
        self.entity_description = description

    async def async_added_to_hass(self) -> None:
        """Predict once before the first write; after, when the inputs change."""
        self._forecast = self._predict()
        await super().async_added_to_hass()

    @callback
    def _handle_coordinator_update(self) -> None:
        """Predict anew on each update.

        Updates come from health checks and from the router's news of the
        backend, which BackendUpdates rate-limits.
        """
        self._forecast = self._predict()
        self.async_write_if_changed()

    def _predict(self) -> Forecast:
        return self.coordinator.router.forecast(self.coordinator.backend_name)

    @property
    def available(self) -> bool:
        """Not while the backend is down or its breaker open: it would not answer."""
        state = self.backend
        return (
            super().available and state.online is not False and state.breaker.allows()
        )

    @property
    def native_value(self) -> float | None:
        """Milliseconds; unknown while the backend is busy for an unknown time."""
        total = self._forecast.total
        return round(total * 1000, 1) if math.isfinite(total) else None

    @property
    def extra_state_attributes(self) -> Mapping[str, Any]:
        """The parts of the prediction, in seconds."""
        forecast = self._forecast
        return {
            "queue": forecast.queue,
            "load": forecast.load,
            "prompt": round(forecast.prompt, 3),
            "reasoning": round(forecast.reasoning, 3),
            "network": round(forecast.network, 3),
            "think": forecast.think,
        }


class LoadedModelSensor(BackendSensor):
    """The model Ollama holds in memory, with its VRAM and unload time."""

    # They change with every request; history of them is noise.
    _unrecorded_attributes = frozenset({"size_vram", "expires_at"})

    @property
    def extra_state_attributes(self) -> Mapping[str, Any]:
        """VRAM in bytes and when Ollama unloads the model."""
        return _loaded_model_attributes(self.backend)


class _Restoring(RestoreSensor):
    """Seeds a counter from its last state, so totals survive restarts."""

    entity_description: CounterDescription

    def _counted(self) -> Any:
        raise NotImplementedError

    async def async_added_to_hass(self) -> None:
        """Restore the count before the first state is written."""
        await super().async_added_to_hass()
        last = await self.async_get_last_sensor_data()
        if last is not None and isinstance(last.native_value, (int, float)):
            attribute = self.entity_description.attribute
            total = int(last.native_value) + self.native_value
            setattr(self._counted(), attribute, total)

    @property
    def native_value(self) -> int:
        """The count."""
        return int(getattr(self._counted(), self.entity_description.attribute))


class BackendCounter(LLMRouterBackendEntity, _Restoring):
    """A request counter of one backend."""

    def __init__(
        self,
        entry: LLMRouterConfigEntry,
        coordinator: BackendHealthCoordinator,
        description: CounterDescription,
    ) -> None:
        """Create the counter."""
        super().__init__(entry, coordinator, description.key)
        self.entity_description = description

    def _counted(self) -> BackendState:
        return self.backend


class RouterCounter(LLMRouterStateEntity, _Restoring):
    """A counter of the router."""

    def __init__(
        self, entry: LLMRouterConfigEntry, description: CounterDescription
    ) -> None:
        """Create the counter."""
        super().__init__(entry, description.key)
        self.entity_description = description

    def _counted(self) -> LLMRouterData:
        return self.entry.runtime_data


class LastBackendSensor(LLMRouterStateEntity, RestoreSensor):
    """The backend that answered the last request, across reloads too."""

    _attr_device_class = SensorDeviceClass.ENUM
    _attr_translation_key = "last_backend"

    def __init__(self, entry: LLMRouterConfigEntry) -> None:
        """Create the sensor; its options are the backend names."""
        super().__init__(entry, "last_backend")
        self._attr_options = list(entry.runtime_data.backend_subentries)

    async def async_added_to_hass(self) -> None:
        """Restore the last backend, if the router still has it."""
        await super().async_added_to_hass()
        data = self.entry.runtime_data
        last = await self.async_get_last_sensor_data()
        if (
            data.last_backend is None
            and last is not None
            and last.native_value in data.backend_subentries
        ):
            data.last_backend = str(last.native_value)

    @property
    def native_value(self) -> str | None:
        """The backend's name."""
        return self.entry.runtime_data.last_backend


class _PowerSensor(LLMRouterBackendEntity, RestoreSensor):
    """A sensor of how the backend's server wakes, kept across restarts."""

    @property
    def power(self) -> Power:
        """The backend's waking and sleeping."""
        return self.backend.power

    async def async_added_to_hass(self) -> None:
        """Hand the value from before the restart to the engine."""
        await super().async_added_to_hass()
        last = await self.async_get_last_sensor_data()
        if last is not None and last.native_value is not None:
            self._restore(last.native_value)

    def _restore(self, value: Any) -> None:
        raise NotImplementedError


class LastWokenSensor(_PowerSensor):
    """When the router last woke the server and it answered."""

    _attr_device_class = SensorDeviceClass.TIMESTAMP
    _attr_translation_key = "last_woken"

    def _restore(self, value: Any) -> None:
        if self.power.last_woken is None and isinstance(value, datetime):
            self.power.last_woken = value

    @property
    def native_value(self) -> datetime | None:
        """The time of the first answer after the wake action."""
        return self.power.last_woken


class WakeTimeSensor(_PowerSensor):
    """Seconds from the wake action to the first answer, learnt from wakes."""

    _attr_device_class = SensorDeviceClass.DURATION
    _attr_native_unit_of_measurement = UnitOfTime.SECONDS
    _attr_suggested_display_precision = 0
    _attr_entity_category = EntityCategory.DIAGNOSTIC
    _attr_translation_key = "wake_time"

    def _restore(self, value: Any) -> None:
        if isinstance(value, int | float):
            self.power.learn(float(value))

    @property
    def native_value(self) -> float | None:
        """Unknown until a wake was seen through."""
        return self.power.learnt_wake_time
