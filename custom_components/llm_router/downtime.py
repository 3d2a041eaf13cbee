"""When each backend went down, kept across restarts and reloads."""

from __future__ import annotations

from datetime import datetime

from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.storage import Store
from homeassistant.util import dt as dt_util
from homeassistant.util.hass_dict import HassKey

from .const import DOMAIN

DATA_DOWNTIME: HassKey[Downtime] = HassKey(f"{DOMAIN}_downtime")
STORAGE_VERSION = 1


class Downtime:
    """Since when each backend (by subentry id) has been down."""

    def __init__(
        self, store: Store[dict[str, str]], since: dict[str, datetime]
    ) -> None:
        """Start from what was stored."""
        self._store = store
        self._since = since

    @classmethod
    async def async_load(cls, hass: HomeAssistant) -> Downtime:
        """Read what was stored before this start."""
        store = Store[dict[str, str]](hass, STORAGE_VERSION, f"{DOMAIN}.downtime")
        stored = await store.async_load() or {}
        since = {
            subentry_id: parsed
            for subentry_id, text in stored.items()
            if (parsed := dt_util.parse_datetime(text)) is not None
        }
        return cls(store, since)

    @callback
    def async_down(self, subentry_id: str) -> datetime:
        """Note the backend is down; since when it has been."""
        if (since := self._since.get(subentry_id)) is None:
            since = self._since[subentry_id] = dt_util.utcnow()
            self._async_save()
        return since

    @callback
    def async_up(self, subentry_id: str) -> None:
        """Note the backend answers."""
        if self._since.pop(subentry_id, None) is not None:
            self._async_save()

    @callback
    def async_keep_only(self, subentry_ids: set[str]) -> None:
        """Forget backends that no router has any more."""
        for subentry_id in set(self._since) - subentry_ids:
            self.async_up(subentry_id)

    @callback
    def _async_save(self) -> None:
        self._store.async_delay_save(
            lambda: {key: when.isoformat() for key, when in self._since.items()}
        )
