"""Diagnostics: secrets redacted, health and outcomes included."""

from __future__ import annotations

import json

from homeassistant.components import conversation
from homeassistant.core import Context, HomeAssistant
from pytest_homeassistant_custom_component.components.diagnostics import (
    get_diagnostics_for_config_entry,
)
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator

from tests.conftest import backend, probe_backends, router_entry, setup_router
from tests.fakes.base import closed_port_url
from tests.fakes.ollama_server import FakeOllama


async def test_diagnostics(
    hass: HomeAssistant, hass_client: ClientSessionGenerator, ollama: FakeOllama
) -> None:
    entry = await setup_router(
        hass,
        router_entry(
            backend(
                "GPU server",
                "openai",
                closed_port_url(),
                "m",
                1,
                api_key="sk-secret-42",
            ),
            backend("Pi", "ollama", ollama.url, "llama3.2", 2),
        ),
    )
    await probe_backends(hass, entry)
    await conversation.async_converse(
        hass, "Hello", None, Context(), agent_id="conversation.llm_router"
    )
    diagnostics = await get_diagnostics_for_config_entry(hass, hass_client, entry)
    assert "sk-secret-42" not in json.dumps(diagnostics)
    gpu = diagnostics["backends"]["GPU server"]
    assert gpu["config"]["api_key"] == "**REDACTED**"
    assert gpu["health"]["online"] is False
    assert gpu["health"]["breaker"] == "open"
    assert gpu["health"]["last_error"]["kind"] == "unreachable"
    assert gpu["health"]["recent_attempts"][0]["error_kind"] == "circuit_open"
    # Skipped by the turn; probed by setup and by probe_backends.
    assert (gpu["health"]["skipped"], gpu["health"]["failed_probes"]) == (1, 2)
    pi = diagnostics["backends"]["Pi"]["health"]
    assert pi["online"] is True
    assert pi["requests"] == 1
    assert pi["capabilities"] == ["tools"]
    assert pi["last_stats"]["completion_tokens"] > 0
    served = pi["recent_attempts"][-1]
    assert served["decision"] == "fallback"
    assert served["forecast"]["queue"] == 0.0
    assert served["first_word"] > 0
    assert pi["time_to_first_word"] > 0
    assert pi["prediction"]["think"] is False
    assert pi["keeps_warm"] is False
    assert diagnostics["last_backend"] == "Pi"
    assert diagnostics["fallbacks"] == 1
    assert diagnostics["options"]["policy"] == "ordered"
