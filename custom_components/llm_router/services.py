"""Actions: ask the router from automations, benchmark and wake its backends."""

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
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers import (
    chat_session,
    config_validation as cv,
    device_registry as dr,
    entity_registry as er,
)
import probatio

from .chat import (
    async_answer,
    async_end_turn_with_failure,
    async_end_turn_with_note,
    backends_failed_error,
)
from .const import DOMAIN
from .engine.models import ChatMessage, ChatRequest
from .engine.outcomes import AllBackendsFailed, Attempt
from .engine.stats import GenerationStats
from .runtime import LLMRouterConfigEntry

SERVICE_ASK = "ask"
SERVICE_BENCHMARK = "benchmark"
SERVICE_WAKE = "wake"
ATTR_TEXT = "text"
ATTR_CONVERSATION_ID = "conversation_id"
ATTR_BACKEND = "backend"
ATTR_THINK = "think"
ATTR_WARM = "warm"


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

WAKE_SCHEMA = probatio.Schema(
    {
        probatio.Optional(ATTR_CONFIG_ENTRY_ID): cv.string,
        probatio.Required(ATTR_BACKEND): cv.string,
        probatio.Optional(ATTR_WARM, default=False): cv.boolean,
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
    loaded = hass.config_entries.async_loaded_entries(DOMAIN)
    if len(loaded) > 1:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="router_required",
            translation_placeholders={"count": str(len(loaded))},
        )
    if loaded:
        return loaded[0]
    if entries := hass.config_entries.async_entries(DOMAIN):
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="no_router_loaded",
            translation_placeholders={
                "routers": ", ".join(entry.title for entry in entries)
            },
        )
    raise ServiceValidationError(
        translation_domain=DOMAIN, translation_key="no_routers"
    )


def _backend_of_device(
    hass: HomeAssistant, device_id: str
) -> tuple[LLMRouterConfigEntry, str] | None:
    """The loaded router and backend name of a backend's device."""
    device = dr.async_get(hass).async_get(device_id)
    if device is None:
        return None
    for entry in hass.config_entries.async_loaded_entries(DOMAIN):
        for name, subentry_id in entry.runtime_data.backend_subentries.items():
            if (DOMAIN, subentry_id) in device.identifiers:
                return entry, name
    return None


def _target(
    hass: HomeAssistant, call: ServiceCall
) -> tuple[LLMRouterConfigEntry, str | None]:
    """The router an action is for, and the backend it is forced to, checked.

    The backend is its device (what the action's form picks), which also
    says the router, or its name.
    """
    backend: str | None = call.data.get(ATTR_BACKEND)
    of_device = _backend_of_device(hass, backend) if backend else None
    if of_device and ATTR_CONFIG_ENTRY_ID not in call.data:
        return of_device
    entry = _router_entry(hass, call)
    if backend is None:
        return entry, None
    if of_device and of_device[0] is entry:
        return of_device
    router = entry.runtime_data.router
    if backend not in router.states:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="unknown_backend",
            translation_placeholders={
                "backend": backend,
                "backends": ", ".join(router.states),
            },
        )
    return entry, backend


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _stats_data(stats: GenerationStats | None) -> dict[str, Any]:
    """Stats as response data, rounded as the sensors show them.

    Every key names its unit, so templates need not guess.
    """
    return {
        "generation_tokens_per_s": _rounded(
            stats.generation_speed if stats else None, 1
        ),
        "prompt_tokens_per_s": _rounded(stats.prompt_speed if stats else None, 1),
        "time_to_first_token_ms": _milliseconds(
            stats.time_to_first_token if stats else None
        ),
        "response_time_s": _rounded(stats.response_time if stats else None, 2),
        "completion_tokens": stats.completion_tokens if stats else None,
    }


def _milliseconds(seconds: float | None) -> int | None:
    """Whole milliseconds, as the time-to-first-token sensor shows them."""
    if seconds is None or not math.isfinite(seconds):
        return None
    return round(seconds * 1000)


def attempt_data(attempt: Attempt) -> dict[str, Any]:
    """One attempt and why it was made: for responses and diagnostics.

    Times in whole ms (the keys say so): predicted is the forecast when it
    was tried (None: no time can be told, such as a wait behind requests of
    unknown length), actual is when its first answer word came; both from
    the attempt's start.
    """
    forecast = attempt.forecast
    return {
        "backend": attempt.backend,
        "outcome": attempt.error_kind or "ok",
        "error": attempt.error,
        "decision": attempt.decision,
        "note": attempt.note,
        "predicted_first_word_ms": _milliseconds(forecast.total) if forecast else None,
        "first_word_ms": _milliseconds(attempt.first_word),
        "queued_ms": _milliseconds(attempt.queued),
        "waking": attempt.waking,
        "prediction": {
            f"{part}_ms": _milliseconds(getattr(forecast, part))
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
    entry, backend = _target(hass, call)
    router = entry.runtime_data.router
    agent_id = er.async_get(hass).async_get_entity_id(
        conversation.DOMAIN, DOMAIN, f"{entry.entry_id}_conversation"
    )
    if agent_id is None:  # its entity was deleted
        raise HomeAssistantError(
            translation_domain=DOMAIN,
            translation_key="agent_missing",
            translation_placeholders={"router": entry.title},
        )
    user_input = conversation.ConversationInput(
        text=text,
        context=call.context,
        conversation_id=call.data.get(ATTR_CONVERSATION_ID),
        device_id=None,
        satellite_id=None,
        language=hass.config.language,
        agent_id=agent_id,
    )
    failure: tuple[HomeAssistantError, Exception] | None = None
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
            prompt_failed = HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="prompt_failed",
                translation_placeholders={"error": str(err)},
            )
            failure = (prompt_failed, err)
            await async_end_turn_with_note(
                chat_log, agent_id, user_input.language, prompt_failed
            )
        except AllBackendsFailed as err:
            failure = (backends_failed_error(err), err)
            await async_end_turn_with_failure(
                chat_log, agent_id, user_input.language, err
            )
        result = conversation.async_get_result_from_chat_log(user_input, chat_log)
    if failure is not None:
        error, cause = failure
        raise error from cause
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
        "time_to_first_word_ms": _milliseconds(served.first_word - served.queued)
        if served is not None and served.first_word is not None
        else None,
    }


async def _async_benchmark(call: ServiceCall) -> ServiceResponse:
    """Run a short fixed prompt on one backend or all; respond with stats."""
    entry, forced = _target(call.hass, call)
    router = entry.runtime_data.router
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


async def _async_wake(call: ServiceCall) -> ServiceResponse:
    """Wake a backend's server ahead of turns; with warm, until it answers."""
    entry, backend = _target(call.hass, call)
    router = entry.runtime_data.router
    # The schema requires a backend.
    if backend is None or not router.states[backend].power.can_wake:
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="no_wake_action",
            translation_placeholders={"backend": str(backend)},
        )
    warm = call.data[ATTR_WARM]
    if not await router.wake(backend, warm=warm):
        error = router.states[backend].power.wake_error
        raise HomeAssistantError(
            translation_domain=DOMAIN,
            translation_key="did_not_wake",
            translation_placeholders={
                "backend": backend,
                "error": error.message if error else "",
            },
        )
    return {"backend": backend, "answered": True if warm else None}


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
    hass.services.async_register(
        DOMAIN,
        SERVICE_WAKE,
        _async_wake,
        schema=WAKE_SCHEMA,
        supports_response=SupportsResponse.OPTIONAL,
    )
