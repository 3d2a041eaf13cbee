"""The interface every LLM backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import ClassVar, Self

from .errors import BackendClosed
from .models import BackendConfig, ChatRequest, ModelDetails, ProbeResult, StreamEvent


class Backend(ABC):
    """One LLM server speaking one protocol.

    Implementations raise only BackendError subclasses. They enforce the
    connect timeout themselves; the router enforces first-token, stall and
    turn deadlines around chat().
    """

    splits_reasoning: ClassVar[bool] = False
    """Whether the server always returns reasoning in its own field when
    asked to think, so the answer text never starts inside reasoning."""

    switches_thinking: ClassVar[bool] = False
    """Whether think: false stops a thinking model; elsewhere the server's
    own settings decide whether it thinks."""

    loads_models: ClassVar[bool] = False
    """Whether the server loads and unloads models (reported by probe() and
    ServerStats.load_seconds) and load_model() can load one ahead of use."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self._closed = False
        self._waits: set[asyncio.Timeout] = set()
        self._streams: set[_StreamWaits] = set()

    @property
    def name(self) -> str:
        """The backend's configured name."""
        return self.config.name

    @abstractmethod
    def chat(self, request: ChatRequest) -> AsyncGenerator[StreamEvent]:
        """Stream a chat completion with the configured model.

        Yields TextDelta, ReasoningDelta and ToolCallDelta events as they
        arrive, then exactly one ServerStats when the server finished. A
        stream that ends without its final chunk raises BadResponse.
        """

    @abstractmethod
    async def probe(self) -> ProbeResult:
        """Check that the server answers (cheap; no generation)."""

    @abstractmethod
    async def list_models(self) -> list[str]:
        """Names of the models the server offers."""

    @abstractmethod
    async def model_details(self) -> ModelDetails:
        """Capabilities of the configured model."""

    @abstractmethod
    async def check_model(self) -> ModelDetails:
        """Raise ModelNotFound unless the server offers the configured model.

        Returns what model_details() would, where finding the model told it.
        """

    async def close(self) -> None:
        """End the requests in flight and refuse new ones (BackendClosed).

        Subclasses also release what they own (not shared sessions).
        """
        self._closed = True
        now = asyncio.get_running_loop().time()
        for wait in self._waits:
            wait.reschedule(now)
        for stream in self._streams:
            stream.end()

    async def load_model(self) -> None:
        """Load the configured model without generating (loads_models only)."""
        raise NotImplementedError

    def _until_closed(self) -> _UntilClosed:
        """Bound one wait for the server by the backend's life.

        close() ends the wait with BackendClosed. Never around a yield: the
        end cancels the task that waits, which there is the consumer's.
        """
        return _UntilClosed(self)

    def _stream_waits(self) -> _StreamWaits:
        """Bound the waits for one stream's parts by the backend's life.

        One guard for the whole stream, entered once (with); close() ends
        the wait under way, or the next, with BackendClosed.
        """
        return _StreamWaits(self)


class _UntilClosed:
    """Backend._until_closed's context.

    Entered once per streamed chunk: a plain class is cheaper than a
    generator-based context manager.
    """

    __slots__ = ("_backend", "_wait")

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._wait = asyncio.timeout(None)

    async def __aenter__(self) -> None:
        if self._backend._closed:
            raise BackendClosed("closed")
        await self._wait.__aenter__()
        self._backend._waits.add(self._wait)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._backend._waits.discard(self._wait)
        try:
            await self._wait.__aexit__(exc_type, exc, traceback)
        except TimeoutError:
            if self._wait.expired():
                raise BackendClosed("closed") from None
            raise


class _StreamWaits:
    """Backend._stream_waits' guard.

    No timer and no timeout per part: each wait notes the task that awaits,
    and close() cancels that task. Between waits (where the stream yields to
    its consumer) nothing is cancelled: that task is not the stream's to end.
    """

    __slots__ = ("_backend", "_cancelled", "_ended", "_task")

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._task: asyncio.Task[object] | None = None
        self._ended = False
        self._cancelled = False

    def __enter__(self) -> Self:
        if self._backend._closed:
            raise BackendClosed("closed")
        self._backend._streams.add(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._backend._streams.discard(self)

    async def next[T](self, parts: AsyncIterator[T]) -> T | None:
        """The next part, or None at the end."""
        if self._ended:
            raise BackendClosed("closed")
        task = self._task = asyncio.current_task()
        assert task is not None
        try:
            part = await anext(parts, None)
        except asyncio.CancelledError:
            if self._cancelled and not task.uncancel():
                raise BackendClosed("closed") from None
            raise
        finally:
            self._task = None
        if self._cancelled:
            # Ended as the part came: the cancel must not reach the consumer.
            task.uncancel()
            raise BackendClosed("closed")
        return part

    def end(self) -> None:
        """The backend closed: end the wait under way, or the next."""
        self._ended = True
        if self._task is not None and not self._cancelled:
            self._cancelled = True
            self._task.cancel()
