"""Plain data passed between the backends, the router and its callers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
import json
from typing import Any, Literal


class BackendKind(StrEnum):
    """Wire protocol a backend speaks."""

    OLLAMA = "ollama"
    OPENAI = "openai"


class Capability(StrEnum):
    """Model capabilities the router adapts requests to."""

    TOOLS = "tools"
    THINKING = "thinking"


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """How to reach one LLM server and what to ask of it."""

    name: str
    kind: BackendKind
    url: str
    model: str
    api_key: str | None = None
    priority: int = 1
    max_parallel: int = 1
    connect_timeout: float = 3.0
    first_token_timeout: float = 30.0
    stall_timeout: float = 15.0
    think: bool = False
    think_auto: bool = False
    """Think only when the prediction with reasoning fits the latency budget
    (where the server can switch thinking off; otherwise think)."""
    max_tokens: int | None = None
    """Answer cap (Ollama num_predict, OpenAI max_tokens). Servers count
    reasoning in it, so while thinking the router counts the answer itself."""
    keep_warm: bool | None = None
    """Keep the model loaded (Ollama); None: only for the first choice."""
    keep_alive: str | int | None = None
    """Ollama: a Go duration ("30m") or seconds (-1: forever)."""
    num_ctx: int | None = None


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the model may call; parameters is a JSON schema object."""

    name: str
    description: str | None
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call requested by the model."""

    id: str
    name: str
    arguments: Mapping[str, Any]


Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of a conversation, independent of any wire format.

    A tool result has role "tool" and names the call it answers.
    """

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    tool_name: str | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What a caller asks of the router for one model call.

    think overrides the backend's configured default when not None.
    response_schema asks for JSON output matching that schema.
    """

    messages: tuple[ChatMessage, ...]
    tools: tuple[ToolSpec, ...] = ()
    think: bool | None = None
    response_schema: Mapping[str, Any] | None = None

    def without_tools(self) -> ChatRequest:
        """This request for a model without tools: earlier tool use as text."""
        return replace(
            self, tools=(), messages=tuple(map(_without_tool_traffic, self.messages))
        )


def _without_tool_traffic(message: ChatMessage) -> ChatMessage:
    if message.role == "tool":
        return ChatMessage("user", f"Result of {message.tool_name}: {message.content}")
    if message.tool_calls:
        calls = ", ".join(
            f"{call.name}({json.dumps(call.arguments)})" for call in message.tool_calls
        )
        return ChatMessage("assistant", f"{message.content}\n[called {calls}]".lstrip())
    return message


# Events a backend stream yields, in order: deltas, then one ServerStats.


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer (may still contain inline <think> tags)."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of the model's reasoning, never to be spoken."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """Complete tool calls requested by the model."""

    calls: tuple[ToolCall, ...]


@dataclass(frozen=True, slots=True)
class ServerStats:
    """What the server reported about a finished generation; None = unknown."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_seconds: float | None = None
    generation_seconds: float | None = None
    load_seconds: float | None = None
    output_chunks: int = 0
    """Stream chunks that carried output. Servers stream one token per
    chunk, so this stands in for completion_tokens where they give none."""
    cut_at_cap: bool = False
    """The server stopped at the token cap (done_reason/finish_reason
    "length")."""


StreamEvent = TextDelta | ReasoningDelta | ToolCallDelta | ServerStats


@dataclass(frozen=True, slots=True)
class ModelDetails:
    """What the server says about the configured model."""

    capabilities: frozenset[Capability] | None
    """None when the server cannot tell (the router then assumes all)."""


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model the server holds in memory (Ollama /api/ps)."""

    name: str
    size_vram: int | None = None
    expires_at: str | None = None


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """A successful health probe."""

    version: str | None = None
    loaded_models: tuple[LoadedModel, ...] = field(default=())
