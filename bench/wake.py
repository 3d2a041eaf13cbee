"""What waking a sleeping GPU server costs, and how soon it serves.

A loopback Pi (a fake Ollama streaming at a fixed token rate) and a GPU
machine that is off (a fake OpenAI-compatible server that starts listening
--boot seconds after its wake action runs). Per run, side by side:
  pi only        turns of a router with only the Pi: the baseline (the
                 median of five just before)
  waking turn    the turn that finds the GPU down (its health check saw
                 it so) and runs its wake action; the Pi answers it
Then turns every --poll seconds until the GPU serves one. Reported per
run and as medians:
  extra          waking turn / pi-only turn (1.0: the wake costs nothing),
                 and the two in ms
  to GPU         seconds from the waking turn to the first turn the GPU
                 served, and its ratio to boot + probe interval (the
                 latest a probe every 2 s can see the boot)

    .venv/bin/python -m bench.wake [--runs 5] [--boot 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time

import aiohttp

from bench.dead_backend import ANSWER, REQUEST
from custom_components.llm_router.engine.models import BackendConfig, BackendKind
from custom_components.llm_router.engine.ollama import OllamaBackend
from custom_components.llm_router.engine.openai import OpenAIBackend
from custom_components.llm_router.engine.router import Router
from custom_components.llm_router.engine.settings import RouterSettings
from custom_components.llm_router.engine.wake import PowerConfig, WakeTiming
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.power import SleepingMachine

TIMING = WakeTiming()


async def timed_turn(router: Router) -> tuple[float, str | None]:
    """Seconds one turn took, start to last event, and who served it."""
    started = time.perf_counter()
    turn = router.route(REQUEST)
    async for _event in turn:
        pass
    return time.perf_counter() - started, turn.served_by


def pi(session: aiohttp.ClientSession, url: str, priority: int) -> OllamaBackend:
    return OllamaBackend(
        BackendConfig("Pi", BackendKind.OLLAMA, url, "llama3.2", priority=priority),
        session,
    )


async def one_run(
    session: aiohttp.ClientSession, pi_server: FakeOllama, boot: float, poll: float
) -> tuple[float, float, float]:
    """Seconds of a Pi-only turn and of the waking turn; seconds to the GPU."""
    machine = SleepingMachine(FakeOpenAI(), boot_time=boot)
    gpu = OpenAIBackend(
        BackendConfig("GPU", BackendKind.OPENAI, machine.url, "fake-model"), session
    )
    home = Router(
        [gpu, pi(session, pi_server.url, 2)],
        settings=RouterSettings(wake=TIMING),
        power={"GPU": PowerConfig(wake=machine.wake, wake_time=boot)},
    )
    baseline = Router([pi(session, pi_server.url, 1)])
    try:
        await home.async_probe("GPU")  # the health check: down
        # Each router asks a backend's model details once: not in the turn.
        await home.model_details(home.states["Pi"])
        # One session: the Pi's connection, warmed here, serves both routers.
        await timed_turn(baseline)
        alone = statistics.median([(await timed_turn(baseline))[0] for _ in range(5)])
        started = time.perf_counter()
        waking, served_by = await timed_turn(home)
        if served_by != "Pi" or machine.wakes != 1:
            raise RuntimeError(f"the Pi did not answer the waking turn: {served_by}")
        while True:
            await asyncio.sleep(poll)
            turn_started = time.perf_counter()
            _, served_by = await timed_turn(home)
            if served_by == "GPU":
                return alone, waking, turn_started - started
    finally:
        await home.close()
        await baseline.close()
        await machine.off()


async def main(runs: int, boot: float, poll: float) -> None:
    bound = boot + TIMING.probe_interval
    extras: list[float] = []
    to_gpu: list[float] = []
    async with aiohttp.ClientSession() as session, FakeOllama() as pi_server:
        pi_server.default_reply = ANSWER
        print(
            f"boot {boot:g} s, probe every {TIMING.probe_interval:g} s, poll {poll:g} s"
        )
        print(
            "run  pi only ms  waking ms  extra (ratio)  to GPU s  to GPU / (boot + probe)"
        )
        for run in range(1, runs + 1):
            alone, waking, seconds = await one_run(session, pi_server, boot, poll)
            extras.append(waking / alone)
            to_gpu.append(seconds)
            print(
                f"{run:3d}  {alone * 1000:10.1f}  {waking * 1000:9.1f}"
                f"  {waking / alone:13.3f}  {seconds:8.2f}  {seconds / bound:23.2f}"
            )
    print(
        f"median extra {statistics.median(extras):.3f}, "
        f"to GPU {statistics.median(to_gpu):.2f} s = "
        f"{statistics.median(to_gpu) / bound:.2f} x (boot + probe interval)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--boot", type=float, default=3.0)
    parser.add_argument("--poll", type=float, default=0.1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(args.runs, args.boot, args.poll))
