"""AI Task entity: generate data through the router, with fallback."""

from __future__ import annotations

from json import JSONDecodeError
import re
from typing import Any

from homeassistant.components import ai_task, conversation
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import llm
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from homeassistant.util.json import json_loads
import probatio

from .chat import async_run_chat_log, backends_failed_error, json_schema
from .const import DOMAIN, LOGGER
from .engine.outcomes import AllBackendsFailed
from .entity import LLMRouterEntity
from .runtime import LLMRouterConfigEntry

# The router queues requests per backend (max_parallel), not Home Assistant.
PARALLEL_UPDATES = 0

# Small models like to wrap JSON in a Markdown code fence.
_CODE_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: LLMRouterConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    """Add the router's AI Task entity."""
    async_add_entities([LLMRouterTaskEntity(entry)])


def parse_structured(text: str, structure: probatio.Schema) -> Any:
    """The model's JSON answer, validated against the task's structure."""
    if match := _CODE_FENCE.match(text):
        text = match.group(1)
    try:
        return structure(json_loads(text))
    except (JSONDecodeError, probatio.Invalid) as err:
        LOGGER.debug("Invalid structured output %r: %s", text, err)
        raise HomeAssistantError(
            translation_domain=DOMAIN,
            translation_key="invalid_structured_output",
            translation_placeholders={"error": str(err)},
        ) from err


class LLMRouterTaskEntity(LLMRouterEntity, ai_task.AITaskEntity):
    """Generates data with whichever backend answers."""

    _attr_supported_features = ai_task.AITaskEntityFeature.GENERATE_DATA
    _attr_translation_key = "ai_task"

    def __init__(self, entry: LLMRouterConfigEntry) -> None:
        """Create the task entity of a router."""
        super().__init__(entry, "ai_task")

    async def _async_generate_data(
        self, task: ai_task.GenDataTask, chat_log: conversation.ChatLog
    ) -> ai_task.GenDataTaskResult:
        """Answer the task; with a structure, as validated JSON."""
        schema = None
        if task.structure is not None:
            api = chat_log.llm_api
            serializer = api.custom_serializer if api else llm.selector_serializer
            schema = json_schema(task.structure, serializer)
        try:
            report = await async_run_chat_log(
                self.entry.runtime_data.router,
                chat_log,
                self.entity_id,
                self.entry.options,
                language=self.hass.config.language,
                response_schema=schema,
                spoken=False,
            )
        except AllBackendsFailed as err:
            raise backends_failed_error(err) from err
        self.entry.runtime_data.async_record(
            report.served_by, fell_back=report.fell_back
        )
        text = report.answer
        data = (
            text if task.structure is None else parse_structured(text, task.structure)
        )
        return ai_task.GenDataTaskResult(
            conversation_id=chat_log.conversation_id, data=data
        )
