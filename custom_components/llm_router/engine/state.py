"""What the router knows about one backend."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
import math

from .backend import Backend
from .breaker import CircuitBreaker
from .errors import AuthFailed, BackendError
from .models import BackendConfig, Capability, LoadedModel, ModelDetails
from .outcomes import Attempt
from .predictor import Hold, LatencyModel
from .servers import Server
from .stats import GenerationStats


@dataclass(eq=False)
class BackendState:
    """Everything the router knows about one backend."""

    backend: Backend
    server: Server
    """Slots, their holders and the breaker: shared by every backend on it."""
    online: bool | None = None
    requests: int = 0
    """Requests sent, answered or failed."""
    failures: int = 0
    skipped: int = 0
    """Requests not sent because the breaker was open."""
    failed_probes: int = 0
    last_stats: GenerationStats | None = None
    last_first_word: float | None = None
    """Seconds from the request to the first answer word, last answer."""
    last_error: BackendError | None = None
    version: str | None = None
    loaded_models: tuple[LoadedModel, ...] = ()
    details: ModelDetails | None = None
    unsupported: set[Capability] = field(default_factory=set)
    auth_error: AuthFailed | None = None
    """The server rejected the API key: only a new key (a new router) helps."""
    latency: LatencyModel = field(default_factory=LatencyModel)
    loaded_until: float = math.inf
    """When the server unloads the model (loop time); inf until known."""
    loading_since: float | None = None
    recent_attempts: deque[Attempt] = field(default_factory=lambda: deque(maxlen=10))

    @property
    def config(self) -> BackendConfig:
        """The backend's configuration."""
        return self.backend.config

    @property
    def name(self) -> str:
        """The backend's name."""
        return self.backend.config.name

    @property
    def breaker(self) -> CircuitBreaker:
        """The server's circuit breaker."""
        return self.server.breaker

    @property
    def slots(self) -> asyncio.Semaphore:
        """The server's request slots."""
        return self.server.slots

    @property
    def max_parallel(self) -> int:
        """How many requests the server answers at once."""
        return self.server.max_parallel

    @property
    def holding(self) -> list[Hold]:
        """The server's slots in use, by any backend on it."""
        return self.server.holding

    @property
    def waiting(self) -> int:
        """Requests in line for one of the server's slots."""
        return self.server.waiting

    @waiting.setter
    def waiting(self, count: int) -> None:
        self.server.waiting = count

    def relearn(self, details: ModelDetails) -> None:
        """Replace what is known of the model, refusals included.

        A server may get a new model under the same name (ollama pull) or
        new settings (llama.cpp with --jinja) without going down.
        """
        self.details = details
        self.unsupported.clear()

    def supports(self, capability: Capability) -> bool:
        """Whether the model is known (or assumed) to support a capability."""
        if capability in self.unsupported:
            return False
        caps = self.details.capabilities if self.details else None
        return caps is None or capability in caps

    def has_free_slot(self) -> bool:
        """Whether a request would be sent at once."""
        return not self.waiting and not self.slots.locked()
