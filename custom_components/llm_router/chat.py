"""Running a ChatLog through the router: history, tools, streaming."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
import json
from typing import Any

from homeassistant.components import conversation
from homeassistant.const import CONF_LLM_HASS_API
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import llm
from homeassistant.helpers.translation import async_get_translations
import probatio

from .const import CONF_MAX_HISTORY, CONF_PROMPT, DOMAIN, LOGGER, MAX_TOOL_ITERATIONS
from .engine.models import (
    ChatMessage,
    ChatRequest,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
)
from .engine.outcomes import AllBackendsFailed, Attempt, Interrupted
from .engine.router import Router
from .engine.turn import Turn
from .runtime import LLMRouterConfigEntry


@dataclass(frozen=True, slots=True)
class FailureNote:
    """Marks a chat log answer that holds a failure sentence of ours.

    The sentence was said to the user; the model is never shown it as its
    own words (see _message).
    """

    sentence: str


# What the model sees in place of an answer that was only a failure sentence;
# a message is kept so that user and assistant turns still alternate.
UNANSWERED = "(no answer)"


@dataclass
class ChatReport:
    """How a chat log was answered: the router's turns, first to last."""

    turns: list[Turn] = field(default_factory=list)
    answer: str = ""
    """The text the answer ended with."""

    @property
    def attempts(self) -> list[Attempt]:
        """Every attempt of every model call."""
        return [attempt for turn in self.turns for attempt in turn.attempts]

    @property
    def served_by(self) -> str | None:
        """The backend that gave the final answer."""
        return self.turns[-1].served_by if self.turns else None

    @property
    def fell_back(self) -> bool:
        """Whether any model call was served by other than its first choice."""
        return any(turn.fell_back for turn in self.turns)


def json_schema(
    schema: probatio.Schema, serializer: Callable[[Any], Any] | None
) -> dict[str, Any]:
    """A Home Assistant schema as the JSON schema model servers take."""
    converted: dict[str, Any] = probatio.to_openapi(
        schema, custom_serializer=serializer, openapi_version="3.1.0"
    )
    return converted


def _tool_spec(tool: llm.Tool, api: llm.APIInstance) -> ToolSpec:
    return ToolSpec(
        name=tool.name,
        description=tool.description,
        parameters=json_schema(tool.parameters, api.custom_serializer),
    )


def _message(content: conversation.Content) -> ChatMessage:
    """The engine's form of one chat log entry."""
    match content:
        case conversation.SystemContent() | conversation.UserContent():
            return ChatMessage(content.role, content.content)
        case conversation.AssistantContent():
            text = content.content or ""
            if isinstance(content.native, FailureNote):
                text = text.replace(content.native.sentence, "").strip()
                text = text or ("" if content.tool_calls else UNANSWERED)
            return ChatMessage(
                "assistant",
                text,
                tool_calls=tuple(
                    ToolCall(call.id, call.tool_name, call.tool_args)
                    for call in content.tool_calls or ()
                ),
            )
        case conversation.ToolResultContent():
            return ChatMessage(
                "tool",
                json.dumps(
                    {"data": content.result.data, "error": content.result.error}
                ),
                tool_call_id=content.tool_call_id,
                tool_name=content.tool_name,
            )


def trim_history(messages: list[ChatMessage], max_history: int) -> list[ChatMessage]:
    """Keep the system prompt and the last max_history user turns (0: all)."""
    user_indexes = [i for i, m in enumerate(messages) if m.role == "user"]
    if max_history <= 0 or len(user_indexes) <= max_history:
        return messages
    start = user_indexes[-max_history]
    system = [m for m in messages[:start] if m.role == "system"][:1]
    return system + messages[start:]


async def async_sentence(
    hass: HomeAssistant, language: str, error: HomeAssistantError
) -> str:
    """A translated error as a sentence to say, in the user's language."""
    translations = await async_get_translations(hass, language, "exceptions", {DOMAIN})
    key = f"component.{DOMAIN}.exceptions.{error.translation_key}.message"
    sentence = translations.get(key, str(error))
    with suppress(KeyError):
        sentence = sentence.format(**(error.translation_placeholders or {}))
    return sentence


def failure_reasons(error: AllBackendsFailed) -> str:
    """Each backend and why it did not answer: "Pi (connection refused)"."""
    return ", ".join(f"{a.backend} ({a.error})" for a in error.attempts)


def backends_failed_error(error: AllBackendsFailed) -> HomeAssistantError:
    """The error an action or task raises when no backend answered.

    It names the technical reasons; what is spoken does not.
    """
    return HomeAssistantError(
        translation_domain=DOMAIN,
        translation_key="all_backends_failed",
        translation_placeholders={"reasons": failure_reasons(error)},
    )


async def async_end_turn_with_failure(
    chat_log: conversation.ChatLog,
    agent_id: str,
    language: str,
    error: AllBackendsFailed,
) -> str:
    """End the turn with one short sentence that says no backend answered."""
    LOGGER.warning("No backend answered: %s", error)
    spoken = (
        HomeAssistantError(translation_domain=DOMAIN, translation_key="no_answer")
        if error.attempts
        else HomeAssistantError(
            translation_domain=DOMAIN, translation_key="no_backends"
        )
    )
    return await async_end_turn_with_note(chat_log, agent_id, language, spoken)


async def async_end_turn_with_note(
    chat_log: conversation.ChatLog,
    agent_id: str,
    language: str,
    error: HomeAssistantError,
) -> str:
    """End the turn with an error's sentence, kept from the model later."""
    sentence = await async_sentence(chat_log.hass, language, error)
    chat_log.async_add_assistant_content_without_tools(
        conversation.AssistantContent(agent_id, sentence, native=FailureNote(sentence))
    )
    return sentence


async def _deltas(
    hass: HomeAssistant, language: str, turn: Turn
) -> AsyncIterator[conversation.AssistantContentDeltaDict]:
    """The router's events as ChatLog deltas: one assistant message."""
    yield {"role": "assistant"}
    async for event in turn:
        match event:
            case TextDelta():
                yield {"content": event.text}
            case ReasoningDelta():
                yield {"thinking_content": event.text}
            case ToolCallDelta():
                yield {
                    "tool_calls": [
                        llm.ToolInput(
                            id=call.id,
                            tool_name=call.name,
                            tool_args=dict(call.arguments),
                        )
                        for call in event.calls
                    ]
                }
            case Interrupted():
                LOGGER.warning(
                    "Backend %s stopped mid-answer: %s", event.backend, event.error
                )
                sentence = await async_sentence(
                    hass,
                    language,
                    HomeAssistantError(
                        translation_domain=DOMAIN,
                        translation_key="stopped_answering",
                        translation_placeholders={"backend": event.backend},
                    ),
                )
                yield {"content": f" {sentence}", "native": FailureNote(sentence)}


async def async_run_chat_log(
    router: Router,
    chat_log: conversation.ChatLog,
    agent_id: str,
    options: Mapping[str, Any],
    *,
    language: str,
    backend: str | None = None,
    think: bool | None = None,
    response_schema: Mapping[str, Any] | None = None,
    spoken: bool = True,
) -> ChatReport:
    """Answer the chat log, running tool calls, until the model is done.

    Sentences of ours (a backend stopped, too many tool calls) are in
    language. spoken=False where nobody hears the answer as it streams (AI
    Task, actions): an answer that breaks off is retried on the next backend.
    Raises AllBackendsFailed when no backend answered a model call.
    """
    api = chat_log.llm_api
    tools = tuple(_tool_spec(tool, api) for tool in api.tools) if api else ()
    max_history = int(options.get(CONF_MAX_HISTORY, 0))
    report = ChatReport()
    for _ in range(MAX_TOOL_ITERATIONS):
        messages = trim_history([_message(c) for c in chat_log.content], max_history)
        request = ChatRequest(
            messages=tuple(messages),
            tools=tools,
            think=think,
            response_schema=response_schema,
        )
        turn = router.route(request, backend=backend, spoken=spoken)
        report.turns.append(turn)
        async for content in chat_log.async_add_delta_content_stream(
            agent_id, _deltas(chat_log.hass, language, turn)
        ):
            if isinstance(content, conversation.AssistantContent):
                report.answer = content.content or ""
        if not chat_log.unresponded_tool_results:
            return report
    LOGGER.warning(
        "The model kept calling tools; stopped after %s calls", MAX_TOOL_ITERATIONS
    )
    report.answer = await async_end_turn_with_note(
        chat_log,
        agent_id,
        language,
        HomeAssistantError(
            translation_domain=DOMAIN, translation_key="tool_loop_limit"
        ),
    )
    return report


async def async_answer(
    entry: LLMRouterConfigEntry,
    user_input: conversation.ConversationInput,
    chat_log: conversation.ChatLog,
    agent_id: str,
    *,
    backend: str | None = None,
    think: bool | None = None,
    spoken: bool = True,
) -> ChatReport:
    """Answer a user's input with the router's prompt and LLM API.

    Raises ConverseError for a broken prompt and AllBackendsFailed when no
    backend answered.
    """
    options = entry.options
    await chat_log.async_provide_llm_data(
        user_input.as_llm_context(DOMAIN),
        options.get(CONF_LLM_HASS_API) or None,
        options.get(CONF_PROMPT),
        user_input.extra_system_prompt,
    )
    report = await async_run_chat_log(
        entry.runtime_data.router,
        chat_log,
        agent_id,
        options,
        language=user_input.language,
        backend=backend,
        think=think,
        spoken=spoken,
    )
    entry.runtime_data.async_record(report.served_by, fell_back=report.fell_back)
    return report
