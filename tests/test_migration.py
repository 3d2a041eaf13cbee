"""Entries stored by older versions load, brought up to date."""

from __future__ import annotations

from typing import Any

from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.setup import async_setup_component
import pytest

from custom_components.llm_router.const import CONFIG_ENTRY_VERSION
from tests.conftest import backend, router_entry, setup_router
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI


def version_1(data: dict[str, Any], think: bool, think_auto: bool) -> dict[str, Any]:
    """Backend data as version 1 stored it: thinking as two switches."""
    data = {k: v for k, v in data.items() if k != "thinking"}
    return {**data, "think": think, "think_auto": think_auto}


@pytest.mark.parametrize(
    ("kind", "think", "think_auto", "thinking", "engine"),
    [
        ("ollama", False, False, "off", (False, False)),
        ("ollama", True, False, "on", (True, False)),
        # "Only when fast enough" decided whatever the other switch said.
        ("ollama", False, True, "auto", (False, True)),
        ("ollama", True, True, "auto", (False, True)),
        # Only Ollama can leave thinking out: elsewhere it meant thinking.
        ("openai", False, True, "on", (True, False)),
        ("openai", True, False, "on", (True, False)),
        ("openai", False, False, "off", (False, False)),
    ],
)
async def test_thinking_switches_become_one_choice(
    hass: HomeAssistant,
    ollama: FakeOllama,
    openai: FakeOpenAI,
    kind: str,
    think: bool,
    think_auto: bool,
    thinking: str,
    engine: tuple[bool, bool],
) -> None:
    url = ollama.url if kind == "ollama" else openai.url
    entry = await setup_router(
        hass,
        router_entry(
            version_1(backend("Pi", kind, url, "qwen3", 1), think, think_auto),
            version_1(
                backend("Spare", "ollama", ollama.url, "llama3.2", 2), True, False
            ),
            version=1,
        ),
    )
    assert entry.state is ConfigEntryState.LOADED
    assert (entry.version, entry.minor_version) == (CONFIG_ENTRY_VERSION, 1)
    pi = entry.subentries["pi"].data
    assert pi["thinking"] == thinking
    assert not {"think", "think_auto"} & pi.keys()
    # Nothing else changed.
    assert {k: v for k, v in pi.items() if k != "thinking"} == {
        k: v for k, v in backend("Pi", kind, url, "qwen3", 1).items() if k != "thinking"
    }
    assert entry.subentries["spare"].data["thinking"] == "on"
    config = entry.runtime_data.router.states["Pi"].config
    assert (config.think, config.think_auto) == engine


async def test_an_entry_from_a_newer_version_is_not_loaded(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    """Going back to an older LLM Router leaves the entry alone."""
    entry = router_entry(
        backend("Pi", "ollama", ollama.url, "llama3.2", 1),
        version=CONFIG_ENTRY_VERSION + 1,
    )
    await async_setup_component(hass, "homeassistant", {})
    entry.add_to_hass(hass)
    assert not await hass.config_entries.async_setup(entry.entry_id)
    assert entry.state is ConfigEntryState.MIGRATION_ERROR
    assert entry.subentries["pi"].data["thinking"] == "off"
