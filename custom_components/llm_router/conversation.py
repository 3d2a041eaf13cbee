"""The router's conversation agent."""

from __future__ import annotations

from typing import Literal

from homeassistant.components import conversation
from homeassistant.const import CONF_LLM_HASS_API, MATCH_ALL
from homeassistant.core import HomeAssistant
from homeassistant.helpers import intent
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback

from .chat import async_answer, async_end_turn_with_failure
from .engine.outcomes import AllBackendsFailed
from .entity import LLMRouterEntity
from .runtime import LLMRouterConfigEntry

# The router queues requests per backend (max_parallel), not Home Assistant.
PARALLEL_UPDATES = 0


async def async_setup_entry(
    hass: HomeAssistant,
    entry: LLMRouterConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    """Add the router's conversation agent."""
    async_add_entities([LLMRouterConversationEntity(entry)])


class LLMRouterConversationEntity(LLMRouterEntity, conversation.ConversationEntity):
    """One agent for all backends: routed, with fallback."""

    _attr_name = None
    _attr_supports_streaming = True

    def __init__(self, entry: LLMRouterConfigEntry) -> None:
        """Create the agent of a router entry."""
        super().__init__(entry, "conversation")
        if entry.options.get(CONF_LLM_HASS_API):
            self._attr_supported_features = (
                conversation.ConversationEntityFeature.CONTROL
            )

    @property
    def supported_languages(self) -> list[str] | Literal["*"]:
        """Models answer in any language."""
        return MATCH_ALL

    async def _async_handle_message(
        self,
        user_input: conversation.ConversationInput,
        chat_log: conversation.ChatLog,
    ) -> conversation.ConversationResult:
        """Answer one user turn."""
        try:
            await async_answer(self.entry, user_input, chat_log, self.entity_id)
        except conversation.ConverseError as err:
            return err.as_conversation_result()
        except AllBackendsFailed as err:
            sentence = await async_end_turn_with_failure(
                chat_log, self.entity_id, user_input.language, err
            )
            response = intent.IntentResponse(language=user_input.language)
            response.async_set_error(intent.IntentResponseErrorCode.UNKNOWN, sentence)
            return conversation.ConversationResult(
                response=response, conversation_id=chat_log.conversation_id
            )
        return conversation.async_get_result_from_chat_log(user_input, chat_log)
