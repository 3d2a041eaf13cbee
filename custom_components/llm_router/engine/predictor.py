"""Predicting each backend's time to the first answer word, learnt online.

The time a voice user waits for the first spoken word is the sum of parts
that have different causes, so each is learnt on its own from the numbers
every answer reports (the ones the sensors show):

  queue      waiting for one of our slots (max_parallel) to come free
  load       loading the model, when the server has unloaded it
  prompt     prompt tokens / prompt speed
  reasoning  expected reasoning tokens / generation speed, when thinking
  network    the rest of the time to the first token: the network, and
             another client's requests ahead of ours on the server

Reasoning tokens are no words, and neither is a model load.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
import heapq
import math
import re
from typing import Protocol

from .backend import Backend
from .models import BackendConfig, Capability, ChatRequest
from .stats import GenerationStats


@dataclass(frozen=True, slots=True)
class PredictorSettings:
    """How fast the predictor learns, and what it assumes before it knows."""

    smoothing: float = 0.3
    """Weight of the newest sample in each moving average."""
    prompt_speed: float = 100.0
    generation_speed: float = 10.0
    reasoning_tokens: float = 300.0
    load_seconds: float = 20.0
    network_seconds: float = 0.1
    load_noticeable: float = 0.5
    """A reported load time above this means the model was loaded."""
    congestion_fades: float = 30.0
    """Seconds over which extra delay seen at a server (another client's
    queue) is forgotten when no newer answer says otherwise."""
    hedge_quantile: float = 0.9
    hedge_min: float = 0.5
    hedge_max: float = 4.0
    warm_margin: float = 60.0
    """Load the model again when it would be unloaded within this time."""
    default_keep_alive: float = 300.0
    """Ollama unloads a model after five idle minutes unless told otherwise."""


@dataclass(frozen=True, slots=True)
class Forecast:
    """Predicted seconds to the first answer word, by part."""

    queue: float = 0.0
    load: float = 0.0
    prompt: float = 0.0
    reasoning: float = 0.0
    network: float = 0.0
    think: bool = False

    @property
    def total(self) -> float:
        """Seconds from now to the first answer word."""
        return self.queue + self.served

    @property
    def served(self) -> float:
        """Seconds from having a slot to the first answer word."""
        return self.load + self.prompt + self.reasoning + self.network

    def remaining(self, elapsed: float) -> float:
        """Seconds still to wait after elapsed.

        An answer running late is expected to run later still, by as much as
        it is late.
        """
        return abs(self.total - elapsed)


@dataclass(slots=True)
class _Average:
    """An exponentially weighted moving average; None until the first sample."""

    value: float | None = None

    def add(self, sample: float, weight: float) -> None:
        self.value = (
            sample
            if self.value is None
            else self.value + weight * (sample - self.value)
        )

    def get(self, prior: float) -> float:
        return prior if self.value is None else self.value


@dataclass(frozen=True, slots=True)
class Observation:
    """What one served attempt showed (seconds from the attempt's start)."""

    stats: GenerationStats
    first_word: float | None
    reasoning_tokens: int
    thought: bool
    slot_seconds: float
    """How long the attempt held its slot: what the next in line waits."""
    answer_seconds: float | None
    """Of that, the time after its first answer word."""


@dataclass(slots=True)
class LatencyModel:
    """What one backend's recent answers say about its next one."""

    prompt_speed: _Average = field(default_factory=_Average)
    generation_speed: _Average = field(default_factory=_Average)
    reasoning_tokens: _Average = field(default_factory=_Average)
    load_seconds: _Average = field(default_factory=_Average)
    slot_seconds: _Average = field(default_factory=_Average)
    answer_seconds: _Average = field(default_factory=_Average)
    network_floor: float | None = None
    """The least network time seen: the part without congestion."""
    congestion: float = 0.0
    congestion_at: float = 0.0
    first_words: dict[bool, deque[float]] = field(
        default_factory=lambda: {False: deque(maxlen=20), True: deque(maxlen=20)}
    )
    """Recent times to the first answer word, without and with thinking."""

    def observe(
        self, seen: Observation, now: float, settings: PredictorSettings
    ) -> None:
        """Learn from a served attempt."""
        weight = settings.smoothing
        stats = seen.stats
        if stats.prompt_speed:
            self.prompt_speed.add(stats.prompt_speed, weight)
        if stats.generation_speed:
            self.generation_speed.add(stats.generation_speed, weight)
        if seen.thought:
            self.reasoning_tokens.add(seen.reasoning_tokens, weight)
        load = stats.load_time or 0.0
        if load > settings.load_noticeable:
            self.load_seconds.add(load, weight)
        self.slot_seconds.add(seen.slot_seconds, weight)
        if seen.answer_seconds is not None:
            self.answer_seconds.add(seen.answer_seconds, weight)
        if seen.first_word is not None:
            self.first_words[seen.thought].append(seen.first_word)
        if stats.time_to_first_token is not None:
            prompt = (
                stats.prompt_tokens / stats.prompt_speed
                if stats.prompt_tokens and stats.prompt_speed
                else 0.0
            )
            network = max(0.0, stats.time_to_first_token - load - prompt)
            self._network_sample(network, now)

    def observe_silence(self, seconds: float, predicted: Forecast, now: float) -> None:
        """No answer word came within seconds (timed out, or lost a race).

        The true time is longer; when that exceeds the prediction, the
        server is slower than thought right now.
        """
        if seconds > predicted.total:
            self._network_sample(predicted.network + seconds - predicted.total, now)

    def _network_sample(self, network: float, now: float) -> None:
        floor = self.network_floor
        self.network_floor = network if floor is None else min(floor, network)
        self.congestion = network - self.network_floor
        self.congestion_at = now

    def network(self, now: float, settings: PredictorSettings) -> float:
        """Network time now: the floor plus congestion that fades with age."""
        if self.network_floor is None:
            return settings.network_seconds
        age = max(0.0, now - self.congestion_at)
        return self.network_floor + self.congestion * math.exp(
            -age / settings.congestion_fades
        )

    def expected_hold(self, predicted: Forecast) -> float | None:
        """How long a request just sent will hold its slot; None: unknown.

        Its own prediction to the first word, then the usual answer time.
        """
        answer = self.answer_seconds.value
        if answer is None:
            return self.slot_seconds.value
        return predicted.served + answer

    def hedge_delay(self, predicted: Forecast, settings: PredictorSettings) -> float:
        """How long to wait for an answer word before starting a second backend.

        A high quantile of recent times, thinking or not as predicted.
        """
        if recent := self.first_words[predicted.think]:
            ordered = sorted(recent)
            index = min(len(ordered) - 1, int(settings.hedge_quantile * len(ordered)))
            delay = ordered[index]
        else:
            delay = predicted.total * 1.5
        return min(settings.hedge_max, max(settings.hedge_min, delay))


class Forecasts(dict[str, Forecast]):
    """Backends' forecasts by name, each made when first read.

    A policy that orders by priority alone reads none.
    """

    def __init__(self, make: Callable[[str], Forecast]) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, name: str) -> Forecast:
        made = self[name] = self._make(name)
        return made


def prompt_tokens(request: ChatRequest) -> int:
    """A cheap estimate: about four characters a token, a few per message."""
    return sum(len(message.content) // 4 + 4 for message in request.messages)


@dataclass(eq=False, slots=True)
class Hold:
    """A slot in use: since when (loop time), and for how long it is expected."""

    since: float
    expected: float | None


class Forecastable(Protocol):
    """What the predictor reads of a backend's state."""

    @property
    def backend(self) -> Backend:
        """The backend's client."""
        ...

    @property
    def config(self) -> BackendConfig:
        """The backend's configuration."""
        ...

    @property
    def latency(self) -> LatencyModel:
        """What was learnt of its timings."""
        ...

    @property
    def max_parallel(self) -> int:
        """How many requests the server answers at once."""
        ...

    @property
    def holding(self) -> list[Hold]:
        """The slots in use."""
        ...

    @property
    def waiting(self) -> int:
        """Requests in line for a slot."""
        ...

    @property
    def loading_since(self) -> float | None:
        """When a model load began (loop time), if one is under way."""
        ...

    @property
    def loaded_until(self) -> float:
        """When the server unloads the model (loop time)."""
        ...

    def has_free_slot(self) -> bool:
        """Whether a request would be sent at once."""
        ...

    def supports(self, capability: Capability) -> bool:
        """Whether the model is known (or assumed) to support a capability."""
        ...


def expected_wait(state: Forecastable, now: float) -> float:
    """Seconds until one of our slots would be ours; inf when unknowable."""
    if state.has_free_slot():
        return 0.0
    slots = state.max_parallel
    typical = state.latency.slot_seconds.value
    free_at: list[float] = []
    for hold in state.holding:
        if hold.expected is None:
            return math.inf
        # An answer running late is expected to run later still.
        free_at.append(abs(hold.expected - (now - hold.since)))
    if state.waiting and typical is None:
        return math.inf
    free_at += [0.0] * (slots - len(free_at))
    heapq.heapify(free_at)
    for _ in range(state.waiting):  # those already in line go first
        assert typical is not None
        heapq.heappush(free_at, heapq.heappop(free_at) + typical)
    return free_at[0]


def forecast(
    state: Forecastable,
    request: ChatRequest,
    now: float,
    settings: PredictorSettings,
    latency_budget: float,
) -> Forecast:
    """Predict this backend's time to the first answer word for request."""
    model = state.latency
    queue = expected_wait(state, now)
    load = 0.0
    if state.backend.loads_models:
        if state.loading_since is not None:
            estimate = model.load_seconds.get(settings.load_seconds)
            load = max(0.0, estimate - (now - state.loading_since))
        elif state.loaded_until <= now + queue:
            load = model.load_seconds.get(settings.load_seconds)
    prompt = prompt_tokens(request) / model.prompt_speed.get(settings.prompt_speed)
    network = model.network(now, settings)
    without = Forecast(queue, load, prompt, 0.0, network, think=False)
    if not state.supports(Capability.THINKING):
        return without
    reasoning = model.reasoning_tokens.get(
        settings.reasoning_tokens
    ) / model.generation_speed.get(settings.generation_speed)
    with_reasoning = Forecast(queue, load, prompt, reasoning, network, think=True)
    if request.think is not None:
        return with_reasoning if request.think else without
    config = state.config
    if config.think_auto:
        if not state.backend.switches_thinking or (
            with_reasoning.total <= latency_budget
        ):
            return with_reasoning
        return without
    return with_reasoning if config.think else without


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS: Mapping[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def keep_alive_seconds(value: str | int | None, default: float) -> float:
    """How long Ollama keeps a model loaded after a request (inf: forever)."""
    if value is None:
        return default
    if isinstance(value, int):
        return math.inf if value < 0 else float(value)
    if value.startswith("-"):
        return math.inf
    return sum(
        float(number) * _UNIT_SECONDS[unit]
        for number, unit in _DURATION_PART.findall(value)
    )
