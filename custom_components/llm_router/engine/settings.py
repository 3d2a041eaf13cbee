"""The router's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from .predictor import PredictorSettings


@dataclass(frozen=True, slots=True)
class RouterSettings:
    """Router-wide limits (seconds) and choices."""

    turn_timeout: float = 120.0
    failure_threshold: int = 3
    cooldown: float = 30.0
    probe_timeout: float = 10.0
    latency_budget: float = 3.0
    """The time to the first answer word a voice user should wait at most."""
    hedging: bool = False
    predictor: PredictorSettings = field(default_factory=PredictorSettings)
