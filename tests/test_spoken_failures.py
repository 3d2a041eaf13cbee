"""What is said when backends fail: short, in the user's language, not history."""

from __future__ import annotations

from homeassistant.components import conversation
from homeassistant.core import Context, HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import intent
import pytest

from tests.conftest import gpu_and_pi, setup_router
from tests.fakes.base import Reply, closed_port_url
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI

AGENT = "conversation.llm_router"
OUT_OF_MEMORY = Reply(status=500, error="CUDA out of memory")
NO_ANSWER = {
    "en": "Sorry, none of the language model servers answered.",
    "de": "Leider hat keiner der Sprachmodell-Server geantwortet.",
}


async def ask(
    hass: HomeAssistant,
    text: str,
    conversation_id: str | None = None,
    language: str | None = None,
) -> conversation.ConversationResult:
    return await conversation.async_converse(
        hass, text, conversation_id, Context(), language=language, agent_id=AGENT
    )


def speech(result: conversation.ConversationResult) -> str:
    return str(result.response.speech["plain"]["speech"])


@pytest.mark.parametrize("language", ["en", "de"])
async def test_no_answer_is_one_short_sentence_in_the_users_language(
    hass: HomeAssistant,
    openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    language: str,
) -> None:
    await setup_router(hass, gpu_and_pi(closed_port_url(), openai.url))
    openai.script(OUT_OF_MEMORY, OUT_OF_MEMORY)
    result = await ask(hass, "Hello", language=language)
    assert result.response.response_type is intent.IntentResponseType.ERROR
    assert speech(result) == NO_ANSWER[language]
    # The technical reasons are for the log.
    assert "CUDA out of memory" in caplog.text
    # Not "Pi (skipped, not answering)" either, now that its breaker is open.
    assert speech(await ask(hass, "Hello", language=language)) == NO_ANSWER[language]


async def test_stopped_mid_answer_in_the_users_language(
    hass: HomeAssistant, ollama: FakeOllama, openai: FakeOpenAI
) -> None:
    await setup_router(hass, gpu_and_pi(ollama.url, openai.url))
    openai.script(Reply(text="Die Lampe ist an.", drop_after_chunks=2))
    result = await ask(hass, "Status?", language="de")
    assert speech(result) == (
        "Die Lampe (GPU server hat mitten in der Antwort aufgehört.)"
    )


async def test_ask_action_keeps_the_technical_reasons(
    hass: HomeAssistant, openai: FakeOpenAI
) -> None:
    await setup_router(hass, gpu_and_pi(closed_port_url(), openai.url))
    openai.script(OUT_OF_MEMORY)
    with pytest.raises(HomeAssistantError) as caught:
        await hass.services.async_call(
            "llm_router", "ask", {"text": "Hi"}, blocking=True, return_response=True
        )
    assert caught.value.translation_key == "all_backends_failed"
    reasons = caught.value.translation_placeholders["reasons"]
    assert "GPU server (HTTP 500: CUDA out of memory)" in reasons
    assert "Pi (" in reasons


async def test_failure_sentences_are_not_the_models_words(
    hass: HomeAssistant, ollama: FakeOllama, openai: FakeOpenAI
) -> None:
    await setup_router(hass, gpu_and_pi(ollama.url, openai.url))
    openai.script(OUT_OF_MEMORY, Reply(text="The lamp is on.", drop_after_chunks=2))
    ollama.script(OUT_OF_MEMORY)
    first = await ask(hass, "Is the lamp on?")
    assert speech(first) == NO_ANSWER["en"]
    second = await ask(hass, "And now?", first.conversation_id)
    assert speech(second) == "The lamp (GPU server stopped answering.)"
    await ask(hass, "Hello?", first.conversation_id)

    messages = openai.chat_bodies[-1]["messages"]
    assert [(m["role"], m["content"]) for m in messages[1:]] == [
        ("user", "Is the lamp on?"),
        ("assistant", "(no answer)"),
        ("user", "And now?"),
        ("assistant", "The lamp"),
        ("user", "Hello?"),
    ]
