"""Waking a backend's server when a turn needs it, and letting it sleep.

The actions that wake and suspend the machine belong to the home (a
Wake-on-LAN packet, a smart plug, a script): they are injected as plain
async callables that raise ActionFailed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
import logging
import math
from statistics import fmean

from .errors import ActionFailed, BackendError, DidNotWake

_LOGGER = logging.getLogger(__name__)

type PowerAction = Callable[[], Awaitable[None]]
"""Runs a wake or sleep action; raises ActionFailed."""


class PowerState(StrEnum):
    """Whether a backend's server is up, and whether the router made it so."""

    AWAKE = "awake"
    WAKING = "waking"
    ASLEEP = "asleep"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True, slots=True)
class PowerConfig:
    """How one backend's server is woken and put to sleep."""

    wake: PowerAction | None = None
    sleep: PowerAction | None = None
    wake_time: float | None = None
    """Seconds the server is expected to need to answer; until learnt."""
    idle_time: float | None = None
    """Seconds without a served turn before the sleep action runs."""


@dataclass(frozen=True, slots=True)
class WakeTiming:
    """How a wake is watched (seconds)."""

    probe_interval: float = 2.0
    margin: float = 30.0
    """Probing goes on for the wake time plus the larger of this and half it."""
    retry_after: float = 60.0
    """A turn runs the wake action at most once in this time."""
    default_wake_time: float = 60.0
    """The wake time when neither configured nor learnt: a cold boot."""


LEARNT_FROM = 5
"""How many of the latest wakes the learnt wake time averages."""


class Power:
    """Wakes one backend's server on demand and puts it to sleep when idle.

    probe checks the server (and feeds the router's breaker, so that the
    next turn goes to it as soon as it answers); in_flight says whether a
    request holds or waits for the server; report takes a failed action or
    wake; changed is called on every change of what is shown.
    """

    def __init__(
        self,
        config: PowerConfig,
        *,
        name: str,
        probe: Callable[[], Awaitable[bool]],
        in_flight: Callable[[], bool],
        report: Callable[[BackendError], None],
        changed: Callable[[], None],
        timing: WakeTiming | None = None,
    ) -> None:
        self.config = config
        self.timing = timing or WakeTiming()
        self._name = name
        self._probe = probe
        self._in_flight = in_flight
        self._report = report
        self._changed = changed
        self.last_woken: datetime | None = None
        self.failed_wakes = 0
        """Wakes in a row that did not end in an answer."""
        self.wake_error: BackendError | None = None
        """Why the last of those failed."""
        self.wakes = 0
        """Times the wake action ran."""
        self.put_to_sleep = False
        """The router ran the sleep action; cleared once the server was
        seen down and then up, or woken."""
        self._seen_down = False
        self._wake_times: deque[float] = deque(maxlen=LEARNT_FROM)
        self._last_run = -math.inf
        self._waking: asyncio.Task[bool] | None = None
        self._sleeping: asyncio.Task[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def can_wake(self) -> bool:
        """Whether there is a wake action."""
        return self.config.wake is not None

    @property
    def waking(self) -> bool:
        """Whether a wake is under way."""
        return self._waking is not None

    @property
    def learnt_wake_time(self) -> float | None:
        """Seconds from the wake action to the first answer, on average."""
        return fmean(self._wake_times) if self._wake_times else None

    @property
    def wake_time(self) -> float:
        """Seconds a wake is expected to take: learnt, else configured."""
        return (
            self.learnt_wake_time
            or self.config.wake_time
            or self.timing.default_wake_time
        )

    def learn(self, wake_time: float) -> None:
        """Take a wake time kept from before (a restart)."""
        if not self._wake_times:
            self._wake_times.append(wake_time)

    def state(self, online: bool | None) -> PowerState | None:
        """The server's state, given whether it answered last (None: unknown)."""
        if self.waking:
            return PowerState.WAKING
        if self.put_to_sleep:
            return PowerState.ASLEEP
        if online is None:
            return None
        if online:
            return PowerState.AWAKE
        if self.can_wake and not self.failed_wakes:
            return PowerState.ASLEEP
        return PowerState.UNREACHABLE

    def wake_on_demand(self) -> bool:
        """A turn found the server down: wake it, rate limited.

        Returns whether it is waking. The action runs at most once per
        retry_after, and never while a wake is under way.
        """
        if self.waking:
            return True
        if not self.can_wake or self._closed:
            return False
        if asyncio.get_running_loop().time() - self._last_run < self.timing.retry_after:
            return False
        self._start_wake()
        return True

    async def wake(self, *, wait: bool) -> bool:
        """Wake the server now (joining a wake under way), not rate limited.

        With wait, returns once it answered (True) or the wake ran out
        (False); without, returns True at once.
        """
        if not self.can_wake:
            raise ValueError(f"{self._name} has no wake action")
        if self._closed:
            return False
        task = self._waking or self._start_wake()
        return await asyncio.shield(task) if wait else True

    def note_probe(self, online: bool) -> None:
        """A probe (any) ended: start counting idle time on an answer."""
        if not online:
            self._seen_down = True
            return
        if self.put_to_sleep and self._seen_down:
            self.put_to_sleep = False
            self._changed()
        if self._idle_timer is None and not self.put_to_sleep:
            self._arm_idle()

    def note_served(self) -> None:
        """A turn was served: idle time counts from now."""
        self._arm_idle()

    async def close(self) -> None:
        """Stop timers and tasks for good."""
        self._closed = True
        self._cancel_idle()
        tasks = [task for task in (self._waking, self._sleeping) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start_wake(self) -> asyncio.Task[bool]:
        # Asleep or not, the machine is not idle while it wakes.
        self._cancel_idle()
        task = asyncio.get_running_loop().create_task(
            self._wake(), name=f"llm_router wake {self._name}"
        )
        self._waking = task
        task.add_done_callback(self._woke)
        self._changed()
        return task

    def _woke(self, _: asyncio.Task[bool]) -> None:
        self._waking = None
        self._changed()

    async def _wake(self) -> bool:
        assert self.config.wake is not None
        if self._sleeping is not None:
            await asyncio.gather(self._sleeping, return_exceptions=True)
        loop = asyncio.get_running_loop()
        started = self._last_run = loop.time()
        self.wakes += 1
        self.put_to_sleep = False
        _LOGGER.info("Waking backend %s", self._name)
        try:
            await self.config.wake()
        except ActionFailed as err:
            self._wake_failed(err)
            return False
        wake_time = self.wake_time
        deadline = started + wake_time + max(self.timing.margin, wake_time / 2)
        was_down = False
        while True:
            probed = loop.time()
            if await self._probe():
                break
            was_down = True
            next_probe = probed + self.timing.probe_interval
            if next_probe > deadline:
                self._wake_failed(
                    DidNotWake(f"did not wake within {deadline - started:.0f} s")
                )
                return False
            await asyncio.sleep(next_probe - loop.time())
        # A server that was up already says nothing of how long a wake takes.
        if was_down:
            self._wake_times.append(loop.time() - started)
        self.last_woken = datetime.now(UTC)
        self.failed_wakes = 0
        self.wake_error = None
        _LOGGER.info("Backend %s woke", self._name)
        self._arm_idle()
        return True

    def _wake_failed(self, error: BackendError) -> None:
        self.failed_wakes += 1
        self.wake_error = error
        _LOGGER.warning("Waking backend %s failed: %s", self._name, error)
        self._report(error)

    def _arm_idle(self) -> None:
        if self._closed or self.config.sleep is None or self.config.idle_time is None:
            return
        self._cancel_idle()
        self._idle_timer = asyncio.get_running_loop().call_later(
            self.config.idle_time, self._idle_over
        )

    def _cancel_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_over(self) -> None:
        self._idle_timer = None
        if self._in_flight():
            # Served or not, idle time counts again from the next quiet.
            self._arm_idle()
            return
        task = asyncio.get_running_loop().create_task(
            self._sleep(), name=f"llm_router sleep {self._name}"
        )
        self._sleeping = task
        task.add_done_callback(self._slept)

    def _slept(self, _: asyncio.Task[None]) -> None:
        self._sleeping = None

    async def _sleep(self) -> None:
        assert self.config.sleep is not None
        # Turns from now on pass the server over (and wake it).
        self.put_to_sleep = True
        self._seen_down = False
        self._changed()
        _LOGGER.info("Putting backend %s to sleep", self._name)
        try:
            await self.config.sleep()
        except ActionFailed as err:
            _LOGGER.warning("Putting backend %s to sleep failed: %s", self._name, err)
            self.put_to_sleep = False
            self._report(err)
            self._changed()
            self._arm_idle()
