"""What every backend on one server shares, whichever router it belongs to."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from .breaker import CircuitBreaker
from .models import BackendConfig
from .predictor import Hold
from .urls import normalize_url


@dataclass(eq=False)
class Server:
    """One LLM server's limit and health.

    Its request slots, who holds and who waits for them, and its breaker.
    """

    max_parallel: int
    slots: asyncio.Semaphore
    breaker: CircuitBreaker
    holding: list[Hold] = field(default_factory=list)
    """The slots in use: since when, and for how long they are expected."""
    waiting: int = 0
    """Requests in line for a slot."""

    @classmethod
    def create(cls, *, max_parallel: int, failure_threshold: int) -> Server:
        """A server nobody has used yet."""
        max_parallel = max(1, max_parallel)
        return cls(
            max_parallel=max_parallel,
            slots=asyncio.Semaphore(max_parallel),
            breaker=CircuitBreaker(failure_threshold=failure_threshold),
        )


def server_key(config: BackendConfig) -> str:
    """The server a backend is on: its URL, without the /v1 of OpenAI's API."""
    return normalize_url(config.url, config.kind).removesuffix("/v1")


class ServerRegistry:
    """Servers by URL, shared by every router with a backend on them.

    A server is kept while some router holds it. Its max_parallel is that of
    the first backend that acquired it.
    """

    def __init__(self, *, failure_threshold: int = 3) -> None:
        self._failure_threshold = failure_threshold
        self._servers: dict[str, Server] = {}
        self._holders: Counter[str] = Counter()

    def acquire(self, config: BackendConfig) -> Server:
        """The backend's server, shared with everyone else on it."""
        key = server_key(config)
        if key not in self._servers:
            self._servers[key] = Server.create(
                max_parallel=config.max_parallel,
                failure_threshold=self._failure_threshold,
            )
        self._holders[key] += 1
        return self._servers[key]

    def release(self, config: BackendConfig) -> None:
        """The backend no longer uses its server."""
        key = server_key(config)
        self._holders[key] -= 1
        if self._holders[key] <= 0:
            del self._holders[key], self._servers[key]
