"""Event loop lag under 50 concurrent turns: LLM Router against core's ollama.

One Home Assistant (the test plugin's, asyncio debug off as in a real
install) holds two conversation agents talking to the same loopback Ollama
fake, which answers at once (with --rate, that many words a second):

  router   LLM Router with that server as its one backend (max_parallel 50)
  core     Home Assistant core's ollama integration, same server and model

Each round sends the same 50 turns at once to one agent, then to the other,
alternating which goes first, after a garbage collection, while a ticker task measures how late the
loop wakes it (every 2 ms). Reported per agent: the median over rounds of
each round's worst and mean lag, and the router's over core's, which is
the figure to compare across machines (the absolute lag is the machine's);
how late the ticker was in all, and how long a round took. The mean is
over the ticker's wakes: a round that is over in a few long loop
iterations has few, each late by one of them.

    .venv/bin/python -m bench.loop_lag [--rounds 20] [--turns 50] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
import gc
import logging
import statistics
import tempfile
import time

from homeassistant import loader
from homeassistant.components import conversation
from homeassistant.config_entries import ConfigSubentryData
from homeassistant.core import Context, HomeAssistant
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_test_home_assistant,
)

from tests.conftest import backend, router_entry, setup_router
from tests.fakes.base import Reply
from tests.fakes.ollama_server import FakeOllama

MODEL = "llama3.2"
ANSWER = "The lamp is on."
TICK = 0.002


@dataclass
class Lag:
    """How late the ticker woke, each time, during one round."""

    delays: list[float] = field(default_factory=list)
    seconds: float = 0.0
    """How long the round took."""

    @property
    def worst(self) -> float:
        """The largest delay."""
        return max(self.delays, default=0.0)

    @property
    def mean(self) -> float:
        """The average delay."""
        return statistics.fmean(self.delays) if self.delays else 0.0


@asynccontextmanager
async def measured_lag() -> AsyncIterator[Lag]:
    """Measure the loop's lag while the block runs."""
    loop = asyncio.get_running_loop()
    lag = Lag()

    async def tick() -> None:
        while True:
            scheduled = loop.time() + TICK
            await asyncio.sleep(TICK)
            lag.delays.append(loop.time() - scheduled)

    ticker = asyncio.create_task(tick())
    started = loop.time()
    try:
        yield lag
    finally:
        lag.seconds = loop.time() - started
        ticker.cancel()
        with suppress(asyncio.CancelledError):
            await ticker


async def turns_at_once(hass: HomeAssistant, agent_id: str, turns: int) -> Lag:
    """Send the turns at once; fail unless every one is answered."""

    async def turn(number: int) -> str:
        result = await conversation.async_converse(
            hass, f"Is lamp {number} on?", None, Context(), agent_id=agent_id
        )
        return str(result.response.speech["plain"]["speech"])

    async with measured_lag() as lag:
        answers = await asyncio.gather(*(turn(n) for n in range(turns)))
    if answers != [ANSWER] * turns:
        raise SystemExit(f"{agent_id} answered {set(answers)}")
    return lag


async def setup_core_ollama(hass: HomeAssistant, url: str) -> str:
    """Core's ollama integration with one conversation agent; its entity id."""
    entry = MockConfigEntry(
        domain="ollama",
        title="Ollama",
        data={"url": url},
        version=3,
        minor_version=3,
        subentries_data=[
            ConfigSubentryData(
                data={"model": MODEL, "max_history": 20, "keep_alive": -1},
                subentry_type="conversation",
                title="Ollama Conversation",
                unique_id=None,
            )
        ],
    )
    entry.add_to_hass(hass)
    if not await hass.config_entries.async_setup(entry.entry_id):
        raise SystemExit("core's ollama integration did not set up")
    await hass.async_block_till_done()
    registry = er.async_get(hass)
    [agent] = [
        item.entity_id
        for item in er.async_entries_for_config_entry(registry, entry.entry_id)
        if item.domain == "conversation"
    ]
    return agent


async def main(rounds: int, turns: int, rate: float | None) -> None:
    with tempfile.TemporaryDirectory() as config_dir:
        results, seconds = await measure(config_dir, rounds, turns, rate)
    report(results, rounds, turns, seconds)


async def measure(
    config_dir: str, rounds: int, turns: int, rate: float | None
) -> tuple[dict[str, list[Lag]], float]:
    """Each agent's lag in each round, and the seconds the rounds took."""
    async with (
        async_test_home_assistant(config_dir=config_dir) as hass,
        FakeOllama() as fake,
    ):
        asyncio.get_running_loop().set_debug(False)
        hass.data.pop(loader.DATA_CUSTOM_COMPONENTS, None)  # ours is custom
        fake.default_reply = Reply(text=ANSWER, tokens_per_second=rate)
        await setup_router(
            hass,
            router_entry(
                backend("Pi", "ollama", fake.url, MODEL, 1, max_parallel=turns)
            ),
        )
        agents = {
            "router": "conversation.llm_router",
            "core": await setup_core_ollama(hass, fake.url),
        }
        for agent in agents.values():  # imports and connections, paid by nobody
            await turns_at_once(hass, agent, turns)
        results: dict[str, list[Lag]] = {name: [] for name in agents}
        started = time.monotonic()
        for number in range(rounds):
            order = list(agents) if number % 2 == 0 else list(reversed(agents))
            for name in order:
                gc.collect()  # no round pays for garbage another made
                results[name].append(await turns_at_once(hass, agents[name], turns))
        seconds = time.monotonic() - started
        await hass.async_stop(force=True)
    return results, seconds


def report(
    results: dict[str, list[Lag]], rounds: int, turns: int, seconds: float
) -> None:
    """The table: medians over rounds, and their ratio to core's."""
    print(
        f"{rounds} rounds of {turns} turns at once per agent ({seconds:.0f} s); "
        f"loop lag, median over rounds"
    )
    print(
        f"{'agent':<8}{'worst':>11}{'ratio':>8}{'mean':>11}{'ratio':>8}"
        f"{'in all':>11}{'round':>11}"
    )
    core_worst = statistics.median(lag.worst for lag in results["core"])
    core_mean = statistics.median(lag.mean for lag in results["core"])
    for name, lags in results.items():
        worst = statistics.median(lag.worst for lag in lags)
        mean = statistics.median(lag.mean for lag in lags)
        late = statistics.median(sum(lag.delays) for lag in lags)
        seconds = statistics.median(lag.seconds for lag in lags)
        print(
            f"{name:<8}{worst * 1000:8.1f} ms{worst / core_worst:7.2f}x"
            f"{mean * 1000:8.2f} ms{mean / core_mean:7.2f}x"
            f"{late * 1000:8.1f} ms{seconds * 1000:8.1f} ms"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--turns", type=int, default=50)
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="the fake's words per second in each answer (default: all at once)",
    )
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(arguments.rounds, arguments.turns, arguments.rate))
