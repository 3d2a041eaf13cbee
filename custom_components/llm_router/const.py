"""Constants of the LLM Router integration."""

from __future__ import annotations

from enum import StrEnum
import logging
from typing import Final

DOMAIN: Final = "llm_router"
# 2: thinking is one choice (think and think_auto were two switches).
CONFIG_ENTRY_VERSION: Final = 2
LOGGER = logging.getLogger(__package__)

SUBENTRY_BACKEND: Final = "backend"

# Backend subentry fields (name, url, api_key and model come from HA's const).
CONF_KIND: Final = "kind"
CONF_PRIORITY: Final = "priority"
CONF_MAX_PARALLEL: Final = "max_parallel"
CONF_CONNECT_TIMEOUT: Final = "connect_timeout"
CONF_FIRST_TOKEN_TIMEOUT: Final = "first_token_timeout"
CONF_THINKING: Final = "thinking"
CONF_KEEP_ALIVE: Final = "keep_alive"
CONF_NUM_CTX: Final = "num_ctx"
CONF_MAX_TOKENS: Final = "max_tokens"
CONF_KEEP_WARM: Final = "keep_warm"
CONF_SKIP_CHECK: Final = "skip_check"
CONF_BACKEND: Final = "backend"
CONF_ALWAYS_ON: Final = "always_on"


class Thinking(StrEnum):
    """Whether a backend's model thinks before it answers."""

    OFF = "off"
    ON = "on"
    AUTO = "auto"
    """Only when the answer still starts within the latency budget."""


# Which backend a reauthentication flow asks a new API key for.
REAUTH_SUBENTRY_ID: Final = "subentry_id"

# Router options.
CONF_PROMPT: Final = "prompt"
CONF_MAX_HISTORY: Final = "max_history"
CONF_POLICY: Final = "policy"
CONF_PROBE_INTERVAL: Final = "probe_interval"
CONF_TURN_TIMEOUT: Final = "turn_timeout"
CONF_LATENCY_BUDGET: Final = "latency_budget"
CONF_HEDGING: Final = "hedging"

DEFAULT_ROUTER_NAME: Final = "LLM Router"
DEFAULT_PRIORITY: Final = 1
DEFAULT_MAX_PARALLEL: Final = 1
DEFAULT_CONNECT_TIMEOUT: Final = 3.0
DEFAULT_FIRST_TOKEN_TIMEOUT: Final = 30.0
DEFAULT_KEEP_ALIVE: Final = "30m"
DEFAULT_NUM_CTX: Final = 8192
DEFAULT_MAX_HISTORY: Final = 10
DEFAULT_PROBE_INTERVAL: Final = 30
DEFAULT_TURN_TIMEOUT: Final = 120.0
# A spoken answer is a few sentences; a looping model stops here. Reasoning
# counts too (Ollama's num_predict).
DEFAULT_MAX_TOKENS: Final = 512
# Voice satellites give up after about 5 s without audio.
DEFAULT_LATENCY_BUDGET: Final = 3.0

# Bound on model calls for one user turn, so a model that keeps calling
# tools cannot loop forever.
MAX_TOOL_ITERATIONS: Final = 10
