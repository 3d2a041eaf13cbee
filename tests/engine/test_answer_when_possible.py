"""An answer whenever one is possible: the situations of issue 15.

Against the loopback fakes: every breaker open and a server back on its
port, the last backend left, a cold model, and reasoning against the cap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from custom_components.llm_router.engine.backend import Backend
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
from tests.conftest import until
from tests.engine.test_router import (
    HANG,
    ScriptedBackend,
    TrackedRouter,
    answer_of,
    close_routers,  # noqa: F401 - autouse fixture
    collect,
)
from tests.fakes.base import Reply, closed_port_url
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


# A cold model on the backend that will answer.


@asynccontextmanager
async def gpu_off_and_a_cold_pi(
    load_seconds: float, **pi_config: Any
) -> AsyncIterator[tuple[FakeOllama, list[Backend]]]:
    """The GPU server switched off; the Pi's model unloaded, slow to load."""
    async with (
        aiohttp.ClientSession() as session,
        FakeOllama(load_seconds=load_seconds) as fake,
    ):
        fake.default_reply = Reply(text="The porch light is on.")
        gpu = OllamaBackend(
            BackendConfig(
                "GPU server",
                BackendKind.OLLAMA,
                closed_port_url(),
                "llama3.2",
                priority=1,
                first_token_timeout=0.2,
            ),
            session,
        )
        pi = OllamaBackend(
            BackendConfig(
                "Pi",
                BackendKind.OLLAMA,
                fake.url,
                "llama3.2",
                priority=2,
                first_token_timeout=0.2,
                **pi_config,
            ),
            session,
        )
        yield fake, [gpu, pi]


async def test_the_backend_that_will_answer_is_kept_warm() -> None:
    async with gpu_off_and_a_cold_pi(load_seconds=0.05) as (fake, backends):
        router = TrackedRouter(backends)
        pi = router.states["Pi"]
        assert not router.keeps_warm(pi)  # the GPU server is first, not known down
        assert not await router.async_probe("GPU server")
        assert await router.async_probe("Pi")
        assert router.keeps_warm(pi)
        await until(lambda: fake.loads == 1)
        assert [body["messages"] for body in fake.chat_bodies] == [[]]


async def test_keeping_warm_follows_health() -> None:
    async with gpu_off_and_a_cold_pi(load_seconds=0.05) as (_, backends):
        gpu = ScriptedBackend("GPU", 1)
        gpu.loads_models = True  # an Ollama-like backend that is up
        router = TrackedRouter([gpu, backends[1]])
        assert router.next_choice() is router.states["GPU"]
        router.states["GPU"].breaker.record_failure(BackendUnreachable("refused"))
        router.notify(("GPU",))
        assert router.next_choice() is router.states["Pi"]
        assert router.keeps_warm(router.states["Pi"])


async def test_a_model_loading_is_not_cut_for_its_load() -> None:
    """The first-token deadline counts from when the load is expected to end."""
    async with gpu_off_and_a_cold_pi(load_seconds=0.5, keep_warm=False) as (
        fake,
        backends,
    ):
        spare = ScriptedBackend("Spare", 3)
        router = TrackedRouter([backends[1], spare])
        assert await router.async_probe("Pi")  # /api/ps: not loaded
        turn, _ = await collect(router, REQUEST)
        assert turn.served_by == "Pi"
        assert spare.requests == []  # not started beside a Pi cut for its load
        assert [a.error_kind for a in turn.attempts] == [None]
        assert router.states["Pi"].failures == 0
        assert fake.loads == 1


async def test_reload_then_a_turn_while_the_pi_loads() -> None:
    """Issue 15's first situation, scaled down: GPU off, Pi cold, a turn soon."""
    async with gpu_off_and_a_cold_pi(load_seconds=0.4) as (fake, backends):
        router = TrackedRouter(backends)
        await router.async_probe("GPU server")
        await router.async_probe("Pi")
        await until(lambda: router.states["Pi"].loading_since is not None)
        await asyncio.sleep(0.3)  # the load is still under way
        turn, events = await collect(router, REQUEST)
        assert turn.served_by == "Pi"
        assert answer_of(events) == "The porch light is on."
        assert fake.loads == 1
