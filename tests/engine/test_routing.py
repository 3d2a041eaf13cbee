"""Tests of queue-aware routing, per-attempt deadlines, prediction and hedging.

Routing decisions are driven by feeding the predictor, not by wall time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
import math
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
    ReasoningDelta,
    ServerStats,
    StreamEvent,
    TextDelta,
)
from custom_components.llm_router.engine.ollama import OllamaBackend
from custom_components.llm_router.engine.openai import OpenAIBackend
from custom_components.llm_router.engine.outcomes import AllBackendsFailed, Decision
from custom_components.llm_router.engine.policy import (
    FastestPolicy,
    LocalFirstPolicy,
    PolicyName,
    create_policy,
)
from custom_components.llm_router.engine.predictor import (
    Forecast,
    Hold,
    LatencyModel,
    Observation,
    PredictorSettings,
    keep_alive_seconds,
    prompt_tokens,
)
from custom_components.llm_router.engine.router import Router
from custom_components.llm_router.engine.settings import RouterSettings
from custom_components.llm_router.engine.stats import GenerationStats
from tests.conftest import until
from tests.engine.test_router import (
    HANG,
    REQUEST,
    ScriptedBackend,
    TrackedRouter,
    answer_of,
    close_routers,  # noqa: F401 - autouse fixture
    collect,
)
from tests.fakes.base import Reply
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI

THINK = ChatRequest(messages=REQUEST.messages, think=True)


class Gated(ScriptedBackend):
    """Answers the first word, then holds its slot until the gate opens."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.closed_streams = 0

    async def chat(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        try:
            yield TextDelta("first")
            await self.gate.wait()
            yield ServerStats()
        finally:
            self.closed_streams += 1


class Switching(ScriptedBackend):
    """A server where think: false stops a thinking model (as Ollama)."""

    switches_thinking = True


def stats(**values: Any) -> GenerationStats:
    fields: dict[str, Any] = {
        "time_to_first_token": 0.1,
        "response_time": 1.0,
        "prompt_tokens": 10,
        "prompt_cached_tokens": None,
        "completion_tokens": 10,
        "generation_speed": 10.0,
        "prompt_speed": 100.0,
        "load_time": None,
        "server_reported": True,
    }
    return GenerationStats(**{**fields, **values})


def learn(router: Router, name: str, *, now: float = 0.0, **values: Any) -> None:
    """Feed one served answer with these statistics to a backend's predictor."""
    thought = values.pop("thought", False)
    reasoning = values.pop("reasoning_tokens", 0)
    router.states[name].latency.observe(
        Observation(
            stats=stats(**values),
            first_word=None,
            reasoning_tokens=reasoning,
            thought=thought,
            slot_seconds=values.get("response_time", 1.0),
            answer_seconds=None,
        ),
        now,
        router.settings.predictor,
    )


async def busy_turn(router: Router, backend: Gated) -> asyncio.Task[Any]:
    """Start a turn on backend and wait until it holds backend's slot."""
    task = asyncio.create_task(collect(router, backend=backend.name))
    await until(lambda: backend.requests)
    return task


@asynccontextmanager
async def ollama_pi(
    load_seconds: float | None = None, model: str = "llama3.2", **config: Any
) -> AsyncIterator[tuple[FakeOllama, OllamaBackend]]:
    """A loopback Ollama fake, and a backend "Pi" on it."""
    async with (
        aiohttp.ClientSession() as session,
        FakeOllama(load_seconds=load_seconds) as fake,
    ):
        config = BackendConfig("Pi", BackendKind.OLLAMA, fake.url, model, **config)
        yield fake, OllamaBackend(config, session)


# Defect 1: a request waiting for a slot never fell back.


async def test_busy_backend_is_passed_over_for_an_idle_one() -> None:
    pi, gpu = Gated("Pi", 1), ScriptedBackend("GPU", 2)
    router = TrackedRouter([pi, gpu])
    first = await busy_turn(router, pi)
    async with asyncio.timeout(2):  # before: waited for the Pi's slot
        turn, events = await collect(router)
    assert turn.served_by == "GPU"
    assert answer_of(events) == "The lamp is on."
    skipped = turn.attempts[0]
    assert (skipped.backend, skipped.error_kind, skipped.decision) == (
        "Pi",
        ErrorKind.BUSY,
        Decision.SKIPPED,
    )
    assert (router.states["Pi"].failures, router.states["Pi"].requests) == (0, 0)
    assert router.states["Pi"].breaker.consecutive_failures == 0
    pi.gate.set()
    await first


async def test_the_last_backend_left_waits_in_line_past_its_budget() -> None:
    """Cutting the only backend left at its budget gains nothing."""
    pi = Gated("Pi", first_token_timeout=0.1)
    router = TrackedRouter([pi], settings=RouterSettings(turn_timeout=60))
    first = await busy_turn(router, pi)
    second = asyncio.create_task(collect(router))
    await asyncio.sleep(0.3)  # past the budget
    pi.gate.set()
    await first
    turn, events = await second
    assert turn.served_by == "Pi"
    assert answer_of(events) == "first"
    assert turn.attempts[-1].queued > 0.1
    assert router.states["Pi"].failures == 0


async def test_short_expected_wait_waits_in_line() -> None:
    pi, gpu = Gated("Pi", 1), ScriptedBackend("GPU", 2)
    router = TrackedRouter([pi, gpu])
    learn(router, "Pi", response_time=0.2)  # a slot is held for 0.2 s
    first = await busy_turn(router, pi)
    second = asyncio.create_task(collect(router))
    await until(lambda: router.states["Pi"].waiting == 1)
    pi.gate.set()
    await first
    turn, _ = await second
    assert turn.served_by == "Pi"
    assert turn.attempts[-1].queued > 0
    assert gpu.requests == []


async def test_long_expected_wait_passes_over_and_says_how_long() -> None:
    pi, gpu = Gated("Pi", 1), ScriptedBackend("GPU", 2)
    router = TrackedRouter([pi, gpu])
    learn(router, "Pi", response_time=50.0)
    first = await busy_turn(router, pi)
    turn, _ = await collect(router)
    assert turn.served_by == "GPU"
    assert turn.attempts[0].error == "busy, expected wait 50.0 s"
    pi.gate.set()
    await first


async def test_four_concurrent_turns_none_cut_none_failed() -> None:
    """The review's case: four turns at once, one slot each."""
    pi, gpu = Gated("Pi", 1), Gated("GPU", 2)
    router = TrackedRouter([pi, gpu])
    turns = [asyncio.create_task(collect(router)) for _ in range(4)]
    await until(lambda: pi.requests and gpu.requests)
    pi.gate.set()
    gpu.gate.set()
    results = await asyncio.gather(*turns)
    assert all(turn.served_by for turn, _ in results)
    assert (router.states["Pi"].failures, router.states["GPU"].failures) == (0, 0)


# Defect 2: the turn deadline was shared and charged to the wrong backend.


async def test_fallback_cut_by_the_turn_deadline_is_not_its_failure() -> None:
    gpu = ScriptedBackend("GPU", 1, first_token_timeout=0.05)
    pi = ScriptedBackend("Pi", 2, first_token_timeout=5.0)
    gpu.streams = [[HANG] for _ in range(3)]
    pi.streams = [[HANG] for _ in range(3)]
    router = TrackedRouter([gpu, pi], settings=RouterSettings(turn_timeout=0.1))
    for _ in range(3):
        with pytest.raises(AllBackendsFailed) as caught:
            await collect(router)
        # Pi went beside the overdue GPU; both end at the turn's deadline.
        attempts = {a.backend: a for a in caught.value.attempts}
        gpu_attempt, pi_attempt = attempts["GPU"], attempts["Pi"]
        assert gpu_attempt.error == "no first token within 0.05 s"
        assert (pi_attempt.error_kind, pi_attempt.error) == (
            ErrorKind.OUT_OF_TIME,
            "the turn's time ran out",
        )
    assert router.states["Pi"].breaker.allows()
    assert router.states["Pi"].failures == 0
    assert router.states["GPU"].failures == 3


async def test_no_time_left_skips_without_asking() -> None:
    gpu = ScriptedBackend("GPU", 1, first_token_timeout=1.0)
    gpu.streams = [[HANG]]
    pi = ScriptedBackend("Pi", 2)
    router = TrackedRouter([gpu, pi], settings=RouterSettings(turn_timeout=0.05))
    with pytest.raises(AllBackendsFailed) as caught:
        await collect(router)
    assert [a.error_kind for a in caught.value.attempts] == [
        ErrorKind.OUT_OF_TIME,
        ErrorKind.OUT_OF_TIME,
    ]
    assert caught.value.attempts[1].error == "no time left in the turn"
    assert pi.requests == []
    assert router.states["GPU"].failures == 0


async def test_stall_cut_by_the_turn_deadline_is_out_of_time() -> None:
    pi = ScriptedBackend("Pi", stall_timeout=5.0)
    pi.streams = [[TextDelta("The lamp"), HANG]]
    router = TrackedRouter([pi], settings=RouterSettings(turn_timeout=0.1))
    _, events = await collect(router)
    assert events[-1].error.kind is ErrorKind.OUT_OF_TIME  # type: ignore[union-attr]
    assert router.states["Pi"].failures == 0


# Defect 3: no answer length cap.


async def test_ollama_answer_is_capped_by_num_predict() -> None:
    async with ollama_pi(max_tokens=5) as (fake, pi):
        fake.default_reply = Reply(text=" ".join(["loop"] * 200))
        _, events = await collect(TrackedRouter([pi]))
    assert answer_of(events) == "loop loop loop loop loop"
    assert fake.chat_bodies[0]["options"] == {"num_predict": 5}


async def test_openai_answer_is_capped_by_max_tokens() -> None:
    async with aiohttp.ClientSession() as session, FakeOpenAI() as fake:
        fake.default_reply = Reply(text=" ".join(["loop"] * 200))
        config = BackendConfig(
            "GPU", BackendKind.OPENAI, fake.url, "fake-model", max_tokens=3
        )
        router = TrackedRouter([OpenAIBackend(config, session)])
        _, events = await collect(router)
    assert answer_of(events) == "loop loop loop"
    assert fake.requests[-1]["body"]["max_tokens"] == 3


# The predictor.


def test_forecast_adds_up_the_parts() -> None:
    router = Router([ScriptedBackend("Pi")])
    learn(
        router,
        "Pi",
        time_to_first_token=0.5,
        prompt_tokens=20,
        prompt_speed=100.0,
        generation_speed=5.0,
        thought=True,
        reasoning_tokens=50,
    )
    predicted = router.forecast("Pi", THINK, now=0.0)
    assert predicted.think
    assert predicted.prompt == pytest.approx(prompt_tokens(THINK) / 100.0)
    assert predicted.reasoning == pytest.approx(10.0)  # 50 tokens at 5 tok/s
    assert predicted.network == pytest.approx(0.3)  # 0.5 - 20/100
    assert (predicted.queue, predicted.load) == (0.0, 0.0)
    assert predicted.total == pytest.approx(
        predicted.prompt + predicted.reasoning + predicted.network
    )
    assert router.forecast("Pi", REQUEST, now=0.0).reasoning == 0.0


def test_congestion_fades_but_the_floor_stays() -> None:
    model = LatencyModel()
    settings = PredictorSettings(congestion_fades=10.0)
    model.observe_silence(0.0, Forecast(), now=0.0)  # nothing learnt from nothing
    assert model.network(0.0, settings) == settings.network_seconds
    for now, ttft in ((0.0, 0.2), (1.0, 5.2)):
        model.observe(
            Observation(
                stats(time_to_first_token=ttft, prompt_tokens=0),
                None,
                0,
                False,
                1.0,
                None,
            ),
            now,
            settings,
        )
    assert model.network(1.0, settings) == pytest.approx(5.2)
    assert model.network(11.0, settings) == pytest.approx(0.2 + 5.0 / math.e)
    assert model.network(1000.0, settings) == pytest.approx(0.2)


def test_a_timeout_teaches_that_the_server_is_slow_now() -> None:
    model = LatencyModel()
    settings = PredictorSettings()
    model.observe_silence(3.0, Forecast(network=0.5), now=0.0)
    assert model.network(0.0, settings) == pytest.approx(3.0)


def test_hedge_delay_is_a_clamped_quantile_of_recent_first_words() -> None:
    model = LatencyModel()
    settings = PredictorSettings(hedge_min=0.5, hedge_max=4.0)
    assert model.hedge_delay(Forecast(network=1.0), settings) == 1.5
    plain = model.first_words[False]
    plain.extend([0.1] * 9 + [2.0])
    model.first_words[True].extend([30.0] * 10)  # thinking answers: their own
    assert model.hedge_delay(Forecast(), settings) == 2.0
    plain.extend([0.1] * 10)
    assert model.hedge_delay(Forecast(), settings) == 0.5
    assert model.hedge_delay(Forecast(think=True), settings) == 4.0


async def test_expected_wait_from_slot_hold_times() -> None:
    router = TrackedRouter([ScriptedBackend("Pi", max_parallel=1)])
    state = router.states["Pi"]
    assert router.forecast("Pi", now=100.0).queue == 0.0
    await state.slots.acquire()
    state.holding.append(Hold(96.0, None))
    assert router.forecast("Pi", now=100.0).queue == math.inf  # hold time unknown
    state.holding[0] = Hold(96.0, 10.0)
    learn(router, "Pi", response_time=10.0)
    state.waiting = 1
    # 6 s left of the running answer, then one more in line ahead of us.
    assert router.forecast("Pi", now=100.0).queue == pytest.approx(16.0)
    state.waiting = 0
    # An answer 4 s late is expected to run 4 s longer.
    assert router.forecast("Pi", now=106.0).queue == pytest.approx(0.0)
    assert router.forecast("Pi", now=114.0).queue == pytest.approx(8.0)
    state.slots.release()


def test_expected_hold_is_the_prediction_then_the_usual_answer() -> None:
    model = LatencyModel()
    assert model.expected_hold(Forecast(network=1.0)) is None
    served = Observation(stats(), None, 0, False, 5.0, None)
    model.observe(served, 0.0, PredictorSettings())
    assert model.expected_hold(Forecast(network=1.0)) == 5.0  # as slots were held
    model.observe(
        Observation(stats(), 1.0, 0, False, 5.0, 4.0), 0.0, PredictorSettings()
    )
    assert model.expected_hold(Forecast(queue=9.0, reasoning=30.0)) == 34.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, 300.0), (60, 60.0), (-1, math.inf), ("-1m", math.inf), ("1h30m", 5400.0)],
)
def test_keep_alive_seconds(value: str | int | None, seconds: float) -> None:
    assert keep_alive_seconds(value, 300.0) == seconds


# Policies.


def pi_and_gpu(**router: Any) -> TrackedRouter:
    """A Pi that is near but slow, a GPU server that is further but fast."""
    built = TrackedRouter(
        [ScriptedBackend("GPU", 2), ScriptedBackend("Pi", 1)], **router
    )
    learn(built, "Pi", generation_speed=6.5, time_to_first_token=1.0)
    learn(built, "GPU", generation_speed=138.0, time_to_first_token=1.2)
    return built


async def test_fastest_sends_thinking_to_the_gpu_and_the_rest_to_the_pi() -> None:
    turn, _ = await collect(pi_and_gpu(policy=FastestPolicy()))
    assert turn.served_by == "Pi"
    turn, _ = await collect(pi_and_gpu(policy=FastestPolicy()), THINK)
    assert turn.served_by == "GPU"
    assert not turn.fell_back  # the GPU was the first choice
    chosen = turn.attempts[0]
    assert chosen.decision is Decision.FIRST_CHOICE
    assert chosen.forecast is not None
    assert chosen.forecast.think
    assert chosen.first_word is not None


async def test_a_turn_forecasts_each_backend_once() -> None:
    router = pi_and_gpu(policy=FastestPolicy())
    forecast = router.forecast
    made: list[str] = []

    def counted(name: str, *args: Any, **kwargs: Any) -> Forecast:
        made.append(name)
        return forecast(name, *args, **kwargs)

    router.forecast = counted  # type: ignore[method-assign]
    turn, _ = await collect(router)
    assert turn.served_by == "Pi"
    # Ordered by the forecasts, and the first choice started on its own.
    assert sorted(made) == ["GPU", "Pi"]


async def test_fastest_puts_open_breakers_last() -> None:
    pi, gpu = ScriptedBackend("Pi", 1), ScriptedBackend("GPU", 2)
    router = TrackedRouter([gpu, pi], policy=FastestPolicy())
    learn(router, "GPU", time_to_first_token=0.01)
    router.states["GPU"].breaker.record_failure(BackendUnreachable("refused"))
    turn, _ = await collect(router)
    assert turn.first_choice == "Pi"


async def test_fastest_predicts_a_cold_load_from_the_servers_list() -> None:
    async with ollama_pi(load_seconds=0.2, keep_warm=False) as (_, pi):
        router = TrackedRouter(
            [pi],
            settings=RouterSettings(
                predictor=PredictorSettings(load_seconds=9.0, load_noticeable=0.1)
            ),
        )
        assert await router.async_probe("Pi")
        assert router.forecast("Pi").load == 9.0  # not loaded; a guess so far
        turn, _ = await collect(router)
        assert turn.stats is not None
        assert turn.stats.load_time == pytest.approx(0.2, abs=0.1)
        assert router.forecast("Pi").load == 0.0  # loaded now
        router.states["Pi"].loaded_until = -math.inf  # unloaded again
        assert router.forecast("Pi").load == pytest.approx(0.2, abs=0.1)  # learnt
        assert await router.async_probe("Pi")  # /api/ps lists it with its expiry
        assert router.forecast("Pi").load == 0.0


async def test_local_first_keeps_the_pi_within_the_budget() -> None:
    def router() -> TrackedRouter:
        return pi_and_gpu(
            policy=create_policy(PolicyName.LOCAL_FIRST, latency_budget=3.0)
        )

    gpu_faster = router()
    learn(gpu_faster, "GPU", generation_speed=138.0, time_to_first_token=0.2)
    turn, _ = await collect(gpu_faster)
    assert turn.served_by == "Pi"  # 1 s: within budget, though the GPU is faster
    turn, _ = await collect(router(), THINK)
    assert turn.served_by == "GPU"  # the Pi would think for 46 s
    gpu_down = router()
    gpu_down.states["GPU"].online = False
    turn, _ = await collect(gpu_down, THINK)
    assert turn.served_by == "Pi"  # no faster backend is up


def test_local_first_without_backends() -> None:
    assert LocalFirstPolicy(3.0).order([], {}) == []


# Adaptive thinking.


async def test_think_auto_thinks_only_within_the_budget() -> None:
    pi = Switching("Pi", think_auto=True)
    router = TrackedRouter([pi], settings=RouterSettings(latency_budget=3.0))
    learn(router, "Pi", generation_speed=6.5, thought=True, reasoning_tokens=300)
    await collect(router)
    learn(router, "Pi", generation_speed=1000.0, thought=True, reasoning_tokens=300)
    learn(router, "Pi", generation_speed=1000.0, thought=True, reasoning_tokens=300)
    await collect(router)
    await collect(router, ChatRequest(messages=REQUEST.messages, think=False))
    assert [r.think for r in pi.requests] == [False, True, False]


async def test_think_auto_means_on_where_thinking_cannot_be_switched_off() -> None:
    gpu = ScriptedBackend("GPU", think_auto=True)
    router = TrackedRouter([gpu], settings=RouterSettings(latency_budget=0.001))
    await collect(router)
    assert gpu.requests[0].think is True


# Hedging.


def hedging(delay: float = 0.05) -> RouterSettings:
    return RouterSettings(
        hedging=True, predictor=PredictorSettings(hedge_min=delay, hedge_max=delay)
    )


async def test_hedge_wins_and_the_slow_one_is_cancelled_cleanly() -> None:
    pi = Gated("Pi", 1)
    pi.gate.set()

    class Silent(Gated):
        async def chat(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
            self.requests.append(request)
            try:
                await asyncio.sleep(3600)
                yield TextDelta("never")
            finally:
                self.closed_streams += 1

    slow = Silent("Slow", 1)
    router = TrackedRouter([slow, ScriptedBackend("GPU", 2)], settings=hedging())
    turn, events = await collect(router)
    assert answer_of(events) == "The lamp is on."
    assert [(a.backend, a.decision, a.error_kind) for a in turn.attempts] == [
        ("Slow", Decision.FIRST_CHOICE, ErrorKind.CANCELLED),
        ("GPU", Decision.HEDGE, None),
    ]
    assert turn.attempts[0].error == "GPU answered first"
    state = router.states["Slow"]
    assert (state.failures, state.requests) == (0, 0)
    assert state.has_free_slot()
    assert not state.holding
    assert slow.closed_streams == 1
    assert turn.fell_back


async def test_first_answer_in_time_is_not_hedged() -> None:
    gpu = ScriptedBackend("GPU", 2)
    router = TrackedRouter([ScriptedBackend("Pi", 1), gpu], settings=hedging(5.0))
    turn, _ = await collect(router)
    assert turn.served_by == "Pi"
    assert gpu.requests == []


async def test_never_hedge_onto_a_busy_or_open_backend() -> None:
    slow = ScriptedBackend("Slow", 1, first_token_timeout=0.2)
    slow.streams = [[HANG], [HANG]]
    busy = Gated("Busy", 2, first_token_timeout=0.3, stall_timeout=30)
    down = ScriptedBackend("Down", 3)
    router = TrackedRouter([slow, busy, down], settings=hedging())
    for _ in range(3):  # a black hole: not even a last resort
        router.states["Down"].breaker.record_failure(BackendTimeout("silent"))
    first = await busy_turn(router, busy)
    second = asyncio.create_task(collect(router))
    # Slow is overdue at 0.2 s; Busy is then asked, in line.
    await until(lambda: router.states["Busy"].waiting == 1)
    await asyncio.sleep(0.2)
    assert down.requests == []
    assert len(busy.requests) == 1  # never hedged onto
    busy.gate.set()
    await first
    turn, _ = await second
    assert turn.served_by == "Busy"
    assert sorted((a.backend, a.error_kind) for a in turn.attempts) == [
        ("Busy", None),
        ("Slow", ErrorKind.TIMED_OUT),
    ]


async def test_hedge_goes_to_the_turn_waiting_longest() -> None:
    """When a busy backend frees up, the turn waiting longest hedges onto it.

    Both turns look again every 0.4 s; the later one looks first after the
    Pi is free, and still leaves it to the earlier one.
    """
    slow, pi = ScriptedBackend("Slow", 1, max_parallel=2), Gated("Pi", 2)
    slow.streams = [[HANG], [HANG]]
    router = TrackedRouter([slow, pi], settings=hedging(0.4))
    busy = await busy_turn(router, pi)
    loop = asyncio.get_running_loop()
    started = loop.time()

    def asking(text: str) -> ChatRequest:
        return ChatRequest(messages=(ChatMessage("user", text),))

    earlier = asyncio.create_task(collect(router, asking("earlier")))
    await asyncio.sleep(0.2)
    later = asyncio.create_task(collect(router, asking("later")))
    # Between the earlier turn's look at 0.8 s and the later one's at 1.0 s.
    await asyncio.sleep(started + 0.9 - loop.time())
    pi.gate.set()
    await busy
    await asyncio.gather(earlier, later)
    asked = [request.messages[-1].content for request in pi.requests[1:]]
    assert asked == ["earlier", "later"]


async def test_hedge_carries_on_when_the_first_fails() -> None:
    slow = ScriptedBackend("Slow", 1)
    slow.streams = [[HANG]]
    broken = ScriptedBackend("Broken", 2)
    broken.streams = [[BackendServerError("HTTP 500")]]
    pi = ScriptedBackend("Pi", 3)
    router = TrackedRouter([slow, broken, pi], settings=hedging())
    turn, events = await collect(router)
    assert turn.served_by in ("Slow", "Pi")
    assert answer_of(events) == "The lamp is on."
    assert ("Broken", ErrorKind.SERVER_ERROR) in [
        (a.backend, a.error_kind) for a in turn.attempts
    ]


# Where nothing is spoken (AI Task, actions): a broken answer is retried.


async def test_unspoken_answer_that_breaks_off_goes_to_the_next_backend() -> None:
    gpu, pi = ScriptedBackend("GPU", 1), ScriptedBackend("Pi", 2)
    gpu.streams = [[ReasoningDelta("hm"), TextDelta("The la"), BackendServerError("x")]]
    router = TrackedRouter([gpu, pi])
    turn, events = await collect(router, spoken=False)
    assert events == [TextDelta("The lamp"), TextDelta(" is on.")]
    assert turn.served_by == "Pi"
    assert router.states["GPU"].failures == 1


async def test_unspoken_answer_breaking_off_everywhere_fails() -> None:
    gpu = ScriptedBackend("GPU")
    gpu.streams = [[TextDelta("The la"), BackendServerError("x")]]
    with pytest.raises(AllBackendsFailed):
        await collect(TrackedRouter([gpu]), spoken=False)


async def test_spoken_answer_streams_before_it_is_complete() -> None:
    pi = Gated("Pi")
    router = TrackedRouter([pi])
    turn = router.route(REQUEST)
    events = aiter(turn)
    assert await anext(events) == TextDelta("first")  # the gate is still shut
    pi.gate.set()
    assert [e async for e in events] == []


# Warm models.


async def test_model_is_loaded_when_the_backend_comes_up() -> None:
    async with ollama_pi(load_seconds=0.05) as (fake, pi):
        router = TrackedRouter([pi])
        assert router.keeps_warm(router.states["Pi"])
        assert await router.async_probe("Pi")
        await until(lambda: fake.loads == 1 and not router._warm_ups)
        assert [body["messages"] for body in fake.chat_bodies] == [[]]
        turn, _ = await collect(router)
        assert turn.stats is not None
        assert turn.stats.load_time == 0.0


async def test_warm_up_never_takes_a_users_slot() -> None:
    async with ollama_pi(load_seconds=0.05) as (fake, pi):
        fake.default_reply = Reply(stall_before_first=0.2)
        router = TrackedRouter([pi])
        task = asyncio.create_task(collect(router))
        await until(lambda: router.states["Pi"].holding)
        assert await router.async_probe("Pi")
        await task
        assert all(body["messages"] for body in fake.chat_bodies)


async def test_model_is_loaded_again_before_it_expires() -> None:
    async with ollama_pi(load_seconds=0.01, keep_alive=1) as (fake, pi):
        second = ScriptedBackend("GPU", 2)
        router = TrackedRouter(
            [pi, second],
            settings=RouterSettings(predictor=PredictorSettings(warm_margin=0.9)),
        )
        assert not router.keeps_warm(router.states["GPU"])
        await collect(router)
        await until(lambda: any(not body["messages"] for body in fake.chat_bodies))
        assert fake.is_loaded("llama3.2")


async def test_turns_plan_no_new_warm_up_while_one_is_planned_sooner() -> None:
    async with ollama_pi(keep_alive=600) as (_, pi):
        router = TrackedRouter([pi])
        await collect(router)
        planned = router._warm_timers["Pi"]
        await collect(router)  # the model now stays a little longer
        assert router._warm_timers["Pi"] is planned
        assert not planned.cancelled()


async def test_failed_warm_up_is_no_failure() -> None:
    async with ollama_pi(load_seconds=0.01, model="missing") as (fake, pi):
        router = TrackedRouter([pi])
        assert await router.async_probe("Pi")
        await until(lambda: fake.chat_bodies and not router._warm_ups)
        assert router.states["Pi"].failures == 0
        assert router.states["Pi"].loading_since is None


async def test_hedge_waits_until_the_other_is_expected_to_be_sooner() -> None:
    """A backend running late is hedged once the next would answer first."""
    slow = ScriptedBackend("Slow", 1)
    slow.streams = [[HANG]]
    pi = ScriptedBackend("Pi", 2)
    router = TrackedRouter([slow, pi], settings=hedging(0.01))
    learn(router, "Pi", time_to_first_token=1.5, prompt_tokens=0)
    task = asyncio.create_task(collect(router))
    await asyncio.sleep(0.3)  # far from 1.5 s, however slow the machine
    assert pi.requests == []  # the Pi would not be sooner yet
    turn, _ = await task
    assert turn.served_by == "Pi"
    assert turn.attempts[-1].decision is Decision.HEDGE


class Paced(ScriptedBackend):
    """Streams its answer a word every `every` seconds."""

    every = 0.03

    async def chat(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        for word in ("One", " two", " three", " four", " five"):
            await asyncio.sleep(self.every)
            yield TextDelta(word)
        yield ServerStats()


async def test_steady_stream_slower_in_all_than_the_stall_deadline() -> None:
    """Five words 0.15 s apart: 0.75 s in all, each gap well within 0.5 s."""
    pi = Paced("Pi", stall_timeout=0.5, first_token_timeout=0.5)
    pi.every = 0.15
    _, events = await collect(TrackedRouter([pi]))
    assert answer_of(events) == "One two three four five"


async def test_a_slow_listener_is_no_stall_of_the_server() -> None:
    pi = Paced("Pi", stall_timeout=0.05)
    pi.every = 0.0
    listened: list[str] = []
    async for event in TrackedRouter([pi]).route(REQUEST):
        assert isinstance(event, TextDelta)
        listened.append(event.text)
        await asyncio.sleep(0.08)  # longer than the stall deadline
    assert "".join(listened) == "One two three four five"


async def test_passed_over_backend_is_asked_in_line_when_the_rest_fail() -> None:
    pi, gpu = Gated("Pi", 1), ScriptedBackend("GPU", 2)
    gpu.streams = [[BackendServerError("HTTP 500")]]
    router = TrackedRouter([pi, gpu])
    first = await busy_turn(router, pi)
    second = asyncio.create_task(collect(router))
    await until(lambda: router.states["Pi"].waiting == 1)
    pi.gate.set()
    await first
    turn, _ = await second
    assert [(a.backend, a.decision, a.error_kind) for a in turn.attempts] == [
        ("Pi", Decision.SKIPPED, ErrorKind.BUSY),
        ("GPU", Decision.FALLBACK, ErrorKind.SERVER_ERROR),
        ("Pi", Decision.QUEUED, None),
    ]
    assert turn.served_by == "Pi"


async def test_abandoned_turn_closes_its_stream_and_frees_its_slot() -> None:
    pi = Gated("Pi")
    router = TrackedRouter([pi])
    events = aiter(router.route(REQUEST))
    assert await anext(events) == TextDelta("first")
    await events.aclose()  # type: ignore[attr-defined]
    assert pi.closed_streams == 1
    assert router.states["Pi"].has_free_slot()
    assert router.states["Pi"].failures == 0


@pytest.mark.parametrize("leave", ["aclose", "cancel", "drop"])
async def test_a_turn_left_mid_answer_still_ends(leave: str) -> None:
    """Closed, cancelled or dropped: stream closed, slot freed, router told."""
    pi = Gated("Pi")
    router = TrackedRouter([pi])
    told: list[list[str]] = []
    notify = router.notify

    def spy(names: Iterable[str]) -> None:
        told.append(list(names))
        notify(told[-1])

    router.notify = spy  # type: ignore[method-assign]
    events = aiter(router.route(REQUEST))
    assert await anext(events) == TextDelta("first")
    if leave == "aclose":
        await events.aclose()  # type: ignore[attr-defined]
    elif leave == "cancel":
        waiting = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0)  # at the gate
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    else:
        del events  # the loop closes what nobody iterates any more
    await until(lambda: pi.closed_streams == 1 and told)
    assert router.states["Pi"].has_free_slot()
    assert len(told) == 1
