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
    ReasoningDelta,
    StreamEvent,
)
from custom_components.llm_router.engine.ollama import OllamaBackend
from custom_components.llm_router.engine.openai import OpenAIBackend
from custom_components.llm_router.engine.outcomes import (
    AllBackendsFailed,
    Decision,
)
from custom_components.llm_router.engine.settings import RouterSettings
from tests.conftest import until
from tests.engine.test_router import (
    ANSWER,
    HANG,
    ScriptedBackend,
    TrackedRouter,
    answer_of,
    close_routers,  # noqa: F401 - autouse fixture
    collect,
)
from tests.fakes.base import Reply, closed_port_url
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI

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


# Reasoning against the answer cap.

R1_THINKING = " ".join(f"step{n}" for n in range(700))
TEN_WORDS = "The porch light is on and the door is locked now."


@asynccontextmanager
async def thinking_pi(
    **config: Any,
) -> AsyncIterator[tuple[FakeOllama, OllamaBackend]]:
    """The Pi set to think (think auto off), its model an R1-like reasoner."""
    async with aiohttp.ClientSession() as session, FakeOllama() as fake:
        backend = OllamaBackend(
            BackendConfig(
                "Pi", BackendKind.OLLAMA, fake.url, "qwen3", think=True, **config
            ),
            session,
        )
        yield fake, backend


async def test_reasoning_does_not_eat_the_answer_cap() -> None:
    async with thinking_pi(max_tokens=512) as (fake, pi):
        fake.default_reply = Reply(text=TEN_WORDS, thinking=R1_THINKING)
        router = TrackedRouter([pi])
        turn, events = await collect(router, REQUEST)
        assert answer_of(events) == TEN_WORDS
        assert turn.served is not None
        assert turn.served.note is None
        (body,) = fake.chat_bodies
        assert body["think"] is True
        assert "num_predict" not in body.get("options", {})


async def test_the_cap_still_bounds_the_answer_while_thinking() -> None:
    async with thinking_pi(max_tokens=3) as (fake, pi):
        fake.default_reply = Reply(text=TEN_WORDS, thinking="Look it up.")
        router = TrackedRouter([pi])
        turn, events = await collect(router, REQUEST)
        assert answer_of(events) == "The porch light"
        assert turn.stats is not None


async def test_a_stop_at_the_servers_limit_while_reasoning_asks_again_without() -> None:
    async with thinking_pi() as (fake, pi):
        fake.script(
            Reply(text=TEN_WORDS, thinking=R1_THINKING, length_after=100),
            Reply(text=TEN_WORDS),
        )
        router = TrackedRouter([pi])
        turn, events = await collect(router, REQUEST)
        assert answer_of(events) == TEN_WORDS
        assert not any(isinstance(e, ReasoningDelta) for e in events)
        assert [body.get("think") for body in fake.chat_bodies] == [True, False]
        assert turn.served is not None
        assert turn.served.note == (
            "stopped at the token cap while reasoning, before any answer word; "
            "asked again without thinking"
        )


async def test_reasoning_past_its_time_asks_again_without_thinking() -> None:
    """Reasoning may run until a first token's time before the turn's end."""
    async with thinking_pi(first_token_timeout=0.5) as (fake, pi):
        fake.script(
            Reply(text=TEN_WORDS, thinking=R1_THINKING, tokens_per_second=100),
            Reply(text=TEN_WORDS),
        )
        router = TrackedRouter([pi], settings=RouterSettings(turn_timeout=1.0))
        turn, events = await collect(router, REQUEST)
        assert answer_of(events) == TEN_WORDS
        assert [body.get("think") for body in fake.chat_bodies] == [True, False]
        assert turn.served is not None
        assert turn.served.note is not None
        assert turn.served.note.startswith("reasoned for ")
        assert turn.served.note.endswith(
            "without an answer word; asked again without thinking"
        )


async def test_length_before_any_answer_word_says_so_and_falls_back() -> None:
    """A server that cannot switch reasoning off: the next backend answers."""
    async with aiohttp.ClientSession() as session, FakeOpenAI() as fake:
        fake.default_reply = Reply(text=TEN_WORDS, thinking=R1_THINKING)
        box = OpenAIBackend(
            BackendConfig(
                "Box",
                BackendKind.OPENAI,
                fake.url,
                "fake-model",
                priority=1,
                max_tokens=512,
            ),
            session,
        )
        spare = ScriptedBackend("Spare", 2)
        router = TrackedRouter([box, spare])
        turn, _ = await collect(router, REQUEST)
        assert turn.served_by == "Spare"
        cut = turn.attempts[0]
        assert (cut.backend, cut.error_kind, cut.error) == (
            "Box",
            ErrorKind.BAD_REQUEST,
            "stopped at the token cap while reasoning, before any answer word",
        )
        assert router.states["Box"].breaker.consecutive_failures == 0


async def test_a_server_that_stopped_answering_is_expected_to_load_when_back() -> None:
    """A restarted Ollama has no model loaded: its last resort waits the load."""
    async with gpu_off_and_a_cold_pi(load_seconds=0.8, keep_warm=False) as (
        fake,
        backends,
    ):
        router = TrackedRouter([backends[1]], settings=RouterSettings(cooldown=3600))
        await collect(router, REQUEST)  # loads the model: its time is learnt
        assert router.forecast("Pi").load == 0.0
        port = fake.port
        await fake.stop()
        with pytest.raises(AllBackendsFailed):
            await collect(router, REQUEST)
        assert router.forecast("Pi").load == pytest.approx(0.8, abs=0.2)
        fake.loaded.clear()
        await fake.start(port)
        turn, _ = await collect(router, REQUEST)
        assert [(a.decision, a.error_kind) for a in turn.attempts] == [
            (Decision.SKIPPED, ErrorKind.CIRCUIT_OPEN),
            (Decision.LAST_RESORT, None),
        ]
        # Not overdue while loading: the breaker heard of no missed deadline.
        assert router.states["Pi"].last_error is not None
        assert router.states["Pi"].last_error.kind is ErrorKind.UNREACHABLE


class Late(ScriptedBackend):
    """Answers after a while, longer than its first-token deadline."""

    async def chat(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        await asyncio.sleep(0.2)
        for event in ANSWER:
            yield event


async def test_a_late_first_token_reopens_the_way_for_the_next_turn() -> None:
    """The miss opened the breaker; the late answer shows the server is there."""
    pi = Late("Pi", 1, first_token_timeout=0.05)
    router = TrackedRouter(
        [pi], settings=RouterSettings(cooldown=3600, failure_threshold=1)
    )
    turn = router.route(REQUEST)
    events = aiter(turn)
    await anext(events)  # the late first word
    assert router.states["Pi"].breaker.allows()
    assert [e async for e in events]
    assert turn.served_by == "Pi"
