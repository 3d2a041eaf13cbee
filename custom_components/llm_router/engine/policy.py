"""Routing policies: the order in which backends are tried."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Protocol

from .models import BackendConfig


class PolicyName(StrEnum):
    """Policies a router can be configured with."""

    ORDERED = "ordered"


class Candidate(Protocol):
    """What a policy needs to know of a backend."""

    @property
    def config(self) -> BackendConfig:
        """The backend's configuration."""
        ...


class Policy(Protocol):
    """Orders the backends for one request, first choice first."""

    def order[C: Candidate](self, backends: Sequence[C]) -> list[C]:
        """Return the backends in the order to try them."""
        ...


class OrderedPolicy:
    """Try backends by configured priority (lower first), then name."""

    def order[C: Candidate](self, backends: Sequence[C]) -> list[C]:
        """Return the backends sorted by priority."""
        return sorted(backends, key=lambda s: (s.config.priority, s.config.name))


def create_policy(name: PolicyName) -> Policy:
    """The policy for a configured name."""
    match name:
        case PolicyName.ORDERED:
            return OrderedPolicy()
