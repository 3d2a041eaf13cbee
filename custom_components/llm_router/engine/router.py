"""The router: its backends, their health checks, breakers and warm-ups."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
import logging
import math

from .attempt import BackendAttempt
from .backend import Backend
from .errors import AuthFailed, BackendError, BackendTimeout, ErrorKind
from .models import (
    ChatMessage,
    ChatRequest,
    LoadedModel,
    ModelDetails,
    ProbeResult,
)
from .policy import OrderedPolicy, Policy
from .predictor import (
    Forecast,
    Forecasts,
    Observation,
    forecast,
    keep_alive_seconds,
)
from .servers import Server
from .settings import RouterSettings
from .state import BackendState
from .turn import Turn
from .wake import Power, PowerConfig

_LOGGER = logging.getLogger(__name__)

# What the prediction sensors assume when no request is at hand.
REFERENCE_REQUEST = ChatRequest(
    messages=(ChatMessage("user", "Turn on the kitchen light, please."),)
)


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
        power: Mapping[str, PowerConfig] | None = None,
    ) -> None:
        # servers: by backend name, slots and breaker shared with other routers
        # on the same server (see ServerRegistry); else each backend its own.
        # power: by backend name, how its server is woken and put to sleep.
        self.settings = settings or RouterSettings()
        self.policy = policy or OrderedPolicy()
        self.states: dict[str, BackendState] = {}
        for backend in backends:
            server = (servers or {}).get(backend.name) or Server.create(
                max_parallel=backend.config.max_parallel,
                failure_threshold=self.settings.failure_threshold,
            )
            state = self.states[backend.name] = BackendState(
                backend=backend, server=server
            )
            state.power = self._power(state, (power or {}).get(backend.name))
        self._listeners: list[Callable[[frozenset[str]], None]] = []
        self._probes: dict[str, asyncio.Task[bool]] = {}
        self._cooldowns: dict[str, asyncio.TimerHandle] = {}
        self._warm_timers: dict[str, asyncio.TimerHandle] = {}
        self._warm_ups: dict[str, asyncio.Task[None]] = {}
        self.hedge_line: list[Turn] = []
        """Turns waiting for a backend to hedge onto."""
        self._closed = False

    def _power(self, state: BackendState, config: PowerConfig | None) -> Power:
        def report(error: BackendError) -> None:
            state.last_error = error
            self.notify((state.name,))

        return Power(
            config or PowerConfig(),
            name=state.name,
            probe=lambda: self.async_probe(state.name),
            in_flight=lambda: bool(state.holding or state.waiting),
            report=report,
            changed=lambda: self.notify((state.name,)),
            timing=self.settings.wake,
        )

    def add_listener(
        self, listener: Callable[[frozenset[str]], None]
    ) -> Callable[[], None]:
        """Call listener with the backends whose state changed; returns its remover."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def notify(self, names: Iterable[str]) -> None:
        """Tell the listeners that these backends' state changed.

        Health may have: the backend to keep warm is chosen again. Backends
        on the same server as one of them changed too: they share its slots
        and breaker.
        """
        for state in self.states.values():
            self._keep_warm(state)
        servers = {self.states[name].server for name in names}
        if not servers:
            return
        changed = frozenset(
            name for name, state in self.states.items() if state.server in servers
        )
        for listener in list(self._listeners):
            listener(changed)

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
            forecasts = Forecasts(self.forecast)
        return self.policy.order(list(self.states.values()), forecasts)

    def earlier_hedge_wants(self, turn: Turn, state: BackendState, now: float) -> bool:
        """Whether a turn that has waited longer would hedge onto state.

        The one waiting longest goes first, so that a burst's tail is not
        left to whichever turn looks again first when a slot comes free.
        """
        return any(
            other.started < turn.started and other.would_hedge_onto(state, now)
            for other in self.hedge_line
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
        if error is not None:
            # Back after a restart, it loads the model first: expect that.
            state.loaded_until = -math.inf

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
            state.power.note_probe(online=True)
        self.notify((state.name,))

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
        state.power.note_probe(online=False)
        self.notify((state.name,))

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
        """Whether the router loads this backend's model ahead of requests.

        Unless configured: the one that would serve the next turn.
        """
        if not state.backend.loads_models:
            return False
        if state.config.keep_warm is not None:
            return state.config.keep_warm
        return self.next_choice() is state

    def next_choice(self) -> BackendState | None:
        """The backend the next turn would try first, of those answering."""
        return next(
            (
                state
                for state in self.candidates()
                if state.breaker.allows() and state.online is not False
            ),
            None,
        )

    def _keep_warm(self, state: BackendState) -> None:
        """Load the model now, or plan to when it is about to be unloaded.

        A user's request always goes first: nothing is loaded while one
        holds or waits for a slot (it loads the model itself).
        """
        loads = state.backend.loads_models
        if self._closed or not loads or state.name in self._warm_ups:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        left = state.loaded_until - now - self.settings.predictor.warm_margin
        timer = self._warm_timers.get(state.name)
        if left > 0 and timer is not None and timer.when() <= now + left:
            return  # it fires first and decides again: no ranking every turn
        if not self.keeps_warm(state):
            return
        if timer is not None:
            timer.cancel()
            del self._warm_timers[state.name]
        if left > 0:
            if math.isfinite(left):
                self._warm_timers[state.name] = loop.call_later(
                    left, self._warm_timer_fired, state
                )
            return
        if state.holding or state.waiting or not state.breaker.allows():
            return
        task = loop.create_task(
            self._warm_up(state), name=f"llm_router warm {state.name}"
        )
        self._warm_ups[state.name] = task
        task.add_done_callback(lambda _: self._warm_ups.pop(state.name, None))

    async def wake(self, name: str, *, warm: bool = False) -> bool:
        """Wake a backend's server ahead of turns (it has a wake action).

        With warm, wait until it answers, then load its model where the
        server loads models. Returns whether it answered (without warm,
        True at once).
        """
        state = self.states[name]
        if not await state.power.wake(wait=warm):
            return False
        if warm and state.backend.loads_models:
            if (task := self._warm_ups.get(name)) is not None:
                await asyncio.shield(task)
            else:
                await self._warm_up(state)
        return True

    def _warm_timer_fired(self, state: BackendState) -> None:
        del self._warm_timers[state.name]
        self._keep_warm(state)

    async def _warm_up(self, state: BackendState) -> None:
        loop = asyncio.get_running_loop()
        state.loading_since = loop.time()
        self.notify((state.name,))
        try:
            await state.backend.load_model()
        except BackendError as err:
            # The health checks and requests judge the server; this was a favour.
            _LOGGER.debug("Loading the model of %s failed: %s", state.name, err)
            return
        finally:
            state.loading_since = None
        _LOGGER.debug("Loaded the model of %s", state.name)
        self.model_used(state)
        self.notify((state.name,))

    def model_used(self, state: BackendState) -> None:
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
        await asyncio.gather(*(state.power.close() for state in self.states.values()))
        for state in self.states.values():
            await state.backend.close()

    # Bookkeeping called by Turn.

    def record_success(self, state: BackendState, attempt: BackendAttempt) -> None:
        """Learn from an answer."""
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
        self.model_used(state)
        state.power.note_served()

    def record_failure(
        self, state: BackendState, error: BackendError, *, breaker: bool = True
    ) -> None:
        """Count a failure of the backend (and tell its breaker)."""
        state.requests += 1
        state.failures += 1
        state.last_error = error
        if error.kind in (ErrorKind.UNREACHABLE, ErrorKind.AUTH_FAILED):
            self._set_online(state, error)
        if breaker:
            self._breaker_failure(state, error)

    def answered_late(self, state: BackendState) -> None:
        """An overdue first token came: the breaker forgets the miss.

        The server answers; an open breaker would keep it out of the next
        turns for a cooldown, while it is busy answering this one.
        """
        state.breaker.record_success()
        self._cancel_cooldown(state)
        self.notify((state.name,))

    def missed_deadline(self, state: BackendState, error: BackendError) -> None:
        """A first token is overdue: the breaker hears of it at once.

        The attempt goes on (a late answer beats none) and is counted when it
        ends.
        """
        state.last_error = error
        self._breaker_failure(state, error)
        self.notify((state.name,))

    async def model_details(self, state: BackendState) -> ModelDetails:
        """The backend's model details, fetched once."""
        if state.details is None:
            state.details = await state.backend.model_details()
        return state.details
