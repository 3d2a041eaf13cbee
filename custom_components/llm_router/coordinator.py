"""Background health probes of one backend, with repairs."""

from __future__ import annotations

from datetime import timedelta

from homeassistant.config_entries import ConfigEntry
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr, issue_registry as ir
from homeassistant.helpers.update_coordinator import DataUpdateCoordinator
from homeassistant.util import dt as dt_util

from .const import DOMAIN, LOGGER, REAUTH_SUBENTRY_ID
from .downtime import Downtime
from .engine.errors import BackendError, ModelNotFound
from .engine.router import Router
from .engine.urls import without_credentials
from .issues import did_not_wake_issue_id, model_missing_issue_id, unreachable_issue_id

UNREACHABLE_ISSUE_AFTER = timedelta(hours=1)
DID_NOT_WAKE_ISSUE_AFTER = 3
"""Failed wakes in a row that raise a repair issue."""


class BackendHealthCoordinator(DataUpdateCoordinator[bool]):
    """Probes a backend; its data says whether the backend answered.

    Probes feed the router's circuit breaker, so a backend that comes back
    is used again without waiting for a turn to find out. A backend that is
    down is probed more often.
    """

    config_entry: ConfigEntry

    def __init__(
        self,
        hass: HomeAssistant,
        entry: ConfigEntry,
        *,
        router: Router,
        backend_name: str,
        subentry_id: str,
        interval: timedelta,
        downtime: Downtime,
        always_on: bool,
    ) -> None:
        """Probe backend_name every interval.

        A backend that is always_on gets a repair issue when it has been
        down for long; one that sleeps on purpose does not.
        """
        super().__init__(
            hass,
            LOGGER,
            config_entry=entry,
            name=f"LLM Router backend {backend_name}",
            update_interval=interval,
        )
        self.router = router
        self.backend_name = backend_name
        self.subentry_id = subentry_id
        self.interval = interval
        self.interval_while_down = max(timedelta(seconds=5), interval / 3)
        self.downtime = downtime
        self.always_on = always_on
        self._version: str | None = None

    async def _async_update_data(self) -> bool:
        online = await self.router.async_probe(self.backend_name)
        self.update_interval = self.interval if online else self.interval_while_down
        state = self.router.states[self.backend_name]
        unreachable = unreachable_issue_id(self.subentry_id)
        if online:
            self.downtime.async_up(self.subentry_id)
            ir.async_delete_issue(self.hass, DOMAIN, unreachable)
            self._update_sw_version(state.version)
            await self._check_model()
        elif state.auth_error is None:
            down_for = dt_util.utcnow() - self.downtime.async_down(self.subentry_id)
            # Asleep because the router put it to sleep: as if not always on.
            if not self.always_on or state.power.put_to_sleep:
                ir.async_delete_issue(self.hass, DOMAIN, unreachable)
            elif down_for > UNREACHABLE_ISSUE_AFTER:
                self._raise_issue(
                    unreachable,
                    "backend_unreachable",
                    ir.IssueSeverity.WARNING,
                    url=without_credentials(state.config.url),
                )
        self._report_wakes()
        if state.auth_error is not None:
            # Home Assistant raises the repair issue that leads to the flow.
            self.config_entry.async_start_reauth(
                self.hass, data={REAUTH_SUBENTRY_ID: self.subentry_id}
            )
        return online

    def _report_wakes(self) -> None:
        """A repair issue while wakes keep failing; gone after a good one."""
        power = self.router.states[self.backend_name].power
        issue_id = did_not_wake_issue_id(self.subentry_id)
        if power.failed_wakes < DID_NOT_WAKE_ISSUE_AFTER:
            ir.async_delete_issue(self.hass, DOMAIN, issue_id)
            return
        self._raise_issue(
            issue_id,
            "did_not_wake",
            ir.IssueSeverity.WARNING,
            count=str(power.failed_wakes),
            error=power.wake_error.message if power.wake_error else "",
        )

    def _raise_issue(
        self, issue_id: str, key: str, severity: ir.IssueSeverity, **placeholders: str
    ) -> None:
        ir.async_create_issue(
            self.hass,
            DOMAIN,
            issue_id,
            is_fixable=False,
            severity=severity,
            translation_key=key,
            translation_placeholders={"backend": self.backend_name, **placeholders},
        )

    async def _check_model(self) -> None:
        """Check that the model is there, and learn its capabilities anew."""
        state = self.router.states[self.backend_name]
        issue_id = model_missing_issue_id(self.subentry_id)
        try:
            details = await state.backend.check_model()
        except ModelNotFound:
            self._raise_issue(
                issue_id,
                "model_missing",
                ir.IssueSeverity.ERROR,
                model=state.config.model,
            )
        except BackendError:
            return  # cannot tell now; the next probe asks again
        else:
            ir.async_delete_issue(self.hass, DOMAIN, issue_id)
            state.relearn(details)

    def _update_sw_version(self, version: str | None) -> None:
        """Show the server's version on the backend's device."""
        if version == self._version:
            return
        registry = dr.async_get(self.hass)
        device = registry.async_get_device_by_identifier(
            (DOMAIN, self.subentry_id), self.config_entry.entry_id
        )
        if device is not None:
            self._version = version
            registry.async_update_device(device.id, sw_version=version)
