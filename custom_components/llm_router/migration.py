"""Stored data of older versions, brought up to date."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant

from .const import CONF_KIND, CONF_THINKING, LOGGER, Thinking
from .engine.models import BackendKind
from .runtime import backend_subentries

# Version 1's two thinking switches.
_THINK = "think"
_THINK_AUTO = "think_auto"


def thinking_as_one_choice(data: Mapping[str, Any]) -> dict[str, Any]:
    """Version 1 backend data with its two thinking switches as one choice.

    "Think only when fast enough" won over "Let the model think"; only Ollama
    can leave thinking out, so elsewhere it meant thinking always.
    """
    migrated = {k: v for k, v in data.items() if k not in (_THINK, _THINK_AUTO)}
    if data.get(_THINK_AUTO):
        is_ollama = data.get(CONF_KIND) == BackendKind.OLLAMA
        migrated[CONF_THINKING] = Thinking.AUTO if is_ollama else Thinking.ON
    else:
        migrated[CONF_THINKING] = Thinking.ON if data.get(_THINK) else Thinking.OFF
    return migrated


def async_migrate(hass: HomeAssistant, entry: ConfigEntry) -> None:
    """Bring a router entry and its backends to the current version."""
    if entry.version == 1:
        for subentry in backend_subentries(entry):
            hass.config_entries.async_update_subentry(
                entry, subentry, data=thinking_as_one_choice(subentry.data)
            )
        hass.config_entries.async_update_entry(entry, version=2, minor_version=1)
        LOGGER.debug("Router %s migrated to version 2", entry.title)
