"""The ask and benchmark actions."""

from __future__ import annotations

from typing import Any

from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers import device_registry as dr, entity_registry as er
from homeassistant.setup import async_setup_component
import pytest

from custom_components.llm_router.const import DOMAIN
from tests.conftest import (
    backend,
    entities_updated,
    gpu_and_pi,
    router_entry,
    setup_router,
)
from tests.fakes.base import Reply, closed_port_url
from tests.fakes.ollama_server import FakeOllama


async def ask(hass: HomeAssistant, **data: Any) -> dict[str, Any]:
    response = await hass.services.async_call(
        "llm_router", "ask", data, blocking=True, return_response=True
    )
    assert response is not None
    return dict(response)


async def test_ask_reports_a_fallback_turn(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    await setup_router(hass, gpu_and_pi(ollama.url))
    ollama.script(
        Reply(
            text="The garage door is closed.",
            completion_tokens=93,
            generation_seconds=10.7,
            prompt_tokens=412,
            prompt_seconds=0.7,
        )
    )
    response = await ask(hass, text="Is the garage door closed?")
    assert response["response"] == "The garage door is closed."
    assert response["backend"] == "Pi"
    assert response["model"] == "llama3.2"
    assert response["fell_back"] is True
    assert [a["backend"] for a in response["attempts"]] == ["GPU server", "Pi"]
    assert response["attempts"][0]["outcome"] in ("unreachable", "circuit_open")
    served = response["attempts"][1]
    assert {k: served[k] for k in ("backend", "outcome", "error", "decision")} == {
        "backend": "Pi",
        "outcome": "ok",
        "error": None,
        "decision": "fallback",
    }
    assert served["predicted_first_word_ms"] > 0
    assert served["first_word_ms"] >= 0
    assert served["prediction"]["think"] is False
    # Rounded as the sensors show them; every key names its unit.
    assert response["generation_tokens_per_s"] == 8.7  # 93 / 10.7
    assert response["prompt_tokens_per_s"] == 588.6  # 412 / 0.7
    assert isinstance(response["time_to_first_token_ms"], int)
    assert response["time_to_first_token_ms"] >= 0
    assert isinstance(response["time_to_first_word_ms"], int)
    assert response["response_time_s"] >= 0
    assert response["response_time_s"] == round(response["response_time_s"], 2)
    assert response["completion_tokens"] == 93
    assert response["conversation_id"]
    assert hass.states.get("sensor.llm_router_fallbacks").state == "1"


async def test_ask_says_when_reasoning_was_stopped_and_asked_again(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    await setup_router(
        hass,
        router_entry(backend("Pi", "ollama", ollama.url, "qwen3", 1, thinking="on")),
    )
    thinking = " ".join(["step"] * 50)
    ollama.script(
        Reply(text="It is closed.", thinking=thinking, length_after=20),
        Reply(text="It is closed."),
    )
    response = await ask(hass, text="Is the garage door closed?")
    assert response["response"] == "It is closed."
    (served,) = response["attempts"]
    assert served["outcome"] == "ok"
    assert served["note"] == (
        "stopped at the token cap while reasoning, before any answer word; "
        "asked again without thinking"
    )


async def test_ask_continues_a_conversation(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    await setup_router(hass, gpu_and_pi(ollama.url))
    first = await ask(hass, text="My name is Ada.")
    await ask(hass, text="What is my name?", conversation_id=first["conversation_id"])
    contents = [m["content"] for m in ollama.chat_bodies[-1]["messages"]]
    assert "My name is Ada." in contents
    assert contents[-1] == "What is my name?"


async def test_ask_forced_backend_and_think(hass: HomeAssistant) -> None:
    async with FakeOllama() as pi:
        entry = router_entry(
            backend("Pi", "ollama", pi.url, "qwen3", 2),
            backend("Spare", "ollama", pi.url, "llama3.2", 1),
        )
        await setup_router(hass, entry)
        pi.script(Reply(thinking="Hmm.", text="Yes."))
        response = await ask(hass, text="Sure?", backend="Pi", think=True)
    assert response["response"] == "Yes."
    assert response["backend"] == "Pi"
    assert response["fell_back"] is False
    assert pi.chat_bodies[0]["think"] is True
    assert (
        pi.chat_bodies[0]["model"] == "qwen3:latest"
        or pi.chat_bodies[0]["model"] == "qwen3"
    )


def device_id(hass: HomeAssistant, entry_id: str, identifier: str) -> str:
    device = dr.async_get(hass).async_get_device_by_identifier(
        (DOMAIN, identifier), entry_id
    )
    assert device is not None
    return device.id


async def test_ask_backend_picked_by_device(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    """The action's form picks a backend's device; it names the router too."""
    await setup_router(hass, gpu_and_pi(ollama.url))
    other = router_entry(
        backend("Spare", "ollama", ollama.url, "llama3.2", 1), entry_id="second"
    )
    await setup_router(hass, other)
    response = await ask(hass, text="Hi", backend=device_id(hass, "router", "pi"))
    assert (response["backend"], response["fell_back"]) == ("Pi", False)
    response = await ask(
        hass,
        text="Hi",
        backend=device_id(hass, "second", "second_spare"),
        config_entry_id="second",
    )
    assert response["backend"] == "Spare"


@pytest.mark.parametrize(
    ("device", "data"),
    [
        # The router's own device is no backend.
        (("router", "router"), {"config_entry_id": "router"}),
        # A backend of another router than the one named.
        (("second", "second_spare"), {"config_entry_id": "router"}),
    ],
)
async def test_ask_device_that_is_not_the_routers_backend(
    hass: HomeAssistant,
    ollama: FakeOllama,
    device: tuple[str, str],
    data: dict[str, Any],
) -> None:
    await setup_router(hass, gpu_and_pi(ollama.url))
    other = router_entry(
        backend("Spare", "ollama", ollama.url, "llama3.2", 1), entry_id="second"
    )
    await setup_router(hass, other)
    with pytest.raises(ServiceValidationError) as caught:
        await ask(hass, text="Hi", backend=device_id(hass, *device), **data)
    assert caught.value.translation_key == "unknown_backend"
    assert ollama.chat_bodies == []


async def test_ask_every_backend_down(hass: HomeAssistant) -> None:
    await setup_router(hass, gpu_and_pi(closed_port_url()))
    with pytest.raises(HomeAssistantError, match="None of the language model servers"):
        await ask(hass, text="Hello")


async def test_ask_broken_prompt(hass: HomeAssistant, ollama: FakeOllama) -> None:
    entry = router_entry(
        backend("Pi", "ollama", ollama.url, "llama3.2", 1), prompt="{{ x"
    )
    await setup_router(hass, entry)
    with pytest.raises(HomeAssistantError) as caught:
        await ask(hass, text="Hello")
    assert caught.value.translation_key == "prompt_failed"
    assert ollama.chat_bodies == []


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"text": "   "}, "empty_text"),
        ({"text": "Hi", "backend": "Mac"}, "unknown_backend"),
        ({"text": "Hi", "config_entry_id": "nope"}, "unknown_router"),
    ],
)
async def test_ask_bad_input(
    hass: HomeAssistant, ollama: FakeOllama, data: dict[str, Any], key: str
) -> None:
    await setup_router(hass, gpu_and_pi(ollama.url))
    with pytest.raises(ServiceValidationError) as caught:
        await ask(hass, **data)
    assert caught.value.translation_key == key
    assert ollama.chat_bodies == []


async def test_ask_needs_router_when_there_are_several(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    await setup_router(hass, gpu_and_pi(ollama.url))
    other = router_entry(
        backend("Pi", "ollama", ollama.url, "llama3.2", 1), entry_id="second"
    )
    await setup_router(hass, other)
    with pytest.raises(ServiceValidationError) as caught:
        await ask(hass, text="Hi")
    assert caught.value.translation_key == "router_required"
    response = await ask(hass, text="Hi", config_entry_id="second")
    assert response["backend"] == "Pi"


async def test_ask_unloaded_router(hass: HomeAssistant, ollama: FakeOllama) -> None:
    entry = await setup_router(hass, gpu_and_pi(ollama.url))
    await hass.config_entries.async_unload(entry.entry_id)
    with pytest.raises(ServiceValidationError) as caught:
        await ask(hass, text="Hi", config_entry_id=entry.entry_id)
    assert caught.value.translation_key == "router_not_loaded"


async def test_ask_when_the_only_router_is_not_loaded(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    entry = await setup_router(hass, gpu_and_pi(ollama.url))
    await hass.config_entries.async_unload(entry.entry_id)
    with pytest.raises(ServiceValidationError) as caught:
        await ask(hass, text="Hi")
    assert caught.value.translation_key == "no_router_loaded"
    assert caught.value.translation_placeholders == {"routers": "LLM Router"}


async def test_ask_without_any_router(hass: HomeAssistant) -> None:
    assert await async_setup_component(hass, "homeassistant", {})
    assert await async_setup_component(hass, "llm_router", {})
    with pytest.raises(ServiceValidationError) as caught:
        await ask(hass, text="Hi")
    assert caught.value.translation_key == "no_routers"


async def test_ask_after_the_agent_entity_was_deleted(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    await setup_router(hass, gpu_and_pi(ollama.url))
    er.async_get(hass).async_remove("conversation.llm_router")
    with pytest.raises(HomeAssistantError) as caught:
        await ask(hass, text="Hi")
    assert caught.value.translation_key == "agent_missing"
    assert ollama.chat_bodies == []


async def test_benchmark_all_backends(hass: HomeAssistant, ollama: FakeOllama) -> None:
    await setup_router(hass, gpu_and_pi(ollama.url))
    ollama.script(
        Reply(text="One, two, three.", completion_tokens=50, generation_seconds=5.0)
    )
    response = await hass.services.async_call(
        "llm_router", "benchmark", {}, blocking=True, return_response=True
    )
    await entities_updated(hass)
    assert response is not None
    results = response["backends"]
    assert results["GPU server"]["ok"] is False
    assert results["GPU server"]["error"]
    assert results["Pi"]["ok"] is True
    assert results["Pi"]["generation_tokens_per_s"] == 10.0
    assert ollama.chat_bodies[0]["messages"][-1]["content"].startswith("Count from one")
    assert float(hass.states.get("sensor.pi_generation_speed").state) == pytest.approx(
        10.0
    )


@pytest.mark.parametrize("picked", ["name", "device"])
async def test_benchmark_one_backend(
    hass: HomeAssistant, ollama: FakeOllama, picked: str
) -> None:
    """A backend by name (YAML) or by its device (the action's form)."""
    await setup_router(hass, gpu_and_pi(ollama.url))
    backend = "Pi" if picked == "name" else device_id(hass, "router", "pi")
    response = await hass.services.async_call(
        "llm_router",
        "benchmark",
        {"backend": backend},
        blocking=True,
        return_response=True,
    )
    assert response is not None
    assert list(response["backends"]) == ["Pi"]


async def test_ask_without_response_variable(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    """A script may just want the agent to act, ignoring the answer."""
    await setup_router(hass, gpu_and_pi(ollama.url))
    await hass.services.async_call(
        "llm_router", "ask", {"text": "Lights off"}, blocking=True
    )
    assert ollama.chat_bodies[-1]["messages"][-1]["content"] == "Lights off"


async def test_benchmark_without_response_updates_sensors(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    await setup_router(hass, gpu_and_pi(ollama.url))
    ollama.script(Reply(text="One, two.", completion_tokens=21, generation_seconds=3.0))
    await hass.services.async_call(
        "llm_router", "benchmark", {"backend": "Pi"}, blocking=True
    )
    await entities_updated(hass)
    assert float(hass.states.get("sensor.pi_generation_speed").state) == pytest.approx(
        7.0
    )


async def test_ask_retries_an_answer_that_broke_off(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    async with FakeOllama() as gpu:
        await setup_router(hass, gpu_and_pi(ollama.url, gpu.url, gpu_kind="ollama"))
        gpu.script(Reply(text="The garage door is", drop_after_chunks=2))
        ollama.script(Reply(text="The garage door is closed."))
        response = await ask(hass, text="Is the garage door closed?")
    assert response["response"] == "The garage door is closed."
    assert [(a["backend"], a["outcome"]) for a in response["attempts"]] == [
        ("GPU server", "bad_response"),
        ("Pi", "ok"),
    ]
