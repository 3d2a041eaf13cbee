"""Closing a backend ends the waits of its streams, and only those."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

import pytest

from custom_components.llm_router.engine.backend import Backend
from custom_components.llm_router.engine.errors import BackendClosed
from custom_components.llm_router.engine.models import (
    BackendConfig,
    BackendKind,
    ChatMessage,
    ChatRequest,
    ModelDetails,
    ProbeResult,
    StreamEvent,
    TextDelta,
)

REQUEST = ChatRequest(messages=(ChatMessage("user", "Is the lamp on?"),))


class Piped(Backend):
    """Streams what the test puts into its pipe, through _stream_waits."""

    def __init__(self, *, swallows_cancel: bool = False) -> None:
        super().__init__(
            BackendConfig("Pi", BackendKind.OLLAMA, "http://127.0.0.1:9", "m")
        )
        self.pipe: asyncio.Queue[str] = asyncio.Queue()
        self._swallows_cancel = swallows_cancel

    async def _parts(self) -> AsyncIterator[str]:
        while True:
            try:
                part = await self.pipe.get()
            except asyncio.CancelledError:
                if not self._swallows_cancel:
                    raise
                part = "swallowed"  # as some client libraries do
            yield part

    async def chat(self, request: ChatRequest) -> AsyncGenerator[StreamEvent]:
        with self._stream_waits() as waits:
            parts = self._parts()
            while (part := await waits.next(parts)) is not None:
                yield TextDelta(part)

    async def probe(self) -> ProbeResult:
        raise NotImplementedError

    async def list_models(self) -> list[str]:
        raise NotImplementedError

    async def model_details(self) -> ModelDetails:
        raise NotImplementedError

    async def check_model(self) -> ModelDetails:
        raise NotImplementedError


async def test_close_ends_the_wait_under_way() -> None:
    backend = Piped()
    stream = backend.chat(REQUEST)
    backend.pipe.put_nowait("The")
    assert await anext(stream) == TextDelta("The")
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    await backend.close()
    with pytest.raises(BackendClosed, match=r"^closed$"):
        await waiting


async def test_close_between_waits_cancels_nobody() -> None:
    backend = Piped()
    stream = backend.chat(REQUEST)
    backend.pipe.put_nowait("The")
    assert await anext(stream) == TextDelta("The")
    await backend.close()  # while the consumer holds the part
    await asyncio.sleep(0)  # a stray cancel would land here
    with pytest.raises(BackendClosed, match=r"^closed$"):
        await anext(stream)


async def test_close_leaves_no_cancel_when_the_stream_swallowed_it() -> None:
    backend = Piped(swallows_cancel=True)
    stream = backend.chat(REQUEST)

    async def consume() -> int:
        with pytest.raises(BackendClosed, match=r"^closed$"):
            await anext(stream)
        current = asyncio.current_task()
        assert current is not None
        await asyncio.sleep(0)  # the consumer goes on, not cancelled
        return current.cancelling()

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    await backend.close()
    assert await task == 0


async def test_a_cancel_not_from_close_stays_a_cancel() -> None:
    backend = Piped()
    waiting = asyncio.ensure_future(anext(backend.chat(REQUEST)))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_closed_backend_starts_no_stream() -> None:
    backend = Piped()
    await backend.close()
    with pytest.raises(BackendClosed, match=r"^closed$"):
        await anext(backend.chat(REQUEST))
