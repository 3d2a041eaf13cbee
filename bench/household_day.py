"""A household day of voice requests, routed by each policy side by side.

Two loopback Ollama fakes stand in for the servers, at the rates measured on
real hardware, with time shortened by --scale (0.1: a real second lasts
100 ms; every figure below is reported in real seconds):

  Pi    deepseek-r1:1.5b, 6.5 tok/s, 45 s model load, unloads after 3 idle
        minutes, prompt 0.6 s
  GPU   deepseek-r1:7b, 48 tok/s, 4 s model load, prompt 0.1 s; switched
        off for the first 90 s and the last two minutes; busy with another
        client's queue around t = 200 s

The day: voice bursts (several requests within seconds), single questions,
thinking questions (the caller asks for reasoning, which is never spoken),
idle minutes. The same requests, at the same times, go through a fresh pair
of servers and a fresh router for each of:

  ordered          priority order (GPU first), today's behaviour
  latency (peer)   LiteLLM's latency-based routing: per backend the last 10
                   samples of response seconds / completion tokens (1 h TTL,
                   a timeout adds a 1000 s sample), lowest average first
  fastest          the predicted time to the first answer word
  fastest+hedge    the same, hedging slow answers
  oracle           knows each server's true time (its queue, whether the
                   model is loaded, the reasoning this question will take)

Every router has the same features otherwise (queue-aware fallback,
warm models, caps). Reported per policy: p50 and p95 time to the first
answer word, requests with no answer word within 5 s (voice satellites
give up) or no answer at all, and requests that waited behind a busy
server while another would have answered sooner. Ratios are to the oracle.
The prediction's median absolute error is over served attempts after the
first ten requests.

    .venv/bin/python -m bench.household_day [--scale 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
import logging
import math
import statistics
import time
from typing import Any

import aiohttp

from custom_components.llm_router.engine.models import (
    BackendConfig,
    BackendKind,
    ChatMessage,
    ChatRequest,
    TextDelta,
)
from custom_components.llm_router.engine.ollama import OllamaBackend
from custom_components.llm_router.engine.outcomes import AllBackendsFailed
from custom_components.llm_router.engine.policy import (
    FastestPolicy,
    OrderedPolicy,
    Policy,
)
from custom_components.llm_router.engine.predictor import Forecast, PredictorSettings
from custom_components.llm_router.engine.router import Router
from custom_components.llm_router.engine.settings import RouterSettings
from custom_components.llm_router.engine.state import BackendState
from custom_components.llm_router.engine.turn import Turn
from tests.fakes.base import Reply
from tests.fakes.ollama_server import FakeOllama

VOICE_GIVES_UP = 5.0
WARM_UP_REQUESTS = 10


@dataclass(frozen=True)
class Server:
    """A server's true speed (real seconds, tokens/s)."""

    name: str
    model: str
    tokens_per_second: float
    load: float
    prompt: float
    keep_alive: float
    priority: int


PI = Server("Pi", "deepseek-r1:1.5b", 6.5, 45.0, 0.6, 180.0, 2)
GPU = Server("GPU", "deepseek-r1:7b", 48.0, 4.0, 0.1, 300.0, 1)
ANSWER_TOKENS = 30


@dataclass(frozen=True)
class Question:
    """One request of the day, at t real seconds."""

    at: float
    reasoning: int = 0
    """Reasoning tokens the model will produce when asked to think (0: no)."""


def burst(
    at: float, count: int, every: float = 1.5, reasoning: int = 0
) -> list[Question]:
    return [Question(at + i * every, reasoning) for i in range(count)]


DAY: list[Question] = [
    *burst(60, 3),  # morning, GPU off: the Pi answers
    Question(75),
    *burst(120, 2),  # the GPU is on
    Question(135, reasoning=240),
    *burst(150, 4, every=1.0),
    Question(154, reasoning=280),
    Question(170),
    *burst(205, 3),  # another client keeps the GPU busy
    Question(212, reasoning=220),
    Question(230),
    *burst(260, 3, every=2.0),
    Question(275, reasoning=260),
    *burst(300, 2),
    Question(320, reasoning=200),
    *burst(480, 3),  # after idle minutes: the Pi's model would be gone
    Question(495, reasoning=300),
    *burst(540, 2),
    Question(560),  # the GPU is off again
    *burst(600, 3),
    Question(615),
]
GPU_ON, GPU_OFF = 90.0, 555.0
OTHER_CLIENT = (200.0, 3, 500)  # when, how many requests, tokens each
PROBE_EVERY, PROBE_EVERY_WHILE_DOWN = 30.0, 10.0


class HouseholdOllama(FakeOllama):
    """A fake whose answer depends on the question: its reasoning and length.

    The question's index is in the text ("q17"); another client's requests
    say "other <tokens>".
    """

    def __init__(self, server: Server, scale: float) -> None:
        super().__init__(
            models={server.model: ("completion", "thinking")},
            load_seconds=server.load * scale,
            parallel=1,
        )
        self.server = server
        self.scale = scale
        self.queue_waits: dict[int, float] = {}

    def next_reply(self, body: Any) -> Reply:
        text = body["messages"][-1]["content"]
        words = ["word"] * ANSWER_TOKENS
        reasoning = 0
        if text.startswith("other"):
            words = ["word"] * int(text.split()[1])
        else:
            index = int(text.split()[0][1:])
            reasoning = DAY[index].reasoning
            self.queue_waits[index] = max(0.0, self.free_at - time.monotonic())
        return Reply(
            text=" ".join(words),
            thinking=" ".join(["hmm"] * reasoning),
            tokens_per_second=self.server.tokens_per_second / self.scale,
            stall_before_first=self.server.prompt * self.scale,
            prompt_seconds=self.server.prompt * self.scale,
            # Counted as the router estimates them, so that the prompt part
            # is learnt in the same tokens it is predicted in.
            prompt_tokens=len(text) // 4 + 4,
        )

    def true_first_word(self, question: Question, up: bool) -> float:
        """Seconds (bench time) this server would take to the first answer word."""
        if not up:
            return math.inf
        now = time.monotonic()
        server = self.server
        load = 0.0 if self.is_loaded(server.model) else server.load * self.scale
        reasoning = question.reasoning / server.tokens_per_second * self.scale
        return (
            max(0.0, self.free_at - now) + load + server.prompt * self.scale + reasoning
        )


class LatencyPeer:
    """LiteLLM's latency-based routing, as the peer to beat.

    Per backend the last 10 samples of response seconds / completion tokens,
    kept an hour; a timeout adds a 1000 s sample; lowest average first, a
    backend without samples counting as 0.
    """

    def __init__(self, scale: float) -> None:
        self.ttl = 3600 * scale
        self.samples: dict[str, deque[tuple[float, float]]] = {}

    def order(
        self, backends: Sequence[BackendState], forecasts: Mapping[str, Forecast]
    ) -> list[BackendState]:
        now = time.monotonic()

        def average(state: BackendState) -> float:
            kept = [
                v for t, v in self.samples.get(state.name, ()) if now - t < self.ttl
            ]
            return sum(kept) / len(kept) if kept else 0.0

        return sorted(backends, key=lambda s: (average(s), s.config.priority))

    def record(self, turn: Turn) -> None:
        now = time.monotonic()
        for attempt in turn.attempts:
            samples = self.samples.setdefault(attempt.backend, deque(maxlen=10))
            if attempt.error_kind == "timed_out":
                samples.append((now, 1000.0))
            elif attempt.ok and attempt.stats and attempt.stats.completion_tokens:
                samples.append((now, attempt.seconds / attempt.stats.completion_tokens))


class Oracle:
    """Orders by each server's true time to the first answer word."""

    def __init__(self, truth: Callable[[str], float]) -> None:
        self.truth = truth

    def order(
        self, backends: Sequence[BackendState], forecasts: Mapping[str, Forecast]
    ) -> list[BackendState]:
        return sorted(backends, key=lambda s: (self.truth(s.name), s.config.priority))


@dataclass
class Outcome:
    """One request under one policy (real seconds)."""

    first_word: float = math.inf
    waited_needlessly: bool = False
    errors: list[float] = field(default_factory=list)


def _parts(forecast: Forecast | None, scale: float) -> str:
    if forecast is None:
        return ""
    return (
        f"(q{forecast.queue / scale:.1f} l{forecast.load / scale:.1f} "
        f"p{forecast.prompt / scale:.1f} r{forecast.reasoning / scale:.1f} "
        f"n{forecast.network / scale:.1f})"
    )


def scaled_settings(scale: float, *, hedging: bool) -> RouterSettings:
    """The router's defaults, with time shortened by scale."""
    return RouterSettings(
        turn_timeout=120 * scale,
        cooldown=30 * scale,
        probe_timeout=10 * scale,
        latency_budget=3 * scale,
        hedging=hedging,
        predictor=PredictorSettings(
            prompt_speed=100 / scale,
            generation_speed=10 / scale,
            load_seconds=20 * scale,
            network_seconds=0.1 * scale,
            load_noticeable=0.5 * scale,
            congestion_fades=30 * scale,
            hedge_min=0.5 * scale,
            hedge_max=4 * scale,
            warm_margin=60 * scale,
            default_keep_alive=300 * scale,
        ),
    )


async def run_day(
    policy_name: str, scale: float, *, trace: bool = False
) -> list[Outcome]:
    """The whole day under one policy, on fresh servers and a fresh router."""
    pi_fake, gpu_fake = HouseholdOllama(PI, scale), HouseholdOllama(GPU, scale)
    await pi_fake.start()
    await gpu_fake.start()
    gpu_port = gpu_fake.port
    await gpu_fake.stop()  # off in the morning
    gpu_up = False
    current: dict[str, Question] = {}

    def truth(name: str) -> float:
        fake = pi_fake if name == "Pi" else gpu_fake
        return fake.true_first_word(current["q"], name == "Pi" or gpu_up)

    peer = LatencyPeer(scale)
    policies: dict[str, Policy] = {
        "ordered": OrderedPolicy(),
        "latency (peer)": peer,
        "fastest": FastestPolicy(),
        "fastest+hedge": FastestPolicy(),
        "oracle": Oracle(truth),
    }
    settings = scaled_settings(scale, hedging=policy_name == "fastest+hedge")
    outcomes = [Outcome() for _ in DAY]
    async with aiohttp.ClientSession() as session:

        def backend(server: Server, url: str) -> OllamaBackend:
            return OllamaBackend(
                BackendConfig(
                    name=server.name,
                    kind=BackendKind.OLLAMA,
                    url=url,
                    model=server.model,
                    priority=server.priority,
                    connect_timeout=3 * scale,
                    first_token_timeout=30 * scale,
                    stall_timeout=15 * scale,
                    keep_alive=max(1, round(server.keep_alive * scale)),
                    keep_warm=True,
                    max_tokens=512,
                ),
                session,
            )

        router = Router(
            [
                backend(PI, pi_fake.url),
                backend(GPU, f"http://127.0.0.1:{gpu_port}"),
            ],
            policy=policies[policy_name],
            settings=settings,
        )
        started = time.monotonic()

        def at(real_seconds: float) -> float:
            return started + real_seconds * scale

        async def sleep_until(real_seconds: float) -> None:
            await asyncio.sleep(max(0.0, at(real_seconds) - time.monotonic()))

        async def probes(name: str) -> None:
            while True:
                up = await router.async_probe(name)
                every = PROBE_EVERY if up else PROBE_EVERY_WHILE_DOWN
                await asyncio.sleep(every * scale)

        async def gpu_schedule() -> None:
            nonlocal gpu_up
            await sleep_until(GPU_ON)
            gpu_fake.loaded.clear()
            await gpu_fake.start(gpu_port)
            gpu_up = True
            await sleep_until(GPU_OFF)
            gpu_up = False
            await gpu_fake.stop()

        async def other_client() -> None:
            when, count, tokens = OTHER_CLIENT
            await sleep_until(when)

            async def one() -> None:
                async with session.post(
                    f"{gpu_fake.url}/api/chat",
                    json={
                        "model": GPU.model,
                        "messages": [{"role": "user", "content": f"other {tokens}"}],
                        "think": False,
                    },
                ) as response:
                    await response.read()

            await asyncio.gather(*(one() for _ in range(count)))

        async def ask(index: int, question: Question) -> None:
            await sleep_until(question.at)
            current["q"] = question
            truths = {name: truth(name) for name in router.states}
            request = ChatRequest(
                messages=(ChatMessage("user", f"q{index} " + "home " * 20),),
                think=question.reasoning > 0,
            )
            sent = time.monotonic()
            turn = router.route(request)
            outcome = outcomes[index]
            try:
                async for event in turn:
                    if isinstance(event, TextDelta) and math.isinf(outcome.first_word):
                        outcome.first_word = (time.monotonic() - sent) / scale
            except AllBackendsFailed:
                pass
            if policy_name == "latency (peer)":
                peer.record(turn)
            if trace:
                print(
                    f"q{index:<3} t={question.at:5.0f} r={question.reasoning:3} "
                    f"word={outcome.first_word:7.2f} truths="
                    + " ".join(f"{n}:{t / scale:6.2f}" for n, t in truths.items())
                    + " | "
                    + "; ".join(
                        f"{a.backend} {a.decision} {a.error_kind or 'ok'} "
                        f"pred={(a.forecast.total / scale) if a.forecast else -1:.2f}"
                        f"{_parts(a.forecast, scale)} "
                        f"word={(a.first_word or 0) / scale:.2f} q={a.queued / scale:.2f}"
                        for a in turn.attempts
                    )
                )
            served = turn.served
            if served is None:
                return
            fake = pi_fake if served.backend == "Pi" else gpu_fake
            waited = served.queued + fake.queue_waits.get(index, 0.0)
            others = min(
                (t for name, t in truths.items() if name != served.backend),
                default=math.inf,
            )
            outcome.waited_needlessly = (
                waited > 0.5 * scale and others / scale < outcome.first_word
            )
            if index >= WARM_UP_REQUESTS and served.first_word and served.forecast:
                predicted = served.forecast.total
                if math.isfinite(predicted):
                    outcome.errors.append(
                        abs(predicted - served.first_word) / served.first_word
                    )

        background = [
            asyncio.create_task(probes("Pi")),
            asyncio.create_task(probes("GPU")),
            asyncio.create_task(gpu_schedule()),
            asyncio.create_task(other_client()),
        ]
        await asyncio.gather(*(ask(i, q) for i, q in enumerate(DAY)))
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await router.close()
    await pi_fake.stop()
    await gpu_fake.stop()
    return outcomes


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


POLICIES = ["ordered", "latency (peer)", "fastest", "fastest+hedge", "oracle"]


async def main(scale: float, trace: str | None) -> None:
    if trace:
        await run_day(trace, scale, trace=True)
        return
    results = {name: await run_day(name, scale) for name in POLICIES}
    oracle = [o.first_word for o in results["oracle"]]
    base50, base95 = percentile(oracle, 0.5), percentile(oracle, 0.95)
    print(
        f"{len(DAY)} requests, scale {scale:g}; time to the first answer word "
        f"in real seconds, ratio to the oracle"
    )
    print(
        f"{'policy':<16}{'p50':>15}{'p95':>16}{'> 5 s':>7}{'failed':>8}"
        f"{'waited':>8}{'pred. error':>13}"
    )
    for name, outcomes in results.items():
        words = [o.first_word for o in outcomes]
        p50, p95 = percentile(words, 0.5), percentile(words, 0.95)
        late = sum(VOICE_GIVES_UP < w < math.inf for w in words)
        failed = sum(math.isinf(w) for w in words)
        waited = sum(o.waited_needlessly for o in outcomes)
        errors = [e for o in outcomes for e in o.errors]
        error = f"{statistics.median(errors):.0%}" if errors else "-"
        print(
            f"{name:<16}{p50:6.2f} s {p50 / base50:5.2f}x{p95:7.2f} s {p95 / base95:5.2f}x"
            f"{late:>7}{failed:>8}{waited:>8}{error:>13}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument(
        "--trace", choices=POLICIES, help="run one policy, printing every request"
    )
    logging.basicConfig(level=logging.ERROR)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.scale, arguments.trace))
