"""The conversation agent, end to end against loopback protocol fakes."""

from __future__ import annotations

from datetime import timedelta
import math
from typing import Any

from homeassistant.components import conversation
from homeassistant.core import Context, HomeAssistant
from homeassistant.helpers import chat_session, intent, llm
from homeassistant.util import dt as dt_util
import probatio
import pytest
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_time_changed,
)

from custom_components.llm_router.engine.breaker import BreakerState
from tests.conftest import backend, router_entry, setup_router, until
from tests.fakes.base import Reply, closed_port_url
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI

AGENT = "conversation.llm_router"


async def ask(
    hass: HomeAssistant, text: str, conversation_id: str | None = None
) -> Any:
    return await conversation.async_converse(
        hass, text, conversation_id, Context(), agent_id=AGENT
    )


def speech(result: Any) -> str:
    return str(result.response.speech["plain"]["speech"])


def gpu(url: str, **extra: Any) -> dict[str, Any]:
    return backend("GPU server", "openai", url, "fake-model", 1, **extra)


def pi(url: str, **extra: Any) -> dict[str, Any]:
    return backend("Pi", "ollama", url, extra.pop("model", "llama3.2"), 2, **extra)


def breaker(entry: MockConfigEntry, name: str) -> BreakerState:
    return entry.runtime_data.router.states[name].breaker.state  # type: ignore[no-any-return]


async def test_refused_gpu_falls_back_to_pi_in_same_turn(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    entry = await setup_router(
        hass, router_entry(gpu(closed_port_url()), pi(ollama.url))
    )
    ollama.script(Reply(text="The kitchen light is on."))
    result = await ask(hass, "Is the kitchen light on?")
    assert speech(result) == "The kitchen light is on."
    assert result.response.response_type is intent.IntentResponseType.ACTION_DONE
    assert breaker(entry, "GPU server") is BreakerState.OPEN
    assert ollama.chat_bodies[0]["messages"][-1] == {
        "role": "user",
        "content": "Is the kitchen light on?",
    }


async def test_dead_backend_is_skipped_next_turn(
    hass: HomeAssistant, ollama: FakeOllama, openai: FakeOpenAI
) -> None:
    await setup_router(hass, router_entry(gpu(openai.url), pi(ollama.url)))
    await openai.stop()  # the GPU box is switched off
    await ask(hass, "Hello")
    ollama_requests = len(ollama.chat_bodies)
    await openai.start(openai.port)  # back, but the breaker is open
    result = await ask(hass, "Hello again")
    assert speech(result) == "Hello from the fake."
    assert openai.chat_bodies == []
    assert len(ollama.chat_bodies) == ollama_requests + 1


async def test_silent_gpu_past_first_token_deadline(
    hass: HomeAssistant, ollama: FakeOllama, openai: FakeOpenAI
) -> None:
    entry = await setup_router(
        hass, router_entry(gpu(openai.url, first_token_timeout=0.2), pi(ollama.url))
    )
    silent = Reply(stall_before_first=math.inf)
    openai.script(silent, silent, silent)
    for turn in range(3):
        assert speech(await ask(hass, f"Turn {turn}")) == "Hello from the fake."
    assert len(openai.chat_bodies) == 3
    # Three misses in a row: the GPU server is now skipped at once.
    assert breaker(entry, "GPU server") is BreakerState.OPEN
    await ask(hass, "Turn 4")
    assert len(openai.chat_bodies) == 3


async def test_backend_recovers_after_probe(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    gpu_server = FakeOpenAI()
    url = closed_port_url()
    entry = await setup_router(hass, router_entry(gpu(url), pi(ollama.url)))
    await ask(hass, "Hello")
    assert breaker(entry, "GPU server") is BreakerState.OPEN
    await gpu_server.start(int(url.rsplit(":", 1)[1]))
    try:
        gpu_server.script(Reply(text="GPU here."))
        async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=31))
        await until(lambda: breaker(entry, "GPU server") is BreakerState.CLOSED)
        assert speech(await ask(hass, "Hello")) == "GPU here."
    finally:
        await gpu_server.stop()


async def test_every_backend_down_gives_one_clear_sentence(hass: HomeAssistant) -> None:
    await setup_router(
        hass, router_entry(gpu(closed_port_url()), pi(closed_port_url()))
    )
    result = await ask(hass, "Hello")
    assert result.response.response_type is intent.IntentResponseType.ERROR
    assert speech(result) == "Sorry, none of the language model servers answered."


async def test_router_without_backends(hass: HomeAssistant) -> None:
    await setup_router(hass, router_entry())
    result = await ask(hass, "Hello")
    assert speech(result) == "This router has no backends; add one in its settings."


@pytest.mark.parametrize(
    ("kind", "reply", "extra"),
    [
        ("ollama_thinking_field", Reply(thinking="Lamp status?", text="It is on."), {}),
        (
            "ollama_inline",
            Reply(thinking="Lamp status?", inline_think=True, text="It is on."),
            {},
        ),
        (
            "openai_reasoning_content",
            Reply(thinking="Lamp status?", text="It is on."),
            {},
        ),
        ("openai_reasoning", Reply(thinking="Lamp status?", text="It is on."), {}),
        (
            "openai_no_opening_tag",
            Reply(thinking="Lamp status?", inline_think="open", text="It is on."),
            {"thinking": "on"},
        ),
    ],
)
async def test_reasoning_is_never_spoken(
    hass: HomeAssistant, kind: str, reply: Reply, extra: dict[str, Any]
) -> None:
    if kind.startswith("ollama"):
        server: FakeOllama | FakeOpenAI = FakeOllama()
        data = pi(
            "",
            model="qwen3",
            thinking="on" if kind == "ollama_thinking_field" else "off",
        )
    else:
        field = "reasoning" if kind == "openai_reasoning" else "reasoning_content"
        server = FakeOpenAI(reasoning_field=field)
        data = gpu("", **extra)
    async with server:
        data["url"] = server.url
        server.script(reply)
        await setup_router(hass, router_entry(data))
        result = await ask(hass, "Is the lamp on?")
    assert speech(result) == "It is on."
    chat = _last_assistant(hass, result.conversation_id)
    assert chat.thinking_content == "Lamp status?"


def _last_assistant(
    hass: HomeAssistant, conversation_id: str
) -> conversation.AssistantContent:

    with (
        chat_session.async_get_chat_session(hass, conversation_id) as session,
        conversation.async_get_chat_log(hass, session) as chat_log,
    ):
        content = chat_log.content[-1]
    assert isinstance(content, conversation.AssistantContent)
    return content


async def test_malformed_chunk_before_answer_falls_back(
    hass: HomeAssistant, ollama: FakeOllama, openai: FakeOpenAI
) -> None:
    await setup_router(hass, router_entry(gpu(openai.url), pi(ollama.url)))
    openai.script(Reply(malformed_after_chunks=0))
    assert speech(await ask(hass, "Hello")) == "Hello from the fake."
    assert len(openai.chat_bodies) == 1


async def test_drop_mid_answer_ends_with_what_was_said(
    hass: HomeAssistant, ollama: FakeOllama, openai: FakeOpenAI
) -> None:
    entry = await setup_router(hass, router_entry(gpu(openai.url), pi(ollama.url)))
    openai.script(
        Reply(text="The lamp is on and the door is locked.", drop_after_chunks=3)
    )
    result = await ask(hass, "Status?")
    assert speech(result) == "The lamp is (GPU server stopped answering.)"
    assert ollama.chat_bodies == []
    assert entry.runtime_data.router.states["GPU server"].failures == 1


class LampTool(llm.Tool):
    """A tool that records its calls.

    Named like Home Assistant's own tools, which carry their domain.
    """

    name = "intent__HassTurnOn"
    description = "Turn on the lamp in a room"
    parameters = probatio.Schema({probatio.Required("room"): str})

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def async_call(
        self,
        hass: HomeAssistant,
        tool_input: llm.ToolInput,
        llm_context: llm.LLMContext,
    ) -> llm.ToolResult:
        self.calls.append(tool_input.tool_args)
        return llm.ToolResult({"success": True})


class LampAPI(llm.API):
    """An LLM API with one tool."""

    def __init__(self, hass: HomeAssistant, tool: LampTool) -> None:
        super().__init__(hass=hass, id="lamp", name="Lamp")
        self.tool = tool

    async def async_get_api_instance(
        self, llm_context: llm.LLMContext
    ) -> llm.APIInstance:
        return llm.APIInstance(
            api=self,
            api_prompt="Use the lamp tool.",
            llm_context=llm_context,
            tools=[self.tool],
        )


@pytest.fixture
def lamp(hass: HomeAssistant) -> LampTool:
    tool = LampTool()
    llm.async_register_api(hass, LampAPI(hass, tool))
    return tool


async def test_tool_call_loop(
    hass: HomeAssistant, ollama: FakeOllama, lamp: LampTool
) -> None:
    await setup_router(hass, router_entry(pi(ollama.url), llm_api=["lamp"]))
    ollama.script(
        Reply(
            text="",
            tool_calls=[
                {"name": "intent__HassTurnOn", "arguments": {"room": "kitchen"}}
            ],
        ),
        Reply(text="The kitchen lamp is on."),
    )
    result = await ask(hass, "Turn on the kitchen lamp")
    assert speech(result) == "The kitchen lamp is on."
    assert lamp.calls == [{"room": "kitchen"}]
    first, second = ollama.chat_bodies
    assert [t["function"]["name"] for t in first["tools"]] == ["intent__HassTurnOn"]
    assert second["messages"][-1]["role"] == "tool"
    assert "success" in second["messages"][-1]["content"]


async def test_tool_loop_is_bounded(
    hass: HomeAssistant, ollama: FakeOllama, lamp: LampTool
) -> None:
    await setup_router(hass, router_entry(pi(ollama.url), llm_api=["lamp"]))
    ollama.default_reply = Reply(
        text="",
        tool_calls=[{"name": "intent__HassTurnOn", "arguments": {"room": "hall"}}],
    )
    result = await ask(hass, "Turn on the lamp forever")
    assert (
        speech(result)
        == "I stopped because the model kept calling tools without answering."
    )
    assert len(lamp.calls) == 10


async def test_model_without_tools_is_asked_without_tools(
    hass: HomeAssistant, ollama: FakeOllama, lamp: LampTool
) -> None:
    await setup_router(
        hass, router_entry(pi(ollama.url, model="gemma2"), llm_api=["lamp"])
    )
    result = await ask(hass, "Turn on the lamp")
    assert speech(result) == "Hello from the fake."
    assert not ollama.chat_bodies[0].get("tools")


async def test_tool_traffic_reaches_a_model_without_tools_as_text(
    hass: HomeAssistant, openai: FakeOpenAI, ollama: FakeOllama, lamp: LampTool
) -> None:
    await setup_router(
        hass,
        router_entry(gpu(openai.url), pi(ollama.url, model="gemma2"), llm_api=["lamp"]),
    )
    openai.script(
        Reply(
            text="",
            tool_calls=[{"name": "intent__HassTurnOn", "arguments": {"room": "hall"}}],
        ),
        Reply(text="The hall lamp is on."),
        Reply(status=500, error="CUDA out of memory"),
    )
    first = await ask(hass, "Turn on the hall lamp")
    assert speech(first) == "The hall lamp is on."

    await ask(hass, "And now?", first.conversation_id)

    texts = [m["content"] for m in ollama.chat_bodies[-1]["messages"]]
    assert '[called intent__HassTurnOn({"room": "hall"})]' in "\n".join(texts)
    assert any(t.startswith("Result of intent__HassTurnOn: ") for t in texts)
    assert not ollama.chat_bodies[-1].get("tools")


async def test_server_refusing_tools_never_reaches_the_user(
    hass: HomeAssistant, lamp: LampTool
) -> None:
    async with FakeOpenAI(llama_cpp=True, jinja=False) as server:
        await setup_router(hass, router_entry(gpu(server.url), llm_api=["lamp"]))
        result = await ask(hass, "Turn on the lamp")
        assert speech(result) == "Hello from the fake."
        assert ["tools" in body for body in server.chat_bodies] == [True, False]


async def test_conversation_history_and_history_limit(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    await setup_router(hass, router_entry(pi(ollama.url), max_history=1))
    first = await ask(hass, "My name is Ada.")
    await ask(hass, "What is my name?", first.conversation_id)
    messages = ollama.chat_bodies[-1]["messages"]
    assert messages[0]["role"] == "system"
    assert [m["content"] for m in messages[1:]] == ["What is my name?"]
