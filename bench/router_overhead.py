"""What the router adds to a turn, on a fake that answers at once.

The same question goes to one loopback Ollama fake (no pacing, 30 tokens)
three ways, round-robin so that drift hits all alike:

  bare     ollama.AsyncClient.chat(stream=True), iterated, over httpx's
           own transport (as core's ollama integration uses it)
  session  the same client over the router's transport: an aiohttp
           session (engine/ollama_http.py)
  core     the bare stream through Home Assistant core's ollama
           integration (its _transform_stream, which feeds the chat log)
  router   Router.route() with one OllamaBackend (prediction, policy,
           deadlines, reasoning splitting, statistics)

Reported: the median time to the first answer token and to the end of the
answer, what each adds to the bare client, and what the router adds to
the client it streams with (router - session): medians of the per-round
differences.

    .venv/bin/python -m bench.router_overhead [--turns 300]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
import logging
import statistics
import time

import aiohttp
from homeassistant.components.ollama.entity import _transform_stream
import ollama

from custom_components.llm_router.engine.models import (
    BackendConfig,
    BackendKind,
    ChatMessage,
    ChatRequest,
    TextDelta,
)
from custom_components.llm_router.engine.ollama import OllamaBackend
from custom_components.llm_router.engine.ollama_http import SessionTransport
from custom_components.llm_router.engine.router import Router
from tests.fakes.base import Reply
from tests.fakes.ollama_server import FakeOllama

QUESTION = "Is the porch light on?"
MODEL = "llama3.2"
Timed = Callable[[], Awaitable[tuple[float, float]]]


async def main(turns: int) -> None:
    async with aiohttp.ClientSession() as session, FakeOllama() as fake:
        fake.default_reply = Reply(text=" ".join(["word"] * 30))
        bare_client = ollama.AsyncClient(host=fake.url)
        session_client = ollama.AsyncClient(
            host=fake.url,
            transport=SessionTransport(session, verify=True, connect_timeout=3),
        )
        core_client = ollama.AsyncClient(host=fake.url)
        router = Router(
            [
                OllamaBackend(
                    BackendConfig("Pi", BackendKind.OLLAMA, fake.url, MODEL), session
                )
            ]
        )
        messages = [{"role": "user", "content": QUESTION}]
        request = ChatRequest(messages=(ChatMessage("user", QUESTION),))

        def stream(client: ollama.AsyncClient) -> Timed:
            async def turn() -> tuple[float, float]:
                started = time.perf_counter()
                first = 0.0
                async for part in await client.chat(MODEL, messages, stream=True):
                    if not first and part.message.content:
                        first = time.perf_counter()
                return first - started, time.perf_counter() - started

            return turn

        async def core() -> tuple[float, float]:
            started = time.perf_counter()
            first = 0.0
            stream = await core_client.chat(MODEL, messages, stream=True)
            async for chunk in _transform_stream(stream):
                if not first and chunk.get("content"):
                    first = time.perf_counter()
            return first - started, time.perf_counter() - started

        async def routed() -> tuple[float, float]:
            started = time.perf_counter()
            first = 0.0
            async for event in router.route(request):
                if not first and isinstance(event, TextDelta):
                    first = time.perf_counter()
            return first - started, time.perf_counter() - started

        ways: dict[str, Timed] = {
            "bare": stream(bare_client),
            "session": stream(session_client),
            "core": core,
            "router": routed,
        }
        for way in ways.values():  # connections and imports, paid by nobody
            for _ in range(5):
                await way()
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
        for _ in range(turns):
            for name, way in ways.items():
                results[name].append(await way())
        await router.close()
        for client in (bare_client, session_client, core_client):
            await client.close()  # type: ignore[no-untyped-call]

    print(f"{turns} turns each, 30-token answers from a fake that answers at once")
    print(
        f"{'way':<8}{'first token':>14}{'added':>10}{'whole answer':>16}{'added':>10}"
    )
    for name, times in results.items():
        added = [
            (own[0] - base[0], own[1] - base[1])
            for own, base in zip(times, results["bare"], strict=True)
        ]
        first = statistics.median(t[0] for t in times) * 1000
        whole = statistics.median(t[1] for t in times) * 1000
        added_first = statistics.median(a[0] for a in added) * 1000
        added_whole = statistics.median(a[1] for a in added) * 1000
        print(
            f"{name:<8}{first:11.2f} ms{added_first:+7.2f} ms"
            f"{whole:13.2f} ms{added_whole:+7.2f} ms"
        )
    own = [
        (own[0] - base[0], own[1] - base[1])
        for own, base in zip(results["router"], results["session"], strict=True)
    ]
    print(
        "router - session (its own cost over the client it uses):"
        f" {statistics.median(a[0] for a in own) * 1000:+.2f} ms to the first token,"
        f" {statistics.median(a[1] for a in own) * 1000:+.2f} ms to the end"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=300)
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(parser.parse_args().turns))
