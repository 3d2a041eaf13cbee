"""Tests of the router: order, fallback, deadlines, breaker, concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from custom_components.llm_router.engine.backend import Backend
from custom_components.llm_router.engine.breaker import BreakerState
from custom_components.llm_router.engine.errors import (
    BackendError,
    BackendServerError,
    BackendUnreachable,
    BadRequest,
    CapabilityUnsupported,
    ErrorKind,
)
from custom_components.llm_router.engine.models import (
    BackendConfig,
    BackendKind,
    Capability,
    ChatMessage,
    ChatRequest,
    ModelDetails,
    ProbeResult,
    ReasoningDelta,
    ServerStats,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
)
from custom_components.llm_router.engine.outcomes import (
    AllBackendsFailed,
    Interrupted,
    RouterEvent,
)
from custom_components.llm_router.engine.predictor import Forecast
from custom_components.llm_router.engine.router import Router
from custom_components.llm_router.engine.servers import Server
from custom_components.llm_router.engine.settings import RouterSettings
from tests.conftest import until

HANG = object()
ANSWER = [TextDelta("The lamp"), TextDelta(" is on."), ServerStats(completion_tokens=3)]
REQUEST = ChatRequest(messages=(ChatMessage("user", "Is the lamp on?"),))
LIGHT_TOOL = ToolSpec("HassTurnOn", "Turn on", {"type": "object"})


class ScriptedBackend(Backend):
    """A backend that plays scripted streams; a test double of the interface."""

    def __init__(self, name: str, priority: int = 1, **config: Any) -> None:
        super().__init__(
            BackendConfig(
                name=name,
                kind=BackendKind.OPENAI,
                url="http://127.0.0.1:9",
                model="m",
                priority=priority,
                first_token_timeout=config.pop("first_token_timeout", 5.0),
                stall_timeout=config.pop("stall_timeout", 5.0),
                **config,
            )
        )
        self.streams: list[list[Any]] = []
        self.requests: list[ChatRequest] = []
        self.capabilities: frozenset[Capability] | None = None
        self.probe_error: BackendError | None = None
        self.probes = 0
        self.closed = False

    async def chat(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        self.requests.append(request)
        for step in self.streams.pop(0) if self.streams else ANSWER:
            if isinstance(step, BaseException):
                raise step
            if step is HANG:
                await asyncio.sleep(3600)
            yield step

    async def probe(self) -> ProbeResult:
        self.probes += 1
        if self.probe_error:
            raise self.probe_error
        return ProbeResult(version="1.0")

    async def list_models(self) -> list[str]:
        return ["m"]

    async def check_model(self) -> ModelDetails:
        return await self.model_details()

    async def model_details(self) -> ModelDetails:
        return ModelDetails(self.capabilities)

    async def close(self) -> None:
        self.closed = True


async def collect(
    router: Router, request: ChatRequest = REQUEST, **kw: Any
) -> tuple[Any, list[RouterEvent]]:
    turn = router.route(request, **kw)
    events = [event async for event in turn]
    return turn, events


_routers: list[Router] = []


class TrackedRouter(Router):
    """A router closed after each test, so no cooldown timer lingers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _routers.append(self)


@pytest.fixture(autouse=True)
async def close_routers() -> AsyncIterator[None]:
    yield
    while _routers:
        await _routers.pop().close()


def answer_of(events: list[RouterEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_first_choice_by_priority_serves() -> None:
    gpu, pi = ScriptedBackend("GPU", 1), ScriptedBackend("Pi", 2)
    router = TrackedRouter([pi, gpu])
    turn, events = await collect(router)
    assert answer_of(events) == "The lamp is on."
    assert turn.served_by == "GPU"
    assert not turn.fell_back
    assert turn.stats is not None
    assert turn.stats.completion_tokens == 3
    assert router.states["GPU"].requests == 1
    assert router.states["GPU"].online is True
    assert pi.requests == []


async def test_refused_backend_falls_back_and_is_skipped_next_turn() -> None:
    gpu, pi = ScriptedBackend("GPU", 1), ScriptedBackend("Pi", 2)
    gpu.streams = [[BackendUnreachable("connection refused")]]
    router = TrackedRouter([gpu, pi])
    turn, events = await collect(router)
    assert answer_of(events) == "The lamp is on."
    assert turn.served_by == "Pi"
    assert turn.fell_back
    assert [(a.backend, a.error_kind) for a in turn.attempts] == [
        ("GPU", ErrorKind.UNREACHABLE),
        ("Pi", None),
    ]
    gpu_state = router.states["GPU"]
    assert gpu_state.breaker.state is BreakerState.OPEN
    assert (gpu_state.failures, gpu_state.online) == (1, False)

    turn, _ = await collect(router)
    assert len(gpu.requests) == 1  # not tried again
    assert turn.attempts[0].error_kind is ErrorKind.CIRCUIT_OPEN
    assert turn.served_by == "Pi"
    assert turn.fell_back
    # Skipped, not sent: counted apart from requests and their failures.
    assert (gpu_state.requests, gpu_state.failures, gpu_state.skipped) == (1, 1, 1)


async def test_cooldown_probes_until_backend_returns() -> None:
    gpu, pi = ScriptedBackend("GPU", 1), ScriptedBackend("Pi", 2)
    gpu.streams = [[BackendUnreachable("connection refused")]]
    gpu.probe_error = BackendUnreachable("connection refused")
    router = TrackedRouter([gpu, pi], settings=RouterSettings(cooldown=0.01))
    await collect(router)
    await until(lambda: gpu.probes >= 2)  # failed probes keep the cooldown going
    assert router.states["GPU"].breaker.state is BreakerState.OPEN
    gpu.probe_error = None
    await until(router.states["GPU"].breaker.allows)
    turn, _ = await collect(router)
    assert turn.served_by == "GPU"


async def test_success_cancels_pending_cooldown() -> None:
    gpu = ScriptedBackend("GPU")
    gpu.probe_error = BackendUnreachable("connection refused")
    router = TrackedRouter([gpu], settings=RouterSettings(cooldown=3600))
    assert not await router.async_probe("GPU")
    assert router._cooldowns
    gpu.probe_error = None
    assert await router.async_probe("GPU")
    assert not router._cooldowns


async def test_background_probe_runs_once_at_a_time() -> None:
    gpu = ScriptedBackend("GPU")
    router = TrackedRouter([gpu])
    router.request_probe("GPU")
    router.request_probe("GPU")
    await asyncio.sleep(0)
    assert gpu.probes == 1
    assert router.states["GPU"].version == "1.0"


async def test_server_errors_open_breaker_after_three_in_a_row() -> None:
    gpu, pi = ScriptedBackend("GPU", 1), ScriptedBackend("Pi", 2)
    gpu.streams = [[BackendServerError("HTTP 500")] for _ in range(3)]
    router = TrackedRouter([gpu, pi])
    for expected in (BreakerState.CLOSED, BreakerState.CLOSED, BreakerState.OPEN):
        turn, _ = await collect(router)
        assert turn.served_by == "Pi"
        assert router.states["GPU"].breaker.state is expected
    assert router.states["GPU"].online is None  # errors, yet it answered


async def test_success_resets_failure_run() -> None:
    gpu = ScriptedBackend("GPU")
    gpu.streams = [[BackendServerError("HTTP 500")], ANSWER, [BackendServerError("x")]]
    router = TrackedRouter([gpu, ScriptedBackend("Pi", 2)])
    for _ in range(3):
        await collect(router)
    assert router.states["GPU"].breaker.consecutive_failures == 1


async def test_first_token_deadline_falls_back() -> None:
    gpu = ScriptedBackend("GPU", 1, first_token_timeout=0.05)
    gpu.streams = [[HANG]]
    router = TrackedRouter([gpu, ScriptedBackend("Pi", 2)])
    turn, events = await collect(router)
    assert turn.served_by == "Pi"
    assert turn.attempts[0].error_kind is ErrorKind.TIMED_OUT
    assert "no first token within 0.05 s" in str(turn.attempts[0].error)
    assert answer_of(events) == "The lamp is on."


async def test_stall_after_answer_started_interrupts_turn() -> None:
    gpu = ScriptedBackend("GPU", 1, stall_timeout=0.05)
    gpu.streams = [[TextDelta("The lamp"), HANG]]
    pi = ScriptedBackend("Pi", 2)
    router = TrackedRouter([gpu, pi])
    turn, events = await collect(router)
    assert answer_of(events) == "The lamp"
    assert isinstance(events[-1], Interrupted)
    assert events[-1].error.kind is ErrorKind.TIMED_OUT
    assert turn.served_by == "GPU"
    assert pi.requests == []
    assert router.states["GPU"].failures == 1


async def test_reasoning_before_failure_falls_back_and_is_dropped() -> None:
    """Reasoning is held until its answer starts: a failed attempt's is not shown."""
    gpu = ScriptedBackend("GPU")
    gpu.streams = [[ReasoningDelta("hmm"), BackendServerError("HTTP 500")]]
    pi = ScriptedBackend("Pi", 2)
    pi.streams = [[ReasoningDelta("ok"), *ANSWER]]
    router = TrackedRouter([gpu, pi])
    turn, events = await collect(router)
    assert turn.served_by == "Pi"
    assert events[:2] == [ReasoningDelta("ok"), TextDelta("The lamp")]


async def test_tool_calls_commit_the_attempt() -> None:
    call = ToolCall("1", "HassTurnOn", {"name": "lamp"})
    gpu = ScriptedBackend("GPU")
    gpu.streams = [[ToolCallDelta((call,)), BackendServerError("HTTP 500")]]
    router = TrackedRouter([gpu, ScriptedBackend("Pi", 2)])
    turn, events = await collect(router)
    assert events[0] == ToolCallDelta((call,))
    assert isinstance(events[1], Interrupted)
    assert turn.served_by == "GPU"


async def test_all_backends_failing_raises_with_attempts() -> None:
    gpu, pi = ScriptedBackend("GPU", 1), ScriptedBackend("Pi", 2)
    gpu.streams = [[BackendUnreachable("connection refused")]]
    pi.streams = [[BackendServerError("HTTP 503")]]
    router = TrackedRouter([gpu, pi])
    with pytest.raises(AllBackendsFailed) as caught:
        await collect(router)
    assert [a.error for a in caught.value.attempts] == [
        "connection refused",
        "HTTP 503",
    ]
    assert str(caught.value) == "GPU: connection refused; Pi: HTTP 503"


async def test_no_backends() -> None:
    with pytest.raises(AllBackendsFailed, match="no backends"):
        await collect(TrackedRouter([]))


async def test_model_without_tools_gets_request_without_tools() -> None:
    pi = ScriptedBackend("Pi")
    pi.capabilities = frozenset({Capability.THINKING})
    router = TrackedRouter([pi])
    call = ToolCall("1", "HassTurnOn", {"name": "lamp"})
    history = (
        ChatMessage("user", "Light on"),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage(
            "tool", '{"success": true}', tool_call_id="1", tool_name="HassTurnOn"
        ),
    )
    await collect(router, ChatRequest(messages=history, tools=(LIGHT_TOOL,)))
    sent = pi.requests[0]
    assert sent.tools == ()
    assert [(m.role, m.content) for m in sent.messages] == [
        ("user", "Light on"),
        ("assistant", '[called HassTurnOn({"name": "lamp"})]'),
        ("user", 'Result of HassTurnOn: {"success": true}'),
    ]


async def test_tools_refused_by_server_retried_without_tools() -> None:
    pi = ScriptedBackend("Pi")
    pi.streams = [[CapabilityUnsupported("tools", "m does not support tools")], ANSWER]
    router = TrackedRouter([pi])
    turn, events = await collect(
        router, ChatRequest(messages=REQUEST.messages, tools=(LIGHT_TOOL,))
    )
    assert answer_of(events) == "The lamp is on."
    assert [len(r.tools) for r in pi.requests] == [1, 0]
    assert turn.attempts[-1].ok
    assert router.states["Pi"].failures == 0
    # Learnt: the next request goes without tools at once.
    await collect(router, ChatRequest(messages=REQUEST.messages, tools=(LIGHT_TOOL,)))
    assert len(pi.requests[2].tools) == 0


async def test_capability_refused_twice_is_a_failure() -> None:
    pi = ScriptedBackend("Pi")
    refusal = CapabilityUnsupported("thinking", "m does not support thinking")
    pi.streams = [[refusal], [refusal]]
    router = TrackedRouter([pi])
    with pytest.raises(AllBackendsFailed):
        await collect(router, ChatRequest(messages=REQUEST.messages, think=True))
    assert [r.think for r in pi.requests] == [True, False]


async def test_think_follows_config_and_capabilities() -> None:
    pi = ScriptedBackend("Pi", think=True)
    router = TrackedRouter([pi])
    await collect(router)
    await collect(router, ChatRequest(messages=REQUEST.messages, think=False))
    pi.capabilities = frozenset({Capability.TOOLS})
    router.states["Pi"].details = None
    await collect(router)
    assert [r.think for r in pi.requests] == [True, False, False]


async def test_inline_reasoning_without_opening_tag_when_thinking() -> None:
    pi = ScriptedBackend("Pi", think=True)
    pi.streams = [
        [TextDelta("Check lamp.</thi"), TextDelta("nk>\n\nIt is on."), ServerStats()]
    ]
    _, events = await collect(TrackedRouter([pi]))
    assert events == [ReasoningDelta("Check lamp."), TextDelta("It is on.")]


@pytest.mark.parametrize(
    "pieces",
    [["Use the <think>", " tag to mark reasoning."], ["<think> is a tag", "."]],
)
async def test_think_tag_that_never_closes_is_spoken_without_thinking(
    pieces: list[str],
) -> None:
    gpu = ScriptedBackend("GPU")
    gpu.streams = [[*map(TextDelta, pieces), ServerStats(completion_tokens=9)]]
    turn, events = await collect(TrackedRouter([gpu]))
    assert answer_of(events) == "".join(pieces)
    assert turn.served_by == "GPU"
    assert turn.attempts[0].ok


async def test_empty_answer_falls_back() -> None:
    gpu = ScriptedBackend("GPU")
    gpu.streams = [[ReasoningDelta("..."), ServerStats()]]
    turn, _ = await collect(TrackedRouter([gpu, ScriptedBackend("Pi", 2)]))
    assert turn.attempts[0].error == "empty answer"
    assert turn.served_by == "Pi"


async def test_stream_without_final_stats_is_bad_response() -> None:
    gpu = ScriptedBackend("GPU")
    gpu.streams = [[TextDelta("Hi")]]
    _, events = await collect(TrackedRouter([gpu]))
    assert isinstance(events[-1], Interrupted)
    assert events[-1].error.kind is ErrorKind.BAD_RESPONSE


async def test_forced_backend() -> None:
    gpu, pi = ScriptedBackend("GPU", 1), ScriptedBackend("Pi", 2)
    router = TrackedRouter([gpu, pi])
    turn, _ = await collect(router, backend="Pi")
    assert turn.served_by == "Pi"
    assert not turn.fell_back
    with pytest.raises(KeyError):
        router.route(REQUEST, backend="nope")


async def test_max_parallel_queues_requests() -> None:
    gate = asyncio.Event()

    class Gated(ScriptedBackend):
        async def chat(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
            self.requests.append(request)
            yield TextDelta("first")
            await gate.wait()
            yield ServerStats()

    pi = Gated("Pi", max_parallel=1)
    router = TrackedRouter([pi])
    first = asyncio.create_task(collect(router))
    await until(lambda: pi.requests)
    second = asyncio.create_task(collect(router))
    await until(lambda: router.states["Pi"].waiting)
    assert len(pi.requests) == 1
    assert router.states["Pi"].waiting == 1
    gate.set()
    await first
    await second
    assert len(pi.requests) == 2


async def test_turn_deadline_while_queued() -> None:
    pi = ScriptedBackend("Pi")
    router = TrackedRouter([pi], settings=RouterSettings(turn_timeout=0.05))
    await router.states["Pi"].slots.acquire()
    with pytest.raises(AllBackendsFailed) as caught:
        await collect(router)
    assert caught.value.attempts[0].error_kind is ErrorKind.OUT_OF_TIME
    assert caught.value.attempts[0].error == "the turn's time ran out"
    assert pi.requests == []
    assert router.states["Pi"].failures == 0


async def test_model_details_timeout_is_a_failure() -> None:
    class SlowDetails(ScriptedBackend):
        async def model_details(self) -> ModelDetails:
            await asyncio.sleep(3600)
            raise AssertionError

    slow = SlowDetails("GPU", first_token_timeout=0.05)
    turn, _ = await collect(TrackedRouter([slow, ScriptedBackend("Pi", 2)]))
    assert turn.attempts[0].error_kind is ErrorKind.TIMED_OUT
    assert turn.served_by == "Pi"


async def test_probe_results_feed_state_and_listeners() -> None:
    gpu = ScriptedBackend("GPU")
    router = TrackedRouter([gpu], settings=RouterSettings(probe_timeout=0.05))
    changes: list[frozenset[str]] = []
    remove = router.add_listener(changes.append)
    assert await router.async_probe("GPU")
    state = router.states["GPU"]
    assert (state.online, state.version) == (True, "1.0")

    gpu.probe_error = BackendUnreachable("connection refused")
    assert not await router.async_probe("GPU")
    assert state.online is False
    assert state.breaker.state is BreakerState.OPEN
    assert (state.failed_probes, state.requests, state.failures) == (1, 0, 0)
    assert changes == [frozenset({"GPU"})] * 2
    remove()
    await router.async_probe("GPU")
    assert len(changes) == 2


async def test_a_turn_tells_listeners_of_the_backends_it_changed() -> None:
    # Pi and Pi2 share a server: what one holds, the other waits for.
    gpu, pi, twin, idle = (
        ScriptedBackend("GPU", 1),
        ScriptedBackend("Pi", 2),
        ScriptedBackend("Pi2", 3),
        ScriptedBackend("Idle", 4),
    )
    gpu.streams = [[BackendServerError("HTTP 500")]]
    shared = Server.create(max_parallel=1, failure_threshold=3)
    router = TrackedRouter([gpu, pi, twin, idle], servers={"Pi": shared, "Pi2": shared})
    changes: list[frozenset[str]] = []
    router.add_listener(changes.append)
    turn, _ = await collect(router)
    assert turn.served_by == "Pi"
    assert changes == [frozenset({"GPU", "Pi", "Pi2"})]


class ForecastCounting(TrackedRouter):
    """Notes the backends it forecasts, in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.forecast_for: list[str] = []

    def forecast(self, name: str, *args: Any, **kwargs: Any) -> Forecast:
        self.forecast_for.append(name)
        return super().forecast(name, *args, **kwargs)


async def test_a_turn_forecasts_only_what_is_read() -> None:
    # The ordered policy reads no forecast; the attempt reads its backend's.
    router = ForecastCounting([ScriptedBackend("GPU", 1), ScriptedBackend("Pi", 2)])
    turn, _ = await collect(router)
    assert turn.served_by == "GPU"
    assert router.forecast_for == ["GPU"]


class TaskNoting(ScriptedBackend):
    """Notes the task each of its stream's events is pulled in."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tasks: list[asyncio.Task[Any] | None] = []

    async def chat(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        async for event in super().chat(request):
            self.tasks.append(asyncio.current_task())
            yield event


@pytest.mark.parametrize("hedging", [False, True])
async def test_a_lone_attempt_streams_in_the_turns_task(hedging: bool) -> None:
    gpu = TaskNoting("GPU")
    gpu.streams = [[ReasoningDelta("Hmm."), ReasoningDelta(" Yes."), *ANSWER]]
    router = TrackedRouter([gpu], settings=RouterSettings(hedging=hedging))
    turn_task = asyncio.create_task(collect(router))
    turn, _ = await turn_task
    assert turn.served_by == "GPU"
    # With nothing to start beside it, its first token's deadline is a
    # timer: pulled in the turn's task. A hedge is waited for in a race.
    assert [task is turn_task for task in gpu.tasks[:2]] == [not hedging] * 2


class LateNoting(TaskNoting):
    """Says its first word after its first-token deadline."""

    async def chat(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        await asyncio.sleep(0.2)
        async for event in super().chat(request):
            yield event


async def test_a_lone_attempts_overdue_first_token_is_counted_by_a_timer() -> None:
    pi = LateNoting("Pi", first_token_timeout=0.05)
    router = TrackedRouter([pi], settings=RouterSettings(failure_threshold=1))
    turn_task = asyncio.create_task(collect(router))
    await asyncio.sleep(0.1)
    # Overdue, not cut: the breaker has heard of the miss while it waits.
    state = router.states["Pi"]
    assert state.last_error is not None
    assert state.last_error.kind is ErrorKind.TIMED_OUT
    assert not state.breaker.allows()
    turn, _ = await turn_task
    assert turn.served_by == "Pi"
    assert pi.tasks[0] is turn_task


async def test_probe_timeout() -> None:
    class SlowProbe(ScriptedBackend):
        async def probe(self) -> ProbeResult:
            await asyncio.sleep(3600)
            raise AssertionError

    router = TrackedRouter(
        [SlowProbe("GPU")], settings=RouterSettings(probe_timeout=0.01)
    )
    assert not await router.async_probe("GPU")
    assert router.states["GPU"].last_error is not None
    assert router.states["GPU"].last_error.kind is ErrorKind.TIMED_OUT


async def test_close_cancels_probes_and_closes_backends() -> None:
    class SlowProbe(ScriptedBackend):
        async def probe(self) -> ProbeResult:
            await asyncio.sleep(3600)
            raise AssertionError

    gpu = SlowProbe("GPU")
    router = TrackedRouter([gpu])
    router.request_probe("GPU")
    await asyncio.sleep(0)
    await router.close()
    assert gpu.closed
    assert not router._probes


async def test_probe_success_is_probation_not_a_clean_slate() -> None:
    """A server that answers probes but fails requests does not flap."""
    gpu, pi = ScriptedBackend("GPU", 1), ScriptedBackend("Pi", 2)
    gpu.streams = [[BackendServerError("HTTP 500")] for _ in range(4)]
    router = TrackedRouter([gpu, pi], settings=RouterSettings(cooldown=3600))
    for _ in range(3):
        await collect(router)
    assert router.states["GPU"].breaker.state is BreakerState.OPEN
    assert await router.async_probe("GPU")  # up, but still failing requests
    assert router.states["GPU"].breaker.allows()
    turn, _ = await collect(router)
    assert turn.served_by == "Pi"
    assert router.states["GPU"].breaker.state is BreakerState.OPEN  # one strike
    assert len(gpu.requests) == 4


async def test_requests_the_server_refuses_do_not_open_the_breaker() -> None:
    """Schemas vLLM rejects (AI Task) leave the GPU in service for voice turns."""
    gpu, pi = ScriptedBackend("GPU", 1), ScriptedBackend("Pi", 2)
    refused = BadRequest("HTTP 400: invalid JSON schema")
    gpu.streams = [[refused] for _ in range(3)]
    router = TrackedRouter([gpu, pi], settings=RouterSettings(cooldown=3600))
    for _ in range(3):
        turn, _ = await collect(router)
        assert turn.served_by == "Pi"
        assert turn.attempts[0].error_kind is ErrorKind.BAD_REQUEST
    assert router.states["GPU"].breaker.state is BreakerState.CLOSED

    # Nor does one reopen it on probation after a probe.
    gpu.streams = [[BackendServerError("HTTP 500")] for _ in range(3)] + [[refused]]
    for _ in range(3):
        await collect(router)
    assert await router.async_probe("GPU")
    await collect(router)
    assert router.states["GPU"].breaker.state is BreakerState.CLOSED
    turn, _ = await collect(router)
    assert turn.served_by == "GPU"


async def test_probe_does_not_reset_failures_of_a_closed_breaker() -> None:
    gpu = ScriptedBackend("GPU")
    gpu.streams = [[BackendServerError("HTTP 500")], [BackendServerError("HTTP 500")]]
    router = TrackedRouter([gpu, ScriptedBackend("Pi", 2)])
    await collect(router)
    await collect(router)
    assert await router.async_probe("GPU")
    assert router.states["GPU"].breaker.consecutive_failures == 2


async def test_one_log_line_when_lost_and_one_when_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gpu, pi = ScriptedBackend("GPU", 1), ScriptedBackend("Pi", 2)
    gpu.probe_error = BackendUnreachable("connection refused")
    router = TrackedRouter([gpu, pi], settings=RouterSettings(cooldown=3600))
    assert await router.async_probe("GPU") is False
    for _ in range(3):
        await router.async_probe("GPU")
        await collect(router)
    gpu.probe_error = None
    for _ in range(3):
        await router.async_probe("GPU")
        await collect(router)
    messages = [r.getMessage() for r in caplog.records if "GPU" in r.getMessage()]
    assert messages == [
        "Backend GPU is unavailable: connection refused",
        "Backend GPU is answering again",
    ]
