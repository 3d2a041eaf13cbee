"""The integration in a real Home Assistant process, driven through its APIs.

Each test creates its own router: "Pi" is the real llama.cpp server and
"GPU server", the first choice, is an OpenAI-compatible URL where nothing
listens, saved without a connection test.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from itertools import count
import threading
from urllib.parse import urlsplit

import pytest

from tests.e2e.conversations import ask_action, chat_log, converse
from tests.e2e.hass_process import HassClient, state, state_value
from tests.e2e.router_setup import (
    BackendSpec,
    Router,
    add_backend,
    create_router,
    entry_state,
    gpu_backend_down,
    pi_backend,
    reload_router,
    remove_router,
)
from tests.e2e.servers import (
    LLM_MODEL,
    HarnessError,
    Server,
    chat_completions_served,
    llm_server_metrics,
)

pytestmark = pytest.mark.e2e

QUESTION = "How often should I water a snake plant?"
_names = (f"Router {number}" for number in count(1))


@dataclass(frozen=True)
class Setup:
    """A router and where its dead first choice points."""

    router: Router
    gpu_url: str


@pytest.fixture
def setup(hass: HassClient, llm_server: Server) -> Iterator[Setup]:
    """A new router: Pi (priority 2), then GPU server (priority 1, down)."""
    router = create_router(hass, next(_names), pi_backend(llm_server))
    try:
        gpu = gpu_backend_down()
        add_backend(hass, router, gpu)
        yield Setup(router, gpu.url)
    finally:
        remove_router(hass, router)


class _Recorder(HTTPServer):
    """Answers 503 to everything and notes each request's method and path."""

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _RecordingHandler)
        self.requests: list[str] = []


class _RecordingHandler(BaseHTTPRequestHandler):
    server: _Recorder

    def _answer(self) -> None:
        self.server.requests.append(f"{self.command} {self.path}")
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@contextmanager
def listening(url: str) -> Iterator[list[str]]:
    """Listen where url points; yield the requests received meanwhile."""
    server = _Recorder(urlsplit(url).port or 80)
    # Single-threaded on purpose: no handler thread outlives the test.
    thread = threading.Thread(target=server.serve_forever, name="recorder")
    thread.start()
    try:
        yield server.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_config_flows_create_a_router_with_both_backends(
    hass: HassClient, setup: Setup
) -> None:
    entries = hass.get("/api/config/config_entries/entry?domain=llm_router")
    [entry] = [e for e in entries if e["entry_id"] == setup.router.entry_id]

    assert entry["state"] == "loaded"
    assert entry["title"] == setup.router.name
    assert entry["num_subentries"] == 2
    assert state(hass, setup.router.agent_id) is not None
    registry = hass.websocket({"type": "config/entity_registry/list"})
    ours = {
        e["entity_id"].split(".")[0]
        for e in registry
        if e["config_entry_id"] == setup.router.entry_id
    }
    assert ours == {"ai_task", "binary_sensor", "conversation", "sensor"}


def test_turn_falls_back_then_the_dead_backend_is_skipped(
    hass: HassClient, setup: Setup
) -> None:
    router = setup.router

    first = converse(hass, router, QUESTION)

    assert first.response_type != "error", first.speech
    assert first.speech.strip()
    assert state_value(hass, router.last_backend_id) == "Pi"
    assert state_value(hass, router.fallbacks_id) == "1"

    # The GPU server's connection was refused: its breaker is open, so the
    # next turn must not even try it, although something listens there now.
    with listening(setup.gpu_url) as requests:
        second = converse(
            hass, router, "And a cactus?", conversation_id=first.conversation_id
        )

    assert second.response_type != "error", second.speech
    assert second.speech.strip()
    assert state_value(hass, router.last_backend_id) == "Pi"
    assert not [r for r in requests if r.startswith("POST")]


def test_router_works_after_a_reload(hass: HassClient, setup: Setup) -> None:
    router = setup.router

    reload_router(hass, router)

    assert entry_state(hass, router) == "loaded"
    reply = converse(hass, router, QUESTION)
    assert reply.response_type != "error", reply.speech
    assert reply.speech.strip()
    assert state_value(hass, router.last_backend_id) == "Pi"


def test_router_unloaded_and_reloaded_over_websocket(
    hass: HassClient, setup: Setup
) -> None:
    router = setup.router
    disable = {"type": "config_entries/disable", "entry_id": router.entry_id}

    hass.websocket({**disable, "disabled_by": "user"})
    assert entry_state(hass, router) == "not_loaded"
    # Disabled with its entry, the agent's entity has no state at all.
    assert state_value(hass, router.agent_id) is None

    hass.websocket({**disable, "disabled_by": None})
    assert entry_state(hass, router) == "loaded"
    reply = converse(hass, router, QUESTION)
    assert reply.response_type != "error", reply.speech
    assert state_value(hass, router.last_backend_id) == "Pi"


def test_ask_action_reports_the_fallback(hass: HassClient, setup: Setup) -> None:
    response = ask_action(hass, setup.router, QUESTION)

    assert response["response"].strip()
    assert response["backend"] == "Pi"
    assert response["model"] == LLM_MODEL
    assert response["fell_back"] is True
    assert [a["backend"] for a in response["attempts"]] == ["GPU server", "Pi"]
    assert response["attempts"][-1]["outcome"] == "ok"
    assert response["generation_tokens_per_s"] > 0
    assert response["time_to_first_token_ms"] > 0


def test_failure_sentence_is_all_the_chat_log_says(
    hass: HassClient, setup: Setup
) -> None:
    # Home Assistant 2026.11's chat log adds "Error: ..." for an exception that
    # leaves a turn, and "(no response)" for a turn that added nothing.
    conversation_id = "e2e-all-backends-down"
    with pytest.raises(HarnessError, match="None of the language model servers"):
        ask_action(
            hass,
            setup.router,
            "Is anyone there?",
            backend="GPU server",
            conversation_id=conversation_id,
        )

    content = chat_log(hass, conversation_id)
    assert [item["role"] for item in content[-2:]] == ["user", "assistant"]
    # Spoken: one short sentence; the reasons are in the action's error.
    assert (
        content[-1]["content"] == "Sorry, none of the language model servers answered."
    )


def test_no_repair_but_home_assistants_own(hass: HassClient, setup: Setup) -> None:
    """Nothing the router or the test setup does raises a repair.

    Left: Home Assistant's notice that the Core installation method (a
    Python venv, as here) is deprecated.
    """
    issues = hass.websocket({"type": "repairs/list_issues"})["issues"]

    assert [(i["domain"], i["issue_id"]) for i in issues] == [
        ("homeassistant", "deprecated_method")
    ]


def test_two_turns_at_once_share_the_servers_two_slots(
    hass: HassClient, two_slot_server: Server
) -> None:
    pi = BackendSpec(
        "Pi", "openai", two_slot_server.url, LLM_MODEL, 1, options={"max_parallel": 2}
    )
    router = create_router(hass, next(_names), pi)
    questions = [QUESTION, "Which plants like shade?"]
    try:
        with ThreadPoolExecutor(len(questions)) as pool:
            replies = list(
                pool.map(lambda text: converse(hass, router, text), questions)
            )
    finally:
        remove_router(hass, router)

    for reply in replies:
        assert reply.response_type != "error", reply.speech
        assert reply.speech.strip()
    assert chat_completions_served(two_slot_server) == 2
    # The server decoded both answers together: at some step of its batch
    # both slots were busy, so the average over its steps is above one.
    assert llm_server_metrics(two_slot_server)["n_busy_slots_per_decode"] > 1
