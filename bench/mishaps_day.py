"""A day of mishaps: which policy answers every turn a server could answer.

Two loopback Ollama fakes, "GPU" (priority 1) and "Pi" (priority 2), both
with a 2 s first-token deadline, time shortened by --scale (0.1: a real
second lasts 100 ms; figures are in real seconds). What goes wrong:

  t =   0   the router is (re)loaded; the GPU is off, the Pi's model is
            unloaded and takes 4 s to load; the first voice turn at 3 s
  t =  30   the GPU comes on, cold (4 s load)
  t =  45   a thinking question: 600 reasoning tokens before the answer,
            more than max_tokens (512)
  t =  60   the Pi's Ollama restarts (down 1 s, its model unloaded)
  t =  90   another thinking question
  t = 120   both servers refuse connections for 4 s (every breaker opens),
            then come back on their ports; turns at 121 (nothing can
            answer) and 125
  t = 150   the GPU is switched off again
  t = 200   the Pi restarts again, cold; a turn at 201

A turn is answerable when some server is up when it is asked. Reported per
policy (as bench.household_day's: ordered, the LiteLLM-style latency peer,
fastest, fastest with hedging, and the oracle that knows each server's true
time): turns answered / turns answerable, and the p95 time to the first
answer word over the answerable turns (inf when one is not answered).

    .venv/bin/python -m bench.mishaps_day [--scale 0.1] [--trace fastest+hedge]
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
import logging
import math
import time
from typing import Any

import aiohttp

from bench.household_day import LatencyPeer, Oracle, percentile, scaled_settings
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
from custom_components.llm_router.engine.router import Router
from tests.fakes.base import Reply
from tests.fakes.ollama_server import FakeOllama

MODEL = "deepseek-r1:1.5b"
ANSWER_WORDS = 10
LOAD = 4.0
FIRST_TOKEN = 2.0


@dataclass(frozen=True)
class Question:
    """One voice turn at t real seconds."""

    at: float
    reasoning: int = 0


@dataclass(frozen=True)
class Speed:
    """A server's true speed (real seconds, tokens/s)."""

    name: str
    tokens_per_second: float
    prompt: float
    priority: int


GPU = Speed("GPU", 48.0, 0.1, 1)
PI = Speed("Pi", 6.5, 0.6, 2)

DAY = [
    Question(3),
    Question(5),
    Question(6.5),
    Question(8),
    Question(35),
    Question(40),
    Question(45, reasoning=600),
    Question(60.5),
    Question(62),
    Question(75),
    Question(76.5),
    Question(78),
    Question(90, reasoning=600),
    Question(110),
    Question(121),
    Question(125),
    Question(126.5),
    Question(128),
    Question(155),
    Question(160),
    Question(161.5),
    Question(180),
    Question(201),
    Question(203),
    Question(210),
]
# (name, off at, on again at); None: stays off.
OUTAGES = [
    ("GPU", 0.0, 30.0),
    ("Pi", 60.0, 61.0),
    ("GPU", 120.0, 124.0),
    ("Pi", 120.0, 124.0),
    ("GPU", 150.0, None),
    ("Pi", 200.0, 200.5),
]
PROBE_EVERY, PROBE_EVERY_WHILE_DOWN = 30.0, 10.0
POLICIES = ["ordered", "latency (peer)", "fastest", "fastest+hedge", "oracle"]


class MishapOllama(FakeOllama):
    """A fake answering each question ("q<index> ...") at its server's speed."""

    def __init__(self, speed: Speed, scale: float) -> None:
        super().__init__(
            models={MODEL: ("completion", "thinking")},
            load_seconds=LOAD * scale,
            parallel=1,
        )
        self.speed = speed
        self.scale = scale
        self.up = True

    def next_reply(self, body: Any) -> Reply:
        text = body["messages"][-1]["content"]
        question = DAY[int(text.split()[0][1:])]
        return Reply(
            text=" ".join(["word"] * ANSWER_WORDS),
            thinking=" ".join(["hmm"] * question.reasoning),
            tokens_per_second=self.speed.tokens_per_second / self.scale,
            stall_before_first=self.speed.prompt * self.scale,
            prompt_seconds=self.speed.prompt * self.scale,
            prompt_tokens=len(text) // 4 + 4,
        )

    def true_first_word(self, question: Question, think: bool) -> float:
        """Bench seconds this server would take to the first answer word."""
        if not self.up:
            return math.inf
        load = 0.0 if self.is_loaded(MODEL) else LOAD * self.scale
        reasoning = question.reasoning if think else 0
        return (
            max(0.0, self.free_at - time.monotonic())
            + load
            + (self.speed.prompt + reasoning / self.speed.tokens_per_second)
            * self.scale
        )


async def run_day(
    policy_name: str, scale: float, *, trace: bool = False
) -> tuple[list[float], list[bool]]:
    """Each turn's time to its first answer word (inf: none), and answerable."""
    fakes = {speed.name: MishapOllama(speed, scale) for speed in (GPU, PI)}
    ports = {}
    for name, fake in fakes.items():
        await fake.start()
        ports[name] = fake.port
    current: dict[str, Question] = {}

    def truth(name: str) -> float:
        question = current["q"]
        return fakes[name].true_first_word(question, question.reasoning > 0)

    peer = LatencyPeer(scale)
    policies: dict[str, Policy] = {
        "ordered": OrderedPolicy(),
        "latency (peer)": peer,
        "fastest": FastestPolicy(),
        "fastest+hedge": FastestPolicy(),
        "oracle": Oracle(truth),
    }
    first_words = [math.inf] * len(DAY)
    answerable = [False] * len(DAY)
    async with aiohttp.ClientSession() as session:
        backends = [
            OllamaBackend(
                BackendConfig(
                    name=speed.name,
                    kind=BackendKind.OLLAMA,
                    url=fakes[speed.name].url,
                    model=MODEL,
                    priority=speed.priority,
                    connect_timeout=3 * scale,
                    first_token_timeout=FIRST_TOKEN * scale,
                    stall_timeout=15 * scale,
                    keep_alive=max(1, round(180 * scale)),
                    max_tokens=512,
                ),
                session,
            )
            for speed in (GPU, PI)
        ]
        started = time.monotonic()

        async def sleep_until(real_seconds: float) -> None:
            when = started + real_seconds * scale
            await asyncio.sleep(max(0.0, when - time.monotonic()))

        async def outage(name: str, off: float, on: float | None) -> None:
            fake = fakes[name]
            await sleep_until(off)
            if fake.up:
                fake.up = False
                await fake.stop()
            if on is None:
                return
            await sleep_until(on)
            fake.loaded.clear()  # a restarted server has no model loaded
            await fake.start(ports[name])
            fake.up = True

        # The GPU is off before the router starts (the reload at t = 0).
        await fakes["GPU"].stop()
        fakes["GPU"].up = False
        outages = [
            asyncio.create_task(outage(name, off, on)) for name, off, on in OUTAGES
        ]
        router = Router(
            backends,
            policy=policies[policy_name],
            settings=scaled_settings(scale, hedging=policy_name == "fastest+hedge"),
        )

        async def probes(name: str) -> None:
            while True:
                up = await router.async_probe(name)
                every = PROBE_EVERY if up else PROBE_EVERY_WHILE_DOWN
                await asyncio.sleep(every * scale)

        async def ask(index: int, question: Question) -> None:
            await sleep_until(question.at)
            current["q"] = question
            answerable[index] = any(fake.up for fake in fakes.values())
            request = ChatRequest(
                messages=(ChatMessage("user", f"q{index} " + "home " * 20),),
                think=question.reasoning > 0,
            )
            sent = time.monotonic()
            turn = router.route(request)
            try:
                async for event in turn:
                    if isinstance(event, TextDelta) and math.isinf(first_words[index]):
                        first_words[index] = (time.monotonic() - sent) / scale
            except AllBackendsFailed:
                pass
            if policy_name == "latency (peer)":
                peer.record(turn)
            if trace:
                print(
                    f"q{index:<3} t={question.at:5.1f} up={answerable[index]!s:5} "
                    f"word={first_words[index]:6.2f} | "
                    + "; ".join(
                        f"{a.backend} {a.decision} {a.error or 'ok'}"
                        + (f" ({a.note})" if a.note else "")
                        for a in turn.attempts
                    )
                )

        background = [asyncio.create_task(probes(name)) for name in router.states]
        await asyncio.gather(*(ask(i, q) for i, q in enumerate(DAY)))
        for task in [*background, *outages]:
            task.cancel()
        await asyncio.gather(*background, *outages, return_exceptions=True)
        await router.close()
    for fake in fakes.values():
        await fake.stop()
    return first_words, answerable


async def main(scale: float, trace: str | None) -> None:
    if trace:
        await run_day(trace, scale, trace=True)
        return
    print(
        f"{len(DAY)} turns, scale {scale:g}; time to the first answer word in "
        "real seconds, over the answerable turns"
    )
    print(f"{'policy':<16}{'answered':>12}{'p95':>10}")
    for name in POLICIES:
        first_words, answerable = await run_day(name, scale)
        words = [w for w, a in zip(first_words, answerable, strict=True) if a]
        answered = sum(math.isfinite(w) for w in words)
        p95 = percentile(words, 0.95)
        print(f"{name:<16}{answered:>5} / {len(words):<4}{p95:8.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument(
        "--trace", choices=POLICIES, help="run one policy, printing every turn"
    )
    logging.basicConfig(level=logging.ERROR)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.scale, arguments.trace))
