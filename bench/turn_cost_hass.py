"""The Home Assistant side of bench.turn_cost, run by pytest for its `hass`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
import logging
import os
import statistics
import time
from typing import Any

from homeassistant.components import conversation
from homeassistant.config_entries import ConfigSubentryData
from homeassistant.const import (
    CONF_LLM_HASS_API,
    CONF_MODEL,
    CONF_PROMPT,
    CONF_URL,
    EVENT_STATE_CHANGED,
    EVENT_STATE_REPORTED,
)
from homeassistant.core import Context, Event, HomeAssistant, callback
from homeassistant.helpers import entity_registry as er, llm
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.setup import async_setup_component
import ollama
from pytest_homeassistant_custom_component.common import MockConfigEntry

from bench.turn_cost import GAP_VARIABLE, ROUNDS_VARIABLE
from custom_components.llm_router.const import DOMAIN
from custom_components.llm_router.engine.ollama_http import SessionTransport
from custom_components.llm_router.updates import UPDATE_INTERVAL
from tests.conftest import backend, router_entry
from tests.fakes.base import Reply
from tests.fakes.ollama_server import FakeOllama

QUESTION = "Is the porch light on?"
MODEL = "llama3.2"

Timed = Callable[[], Awaitable[float]]


def _core_entry(url: str) -> MockConfigEntry:
    """Core's ollama: one agent without an LLM API, one with Assist."""
    return MockConfigEntry(
        domain="ollama",
        title="Ollama",
        data={CONF_URL: url},
        version=3,
        minor_version=3,
        subentries_data=[
            ConfigSubentryData(
                data={
                    CONF_MODEL: MODEL,
                    CONF_PROMPT: llm.DEFAULT_INSTRUCTIONS_PROMPT,
                    **({CONF_LLM_HASS_API: [llm.LLM_API_ASSIST]} if api else {}),
                },
                subentry_id=f"core_{'assist' if api else 'plain'}",
                subentry_type="conversation",
                title=f"Core {'assist' if api else 'plain'}",
                unique_id=None,
            )
            for api in (False, True)
        ],
    )


def _router_entry(url: str, *, api: bool) -> MockConfigEntry:
    name = "assist" if api else "plain"
    return router_entry(
        # The router's defaults: the first backend is kept warm.
        backend("Pi", "ollama", url, MODEL, 1, keep_warm=None),
        llm_api=[llm.LLM_API_ASSIST] if api else None,
        entry_id=f"router_{name}",
    )


async def _setup(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done(wait_background_tasks=True)


def _agent(hass: HomeAssistant, platform: str, unique_id: str) -> str:
    entity_id = er.async_get(hass).async_get_entity_id(
        "conversation", platform, unique_id
    )
    assert entity_id is not None
    return entity_id


class _Writes:
    """Counts state writes of the integrations' entities, changed or not."""

    def __init__(self, hass: HomeAssistant) -> None:
        self._registry = er.async_get(hass)
        self.by_platform: dict[str, int] = {}
        for event_type in (EVENT_STATE_CHANGED, EVENT_STATE_REPORTED):
            hass.bus.async_listen(event_type, self._count, self._counted)

    @callback
    def _counted(self, data: Any) -> bool:
        return True  # all: state_reported is listened to only with a filter

    @callback
    def _count(self, event: Event[Any]) -> None:
        entry = self._registry.async_get(event.data["entity_id"])
        platform = entry.platform if entry else "other"
        self.by_platform[platform] = self.by_platform.get(platform, 0) + 1


def _report(
    title: str, results: dict[str, list[float]], writes: dict[str, float]
) -> None:
    rounds = len(results["bare"])
    print(
        f"\n{title}: {rounds} rounds, 20-word answers from a fake that answers at once"
    )
    print(
        f"{'way':<8}{'median':>11}{'- bare':>11}{'- core':>11}{'/ core':>9}{'writes':>9}"
    )
    for name, times in results.items():
        minus_bare = statistics.median(
            own - base for own, base in zip(times, results["bare"], strict=True)
        )
        minus_core = statistics.median(
            own - base for own, base in zip(times, results["core"], strict=True)
        )
        ratio = statistics.median(
            own / base for own, base in zip(times, results["core"], strict=True)
        )
        shown = f"{writes[name]:9.1f}" if name in writes else f"{'':9}"
        print(
            f"{name:<8}{statistics.median(times) * 1000:8.2f} ms"
            f"{minus_bare * 1000:+8.2f} ms{minus_core * 1000:+8.2f} ms"
            f"{ratio:8.2f}x{shown}"
        )
    own = statistics.median(
        own - base
        for own, base in zip(results["router"], results["session"], strict=True)
    )
    print(
        f"router - session (its own cost over the client it uses): {own * 1000:+.2f} ms"
    )


async def test_turn_cost(
    hass: HomeAssistant, enable_custom_integrations: None, socket_enabled: None
) -> None:
    """Not a test: the bench, run by pytest for its Home Assistant."""
    rounds = int(os.environ.get(ROUNDS_VARIABLE, "200"))
    gap = float(os.environ.get(GAP_VARIABLE, "0"))
    loop = asyncio.get_running_loop()
    # The harness runs asyncio in debug mode, a cost Home Assistant has not.
    loop.set_debug(False)
    logging.disable(logging.INFO)  # a line per request would be timed too
    await async_setup_component(hass, "homeassistant", {})
    await async_setup_component(hass, "conversation", {})
    await async_setup_component(hass, "intent", {})
    async with FakeOllama() as fake:
        fake.default_reply = Reply(text=" ".join(["word"] * 20))
        await _setup(hass, _core_entry(fake.url))
        for api in (False, True):
            await _setup(hass, _router_entry(fake.url, api=api))
        # The client as core uses it, and as LLM Router does: over the session.
        bare_client = ollama.AsyncClient(host=fake.url)
        session_client = ollama.AsyncClient(
            host=fake.url,
            transport=SessionTransport(
                async_get_clientsession(hass), verify=True, connect_timeout=3
            ),
        )
        writes = _Writes(hass)

        def stream(client: ollama.AsyncClient) -> Timed:
            async def turn() -> float:
                started = time.perf_counter()
                messages = [{"role": "user", "content": QUESTION}]
                async for _part in await client.chat(MODEL, messages, stream=True):
                    pass
                return time.perf_counter() - started

            return turn

        def converse(agent_id: str) -> Timed:
            async def turn() -> float:
                started = time.perf_counter()
                result = await conversation.async_converse(
                    hass, QUESTION, None, Context(), agent_id=agent_id
                )
                elapsed = time.perf_counter() - started
                assert result.response.speech["plain"]["speech"].startswith("word")
                return elapsed

            return turn

        for api in (False, True):
            name = "assist" if api else "plain"
            ways: dict[str, Timed] = {
                "bare": stream(bare_client),
                "session": stream(session_client),
                "core": converse(_agent(hass, "ollama", f"core_{name}")),
                "router": converse(_agent(hass, DOMAIN, f"router_{name}_conversation")),
            }
            for way in ways.values():  # connections and caches, paid by nobody
                for _ in range(10):
                    await way()
            results: dict[str, list[float]] = {name: [] for name in ways}
            platforms = {"core": "ollama", "router": DOMAIN}
            written_before = {
                way: writes.by_platform.get(platform, 0)
                for way, platform in platforms.items()
            }
            order = list(ways)
            for index in range(rounds):
                if gap:
                    await asyncio.sleep(gap)
                shift = index % len(order)
                for way_name in order[shift:] + order[:shift]:
                    results[way_name].append(await ways[way_name]())
                    await hass.async_block_till_done()
            # The sensors' updates due at the end of their second, counted too.
            await asyncio.sleep(UPDATE_INTERVAL)
            await hass.async_block_till_done()
            write_counts = {
                way: writes.by_platform.get(platform, 0) - written_before[way]
                for way, platform in platforms.items()
            }
            _report(
                "Assist API" if api else "no LLM API",
                results,
                {way: count / rounds for way, count in write_counts.items()},
            )
        for client in (bare_client, session_client):
            await client.close()  # type: ignore[no-untyped-call]
        for entry in hass.config_entries.async_entries():
            await hass.config_entries.async_unload(entry.entry_id)
        await hass.async_block_till_done()
