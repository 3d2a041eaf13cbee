"""A backend's wake and sleep actions: Home Assistant actions the engine runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeassistant.core import Context, HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers.script import Script, async_validate_actions_config
import probatio

from .const import (
    CONF_IDLE_TIME,
    CONF_SLEEP_ACTION,
    CONF_WAKE_ACTION,
    CONF_WAKE_TIME,
    DOMAIN,
    LOGGER,
)
from .engine.errors import ActionFailed
from .engine.wake import PowerConfig


class ActionRunner:
    """Runs one configured action sequence, as the router, not as a user.

    Each run has a context of its own with no user: the router, not the
    person whose turn found the server down, starts it. Errors come out as
    ActionFailed with Home Assistant's words.
    """

    def __init__(self, hass: HomeAssistant, sequence: Any, name: str) -> None:
        """Prepare the action; it is checked on its first run."""
        self._hass = hass
        self._sequence = cv.ensure_list(sequence)
        self._name = name
        self._script: Script | None = None

    async def __call__(self) -> None:
        """Run the action to its end."""
        try:
            if self._script is None:
                sequence = await async_validate_actions_config(
                    self._hass, self._sequence
                )
                self._script = Script(
                    self._hass,
                    sequence,
                    self._name,
                    DOMAIN,
                    log_exceptions=False,
                    logger=LOGGER,
                )
            await self._script.async_run(context=Context())
        except (HomeAssistantError, probatio.Invalid) as err:
            raise ActionFailed(f"{self._name}: {err}") from err

    async def async_unload(self) -> None:
        """Stop a run under way and free the script."""
        if self._script is not None:
            await self._script.async_unload()


def power_config(
    hass: HomeAssistant, backend: str, data: Mapping[str, Any]
) -> tuple[PowerConfig, list[ActionRunner]]:
    """A backend's power settings from its subentry data, and their runners."""
    runners: dict[str, ActionRunner] = {
        key: ActionRunner(hass, sequence, f"{backend} {key.replace('_', ' ')}")
        for key in (CONF_WAKE_ACTION, CONF_SLEEP_ACTION)
        if (sequence := data.get(key))
    }
    wake_time = data.get(CONF_WAKE_TIME)
    idle_time = data.get(CONF_IDLE_TIME)
    return (
        PowerConfig(
            wake=runners.get(CONF_WAKE_ACTION),
            sleep=runners.get(CONF_SLEEP_ACTION),
            wake_time=float(wake_time) if wake_time else None,
            idle_time=float(idle_time) * 60 if idle_time else None,
        ),
        list(runners.values()),
    )
