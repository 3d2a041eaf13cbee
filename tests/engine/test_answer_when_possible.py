"""An answer whenever one is possible: the situations of issue 15.

Against the loopback fakes: every breaker open and a server back on its
port, the last backend left, a cold model, and reasoning against the cap.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from custom_components.llm_router.engine.errors import (
    BackendServerError,
    BackendTimeout,
    BackendUnreachable,
    ErrorKind,
)
from custom_components.llm_router.engine.models import (
    BackendConfig,
    BackendKind,
    ChatMessage,
    ChatRequest,
)
from custom_components.llm_router.engine.ollama import OllamaBackend
from custom_components.llm_router.engine.outcomes import (
    AllBackendsFailed,
    Decision,
)
from custom_components.llm_router.engine.settings import RouterSettings
from tests.engine.test_router import (
    HANG,
    ScriptedBackend,
    TrackedRouter,
    close_routers,  # noqa: F401 - autouse fixture
    collect,
)
from tests.fakes.base import Reply
from tests.fakes.ollama_server import FakeOllama

REQUEST = ChatRequest(messages=(ChatMessage("user", "Is the porch light on?"),))


@asynccontextmanager
async def two_ollamas(
    **config: Any,
) -> AsyncIterator[tuple[FakeOllama, FakeOllama, list[OllamaBackend]]]:
    """The README's household: "GPU server" first by priority, "Pi" second."""
    async with (
        aiohttp.ClientSession() as session,
        FakeOllama() as gpu,
        FakeOllama() as pi,
    ):
        backends = [
            OllamaBackend(
                BackendConfig(
                    name,
                    BackendKind.OLLAMA,
                    fake.url,
                    "llama3.2",
                    priority=priority,
                    **config,
                ),
                session,
            )
            for name, fake, priority in (("GPU server", gpu, 1), ("Pi", pi, 2))
        ]
        yield gpu, pi, backends


# Every breaker open, and then a server comes back.


async def test_a_server_back_on_its_port_answers_though_every_breaker_is_open() -> None:
    async with two_ollamas() as (gpu, pi, backends):
        router = TrackedRouter(backends, settings=RouterSettings(cooldown=3600))
        pi.default_reply = Reply(text="The porch light is on.")
        gpu_port, pi_port = gpu.port, pi.port
        await gpu.stop()
        await pi.stop()
        with pytest.raises(AllBackendsFailed):
            await collect(router, REQUEST)
        assert not any(s.breaker.allows() for s in router.states.values())
        await pi.start(pi_port)  # Ollama restarted; no probe before the turn
        turn, _ = await collect(router, REQUEST)
        assert turn.served_by == "Pi"
        assert [(a.backend, a.decision, a.error_kind) for a in turn.attempts] == [
            ("GPU server", Decision.SKIPPED, ErrorKind.CIRCUIT_OPEN),
            ("Pi", Decision.SKIPPED, ErrorKind.CIRCUIT_OPEN),
            ("GPU server", Decision.LAST_RESORT, ErrorKind.UNREACHABLE),
            ("Pi", Decision.LAST_RESORT, None),
        ]
        assert router.states["Pi"].breaker.allows()
        assert not router.states["GPU server"].breaker.allows()
        await gpu.start(gpu_port)


async def test_an_open_breaker_is_tried_before_the_failure_sentence() -> None:
    gpu, pi = ScriptedBackend("GPU", 1), ScriptedBackend("Pi", 2)
    gpu.streams = [[BackendUnreachable("connection refused")]]
    router = TrackedRouter([gpu, pi], settings=RouterSettings(cooldown=3600))
    await collect(router, REQUEST)  # the GPU refused; the Pi answered
    assert not router.states["GPU"].breaker.allows()
    pi.streams = [[BackendServerError("HTTP 500")]]
    turn, _ = await collect(router, REQUEST)
    assert turn.served_by == "GPU"
    assert [(a.backend, a.decision) for a in turn.attempts] == [
        ("GPU", Decision.SKIPPED),
        ("Pi", Decision.FALLBACK),
        ("GPU", Decision.LAST_RESORT),
    ]


async def test_a_breaker_opened_by_silence_still_spares_the_turns() -> None:
    """A black hole is not tried again before its probe: that costs deadlines."""
    hole = ScriptedBackend("Hole", 1, first_token_timeout=0.05)
    hole.streams = [[HANG]]
    router = TrackedRouter(
        [hole], settings=RouterSettings(cooldown=3600, failure_threshold=1)
    )
    router.states["Hole"].breaker.record_failure(BackendTimeout("no first token"))
    with pytest.raises(AllBackendsFailed) as caught:
        await collect(router, REQUEST)
    assert [(a.decision, a.error_kind) for a in caught.value.attempts] == [
        (Decision.SKIPPED, ErrorKind.CIRCUIT_OPEN)
    ]
    assert hole.requests == []
