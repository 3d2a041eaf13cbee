"""Knowledge that goes stale: model capabilities, a rejected API key."""

from __future__ import annotations

from homeassistant.components import conversation
from homeassistant.core import Context, HomeAssistant
from homeassistant.helpers import llm
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
