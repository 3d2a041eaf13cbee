"""Actions: ask the router from automations, and benchmark its backends."""

from __future__ import annotations

import inspect
import math
from typing import Any

from homeassistant.components import conversation
from homeassistant.config_entries import ConfigEntryState
from homeassistant.const import ATTR_CONFIG_ENTRY_ID
from homeassistant.core import (
    HomeAssistant,
    ServiceCall,
    ServiceResponse,
    SupportsResponse,
    callback,
)
from homeassistant.exceptions import ServiceValidationError
from homeassistant.helpers import (
    chat_session,
    config_validation as cv,
    entity_registry as er,
)
import probatio

from .chat import async_answer, backends_failed_error, end_turn_with_failure
from .const import DOMAIN
from .engine.models import ChatMessage, ChatRequest
from .engine.router import AllBackendsFailed, Attempt, Router
from .engine.stats import GenerationStats
from .runtime import LLMRouterConfigEntry

SERVICE_ASK = "ask"
SERVICE_BENCHMARK = "benchmark"
ATTR_TEXT = "text"
ATTR_CONVERSATION_ID = "conversation_id"
ATTR_BACKEND = "backend"
ATTR_THINK = "think"


def _session_context(call: ServiceCall) -> dict[str, Any]:
    """The caller's context, whose user owns the conversation (HA 2026.11+).

    Home Assistant 2026.10 takes no context here.
    """
    return {"context": call.context}


_SESSION_CONTEXT = (
    _session_context
    if "context" in inspect.signature(chat_session.async_get_chat_session).parameters
    else lambda call: {}
)

# Short and fixed, so runs compare; long enough to measure decoding.
BENCHMARK_PROMPT = "Count from one to twenty in words, separated by commas."

ASK_SCHEMA = probatio.Schema(
    {
        probatio.Required(ATTR_TEXT): cv.string,
        probatio.Optional(ATTR_CONFIG_ENTRY_ID): cv.string,
        probatio.Optional(ATTR_CONVERSATION_ID): cv.string,
        probatio.Optional(ATTR_BACKEND): cv.string,
        probatio.Optional(ATTR_THINK): cv.boolean,
    }
)
BENCHMARK_SCHEMA = probatio.Schema(
    {
        probatio.Optional(ATTR_CONFIG_ENTRY_ID): cv.string,
        probatio.Optional(ATTR_BACKEND): cv.string,
    }
)


def _router_entry(hass: HomeAssistant, call: ServiceCall) -> LLMRouterConfigEntry:
    """The router an action is for; it may be left out when there is one."""
    if entry_id := call.data.get(ATTR_CONFIG_ENTRY_ID):
        entry = hass.config_entries.async_get_entry(entry_id)
        if entry is None or entry.domain != DOMAIN:
            raise ServiceValidationError(
                translation_domain=DOMAIN,
                translation_key="unknown_router",
                translation_placeholders={"entry_id": entry_id},
            )
        if entry.state is not ConfigEntryState.LOADED:
            raise ServiceValidationError(
                translation_domain=DOMAIN,
                translation_key="router_not_loaded",
                translation_placeholders={"router": entry.title},
            )
        return entry
    entries = hass.config_entries.async_loaded_entries(DOMAIN)
    if len(entries) != 1:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="router_required",
            translation_placeholders={"count": str(len(entries))},
        )
    return entries[0]


def _backend(router: Router, call: ServiceCall) -> str | None:
    """The backend an action is forced to, checked."""
    name: str | None = call.data.get(ATTR_BACKEND)
    if name is not None and name not in router.states:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="unknown_backend",
            translation_placeholders={
                "backend": name,
                "backends": ", ".join(router.states),
            },
        )
    return name


def _stats_data(stats: GenerationStats | None) -> dict[str, Any]:
    """Stats as response data, in the sensors' units."""
    ttft = stats.time_to_first_token if stats else None
    return {
        "generation_speed": stats.generation_speed if stats else None,
        "prompt_speed": stats.prompt_speed if stats else None,
        "time_to_first_token": ttft * 1000 if ttft is not None else None,
        "response_time": stats.response_time if stats else None,
        "completion_tokens": stats.completion_tokens if stats else None,
    }


def _milliseconds(seconds: float | None) -> float | None:
    if seconds is None or not math.isfinite(seconds):
        return None
    return round(seconds * 1000, 1)


def attempt_data(attempt: Attempt) -> dict[str, Any]:
    """One attempt and why it was made: for responses and diagnostics.

    Times in ms: predicted is the forecast when it was tried (None: no time
    can be told, such as a wait behind requests of unknown length), actual
    is when its first answer word came; both from the attempt's start.
    """
    forecast = attempt.forecast
    return {
        "backend": attempt.backend,
        "outcome": attempt.error_kind or "ok",
        "error": attempt.error,
        "decision": attempt.decision,
        "predicted_first_word": _milliseconds(forecast.total) if forecast else None,
        "first_word": _milliseconds(attempt.first_word),
        "queued": _milliseconds(attempt.queued),
        "prediction": {
            part: _milliseconds(getattr(forecast, part))
            for part in ("queue", "load", "prompt", "reasoning", "network")
        }
        | {"think": forecast.think}
        if forecast
        else None,
    }


async def _async_ask(call: ServiceCall) -> ServiceResponse:
    """Ask the router; respond with the answer and how it was served."""
    hass = call.hass
    text = call.data[ATTR_TEXT].strip()
    if not text:
        raise ServiceValidationError(
            translation_domain=DOMAIN, translation_key="empty_text"
        )
    entry = _router_entry(hass, call)
    router = entry.runtime_data.router
    backend = _backend(router, call)
    agent_id = er.async_get(hass).async_get_entity_id(
        conversation.DOMAIN, DOMAIN, f"{entry.entry_id}_conversation"
    )
    assert agent_id is not None  # a loaded router has its agent
    user_input = conversation.ConversationInput(
        text=text,
        context=call.context,
        conversation_id=call.data.get(ATTR_CONVERSATION_ID),
        device_id=None,
        satellite_id=None,
        language=hass.config.language,
        agent_id=agent_id,
    )
    failed: conversation.ConverseError | AllBackendsFailed | None = None
    with (
        chat_session.async_get_chat_session(
            hass, user_input.conversation_id, **_SESSION_CONTEXT(call)
        ) as session,
        conversation.async_get_chat_log(hass, session, user_input) as chat_log,
    ):
        # Errors leave the chat log's turn only once it ended with what the
        # agent would say; an escaping error would add its own "Error: ...".
        try:
            report = await async_answer(
                entry,
                user_input,
                chat_log,
                agent_id,
                backend=backend,
                think=call.data.get(ATTR_THINK),
                spoken=False,
            )
        except conversation.ConverseError as err:
            failed = err
            chat_log.async_add_assistant_content_without_tools(
                conversation.AssistantContent(agent_id, str(err))
            )
        except AllBackendsFailed as err:
            failed = err
            end_turn_with_failure(chat_log, agent_id, err)
        result = conversation.async_get_result_from_chat_log(user_input, chat_log)
    if isinstance(failed, AllBackendsFailed):
        raise backends_failed_error(failed) from failed
    if failed is not None:
        raise failed
    served_by = report.served_by
    served = report.turns[-1].served if report.turns else None
    return {
        "response": result.response.speech["plain"]["speech"],
        "conversation_id": result.conversation_id,
        "backend": served_by,
        "model": router.states[served_by].config.model if served_by else None,
        "fell_back": report.fell_back,
        "attempts": [attempt_data(attempt) for attempt in report.attempts],
        **_stats_data(report.turns[-1].stats if report.turns else None),
        "time_to_first_word": _milliseconds(served.first_word - served.queued)
        if served is not None and served.first_word is not None
        else None,
    }


async def _async_benchmark(call: ServiceCall) -> ServiceResponse:
    """Run a short fixed prompt on one backend or all; respond with stats."""
    entry = _router_entry(call.hass, call)
    router = entry.runtime_data.router
    forced = _backend(router, call)
    request = ChatRequest(messages=(ChatMessage("user", BENCHMARK_PROMPT),))
    results: dict[str, Any] = {}
    for name in [forced] if forced else list(router.states):
        turn = router.route(request, backend=name)
        try:
            async for _event in turn:
                pass
        except AllBackendsFailed:
            pass
        last = turn.attempts[-1]
        results[name] = {"ok": last.ok, "error": last.error, **_stats_data(last.stats)}
    return {"backends": results}


@callback
def async_setup_services(hass: HomeAssistant) -> None:
    """Register the integration's actions."""
    hass.services.async_register(
        DOMAIN,
        SERVICE_ASK,
        _async_ask,
        schema=ASK_SCHEMA,
        supports_response=SupportsResponse.OPTIONAL,
    )
    hass.services.async_register(
        DOMAIN,
        SERVICE_BENCHMARK,
        _async_benchmark,
        schema=BENCHMARK_SCHEMA,
        supports_response=SupportsResponse.OPTIONAL,
    )
