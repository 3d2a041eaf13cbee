"""Errors raised by backends and the router.

Every backend turns what its HTTP library raises into one of these, so the
router and the Home Assistant layer never see a transport detail.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    """Why an attempt failed; stable strings for diagnostics and actions."""

    UNREACHABLE = "unreachable"
    TIMED_OUT = "timed_out"
    SERVER_ERROR = "server_error"
    MODEL_NOT_FOUND = "model_not_found"
    UNSUPPORTED = "unsupported"
    BAD_RESPONSE = "bad_response"
    BAD_REQUEST = "bad_request"
    AUTH_FAILED = "auth_failed"
    CIRCUIT_OPEN = "circuit_open"
    CLOSED = "closed"
    # Outcomes the router makes; none of them counts as the backend's failure.
    BUSY = "busy"
    OUT_OF_TIME = "out_of_time"
    CANCELLED = "cancelled"


class BackendError(Exception):
    """A backend could not serve a request."""

    kind: ErrorKind = ErrorKind.BAD_RESPONSE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BackendUnreachable(BackendError):
    """The connection was refused, reset, or could not be made in time."""

    kind = ErrorKind.UNREACHABLE


class BackendTimeout(BackendError):
    """The server accepted the request but did not answer in time."""

    kind = ErrorKind.TIMED_OUT


class ReasoningTooLong(BackendTimeout):
    """The model reasoned into the time kept for asking again without it."""


class BackendServerError(BackendError):
    """The server answered 5xx or 429."""

    kind = ErrorKind.SERVER_ERROR


class ModelNotFound(BackendError):
    """The configured model does not exist on the server."""

    kind = ErrorKind.MODEL_NOT_FOUND


class CapabilityUnsupported(BackendError):
    """The model cannot do what was asked (tools or thinking)."""

    kind = ErrorKind.UNSUPPORTED

    def __init__(self, capability: str, message: str) -> None:
        super().__init__(message)
        self.capability = capability


class BadResponse(BackendError):
    """Malformed JSON or SSE, an unexpected status, or a truncated stream."""

    kind = ErrorKind.BAD_RESPONSE


class BackendClosed(BackendError):
    """The backend was closed (reload, removal, shutdown) before it answered."""

    kind = ErrorKind.CLOSED


class BadRequest(BackendError):
    """The server refused this request as invalid (400, 413, 422).

    The request caused it (a prompt longer than the context window, a schema
    the server cannot follow), not the server: the breaker does not count it.
    """

    kind = ErrorKind.BAD_REQUEST


class CutAtCap(BackendError):
    """The model stopped at the token cap before any answer word.

    The cap, not the server, is at fault: the breaker does not count it.
    """

    kind = ErrorKind.BAD_REQUEST


REQUEST_REFUSED = frozenset({400, 413, 422})
"""HTTP statuses that blame the request: bad, too large, unprocessable."""


class AuthFailed(BackendError):
    """The server rejected the API key (401/403)."""

    kind = ErrorKind.AUTH_FAILED


class BackendBusy(BackendError):
    """No slot came free within the attempt's first-token budget."""

    kind = ErrorKind.BUSY


class OutOfTime(BackendError):
    """The turn's deadline, not the backend's own, ran out."""

    kind = ErrorKind.OUT_OF_TIME


class Overtaken(BackendError):
    """Another backend, asked at the same time, answered first."""

    kind = ErrorKind.CANCELLED
