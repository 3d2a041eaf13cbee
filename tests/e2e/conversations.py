"""Talking to a router: conversation turns, its action, chat logs, attempts."""

from __future__ import annotations

from dataclasses import dataclass
import time
from typing import Any

from tests.e2e.hass_process import HassClient
from tests.e2e.router_setup import Router


@dataclass(frozen=True)
class Reply:
    """What the conversation agent answered to one sentence."""

    speech: str
    response_type: str
    conversation_id: str | None
    seconds: float


def converse(
    client: HassClient,
    router: Router,
    text: str,
    *,
    conversation_id: str | None = None,
    timeout: float = 180.0,
) -> Reply:
    """Send text to the router's conversation agent."""
    body: dict[str, Any] = {"text": text, "agent_id": router.agent_id, "language": "en"}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    started = time.monotonic()
    result = client.post("/api/conversation/process", body, timeout=timeout)
    seconds = time.monotonic() - started
    response = result["response"]
    return Reply(
        speech=response.get("speech", {}).get("plain", {}).get("speech", ""),
        response_type=response["response_type"],
        conversation_id=result.get("conversation_id"),
        seconds=seconds,
    )


def ask_action(
    client: HassClient,
    router: Router,
    text: str,
    *,
    timeout: float = 180.0,
    **fields: Any,
) -> dict[str, Any]:
    """Call llm_router.ask through the REST API; its response data."""
    result = client.post(
        "/api/services/llm_router/ask?return_response",
        {"text": text, "config_entry_id": router.entry_id, **fields},
        timeout=timeout,
    )
    return dict(result["service_response"])


def chat_log(client: HassClient, conversation_id: str) -> list[dict[str, Any]]:
    """The content of a conversation's chat log (Home Assistant 2026.11+)."""
    _, (initial,) = client.websocket(
        {"type": "conversation/chat_log/subscribe", "conversation_id": conversation_id},
        events=1,
    )
    return list(initial["data"]["content"])


def last_attempts(client: HassClient, router: Router) -> dict[str, dict[str, Any]]:
    """Each backend's most recent attempt, from the router's diagnostics."""
    diagnostics = client.get(f"/api/diagnostics/config_entry/{router.entry_id}")
    return {
        name: backend["health"]["recent_attempts"][-1]
        for name, backend in diagnostics["data"]["backends"].items()
        if backend["health"]["recent_attempts"]
    }
