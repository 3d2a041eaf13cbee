"""What a dead first-choice backend costs each turn, side by side.

Three routers answer the same turns from the same loopback Pi (a fake
Ollama streaming at a fixed token rate):
  pi only          the baseline
  refused GPU      first choice is a closed port (switched-off GPU box)
  silent GPU       first choice accepts connections but never answers
Reported: turn times as ratios to the baseline for turn 1, turns 2-3
(a silent server fails three times before its breaker opens) and the
median of turns 4 and later.

    .venv/bin/python -m bench.dead_backend [--turns 20]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
import logging
import math
import statistics
import time

import aiohttp

from custom_components.llm_router.engine.backend import Backend
from custom_components.llm_router.engine.models import (
    BackendConfig,
    BackendKind,
    ChatMessage,
    ChatRequest,
)
from custom_components.llm_router.engine.ollama import OllamaBackend
from custom_components.llm_router.engine.openai import OpenAIBackend
from custom_components.llm_router.engine.router import Router
from tests.fakes.base import Reply, closed_port_url
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI

REQUEST = ChatRequest(messages=(ChatMessage("user", "Is the porch light on?"),))
ANSWER = Reply(
    text="The porch light is on and the door is locked.", tokens_per_second=200
)
FIRST_TOKEN_TIMEOUT = 1.0


async def timed_turn(router: Router) -> float:
    """Seconds one turn took, start to last event."""
    started = time.perf_counter()
    async for _event in router.route(REQUEST):
        pass
    return time.perf_counter() - started


def gpu(url: str) -> BackendConfig:
    return BackendConfig(
        name="GPU",
        kind=BackendKind.OPENAI,
        url=url,
        model="fake-model",
        priority=1,
        first_token_timeout=FIRST_TOKEN_TIMEOUT,
    )


async def main(turns: int) -> None:
    async with (
        aiohttp.ClientSession() as session,
        FakeOllama() as pi_server,
        FakeOpenAI() as silent_server,
    ):
        pi_server.default_reply = ANSWER
        silent_server.default_reply = Reply(stall_before_first=math.inf)
        pi = BackendConfig(
            name="Pi",
            kind=BackendKind.OLLAMA,
            url=pi_server.url,
            model="llama3.2",
            priority=2,
        )

        def router(first: Sequence[Backend]) -> Router:
            return Router([*first, OllamaBackend(pi, session)])

        setups = {
            "pi only": router([]),
            "refused GPU": router([OpenAIBackend(gpu(closed_port_url()), session)]),
            "silent GPU": router([OpenAIBackend(gpu(silent_server.url), session)]),
        }
        warm_up = router([])
        for _ in range(2):  # connections and imports, paid by nobody
            await timed_turn(warm_up)
        await warm_up.close()
        # Round-robin, so drift of the machine hits every setup alike.
        results: dict[str, list[float]] = {name: [] for name in setups}
        for _ in range(turns):
            for name, routed in setups.items():
                results[name].append(await timed_turn(routed))
        for routed in setups.values():
            await routed.close()

    def columns(times: list[float]) -> tuple[float, float, float]:
        return times[0], max(times[1:3]), statistics.median(times[3:])

    base = columns(results["pi only"])
    print(
        f"{turns} turns each; silent GPU first_token_timeout {FIRST_TOKEN_TIMEOUT:g} s"
    )
    print(
        f"{'setup':<14}{'turn 1':>16}{'turns 2-3 (max)':>22}{'turns 4+ (median)':>24}"
    )
    for name, times in results.items():
        cells = [
            f"{value * 1000:8.1f} ms {value / reference:5.2f}x"
            for value, reference in zip(columns(times), base, strict=True)
        ]
        print(f"{name:<14}" + "".join(f"{cell:>22}" for cell in cells))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(parser.parse_args().turns))
