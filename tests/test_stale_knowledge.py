"""Knowledge that goes stale: model capabilities, a rejected API key."""

from __future__ import annotations

from typing import Any

from homeassistant.components import conversation
from homeassistant.config_entries import SOURCE_REAUTH
from homeassistant.core import Context, HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import issue_registry as ir, llm
import pytest

from tests.conftest import backend, probe_backends, router_entry, setup_router
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI
from tests.test_conversation import LampAPI, LampTool

AGENT = "conversation.llm_router"


@pytest.fixture(autouse=True)
def lamp(hass: HomeAssistant) -> None:
    llm.async_register_api(hass, LampAPI(hass, LampTool()))


async def ask(hass: HomeAssistant, text: str) -> None:
    await conversation.async_converse(hass, text, None, Context(), agent_id=AGENT)


async def test_pulled_model_with_tools_gets_tools_after_a_probe(
    hass: HomeAssistant,
) -> None:
    async with FakeOllama(models={"llama3.2": ("completion",)}) as pi:
        entry = await setup_router(
            hass,
            router_entry(
                backend("Pi", "ollama", pi.url, "llama3.2", 1), llm_api=["lamp"]
            ),
        )
        await ask(hass, "Turn on the lamp")
        assert not pi.chat_bodies[-1]["tools"]

        pi.models["llama3.2:latest"] = ("completion", "tools")  # ollama pull
        await probe_backends(hass, entry)
        await ask(hass, "Turn on the lamp")
    assert pi.chat_bodies[-1]["tools"]


async def test_server_restarted_with_tools_gets_tools_after_a_probe(
    hass: HomeAssistant,
) -> None:
    async with FakeOpenAI(llama_cpp=True, jinja=False) as gpu:
        entry = await setup_router(
            hass,
            router_entry(
                backend("GPU server", "openai", gpu.url, "fake-model", 1),
                llm_api=["lamp"],
            ),
        )
        await ask(hass, "Turn on the lamp")
        assert ["tools" in body for body in gpu.chat_bodies] == [True, False]

        gpu.jinja = True  # restarted with --jinja
        await probe_backends(hass, entry)
        await ask(hass, "Turn on the lamp")
    assert "tools" in gpu.chat_bodies[-1]


def reauth_flows(hass: HomeAssistant) -> list[Any]:
    return [
        flow
        for flow in hass.config_entries.flow.async_progress_by_handler("llm_router")
        if flow["context"]["source"] == SOURCE_REAUTH
    ]


async def test_rejected_key_holds_the_backend_out_and_asks_for_a_new_one(
    hass: HomeAssistant,
    ollama: FakeOllama,
    issue_registry: ir.IssueRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # llama.cpp answers /health and /v1/models without a key: only chat tells.
    async with FakeOpenAI(llama_cpp=True, api_key="right") as gpu:
        entry = await setup_router(
            hass,
            router_entry(
                backend(
                    "GPU server", "openai", gpu.url, "fake-model", 1, api_key="old"
                ),
                backend("Pi", "ollama", ollama.url, "llama3.2", 2),
            ),
        )
        await probe_backends(hass, entry)
        await ask(hass, "Hello")
        assert len(gpu.chat_bodies) == 1
        for _ in range(3):
            await probe_backends(hass, entry)
            assert hass.states.is_state("binary_sensor.gpu_server_connection", "off")
        await ask(hass, "Hello again")
        assert len(gpu.chat_bodies) == 1  # held out, not tried again
        assert caplog.text.count("Backend GPU server is unavailable") == 1
        assert "Backend GPU server is answering again" not in caplog.text

        (flow,) = reauth_flows(hass)
        form = await hass.config_entries.flow.async_configure(flow["flow_id"])
        assert form["step_id"] == "reauth_confirm"
        assert form["description_placeholders"]["backend"] == "GPU server"
        assert form["description_placeholders"]["url"] == gpu.url
        assert issue_registry.async_get_issue(
            "homeassistant", f"config_entry_reauth_llm_router_{entry.entry_id}"
        )

        result = await hass.config_entries.flow.async_configure(
            flow["flow_id"], {"api_key": "right"}
        )
        assert result["type"] is FlowResultType.ABORT
        assert result["reason"] == "reauth_successful"
        await hass.async_block_till_done()
        assert entry.subentries["gpu_server"].data["api_key"] == "right"
        await probe_backends(hass, entry)
        assert hass.states.is_state("binary_sensor.gpu_server_connection", "on")
        await ask(hass, "Hello at last")
        assert len(gpu.chat_bodies) == 2
    assert not issue_registry.async_get_issue(
        "homeassistant", f"config_entry_reauth_llm_router_{entry.entry_id}"
    )


async def test_reauth_tests_the_new_key(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    # A vLLM-like server: /v1/models needs the key, so the probe tells.
    async with FakeOpenAI(api_key="right") as gpu:
        entry = await setup_router(
            hass,
            router_entry(
                backend("GPU server", "openai", gpu.url, "fake-model", 1, api_key="old")
            ),
        )
        await probe_backends(hass, entry)
        assert hass.states.is_state("binary_sensor.gpu_server_connection", "off")
        (flow,) = reauth_flows(hass)
        result = await hass.config_entries.flow.async_configure(
            flow["flow_id"], {"api_key": "still-wrong"}
        )
        assert result["errors"] == {"base": "invalid_auth"}
        result = await hass.config_entries.flow.async_configure(
            flow["flow_id"], {"api_key": "right"}
        )
        assert result["reason"] == "reauth_successful"
        await hass.async_block_till_done()
        await probe_backends(hass, entry)
    assert entry.runtime_data.router.states["GPU server"].online is True


async def test_reauth_asks_only_for_the_key(hass: HomeAssistant) -> None:
    """A first-token timeout the router allows does not block a new key."""
    async with FakeOpenAI(api_key="right") as gpu:
        entry = await setup_router(
            hass,
            router_entry(
                backend(
                    "GPU server",
                    "openai",
                    gpu.url,
                    "fake-model",
                    1,
                    api_key="old",
                    first_token_timeout=300.0,
                ),
                turn_timeout=600.0,
            ),
        )
        await probe_backends(hass, entry)
        (flow,) = reauth_flows(hass)
        result = await hass.config_entries.flow.async_configure(
            flow["flow_id"], {"api_key": "right"}
        )
    assert result["reason"] == "reauth_successful"


async def test_a_health_check_asks_for_the_model_once(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    """Finding the model tells its capabilities: /api/show once per check."""
    entry = await setup_router(
        hass, router_entry(backend("Pi", "ollama", ollama.url, "llama3.2", 1))
    )
    before = len(ollama.requests)
    await probe_backends(hass, entry)
    shown = [r for r in ollama.requests[before:] if r["path"] == "/api/show"]
    assert len(shown) == 1
