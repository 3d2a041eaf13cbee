"""The interface every LLM backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from typing import ClassVar

from .errors import ModelNotFound
from .models import BackendConfig, ChatRequest, ModelDetails, ProbeResult, StreamEvent


class Backend(ABC):
    """One LLM server speaking one protocol.

    Implementations raise only BackendError subclasses. They enforce the
    connect timeout themselves; the router enforces first-token, stall and
    turn deadlines around chat().
    """

    splits_reasoning: ClassVar[bool] = False
    """Whether the server always returns reasoning in its own field when
    asked to think, so the answer text never starts inside reasoning."""

    switches_thinking: ClassVar[bool] = False
    """Whether think: false stops a thinking model; elsewhere the server's
    own settings decide whether it thinks."""

    loads_models: ClassVar[bool] = False
    """Whether the server loads and unloads models (reported by probe() and
    ServerStats.load_seconds) and load_model() can load one ahead of use."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        """The backend's configured name."""
        return self.config.name

    @abstractmethod
    def chat(self, request: ChatRequest) -> AsyncGenerator[StreamEvent]:
        """Stream a chat completion with the configured model.

        Yields TextDelta, ReasoningDelta and ToolCallDelta events as they
        arrive, then exactly one ServerStats when the server finished. A
        stream that ends without its final chunk raises BadResponse.
        """

    @abstractmethod
    async def probe(self) -> ProbeResult:
        """Check that the server answers (cheap; no generation)."""

    @abstractmethod
    async def list_models(self) -> list[str]:
        """Names of the models the server offers."""

    @abstractmethod
    async def model_details(self) -> ModelDetails:
        """Capabilities of the configured model."""

    async def check_model(self) -> None:
        """Raise ModelNotFound unless the server offers the configured model.

        A server that lists no models (one serving whatever it loaded) passes.
        """
        models = await self.list_models()
        if models and self.config.model not in models:
            raise ModelNotFound(f"model '{self.config.model}' not found")

    async def load_model(self) -> None:
        """Load the configured model without generating (loads_models only)."""
        raise NotImplementedError

    async def close(self) -> None:  # noqa: B027 - most backends hold nothing
        """Release what the backend owns (not shared sessions)."""
