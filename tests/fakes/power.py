"""A fake machine that is off until woken: its server boots some time later."""

from __future__ import annotations

import asyncio

from .base import FakeServer, free_port


class SleepingMachine:
    """Holds a fake server on a fixed loopback port, running only when awake.

    wake() is what a wake action does (a magic packet, a plug): the server
    starts listening boot_time seconds later. sleep() stops it at once.
    """

    def __init__(self, server: FakeServer, boot_time: float) -> None:
        self.server = server
        self.boot_time = boot_time
        self.port = free_port()
        self.wakes = 0
        self.sleeps = 0
        self.booted_at: float | None = None
        """When the server last started listening (loop time)."""
        self._boot: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The server's URL, whether it listens or not."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def awake(self) -> bool:
        """Whether the server listens."""
        return self.server.port != 0

    async def wake(self) -> None:
        """Press the power button: the server listens boot_time from now."""
        self.wakes += 1
        if not self.awake and self._boot is None:
            self._boot = asyncio.get_running_loop().create_task(self._booting())

    async def _booting(self) -> None:
        await asyncio.sleep(self.boot_time)
        await self.start()
        self._boot = None

    async def start(self) -> None:
        """Be awake already."""
        await self.server.start(self.port)
        self.booted_at = asyncio.get_running_loop().time()

    async def sleep(self) -> None:
        """Suspend: the server stops listening."""
        self.sleeps += 1
        await self.off()

    async def off(self) -> None:
        """Stop the server and any boot under way."""
        if self._boot is not None:
            self._boot.cancel()
            await asyncio.gather(self._boot, return_exceptions=True)
            self._boot = None
        await self.server.stop()
        self.server.port = 0
