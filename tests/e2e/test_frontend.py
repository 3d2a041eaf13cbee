"""Home Assistant's own frontend, in headless Chromium, as a user meets the router.

A user logs in, asks the "LLM Router" assistant a question in the Assist
dialog and gets the real llama.cpp server's answer, then opens the
integration's page and a backend's device page, adds a backend through its
two forms (the second with its sections folded) and saves the router's
options (timing folded). Each step leaves a screenshot and the page's text
in .test-artifacts/frontend/ (a failed step's files are named so), for the
developer to look at (see browser.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
import re
from typing import Any

import pytest
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

from tests.e2e.browser import (
    ARTIFACTS_ROOT,
    Page,
    interact,
    logged_in,
    open_assist,
    shows_whole_answer,
)
from tests.e2e.hass_process import DOMAIN, HassClient, state_value
from tests.e2e.pipelines import (
    first_finished_run,
    prefer_in_assist,
    run_event,
    run_speech,
)
from tests.e2e.router_setup import (
    Router,
    add_backend,
    create_router,
    gpu_backend_down,
    pi_backend,
    running_backends,
    wait_loaded,
)
from tests.e2e.servers import LLM_MODEL, Server, chat_completions_served, wait_until

pytestmark = pytest.mark.e2e

ARTIFACTS = ARTIFACTS_ROOT / "frontend"
QUESTION = "What colour is the sky? Answer in one word."
ROUTER_NAME = "LLM Router"

# Translation keys the frontend shows when a string is missing: the
# integration's own ("component.llm_router.…"), the frontend's ("ui.…") and
# unresolved references ("[%key:…]").
RAW_TRANSLATION_KEY = re.compile(
    r"\[%key:|\b(?:component|ui)\.[a-z0-9_-]+\.[a-z0-9_.-]+"
)


def raw_translation_keys(text: str) -> list[str]:
    """Raw translation keys in a page's text."""
    return [match.group() for match in RAW_TRANSLATION_KEY.finditer(text)]


@pytest.fixture(scope="module")
def router(hass: HassClient, llm_server: Server) -> Router:
    """The demo's router, preferred in Assist: Pi, then GPU server (first, down)."""
    router = create_router(hass, ROUTER_NAME, pi_backend(llm_server))
    add_backend(hass, router, gpu_backend_down())
    return router


@pytest.fixture(scope="module")
def assist_pipeline(hass: HassClient, router: Router) -> str:
    """The id of the router's Assist pipeline, the preferred one."""
    return prefer_in_assist(hass, router)


@pytest.fixture(scope="module")
def page(hass: HassClient, chromedriver: Server, e2e_dir: Path) -> Iterator[Page]:
    """Chromium, logged in as the owner, on the dashboard."""
    with logged_in(hass, chromedriver, e2e_dir / "chromium-profile", ARTIFACTS) as page:
        yield page


@dataclass(frozen=True)
class AssistTurn:
    """One question asked in the Assist dialog, and what was seen of it."""

    dialog_text: str
    shown_answer: str
    recorded_run: list[dict[str, Any]]
    completions_before: int
    completions_after: int


@pytest.fixture(scope="module")
def assist_turn(
    page: Page, hass: HassClient, assist_pipeline: str, llm_server: Server
) -> AssistTurn:
    """Open Assist from the top bar, ask QUESTION, wait for the whole answer."""
    completions_before = chat_completions_served(llm_server)
    with page.step("assist"):
        chat = open_assist(page)
        page.wait_for_element("the dialog's input", "input", chat).send_keys(
            QUESTION, Keys.ENTER
        )
        run = page.wait_for(
            "the pipeline run to end",
            lambda: first_finished_run(hass, assist_pipeline),
            timeout=120,
        )
        speech = run_speech(run)

        def whole_answer_shown() -> str | None:
            # The greeting, the question, then the answer.
            messages = page.find(".message", chat)
            shown = page.text(messages[-1]) if len(messages) == 3 else ""
            return shown if shows_whole_answer(shown, speech) else None

        shown_answer = page.wait_for(
            f"the dialog to show the answer {speech!r}", whole_answer_shown
        )
    return AssistTurn(
        dialog_text=page.text(page.find("ha-voice-command-dialog")[0]),
        shown_answer=shown_answer,
        recorded_run=run,
        completions_before=completions_before,
        completions_after=chat_completions_served(llm_server),
    )


def test_assist_answers_with_the_real_llm_server(
    assist_turn: AssistTurn, hass: HassClient, router: Router
) -> None:
    # The dialog opened on the router's pipeline, preferred by the harness.
    assert ROUTER_NAME in assist_turn.dialog_text.splitlines()
    assert QUESTION in assist_turn.dialog_text.splitlines()
    # Home Assistant ran the sentence through the router's agent, which
    # answered (no error), through the Pi: a real chat completion of
    # llama.cpp's server. The dialog shows that answer.
    assert (
        run_event(assist_turn.recorded_run, "intent-start")["engine"] == router.agent_id
    )
    response = run_event(assist_turn.recorded_run, "intent-end")["intent_output"][
        "response"
    ]
    assert response["response_type"] == "action_done"
    assert state_value(hass, router.last_backend_id) == "Pi"
    assert assist_turn.completions_after > assist_turn.completions_before
    assert shows_whole_answer(
        assist_turn.shown_answer, run_speech(assist_turn.recorded_run)
    )
    assert raw_translation_keys(assist_turn.dialog_text) == []


def test_integration_page_shows_the_router_and_its_backends(
    page: Page, router: Router
) -> None:
    with page.step("integration"):
        page.open(f"/config/integrations/integration/{DOMAIN}")
        text = page.wait_for_text(
            ROUTER_NAME, "Add backend", "Pi", LLM_MODEL, "GPU server", "qwen3-8b"
        )

        assert raw_translation_keys(text) == []


def test_backend_device_page_shows_live_sensors(
    page: Page, hass: HassClient, router: Router, assist_turn: AssistTurn
) -> None:
    devices = hass.websocket({"type": "config/device_registry/list"})
    [pi] = [
        device
        for device in devices
        if device["name"] == "Pi" and router.entry_id in device["config_entries"]
    ]
    entities = {
        entity["entity_id"]
        for entity in hass.websocket({"type": "config/entity_registry/list"})
        if entity["device_id"] == pi["id"]
        and entity["disabled_by"] is None
        and entity["hidden_by"] is None
    }
    requests_id = "sensor.pi_requests_sent"

    with page.step("backend-device"):
        page.open(f"/config/devices/device/{pi['id']}")

        def entity_rows() -> list[dict[str, str]] | None:
            rows = page.entity_rows()
            return rows if {row["entity_id"] for row in rows} == entities else None

        rows = page.wait_for("a row for each of the Pi's entities", entity_rows)
        text = page.text()

        assert requests_id in entities
        # Every one shows a value: llama-server reports its prompt timing too.
        for row in rows:
            assert row["name"], row
            assert row["value"], row
            assert row["value"] != "Unavailable", row
        [requests] = [row for row in rows if row["entity_id"] == requests_id]
        # Live: the Assist turn is counted, as the sensor's state says.
        assert int(requests["value"]) >= 1
        assert requests["value"] == state_value(hass, requests_id)
        assert raw_translation_keys(text) == []


# Scripts that fill a data entry flow's form as a user's input does: each
# field is the element ha-form made for it (its "schema" says which field).
_FIELD_SCRIPT = """
const [name, root] = arguments;
const found = [];
const walk = (node) => {
  if (node.shadowRoot) walk(node.shadowRoot);
  for (const element of node.querySelectorAll("*")) {
    if (element.schema?.name === name && element.schema.type !== "expandable"
        && element.localName !== "ha-form") found.push(element);
    if (element.shadowRoot) walk(element.shadowRoot);
  }
};
walk(root ?? document);
return found[0] ?? null;
"""

_SCROLL_TO_SCRIPT = """
const [text] = arguments;
const walk = (node) => {
  if (node.shadowRoot) { const hit = walk(node.shadowRoot); if (hit) return hit; }
  for (const element of node.children ?? []) {
    const hit = walk(element);
    if (hit) return hit;
  }
  return node.textContent?.trim() === text && node.scrollIntoView ? node : null;
};
walk(document)?.scrollIntoView({block: "center"});
"""

NEW_BACKEND = "Second Pi"


def field(page: Page, name: str, root: WebElement) -> WebElement:
    """The element a form shows for one of its fields."""
    return page.wait_for(
        f"the form's field {name!r}",
        lambda: page.driver.execute_script(_FIELD_SCRIPT, name, root),
    )


def type_into(page: Page, name: str, root: WebElement, text: str) -> None:
    """Replace what a field's text box holds by typing text."""

    def typing() -> None:
        box = page.find("input", field(page, name, root))[0]
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.BACKSPACE, text)

    interact(page, f"to type into {name!r}", typing)


def click_button(page: Page, label: str, root: WebElement) -> None:
    """Click the button that says label."""
    button = page.wait_for(
        f"a button {label!r}",
        lambda: [b for b in page.find("ha-button", root) if page.text(b) == label],
    )[0]
    interact(page, f"to click {label!r}", button.click)


def test_add_backend_in_the_browser(
    page: Page, hass: HassClient, router: Router, llm_server: Server
) -> None:
    with page.step("add-backend-server"):
        page.open(f"/config/integrations/integration/{DOMAIN}")
        page.wait_for_text("Add backend")
        click_button(
            page, "Add backend", page.driver.find_element("css selector", "body")
        )
        dialog = page.wait_for_element("the flow dialog", "dialog-data-entry-flow")
        page.wait_for_text("New backend")
        type_into(page, "name", dialog, NEW_BACKEND)
        openai = page.wait_for(
            "the server type OpenAI-compatible offered",
            lambda: [
                option
                for option in page.find("ha-radio-option", field(page, "kind", dialog))
                if "OpenAI" in page.text(option)
            ],
        )[0]
        interact(page, "to choose OpenAI-compatible", openai.click)
        type_into(page, "url", dialog, llm_server.url)
        click_button(page, "Submit", dialog)

    with page.step("add-backend-model"):
        page.wait_for_text("Model and limits", "Answer and thinking")
        panels = page.find("ha-expansion-panel", dialog)
        # Folded, and only what applies to an OpenAI-compatible server.
        assert [page.text(panel).splitlines()[0] for panel in panels] == [
            "Answer and thinking",
            "Deadlines and parallel requests",
            "Power",
        ]
        assert [panel.get_property("expanded") for panel in panels] == [False] * 3
        interact(page, "to open the models", field(page, "model", dialog).click)
        model = page.wait_for(
            f"the model {LLM_MODEL} offered",
            lambda: [
                item
                for item in page.find("ha-combo-box-item")
                if page.text(item) == LLM_MODEL and item.is_displayed()
            ],
        )[0]
        interact(page, f"to choose {LLM_MODEL}", model.click)
        type_into(page, "priority", dialog, "5")
        assert raw_translation_keys(page.text(dialog)) == []
    with page.step("add-backend-created"):
        click_button(page, "Submit", dialog)
        page.wait_for_text(f"Created configuration for {NEW_BACKEND}.")
        click_button(page, "Finish", dialog)
        # The router reloads with it; its device shows on the router's page.
        wait_until(
            lambda: NEW_BACKEND in running_backends(hass, router),
            timeout=60,
            what=f"the router to run with {NEW_BACKEND}",
            server=hass.server,
        )
        wait_loaded(hass, router)
        page.wait_for(
            "the dialog to close", lambda: "Success" not in page.text().splitlines()
        )
        page.wait_for_text(NEW_BACKEND, "Backend")
        page.driver.execute_script(_SCROLL_TO_SCRIPT, NEW_BACKEND)
        devices = hass.websocket({"type": "config/device_registry/list"})
        assert [
            device["name"]
            for device in devices
            if router.entry_id in device["config_entries"]
            and device["name"] == NEW_BACKEND
        ] == [NEW_BACKEND]
    # Stored flat: what was typed, and the folded sections' defaults.
    diagnostics = hass.get(f"/api/diagnostics/config_entry/{router.entry_id}")
    config = diagnostics["data"]["backends"][NEW_BACKEND]["config"]
    assert config == {
        "name": NEW_BACKEND,
        "kind": "openai",
        "url": llm_server.url,
        "model": LLM_MODEL,
        "priority": 5,
        "thinking": "off",
        "max_tokens": 512,
        "max_parallel": 1,
        "connect_timeout": 3.0,
        "first_token_timeout": 30.0,
        "always_on": True,
    }


def test_router_options_fold_the_timing_knobs(
    page: Page, hass: HassClient, router: Router
) -> None:
    with page.step("router-options"):
        page.open(f"/config/integrations/integration/{DOMAIN}")
        configure = page.wait_for(
            "the router's Configure button",
            lambda: [
                button
                for button in page.find("ha-icon-button")
                if button.get_property("label") == "Configure"
            ],
        )[0]
        interact(page, "to click Configure", configure.click)
        dialog = page.wait_for_element("the options dialog", "dialog-data-entry-flow")
        text = page.wait_for_text("Router options", "Timing")
        [panel] = page.find("ha-expansion-panel", dialog)
        assert panel.get_property("expanded") is False
        # Policy and LLM API first, the timing knobs out of sight.
        lines = page.text(dialog).splitlines()
        assert lines.index("Routing policy") < lines.index("Control Home Assistant")
        assert lines.index("Control Home Assistant") < lines.index("Instructions")
        assert "Latency budget" not in lines
        assert raw_translation_keys(text) == []
    with page.step("router-options-saved"):
        options = _options(hass, router)
        click_button(page, "Submit", dialog)
        page.wait_for_text("Options successfully saved.")
        wait_loaded(hass, router)
        # Saved as it was shown: the folded section's values kept. (The
        # frontend's template editor drops the prompt's last line break.)
        saved = _options(hass, router)
        assert saved == {**options, "prompt": saved["prompt"]}
        assert saved["prompt"] == options["prompt"].rstrip("\n")


def _options(hass: HassClient, router: Router) -> dict[str, Any]:
    diagnostics = hass.get(f"/api/diagnostics/config_entry/{router.entry_id}")
    return dict(diagnostics["data"]["options"])
