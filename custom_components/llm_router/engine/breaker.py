"""Circuit breaker: a dead backend costs nothing after the first miss."""

from __future__ import annotations

from enum import StrEnum

from .errors import BackendError, ErrorKind


class BreakerState(StrEnum):
    """Whether requests may go to the backend."""

    CLOSED = "closed"
    OPEN = "open"


class CircuitBreaker:
    """Opens at once when unreachable or the key is rejected, else after a run.

    While open, the router probes the backend after each cooldown. A probe
    only shows the server is up, not that it can answer: after one, the
    breaker lets requests through but opens again on the next failure.
    A served request resets it fully.

    While open it still lets a turn that has nothing else left try the
    server (worth_a_try), unless the last failure was slow: a black hole or
    a stall would cost every such turn its deadlines.
    """

    def __init__(self, *, failure_threshold: int) -> None:
        self.failure_threshold = failure_threshold
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.last_failure: ErrorKind | None = None

    def allows(self) -> bool:
        """Whether a request may be sent now."""
        return self.state is BreakerState.CLOSED

    def record_success(self) -> None:
        """A request was served: close and forget earlier failures."""
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.last_failure = None

    def record_probe_success(self) -> None:
        """The server is up again: let requests try it, on probation."""
        if self.state is BreakerState.OPEN:
            self.state = BreakerState.CLOSED
            self.consecutive_failures = self.failure_threshold - 1

    def record_failure(self, error: BackendError) -> None:
        """A request or probe failed; open when that says the server is gone.

        A request the server refused as invalid says nothing about the server,
        nor does one our side ended (a router closing on reload or shutdown,
        while other routers may share this breaker).
        """
        if error.kind in (ErrorKind.BAD_REQUEST, ErrorKind.CLOSED):
            return
        self.consecutive_failures += 1
        self.last_failure = error.kind
        # A rejected key does not fix itself either.
        if (
            error.kind in (ErrorKind.UNREACHABLE, ErrorKind.AUTH_FAILED)
            or self.consecutive_failures >= self.failure_threshold
        ):
            self.state = BreakerState.OPEN

    def worth_a_try(self) -> bool:
        """Whether a turn with no other backend left may try it though open.

        Not after a slow failure (the breaker is there to spare turns those)
        nor a rejected key (only a new key helps).
        """
        return self.state is BreakerState.CLOSED or self.last_failure not in (
            ErrorKind.TIMED_OUT,
            ErrorKind.AUTH_FAILED,
        )

    def likely_back(self) -> bool:
        """Whether it opened on a refused connection: a restart ends that."""
        return self.last_failure is ErrorKind.UNREACHABLE
