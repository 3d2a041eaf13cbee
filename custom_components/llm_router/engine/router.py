"""The router: policy order, deadlines, fallback, hedging and circuit breaking."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
import logging
import math

from .backend import Backend
from .breaker import CircuitBreaker
from .errors import (
    AuthFailed,
    BackendBusy,
    BackendError,
    BackendTimeout,
    BadResponse,
    CapabilityUnsupported,
    ErrorKind,
    OutOfTime,
    Overtaken,
)
from .models import (
    BackendConfig,
    Capability,
    ChatMessage,
    ChatRequest,
    LoadedModel,
    ModelDetails,
    ProbeResult,
    ReasoningDelta,
    ServerStats,
    TextDelta,
    ToolCallDelta,
)
from .policy import OrderedPolicy, Policy, by_priority
from .predictor import (
    Forecast,
    Hold,
    LatencyModel,
    Observation,
    PredictorSettings,
    forecast,
    keep_alive_seconds,
)
from .reasoning import ReasoningSplitter
from .servers import Server
from .stats import GenerationStats, StreamClock, summarize

_LOGGER = logging.getLogger(__name__)

# Outcomes the router makes itself: not the backend's failures.
_NOT_FAILURES = frozenset({ErrorKind.BUSY, ErrorKind.OUT_OF_TIME, ErrorKind.CANCELLED})
# What the prediction sensors assume when no request is at hand.
REFERENCE_REQUEST = ChatRequest(
    messages=(ChatMessage("user", "Turn on the kitchen light, please."),)
)


@dataclass(frozen=True, slots=True)
class RouterSettings:
    """Router-wide limits (seconds) and choices."""

    turn_timeout: float = 120.0
    failure_threshold: int = 3
    cooldown: float = 30.0
    probe_timeout: float = 10.0
    latency_budget: float = 3.0
    """The time to the first answer word a voice user should wait at most."""
    hedging: bool = False
    predictor: PredictorSettings = field(default_factory=PredictorSettings)


class Decision(StrEnum):
    """Why a backend was tried, or not."""

    FIRST_CHOICE = "first_choice"
    FALLBACK = "fallback"
    HEDGE = "hedge"
    """Started beside another that had said no answer word by its hedge delay."""
    QUEUED = "queued"
    """Waited in line, after every other backend was busy or failed."""
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Attempt:
    """The outcome of trying one backend for one request."""

    backend: str
    error_kind: ErrorKind | None = None
    error: str | None = None
    stats: GenerationStats | None = None
    seconds: float = 0.0
    """Time spent on this attempt, queueing included."""
    decision: Decision = Decision.FIRST_CHOICE
    forecast: Forecast | None = None
    """The predicted time to the first answer word, when it was tried."""
    first_word: float | None = None
    """Seconds from the attempt's start to its first answer word."""
    queued: float = 0.0
    """Seconds spent waiting for a slot."""

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
    server: Server
    """Slots, their holders and the breaker: shared by every backend on it."""
    online: bool | None = None
    requests: int = 0
    """Requests sent, answered or failed."""
    failures: int = 0
    skipped: int = 0
    """Requests not sent because the breaker was open."""
    failed_probes: int = 0
    last_stats: GenerationStats | None = None
    prompt_speed: float | None = None
    """The last prompt speed measured (an answer from the cache measures none)."""
    last_first_word: float | None = None
    """Seconds from the request to the first answer word, last answer."""
    last_error: BackendError | None = None
    version: str | None = None
    loaded_models: tuple[LoadedModel, ...] = ()
    details: ModelDetails | None = None
    unsupported: set[Capability] = field(default_factory=set)
    auth_error: AuthFailed | None = None
    """The server rejected the API key: only a new key (a new router) helps."""
    latency: LatencyModel = field(default_factory=LatencyModel)
    loaded_until: float = math.inf
    """When the server unloads the model (loop time); inf until known."""
    loading_since: float | None = None
    recent_attempts: deque[Attempt] = field(default_factory=lambda: deque(maxlen=10))

    @property
    def config(self) -> BackendConfig:
        """The backend's configuration."""
        return self.backend.config

    @property
    def name(self) -> str:
        """The backend's name."""
        return self.backend.config.name

    @property
    def breaker(self) -> CircuitBreaker:
        """The server's circuit breaker."""
        return self.server.breaker

    @property
    def slots(self) -> asyncio.Semaphore:
        """The server's request slots."""
        return self.server.slots

    @property
    def max_parallel(self) -> int:
        """How many requests the server answers at once."""
        return self.server.max_parallel

    @property
    def holding(self) -> list[Hold]:
        """The server's slots in use, by any backend on it."""
        return self.server.holding

    @property
    def waiting(self) -> int:
        """Requests in line for one of the server's slots."""
        return self.server.waiting

    @waiting.setter
    def waiting(self, count: int) -> None:
        self.server.waiting = count

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

    def has_free_slot(self) -> bool:
        """Whether a request would be sent at once."""
        return not self.waiting and not self.slots.locked()


def _tagged(model: str) -> str:
    """Ollama's full model name: no tag means ":latest"."""
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


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
            self.states[backend.name] = BackendState(backend=backend, server=server)
        self._listeners: list[Callable[[], None]] = []
        self._probes: dict[str, asyncio.Task[bool]] = {}
        self._cooldowns: dict[str, asyncio.TimerHandle] = {}
        self._warm_timers: dict[str, asyncio.TimerHandle] = {}
        self._warm_ups: dict[str, asyncio.Task[None]] = {}
        self._hedge_line: list[Turn] = []
        """Turns waiting for a backend to hedge onto."""
        self._closed = False

    def add_listener(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call listener after every change of state; returns its remover."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    def route(
        self, request: ChatRequest, *, backend: str | None = None, spoken: bool = True
    ) -> Turn:
        """Start routing one request; iterate the result for its events.

        With backend, only that backend is tried. spoken=False is for callers
        where nobody hears the answer as it streams (AI Task, actions): an
        answer that breaks off is dropped and the next backend asked, and
        the events come only once an answer is complete.
        """
        if backend is not None and backend not in self.states:
            raise KeyError(backend)
        return Turn(self, request, only=backend, spoken=spoken)

    def forecast(
        self,
        name: str,
        request: ChatRequest = REFERENCE_REQUEST,
        now: float | None = None,
    ) -> Forecast:
        """Predicted time to the first answer word of a backend for request."""
        return forecast(
            self.states[name],
            request,
            asyncio.get_running_loop().time() if now is None else now,
            self.settings.predictor,
            self.settings.latency_budget,
        )

    def candidates(
        self,
        only: str | None = None,
        forecasts: Mapping[str, Forecast] | None = None,
    ) -> list[BackendState]:
        """Backends in the order the policy tries them.

        forecasts: each backend's for the request (default: for a short one).
        """
        if only is not None:
            return [self.states[only]]
        if forecasts is None:
            forecasts = {name: self.forecast(name) for name in self.states}
        return self.policy.order(list(self.states.values()), forecasts)

    def _earlier_hedge_wants(self, turn: Turn, state: BackendState, now: float) -> bool:
        """Whether a turn that has waited longer would hedge onto state.

        The one waiting longest goes first, so that a burst's tail is not
        left to whichever turn looks again first when a slot comes free.
        """
        return any(
            other.started < turn.started and other.would_hedge_onto(state, now)
            for other in self._hedge_line
        )

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
        if state.backend.loads_models:
            state.loaded_until = self._expiry(state, result.loaded_models)
        # A server that answers probes without a key says nothing of the key.
        if state.auth_error is None:
            self._set_online(state, None)
            state.breaker.record_probe_success()
            self._cancel_cooldown(state)
            self._keep_warm(state)
        self._changed()

    def _expiry(self, state: BackendState, loaded: Sequence[LoadedModel]) -> float:
        """When the server unloads the configured model (loop time)."""
        wanted = _tagged(state.config.model)
        model = next((m for m in loaded if _tagged(m.name) == wanted), None)
        if model is None:
            return -math.inf
        if model.expires_at is None:
            return math.inf
        left = datetime.fromisoformat(model.expires_at) - datetime.now(UTC)
        return asyncio.get_running_loop().time() + left.total_seconds()

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

    def keeps_warm(self, state: BackendState) -> bool:
        """Whether the router loads this backend's model ahead of requests."""
        if not state.backend.loads_models:
            return False
        if state.config.keep_warm is not None:
            return state.config.keep_warm
        return by_priority(list(self.states.values()))[0] is state

    def _keep_warm(self, state: BackendState) -> None:
        """Load the model now, or plan to when it is about to be unloaded.

        A user's request always goes first: nothing is loaded while one
        holds or waits for a slot (it loads the model itself).
        """
        if self._closed or not self.keeps_warm(state) or state.name in self._warm_ups:
            return
        if handle := self._warm_timers.pop(state.name, None):
            handle.cancel()
        loop = asyncio.get_running_loop()
        left = state.loaded_until - loop.time() - self.settings.predictor.warm_margin
        if left > 0:
            if math.isfinite(left):
                self._warm_timers[state.name] = loop.call_later(
                    left, self._keep_warm, state
                )
            return
        if state.holding or state.waiting or not state.breaker.allows():
            return
        task = loop.create_task(
            self._warm_up(state), name=f"llm_router warm {state.name}"
        )
        self._warm_ups[state.name] = task
        task.add_done_callback(lambda _: self._warm_ups.pop(state.name, None))

    async def _warm_up(self, state: BackendState) -> None:
        loop = asyncio.get_running_loop()
        state.loading_since = loop.time()
        self._changed()
        try:
            await state.backend.load_model()
        except BackendError as err:
            # The health checks and requests judge the server; this was a favour.
            _LOGGER.debug("Loading the model of %s failed: %s", state.name, err)
            return
        finally:
            state.loading_since = None
        _LOGGER.debug("Loaded the model of %s", state.name)
        self._model_used(state)
        self._changed()

    def _model_used(self, state: BackendState) -> None:
        """The server has just used the model: it stays for keep_alive."""
        if not state.backend.loads_models:
            return
        state.loading_since = None
        state.loaded_until = asyncio.get_running_loop().time() + keep_alive_seconds(
            state.config.keep_alive, self.settings.predictor.default_keep_alive
        )
        self._keep_warm(state)

    async def close(self) -> None:
        """Stop probes, timers and warm-ups for good; end the turns in flight.

        Closing the backends fails what they are waiting for.
        """
        self._closed = True
        for handle in [*self._cooldowns.values(), *self._warm_timers.values()]:
            handle.cancel()
        self._cooldowns.clear()
        self._warm_timers.clear()
        tasks = [*self._probes.values(), *self._warm_ups.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for state in self.states.values():
            await state.backend.close()

    # Bookkeeping called by Turn.

    def _record_success(self, state: BackendState, attempt: _Attempt) -> None:
        assert attempt.stats is not None
        self._set_online(state, None)
        state.requests += 1
        state.last_stats = attempt.stats
        if attempt.stats.prompt_speed is not None:
            state.prompt_speed = attempt.stats.prompt_speed
        if attempt.first_word is not None:
            state.last_first_word = attempt.first_word - attempt.queued
        state.breaker.record_success()
        self._cancel_cooldown(state)
        loop = asyncio.get_running_loop()
        state.latency.observe(
            Observation(
                stats=attempt.stats,
                first_word=attempt.first_word,
                reasoning_tokens=attempt.reasoning_tokens,
                thought=attempt.forecast.think,
                slot_seconds=attempt.slot_seconds,
                answer_seconds=None
                if attempt.first_word is None
                else attempt.slot_seconds - (attempt.first_word - attempt.queued),
            ),
            loop.time(),
            self.settings.predictor,
        )
        self._model_used(state)

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
        self, router: Router, request: ChatRequest, *, only: str | None, spoken: bool
    ) -> None:
        self._router = router
        self._request = request
        self._only = only
        self._spoken = spoken
        self.attempts: list[Attempt] = []
        self.first_choice: str | None = None
        self.served_by: str | None = None
        self._served: Attempt | None = None
        self._pending: deque[BackendState] = deque()
        self._deferred: list[BackendState] = []
        self.started = 0.0
        """When the turn began (loop time)."""
        self._deadline = 0.0
        self._hedge_beat: float | None = None
        """While waiting to hedge: how soon a backend must answer to be worth it."""

    @property
    def fell_back(self) -> bool:
        """Whether a backend other than the first choice served the request."""
        return self.served_by is not None and self.served_by != self.first_choice

    @property
    def stats(self) -> GenerationStats | None:
        """Stats of the generation that served the request."""
        return self._served.stats if self._served else None

    @property
    def served(self) -> Attempt | None:
        """The attempt that served the request."""
        return self._served

    def __aiter__(self) -> AsyncIterator[RouterEvent]:
        return self._run()

    def _note(self, state: BackendState, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        state.recent_attempts.append(attempt)

    def _skip(self, state: BackendState, kind: ErrorKind, why: str) -> None:
        self._note(state, Attempt(state.name, kind, why, decision=Decision.SKIPPED))

    async def _run(self) -> AsyncIterator[RouterEvent]:
        router = self._router
        now = self.started = asyncio.get_running_loop().time()
        self._deadline = now + router.settings.turn_timeout
        names = [self._only] if self._only is not None else list(router.states)
        forecasts = {name: router.forecast(name, self._request, now) for name in names}
        candidates = router.candidates(self._only, forecasts)
        self.first_choice = candidates[0].name if candidates else None
        self._pending = deque(candidates)
        racing: list[_Attempt] = []
        try:
            while True:
                if not racing:
                    attempt = self._start_next()
                    if attempt is None:
                        raise AllBackendsFailed(self.attempts)
                    racing.append(attempt)
                winner = await self._race(racing)
                if winner is None:
                    continue
                async for event in self._deliver(winner):
                    yield event
                racing.clear()
                if self.served_by is not None:
                    return
        finally:
            for attempt in racing:
                await attempt.close()
            router._changed()

    def _start_next(self, *, beat: float | None = None) -> _Attempt | None:
        """Start the next backend to try, noting those passed over.

        A backend that is busy and expected to stay so beyond its budget is
        passed over while another may answer; it is asked last, in line.
        With beat, a hedge: the next backend that would answer at once and
        is expected to say its first word within beat seconds.
        """
        router = self._router
        now = asyncio.get_running_loop().time()
        hedge = beat is not None
        for state in list(self._pending):
            predicted = router.forecast(state.name, self._request, now)
            if beat is not None and not (
                state.breaker.allows()
                and state.has_free_slot()
                and predicted.total <= beat
                and not router._earlier_hedge_wants(self, state, now)
            ):
                continue
            self._pending.remove(state)
            if not state.breaker.allows():
                state.skipped += 1
                self._skip(state, ErrorKind.CIRCUIT_OPEN, "skipped, not answering")
                continue
            left = self._deadline - now
            if left <= 0:
                self._skip(state, ErrorKind.OUT_OF_TIME, "no time left in the turn")
                continue
            budget = min(state.config.first_token_timeout, left)
            if (
                predicted.queue > 0
                and predicted.total > budget
                and any(other.breaker.allows() for other in self._pending)
            ):
                self._deferred.append(state)
                wait = (
                    f"expected wait {predicted.queue:.1f} s"
                    if math.isfinite(predicted.queue)
                    else "with other requests"
                )
                self._skip(state, ErrorKind.BUSY, f"busy, {wait}")
                continue
            if hedge:
                decision = Decision.HEDGE
            elif state.name == self.first_choice:
                decision = Decision.FIRST_CHOICE
            else:
                decision = Decision.FALLBACK
            return _Attempt(self, state, predicted, decision)
        if hedge or not self._deferred:
            return None
        # In line after all: the one expected to be free soonest.
        predicted, state = min(
            ((router.forecast(s.name, self._request, now), s) for s in self._deferred),
            key=lambda pair: pair[0].total,
        )
        self._deferred.remove(state)
        return _Attempt(self, state, predicted, Decision.QUEUED)

    def would_hedge_onto(self, state: BackendState, now: float) -> bool:
        """Whether this turn, waiting to hedge, would take state now."""
        return (
            self._hedge_beat is not None
            and state in self._pending
            and self._router.forecast(state.name, self._request, now).total
            <= self._hedge_beat
        )

    async def _race(self, racing: list[_Attempt]) -> _Attempt | None:
        """Run attempts until one starts its answer; None when all failed.

        With hedging, a second backend starts when the first has said no
        answer word by its hedge delay; the first to answer wins and the
        other is cancelled.
        """
        settings = self._router.settings
        loop = asyncio.get_running_loop()
        try:
            while racing:
                timeout = None
                if settings.hedging and len(racing) == 1 and not racing[0].hedged:
                    primary = racing[0]
                    delay = primary.state.latency.hedge_delay(
                        primary.forecast, settings.predictor
                    )
                    timeout = max(
                        0.0,
                        primary.started + delay - loop.time(),
                        primary.hedge_not_before - loop.time(),
                    )
                pulls = {attempt.pull(): attempt for attempt in racing}
                done, _ = await asyncio.wait(
                    pulls, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    # Worth it only for a backend expected to answer before
                    # this one: as it runs later, that is more of them. Checked
                    # again until one is started; the longest waiting first.
                    primary = racing[0]
                    beat = max(
                        primary.forecast.total,
                        primary.forecast.remaining(primary.elapsed()),
                    )
                    if hedge := self._start_next(beat=beat):
                        primary.hedged = True
                        racing.append(hedge)
                        self._leave_hedge_line()
                    else:
                        if self._hedge_beat is None:
                            self._router._hedge_line.append(self)
                        self._hedge_beat = beat
                        primary.hedge_not_before = (
                            loop.time() + settings.predictor.hedge_min
                        )
                    continue
                for pull in done:
                    attempt = pulls[pull]
                    try:
                        attempt.take(pull)
                    except BackendError as err:
                        racing.remove(attempt)
                        self._failed(attempt, err)
                        continue
                    if attempt.answering:
                        for other in [a for a in racing if a is not attempt]:
                            racing.remove(other)
                            await other.close()
                            self._lost(other, attempt)
                        return attempt
            return None
        finally:
            self._leave_hedge_line()

    def _leave_hedge_line(self) -> None:
        if self._hedge_beat is not None:
            self._hedge_beat = None
            self._router._hedge_line.remove(self)

    async def _deliver(self, winner: _Attempt) -> AsyncIterator[RouterEvent]:
        """Stream the winner's answer: spoken at once, or once it is complete.

        Sets served_by unless an unspoken answer broke off (then the next
        backend is asked).
        """
        out: list[RouterEvent] = []
        try:
            if self._spoken:
                for event in winner.take_held():
                    yield event
                async for event in winner.rest():
                    yield event
            else:
                out = winner.take_held()
                async for event in winner.rest():
                    out.append(event)
        except BackendError as err:
            self._failed(winner, err)
            if self._spoken:
                # Spoken text cannot be taken back: end the turn here.
                self.served_by = winner.state.name
                yield Interrupted(winner.state.name, err)
            return
        self._router._record_success(winner.state, winner)
        self._served = winner.outcome()
        self._note(winner.state, self._served)
        self.served_by = winner.state.name
        for event in out:
            yield event

    def _failed(self, attempt: _Attempt, err: BackendError) -> None:
        state = attempt.state
        if err.kind not in _NOT_FAILURES:
            self._router._record_failure(state, err)
        if attempt.first_word is None and err.kind is ErrorKind.TIMED_OUT:
            state.latency.observe_silence(
                attempt.elapsed(), attempt.forecast, asyncio.get_running_loop().time()
            )
        self._note(state, attempt.outcome(err))
        _LOGGER.debug("Backend %s failed: %s", state.name, err)

    def _lost(self, loser: _Attempt, winner: _Attempt) -> None:
        """A hedged attempt that answered later than another: no failure."""
        state = loser.state
        state.latency.observe_silence(
            loser.elapsed(), loser.forecast, asyncio.get_running_loop().time()
        )
        self._note(
            state, loser.outcome(Overtaken(f"{winner.state.name} answered first"))
        )


class _Attempt:
    """Streaming one request from one backend, under its deadlines.

    Its first-token budget starts when it starts: waiting for a slot comes
    out of it. The turn's deadline caps everything; when that is what runs
    out, it is the turn's fault, not the backend's.
    """

    def __init__(
        self, turn: Turn, state: BackendState, predicted: Forecast, decision: Decision
    ) -> None:
        self._router = turn._router
        self.state = state
        self.forecast = predicted
        self.decision = decision
        self._request = turn._request
        self._turn_deadline = turn._deadline
        self.started = asyncio.get_running_loop().time()
        self.hedged = False
        self.hedge_not_before = 0.0
        self.answering = False
        self.queued = 0.0
        self.slot_seconds = 0.0
        self.first_word: float | None = None
        self.reasoning_tokens = 0
        self.stats: GenerationStats | None = None
        self._held: list[RouterEvent] = []
        # In line from now on, so that the next turn sees this slot as taken.
        state.waiting += 1
        self._in_line = True
        self._events = self._run()
        self._pull: asyncio.Task[RouterEvent | None] | None = None

    def elapsed(self) -> float:
        """Seconds since the attempt started."""
        return asyncio.get_running_loop().time() - self.started

    def pull(self) -> asyncio.Task[RouterEvent | None]:
        """The pending request for the next event (one at a time)."""
        if self._pull is None:
            self._pull = asyncio.get_running_loop().create_task(self._next())
        return self._pull

    async def _next(self) -> RouterEvent | None:
        return await anext(self._events, None)

    def take(self, pull: asyncio.Task[RouterEvent | None]) -> None:
        """Take a pulled event: held until the answer starts."""
        self._pull = None
        event = pull.result()
        assert event is not None  # a stream ends only after its answer
        self._held.append(event)

    def take_held(self) -> list[RouterEvent]:
        """Events so far (reasoning, then the first answer piece)."""
        held, self._held = self._held, []
        return held

    def rest(self) -> AsyncIterator[RouterEvent]:
        """The events after the first answer piece."""
        return self._events

    async def close(self) -> None:
        """Stop the attempt: its stream is closed and its slot freed."""
        if self._pull is not None:
            self._pull.cancel()
            await asyncio.gather(self._pull, return_exceptions=True)
            self._pull = None
        await self._events.aclose()
        self._leave_line()

    def _leave_line(self) -> None:
        if self._in_line:
            self._in_line = False
            self.state.waiting -= 1

    def outcome(self, error: BackendError | None = None) -> Attempt:
        """The attempt as the turn reports it."""
        return Attempt(
            self.state.name,
            None if error is None else error.kind,
            None if error is None else error.message,
            stats=self.stats if error is None else None,
            seconds=self.elapsed(),
            decision=self.decision,
            forecast=self.forecast,
            first_word=self.first_word,
            queued=self.queued,
        )

    def _late(self, limit: float, reason: str) -> BackendError:
        """The error for a deadline: the backend's, unless the turn's was first."""
        if limit >= self._turn_deadline:
            return OutOfTime("the turn's time ran out")
        return BackendTimeout(reason)

    async def _run(self) -> AsyncGenerator[RouterEvent]:
        state = self.state
        config = state.config
        loop = asyncio.get_running_loop()
        first_deadline = min(
            self.started + config.first_token_timeout, self._turn_deadline
        )
        try:
            async with asyncio.timeout_at(first_deadline):
                await state.slots.acquire()
        except TimeoutError:
            if first_deadline >= self._turn_deadline:
                raise OutOfTime("the turn's time ran out") from None
            raise BackendBusy("busy with other requests") from None
        finally:
            self._leave_line()
        taken = loop.time()
        self.queued = taken - self.started
        hold = Hold(taken, state.latency.expected_hold(self.forecast))
        state.holding.append(hold)
        try:
            try:
                async with asyncio.timeout_at(first_deadline):
                    await self._router._details(state)
            except TimeoutError:
                raise self._late(first_deadline, "no answer in time") from None
            while True:
                sent = self._adapt()
                try:
                    # Closed here, so that an abandoned turn closes the stream.
                    async with aclosing(self._stream(sent, first_deadline)) as events:
                        async for event in events:
                            yield event
                    return
                except CapabilityUnsupported as err:
                    capability = Capability(err.capability)
                    # What was sent, not what is known now: another turn may
                    # have learnt it meanwhile.
                    used = (
                        sent.think if capability is Capability.THINKING else sent.tools
                    )
                    if self.answering or not used:
                        raise
                    # Learnt the hard way: retry at once without the feature.
                    state.unsupported.add(capability)
        finally:
            state.holding.remove(hold)
            self.slot_seconds = loop.time() - taken
            state.slots.release()

    def _adapt(self) -> ChatRequest:
        """The request as this backend's model can take it."""
        state = self.state
        request = self._request
        think = self.forecast.think and state.supports(Capability.THINKING)
        if request.tools and not state.supports(Capability.TOOLS):
            request = request.without_tools()
        return replace(request, think=think)

    async def _stream(
        self, request: ChatRequest, first_deadline: float
    ) -> AsyncGenerator[RouterEvent]:
        state = self.state
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
        watchdog = _Watchdog()
        try:
            while True:
                waiting_first = clock.first_token is None
                limit = (
                    first_deadline
                    if waiting_first
                    else min(loop.time() + config.stall_timeout, self._turn_deadline)
                )
                try:
                    event = await watchdog.wait(anext(stream), limit)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    reason = (
                        f"no first token within {config.first_token_timeout:g} s"
                        if waiting_first
                        else f"stalled for {config.stall_timeout:g} s"
                    )
                    raise self._late(limit, reason) from None
                match event:
                    case ServerStats():
                        server_stats = event
                    case ReasoningDelta():
                        self._token(clock, loop.time())
                        splitter.reasoning_handled_elsewhere()
                        self.reasoning_tokens += 1
                        yield event
                    case TextDelta():
                        self._token(clock, loop.time())
                        split = splitter.feed(event.text)
                        for out in self._split_events(split.reasoning, split.answer):
                            yield out
                    case ToolCallDelta():
                        self._token(clock, loop.time())
                        self.answering = True
                        yield event
        finally:
            watchdog.stop()
            await stream.aclose()
        split = splitter.flush()
        for out in self._split_events(split.reasoning, split.answer):
            yield out
        if server_stats is None:
            raise BadResponse("the answer ended early")
        if not self.answering:
            raise BadResponse("empty answer")
        self.stats = summarize(server_stats, clock, loop.time())

    def _token(self, clock: StreamClock, now: float) -> None:
        if clock.first_token is None:
            self._router._model_used(self.state)
        clock.token(now)

    def _split_events(self, reasoning: str, answer: str) -> list[RouterEvent]:
        events: list[RouterEvent] = []
        if reasoning:
            self.reasoning_tokens += 1
            events.append(ReasoningDelta(reasoning))
        if answer:
            if self.first_word is None:
                self.first_word = asyncio.get_running_loop().time() - self.started
            self.answering = True
            events.append(TextDelta(answer))
        return events


class _Watchdog:
    """Deadlines for the awaits of one stream, with one timer between them.

    A timeout per chunk costs a timer per chunk; here each await only moves
    the deadline, and the timer, when it fires early, waits on. The awaiting
    task may change from one await to the next (a race's task, then the
    turn's), so it is noted at each.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._limit = 0.0
        self._task: asyncio.Task[object] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False

    async def wait[T](self, awaitable: Awaitable[T], limit: float) -> T:
        """Await awaitable; TimeoutError when limit (loop time) passes first."""
        self._limit = limit
        self._task = asyncio.current_task()
        if self._timer is None or self._timer.when() > limit:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(limit, self._fire)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if self._expired and self._task is not None and not self._task.uncancel():
                raise TimeoutError from None
            raise
        finally:
            self._task = None
            self._expired = False

    def _fire(self) -> None:
        self._timer = None
        if self._task is None:
            return  # between awaits: the next one sets the timer again
        if self._loop.time() < self._limit:
            self._timer = self._loop.call_at(self._limit, self._fire)
            return
        self._expired = True
        self._task.cancel()

    def stop(self) -> None:
        """No more awaits: drop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
