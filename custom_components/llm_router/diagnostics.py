"""Diagnostics: configuration without secrets, health and recent outcomes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
import math
from typing import Any

from homeassistant.components.diagnostics import async_redact_data
from homeassistant.const import CONF_API_KEY, CONF_URL
from homeassistant.core import HomeAssistant

from .engine.router import Router
from .engine.state import BackendState
from .engine.urls import without_credentials
from .runtime import LLMRouterConfigEntry

TO_REDACT = {CONF_API_KEY}


def _config(data: Mapping[str, Any]) -> dict[str, Any]:
    """A backend's configuration without its key or the URL's credentials."""
    config = async_redact_data(dict(data), TO_REDACT)
    config[CONF_URL] = without_credentials(str(config[CONF_URL]))
    return config


def _json_safe(data: Any) -> Any:
    """Data with infinite times (a wait of unknown length) as None: not JSON."""
    if isinstance(data, dict):
        return {key: _json_safe(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_json_safe(value) for value in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def _backend(router: Router, state: BackendState) -> dict[str, Any]:
    details = state.details.capabilities if state.details else None
    health: dict[str, Any] = _json_safe(
        {
            "online": state.online,
            "breaker": state.breaker.state,
            "consecutive_failures": state.breaker.consecutive_failures,
            "requests": state.requests,
            "failures": state.failures,
            "skipped": state.skipped,
            "failed_probes": state.failed_probes,
            "waiting": state.waiting,
            "version": state.version,
            "capabilities": sorted(details) if details is not None else None,
            "unsupported": sorted(state.unsupported),
            "loaded_models": [asdict(model) for model in state.loaded_models],
            "last_error": (
                {"kind": state.last_error.kind, "message": state.last_error.message}
                if state.last_error
                else None
            ),
            "last_stats": asdict(state.last_stats) if state.last_stats else None,
            "recent_attempts": [asdict(attempt) for attempt in state.recent_attempts],
            "time_to_first_word": state.last_first_word,
            "keeps_warm": router.keeps_warm(state),
            "prediction": asdict(router.forecast(state.name)),
        }
    )
    return health


async def async_get_config_entry_diagnostics(
    hass: HomeAssistant, entry: LLMRouterConfigEntry
) -> dict[str, Any]:
    """Return diagnostics of a router."""
    data = entry.runtime_data
    return {
        "options": dict(entry.options),
        "backends": {
            name: {
                "config": _config(entry.subentries[subentry_id].data),
                "health": _backend(data.router, data.router.states[name]),
            }
            for name, subentry_id in data.backend_subentries.items()
        },
        "fallbacks": data.fallbacks,
        "last_backend": data.last_backend,
    }
