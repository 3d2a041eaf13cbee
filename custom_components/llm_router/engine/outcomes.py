"""What a turn reports: its attempts, its events, or why nothing answered."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from .errors import BackendError, ErrorKind
from .models import ReasoningDelta, TextDelta, ToolCallDelta
from .predictor import Forecast
from .stats import GenerationStats


class Decision(StrEnum):
    """Why a backend was tried, or not."""

    FIRST_CHOICE = "first_choice"
    FALLBACK = "fallback"
    HEDGE = "hedge"
    """Started beside another that had said no answer word by its hedge delay."""
    QUEUED = "queued"
    """Waited in line, after every other backend was busy or failed."""
    LAST_RESORT = "last_resort"
    """Tried though its breaker is open: every other backend had failed."""
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of trying one backend for one request."""

    backend: str
    error_kind: ErrorKind | None = None
    error: str | None = None
    stats: GenerationStats | None = None
    seconds: float = 0.0
    """Time spent on this attempt, queueing included."""
    decision: Decision = Decision.FIRST_CHOICE
    forecast: Forecast | None = None
    """The predicted time to the first answer word, when it was tried."""
    first_word: float | None = None
    """Seconds from the attempt's start to its first answer word."""
    queued: float = 0.0
    """Seconds spent waiting for a slot."""
    note: str | None = None
    """What the router did about the answer, such as asking again without
    thinking."""

    @property
    def ok(self) -> bool:
        """Whether this attempt served the request."""
        return self.error_kind is None


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The serving backend failed after answer text was already emitted."""

    backend: str
    error: BackendError


RouterEvent = TextDelta | ReasoningDelta | ToolCallDelta | Interrupted


class AllBackendsFailed(Exception):
    """No backend could serve the request; attempts say why."""

    def __init__(self, attempts: Sequence[Attempt]) -> None:
        super().__init__(
            "; ".join(f"{a.backend}: {a.error}" for a in attempts) or "no backends"
        )
        self.attempts = tuple(attempts)
