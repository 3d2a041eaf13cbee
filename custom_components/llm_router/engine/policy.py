"""Routing policies: the order in which backends are tried."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Protocol

from .breaker import CircuitBreaker
from .models import BackendConfig
from .predictor import Forecast


class PolicyName(StrEnum):
    """Policies a router can be configured with."""

    ORDERED = "ordered"
    FASTEST = "fastest"
    LOCAL_FIRST = "local_first"


class Candidate(Protocol):
    """What a policy needs to know of a backend."""

    @property
    def config(self) -> BackendConfig:
        """The backend's configuration."""
        ...

    @property
    def name(self) -> str:
        """The backend's name."""
        ...

    @property
    def breaker(self) -> CircuitBreaker:
        """Whether requests may go to it."""
        ...

    @property
    def online(self) -> bool | None:
        """Whether it answered last time it was asked."""
        ...


class Policy(Protocol):
    """Orders the backends for one request, first choice first."""

    def order[C: Candidate](
        self, backends: Sequence[C], forecasts: Mapping[str, Forecast]
    ) -> list[C]:
        """Return the backends in the order to try them.

        forecasts holds each backend's predicted time to the first answer word.
        """
        ...


def by_priority[C: Candidate](backends: Sequence[C]) -> list[C]:
    """Backends by configured priority (lower first), then name."""
    return sorted(backends, key=lambda s: (s.config.priority, s.config.name))


class OrderedPolicy:
    """Try backends by configured priority (lower first), then name."""

    def order[C: Candidate](
        self, backends: Sequence[C], forecasts: Mapping[str, Forecast]
    ) -> list[C]:
        """Return the backends sorted by priority."""
        return by_priority(backends)


class FastestPolicy:
    """Try the backend predicted to say its first answer word soonest.

    Backends whose breaker is open go last: they are skipped anyway.
    """

    def order[C: Candidate](
        self, backends: Sequence[C], forecasts: Mapping[str, Forecast]
    ) -> list[C]:
        """Return the backends by predicted time, ties by priority."""
        return sorted(
            by_priority(backends),
            key=lambda s: (not s.breaker.allows(), forecasts[s.name].total),
        )


class LocalFirstPolicy:
    """The first by priority answers unless it would be too slow.

    When its prediction exceeds the latency budget and a backend that is up
    is predicted faster, the order is the fastest policy's.
    """

    def __init__(self, latency_budget: float) -> None:
        self.latency_budget = latency_budget

    def order[C: Candidate](
        self, backends: Sequence[C], forecasts: Mapping[str, Forecast]
    ) -> list[C]:
        """Return the backends by priority, or by predicted time."""
        ordered = by_priority(backends)
        if not ordered:
            return ordered
        local = forecasts[ordered[0].name].total
        if local > self.latency_budget and any(
            s.breaker.allows()
            and s.online is not False
            and forecasts[s.name].total < local
            for s in ordered[1:]
        ):
            return FastestPolicy().order(backends, forecasts)
        return ordered


def create_policy(name: PolicyName, *, latency_budget: float) -> Policy:
    """The policy for a configured name."""
    match name:
        case PolicyName.ORDERED:
            return OrderedPolicy()
        case PolicyName.FASTEST:
            return FastestPolicy()
        case PolicyName.LOCAL_FIRST:
            return LocalFirstPolicy(latency_budget)
