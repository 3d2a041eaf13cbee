"""The router: policy order, deadlines, fallback and circuit breaking."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
import logging

from .backend import Backend
from .breaker import CircuitBreaker
from .errors import (
    AuthFailed,
    BackendError,
    BackendTimeout,
    BadResponse,
    CapabilityUnsupported,
    ErrorKind,
)
from .models import (
    BackendConfig,
    Capability,
    ChatRequest,
    LoadedModel,
    ModelDetails,
    ProbeResult,
    ReasoningDelta,
    ServerStats,
    TextDelta,
    ToolCallDelta,
)
from .policy import OrderedPolicy, Policy
from .reasoning import ReasoningSplitter
from .servers import Server
from .stats import GenerationStats, StreamClock, summarize

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RouterSettings:
    """Router-wide limits (seconds)."""

    turn_timeout: float = 120.0
    failure_threshold: int = 3
    cooldown: float = 30.0
    probe_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of trying one backend for one request."""

    backend: str
    error_kind: ErrorKind | None = None
    error: str | None = None
    stats: GenerationStats | None = None
    seconds: float = 0.0
    """Time spent on this attempt, queueing included."""

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


@dataclass(eq=False)
class BackendState:
    """Everything the router knows about one backend."""

    backend: Backend
    breaker: CircuitBreaker
    slots: asyncio.Semaphore
    online: bool | None = None
    requests: int = 0
    """Requests sent, answered or failed."""
    failures: int = 0
    skipped: int = 0
    """Requests not sent because the breaker was open."""
    failed_probes: int = 0
    last_stats: GenerationStats | None = None
    last_error: BackendError | None = None
    version: str | None = None
    loaded_models: tuple[LoadedModel, ...] = ()
    details: ModelDetails | None = None
    unsupported: set[Capability] = field(default_factory=set)
    waiting: int = 0
    auth_error: AuthFailed | None = None
    """The server rejected the API key: only a new key (a new router) helps."""
    recent_attempts: deque[Attempt] = field(default_factory=lambda: deque(maxlen=10))

    @property
    def config(self) -> BackendConfig:
        """The backend's configuration."""
        return self.backend.config

    @property
    def name(self) -> str:
        """The backend's name."""
        return self.backend.config.name

    def relearn(self, details: ModelDetails) -> None:
        """Replace what is known of the model, refusals included.

        A server may get a new model under the same name (ollama pull) or
        new settings (llama.cpp with --jinja) without going down.
        """
        self.details = details
        self.unsupported.clear()

    def supports(self, capability: Capability) -> bool:
        """Whether the model is known (or assumed) to support a capability."""
        if capability in self.unsupported:
            return False
        caps = self.details.capabilities if self.details else None
        return caps is None or capability in caps


class Router:
    """Routes chat requests to backends, falling back within a request."""

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        policy: Policy | None = None,
        settings: RouterSettings | None = None,
        servers: Mapping[str, Server] | None = None,
    ) -> None:
        # servers: by backend name, slots and breaker shared with other routers
        # on the same server (see ServerRegistry); else each backend its own.
        self.settings = settings or RouterSettings()
        self.policy = policy or OrderedPolicy()
        self.states: dict[str, BackendState] = {}
        for backend in backends:
            server = (servers or {}).get(backend.name) or Server.create(
                max_parallel=backend.config.max_parallel,
                failure_threshold=self.settings.failure_threshold,
            )
            self.states[backend.name] = BackendState(
                backend=backend, breaker=server.breaker, slots=server.slots
            )
        self._listeners: list[Callable[[], None]] = []
        self._probes: dict[str, asyncio.Task[bool]] = {}
        self._cooldowns: dict[str, asyncio.TimerHandle] = {}
        self._closed = False

    def add_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call listener after every change of state; returns its remover."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    def route(self, request: ChatRequest, *, backend: str | None = None) -> Turn:
        """Start routing one request; iterate the result for its events.

        With backend, only that backend is tried.
        """
        if backend is not None and backend not in self.states:
            raise KeyError(backend)
        return Turn(self, request, only=backend)

    def candidates(self, only: str | None = None) -> list[BackendState]:
        """Backends in the order the policy tries them."""
        if only is not None:
            return [self.states[only]]
        return self.policy.order(list(self.states.values()))

    async def async_probe(self, name: str) -> bool:
        """Probe one backend now and feed the result to its breaker."""
        state = self.states[name]
        try:
            async with asyncio.timeout(self.settings.probe_timeout):
                result = await state.backend.probe()
        except TimeoutError:
            self._record_probe_failure(state, BackendTimeout("probe timed out"))
            return False
        except BackendError as err:
            self._record_probe_failure(state, err)
            return False
        self._record_probe_success(state, result)
        return True

    def _set_online(self, state: BackendState, error: BackendError | None) -> None:
        """Note whether a backend answers; log only the transitions."""
        if error is None and state.online is False:
            _LOGGER.info("Backend %s is answering again", state.name)
        elif error is not None and state.online is not False:
            _LOGGER.warning("Backend %s is unavailable: %s", state.name, error)
        state.online = error is None

    def _record_probe_success(self, state: BackendState, result: ProbeResult) -> None:
        state.version = result.version
        state.loaded_models = result.loaded_models
        # A server that answers probes without a key says nothing of the key.
        if state.auth_error is None:
            self._set_online(state, None)
            state.breaker.record_probe_success()
            self._cancel_cooldown(state)
        self._changed()

    def _record_probe_failure(self, state: BackendState, error: BackendError) -> None:
        self._set_online(state, error)
        state.failed_probes += 1
        state.last_error = error
        state.loaded_models = ()
        self._breaker_failure(state, error)
        self._changed()

    def _breaker_failure(self, state: BackendState, error: BackendError) -> None:
        """Count a failure; while the breaker is open, probe after a cooldown."""
        if isinstance(error, AuthFailed):
            state.auth_error = error
        state.breaker.record_failure(error)
        if state.breaker.allows() or self._closed:
            return
        self._cancel_cooldown(state)
        self._cooldowns[state.name] = asyncio.get_running_loop().call_later(
            self.settings.cooldown, self.request_probe, state.name
        )

    def _cancel_cooldown(self, state: BackendState) -> None:
        if handle := self._cooldowns.pop(state.name, None):
            handle.cancel()

    def request_probe(self, name: str) -> None:
        """Probe a backend in the background, once at a time."""
        if name in self._probes or self._closed:
            return
        task = asyncio.get_running_loop().create_task(
            self.async_probe(name), name=f"llm_router probe {name}"
        )
        self._probes[name] = task
        task.add_done_callback(lambda _: self._probes.pop(name, None))

    async def close(self) -> None:
        """Stop probes and timers for good; end the turns in flight.

        Closing the backends fails what they are waiting for.
        """
        self._closed = True
        for handle in self._cooldowns.values():
            handle.cancel()
        self._cooldowns.clear()
        tasks = list(self._probes.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for state in self.states.values():
            await state.backend.close()

    # Bookkeeping called by Turn.

    def _record_success(self, state: BackendState, stats: GenerationStats) -> None:
        self._set_online(state, None)
        state.requests += 1
        state.last_stats = stats
        state.breaker.record_success()
        self._cancel_cooldown(state)

    def _record_failure(self, state: BackendState, error: BackendError) -> None:
        state.requests += 1
        state.failures += 1
        state.last_error = error
        if error.kind in (ErrorKind.UNREACHABLE, ErrorKind.AUTH_FAILED):
            self._set_online(state, error)
        self._breaker_failure(state, error)

    async def _details(self, state: BackendState) -> ModelDetails:
        if state.details is None:
            state.details = await state.backend.model_details()
        return state.details


class Turn:
    """One routed request: iterate for events, then read the outcome."""

    def __init__(
        self, router: Router, request: ChatRequest, *, only: str | None
    ) -> None:
        self._router = router
        self._request = request
        self._only = only
        self.attempts: list[Attempt] = []
        self.first_choice: str | None = None
        self.served_by: str | None = None

    @property
    def fell_back(self) -> bool:
        """Whether a backend other than the first choice served the request."""
        return self.served_by is not None and self.served_by != self.first_choice

    @property
    def stats(self) -> GenerationStats | None:
        """Stats of the generation that served the request."""
        return self.attempts[-1].stats if self.attempts else None

    def __aiter__(self) -> AsyncIterator[RouterEvent]:
        return self._run()

    def _note(self, state: BackendState, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        state.recent_attempts.append(attempt)

    async def _run(self) -> AsyncIterator[RouterEvent]:
        router = self._router
        loop = asyncio.get_running_loop()
        deadline = loop.time() + router.settings.turn_timeout
        candidates = router.candidates(self._only)
        self.first_choice = candidates[0].name if candidates else None
        try:
            for state in candidates:
                if not state.breaker.allows():
                    state.skipped += 1
                    self._note(
                        state,
                        Attempt(
                            state.name, ErrorKind.CIRCUIT_OPEN, "skipped, not answering"
                        ),
                    )
                    continue
                attempt = _Attempt(router, state, self._request, deadline)
                started = loop.time()
                try:
                    async for event in attempt.run():
                        yield event
                except BackendError as err:
                    router._record_failure(state, err)
                    self._note(
                        state,
                        Attempt(
                            state.name,
                            err.kind,
                            err.message,
                            seconds=loop.time() - started,
                        ),
                    )
                    if attempt.committed:
                        # Spoken text cannot be taken back: end the turn here.
                        self.served_by = state.name
                        yield Interrupted(state.name, err)
                        return
                    _LOGGER.debug(
                        "Backend %s failed, trying the next: %s", state.name, err
                    )
                    continue
                assert attempt.stats is not None
                router._record_success(state, attempt.stats)
                self._note(
                    state,
                    Attempt(
                        state.name, stats=attempt.stats, seconds=loop.time() - started
                    ),
                )
                self.served_by = state.name
                return
            raise AllBackendsFailed(self.attempts)
        finally:
            router._changed()


class _Attempt:
    """Streaming one request from one backend, under its deadlines."""

    def __init__(
        self, router: Router, state: BackendState, request: ChatRequest, deadline: float
    ) -> None:
        self._router = router
        self._state = state
        self._request = request
        self._deadline = deadline
        self.committed = False
        self.stats: GenerationStats | None = None

    async def run(self) -> AsyncIterator[RouterEvent]:
        state = self._state
        config = state.config
        loop = asyncio.get_running_loop()
        state.waiting += 1
        try:
            async with asyncio.timeout_at(self._deadline):
                await state.slots.acquire()
        except TimeoutError:
            raise BackendTimeout("busy with other requests") from None
        finally:
            state.waiting -= 1
        try:
            try:
                async with asyncio.timeout_at(
                    min(loop.time() + config.first_token_timeout, self._deadline)
                ):
                    await self._router._details(state)
            except TimeoutError:
                raise BackendTimeout("no answer in time") from None
            while True:
                try:
                    async for event in self._stream(self._adapt()):
                        yield event
                    return
                except CapabilityUnsupported as err:
                    if (
                        self.committed
                        or Capability(err.capability) in state.unsupported
                    ):
                        raise
                    # Learnt the hard way: retry at once without the feature.
                    state.unsupported.add(Capability(err.capability))
        finally:
            state.slots.release()

    def _adapt(self) -> ChatRequest:
        """The request as this backend's model can take it."""
        state = self._state
        request = self._request
        think = request.think if request.think is not None else state.config.think
        if not state.supports(Capability.THINKING):
            think = False
        if request.tools and not state.supports(Capability.TOOLS):
            request = request.without_tools()
        return replace(request, think=think)

    async def _stream(self, request: ChatRequest) -> AsyncIterator[RouterEvent]:
        state = self._state
        config = state.config
        loop = asyncio.get_running_loop()
        # A thinking model behind a server that does not split reasoning out
        # may start without <think>: hold its output until </think> shows.
        splitter = ReasoningSplitter(
            expect_reasoning=bool(request.think) and not state.backend.splits_reasoning
        )
        clock = StreamClock(started=loop.time())
        server_stats: ServerStats | None = None
        stream = state.backend.chat(request)
        try:
            while True:
                waiting_first = clock.first_token is None
                limit = (
                    config.first_token_timeout
                    if waiting_first
                    else config.stall_timeout
                )
                try:
                    async with asyncio.timeout_at(
                        min(loop.time() + limit, self._deadline)
                    ):
                        event = await anext(stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    reason = (
                        f"no first token within {limit:g} s"
                        if waiting_first
                        else f"stalled for {limit:g} s"
                    )
                    raise BackendTimeout(reason) from None
                match event:
                    case ServerStats():
                        server_stats = event
                    case ReasoningDelta():
                        clock.token(loop.time())
                        splitter.reasoning_handled_elsewhere()
                        yield event
                    case TextDelta():
                        clock.token(loop.time())
                        split = splitter.feed(event.text)
                        for out in self._split_events(split.reasoning, split.answer):
                            yield out
                    case ToolCallDelta():
                        clock.token(loop.time())
                        self.committed = True
                        yield event
        finally:
            await stream.aclose()
        split = splitter.flush()
        for out in self._split_events(split.reasoning, split.answer):
            yield out
        if server_stats is None:
            raise BadResponse("the answer ended early")
        if not self.committed:
            raise BadResponse("empty answer")
        self.stats = summarize(server_stats, clock, loop.time())

    def _split_events(self, reasoning: str, answer: str) -> list[RouterEvent]:
        events: list[RouterEvent] = []
        if reasoning:
            events.append(ReasoningDelta(reasoning))
        if answer:
            self.committed = True
            events.append(TextDelta(answer))
        return events
