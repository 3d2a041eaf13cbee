"""When a backend's entities hear that the router's state of it changed.

Each answered turn changes a backend's measurements; under a burst of turns
that would be a state write per sensor per turn, each one an event, a
recorder row and a frontend update. News of trouble (a failure, the
breaker, the server going down or coming back, waking) goes out at once;
everything else at once after a quiet second, else at the end of that
second, once for all the changes within it.
"""

from __future__ import annotations

from datetime import datetime
import math

from homeassistant.core import CALLBACK_TYPE, HassJob, HomeAssistant, callback
from homeassistant.helpers.event import async_call_later

from .engine.state import BackendState

UPDATE_INTERVAL = 1.0
"""Seconds: the most often a backend's entities update, but for trouble."""


def _health(state: BackendState) -> tuple[object, ...]:
    """What says whether the backend answers: shown the moment it changes."""
    return (
        state.online,
        state.breaker.state,
        state.failures,
        state.last_error,
        state.power.state(state.online),
    )


class BackendUpdates:
    """Calls the listeners of one backend's entities, rate limited but for trouble."""

    def __init__(self, hass: HomeAssistant, state: BackendState) -> None:
        """Follow one backend's state."""
        self._hass = hass
        self._state = state
        self._listeners: list[CALLBACK_TYPE] = []
        self._health = _health(state)
        self._sent_at = -math.inf
        self._planned: CALLBACK_TYPE | None = None
        self._job = HassJob(self._planned_send, cancel_on_shutdown=True)

    @callback
    def add(self, listener: CALLBACK_TYPE) -> CALLBACK_TYPE:
        """Call listener on changes; returns its remover."""
        self._listeners.append(listener)

        @callback
        def remove() -> None:
            self._listeners.remove(listener)
            if not self._listeners:
                self.cancel()

        return remove

    @callback
    def changed(self) -> None:
        """The router's state of the backend changed."""
        trouble = _health(self._state) != self._health
        if self._planned is not None and not trouble:
            return  # the planned update will show it
        wait = self._sent_at + UPDATE_INTERVAL - self._hass.loop.time()
        if trouble or wait <= 0:
            self.cancel()
            self._send()
        else:
            self._planned = async_call_later(self._hass, wait, self._job)

    @callback
    def cancel(self) -> None:
        """Drop a planned update."""
        if self._planned is not None:
            self._planned()
            self._planned = None

    @callback
    def _planned_send(self, _now: datetime) -> None:
        self._planned = None
        self._send()

    @callback
    def _send(self) -> None:
        self._sent_at = self._hass.loop.time()
        self._health = _health(self._state)
        for listener in list(self._listeners):
            listener()
