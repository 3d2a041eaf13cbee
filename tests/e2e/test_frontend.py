"""Home Assistant's own frontend, in headless Chromium, as a user meets the router.

A user logs in, asks the "LLM Router" assistant a question in the Assist
dialog and gets the real llama.cpp server's answer, then opens the
integration's page and a backend's device page, adds a backend through its
two forms (the second with its sections folded) and saves the router's
options (timing folded). Chromium and chromedriver
are Debian's packages (scripts/setup installs them); Selenium only talks to
the chromedriver started here, so it never looks for or downloads anything.

The frontend is web components inside shadow roots, so the page is read by
scripts that walk them. Each step leaves a screenshot and the page's text in
.test-artifacts/frontend/ (a failed step's files are named so), for the
developer to look at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
import re
import shutil
import time
from typing import Any

import pytest
from selenium.common.exceptions import (
    ElementClickInterceptedException,
    ElementNotInteractableException,
)
from selenium.webdriver import ChromeOptions, Remote
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

from tests.e2e.harness import (
    DOMAIN,
    LLM_MODEL,
    ROOT,
    Credentials,
    HassClient,
    Router,
    Server,
    add_backend,
    chat_completions_served,
    create_router,
    gpu_backend_down,
    pi_backend,
    prefer_in_assist,
    running_backends,
    start_server,
    state_value,
    wait_loaded,
    wait_until,
)
from tests.fakes.base import free_port

pytestmark = pytest.mark.e2e

ARTIFACTS = ROOT / ".test-artifacts" / "frontend"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_ARGUMENTS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)
QUESTION = "What colour is the sky? Answer in one word."
ROUTER_NAME = "LLM Router"

# Translation keys the frontend shows when a string is missing: the
# integration's own ("component.llm_router.…"), the frontend's ("ui.…") and
# unresolved references ("[%key:…]").
RAW_TRANSLATION_KEY = re.compile(
    r"\[%key:|\b(?:component|ui)\.[a-z0-9_-]+\.[a-z0-9_.-]+"
)

# Scripts run in the page. Both walk open shadow roots; the text is what is
# rendered: slotted content where it is shown, nothing hidden.
_FIND_SCRIPT = """
const [selector, root] = arguments;
const found = [];
const walk = (node) => {
  if (node.shadowRoot) walk(node.shadowRoot);
  for (const element of node.querySelectorAll("*")) {
    if (element.matches(selector)) found.push(element);
    if (element.shadowRoot) walk(element.shadowRoot);
  }
};
walk(root ?? document);
return found;
"""
_TEXT_SCRIPT = """
const lines = [];
const walk = (node) => {
  if (node.nodeType === Node.TEXT_NODE) {
    const text = node.textContent.trim();
    if (text) lines.push(text);
    return;
  }
  if (node.nodeType === Node.ELEMENT_NODE) {
    if (["STYLE", "SCRIPT", "TEMPLATE"].includes(node.tagName)) return;
    const style = getComputedStyle(node);
    if (style.display === "none" || style.visibility === "hidden") return;
    if (node.shadowRoot) return walk(node.shadowRoot);
    if (node.tagName === "SLOT" && node.assignedNodes().length) {
      return node.assignedNodes({flatten: true}).forEach(walk);
    }
  }
  node.childNodes.forEach(walk);
};
walk(arguments[0] ?? document.body);
return lines.join("\\n");
"""


class Page:
    """The browser's current page, read through its shadow roots."""

    def __init__(self, driver: Remote, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url
        self.step_number = 0

    def open(self, path: str) -> None:
        """Navigate to a path of Home Assistant."""
        self.driver.get(self.base_url + path)

    def find(self, selector: str, root: WebElement | None = None) -> list[WebElement]:
        """Elements matching a CSS selector, in any shadow root."""
        found: list[WebElement] = self.driver.execute_script(
            _FIND_SCRIPT, selector, root
        )
        return found

    def text(self, root: WebElement | None = None) -> str:
        """The text shown, one line per text node."""
        return str(self.driver.execute_script(_TEXT_SCRIPT, root))

    def entity_rows(self) -> list[dict[str, str]]:
        """Entity rows shown (on a device page): entity_id, name and value of each."""
        rows = self.find("hui-generic-entity-row")
        return [
            {
                "entity_id": row.get_property("config")["entity"],
                "name": self.text(self.find(".info", row)[0]),
                "value": self.text(self.find(".value", row)[0]),
            }
            for row in rows
        ]

    def wait_for[T](
        self, what: str, condition: Callable[[], T | None], timeout: float = 30.0
    ) -> T:
        """Poll condition until it returns something truthy; return that."""
        deadline = time.monotonic() + timeout
        while not (result := condition()):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:.0f} s waiting for {what}"
                )
            time.sleep(0.25)
        return result

    def wait_for_element(
        self, what: str, selector: str, root: WebElement | None = None
    ) -> WebElement:
        """Wait until an element matches selector; the first that does."""
        return self.wait_for(what, lambda: self.find(selector, root))[0]

    def wait_for_text(self, *texts: str, timeout: float = 30.0) -> str:
        """Wait until every one of texts is a line shown; the page's text."""

        def shown() -> str | None:
            page = self.text()
            return page if set(texts) <= set(page.splitlines()) else None

        return self.wait_for(f"the page to show {texts}", shown, timeout)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Keep a screenshot and the text of the page after a step, failed or not."""
        self.step_number += 1
        stem = f"{self.step_number:02d}-{name}"
        try:
            yield
        except BaseException as err:
            self.keep(f"{stem}-FAILED")
            err.add_note(f"screenshots and page texts: {ARTIFACTS}")
            raise
        self.keep(stem)

    def keep(self, stem: str) -> None:
        """Save a screenshot and the page's text under ARTIFACTS."""
        self.driver.save_screenshot(str(ARTIFACTS / f"{stem}.png"))
        (ARTIFACTS / f"{stem}.txt").write_text(
            f"{self.driver.current_url}\n\n{self.text()}\n"
        )


def raw_translation_keys(text: str) -> list[str]:
    """Raw translation keys in a page's text."""
    return [match.group() for match in RAW_TRANSLATION_KEY.finditer(text)]


def letter_words(text: str) -> list[str]:
    """The words of a text, letters only (Markdown drops list numbers)."""
    return re.findall(r"[^\W\d_]+", text.lower())


def shows_whole_answer(shown: str, speech: str) -> bool:
    """Whether shown is the rendering of all of speech (Markdown).

    Its words are speech's, in order, from the first to the last; only
    Markdown's syntax, such as link targets, may be left out.
    """
    words, spoken = letter_words(shown), letter_words(speech)
    remaining = iter(spoken)
    return (
        bool(words)
        and words[0] == spoken[0]
        and words[-1] == spoken[-1]
        and all(word in remaining for word in words)
    )


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
def chromedriver(e2e_dir: Path) -> Iterator[Server]:
    """Debian's chromedriver on a loopback port.

    Started here rather than by Selenium, which would look for drivers and
    browsers (and may download them) and talks to "localhost".
    """
    port = free_port()
    with start_server(
        "chromedriver",
        [CHROMEDRIVER, f"--port={port}"],
        port=port,
        ready_path="/status",
        log=e2e_dir / "chromedriver.log",
        timeout=30,
    ) as server:
        yield server


@pytest.fixture(scope="module")
def page(hass: HassClient, chromedriver: Server, e2e_dir: Path) -> Iterator[Page]:
    """Chromium, logged in as the owner, on the dashboard."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    options = ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in CHROMIUM_ARGUMENTS:
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={e2e_dir / 'chromium-profile'}")
    driver = Remote(command_executor=chromedriver.url, options=options)
    try:
        page = Page(driver, hass.server.url)
        user = Credentials()
        with page.step("login"):
            page.open("/")
            page.wait_for_element("the login form", "input[name=username]").send_keys(
                user.username
            )
            page.find("input[name=password]")[0].send_keys(user.password, Keys.ENTER)
            page.wait_for_text(f"Welcome {user.name}", "Settings")
            page.wait_for(
                "the launch screen to fade out",
                lambda: not page.find("#ha-launch-screen"),
            )
        yield page
    finally:
        driver.quit()


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
        page.open("/")
        assist_button = page.wait_for(
            "the top bar's Assist button",
            lambda: [
                button
                for button in page.find("ha-icon-button")
                if str(button.get_property("label") or "").startswith("Assist")
            ],
        )[0]
        assist_button.click()
        chat = page.wait_for_element("the Assist dialog", "ha-assist-chat")
        page.wait_for_element("the dialog's input", "input", chat).send_keys(
            QUESTION, Keys.ENTER
        )
        run = page.wait_for(
            "the pipeline run to end",
            lambda: _finished_run(hass, assist_pipeline),
            timeout=120,
        )
        speech = _speech(run)

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


def _finished_run(hass: HassClient, pipeline_id: str) -> list[dict[str, Any]] | None:
    """The events of the pipeline's only run, once it has ended."""
    runs = hass.websocket(
        {"type": "assist_pipeline/pipeline_debug/list", "pipeline_id": pipeline_id}
    )["pipeline_runs"]
    if not runs:
        return None
    [run] = runs
    events: list[dict[str, Any]] = hass.websocket(
        {
            "type": "assist_pipeline/pipeline_debug/get",
            "pipeline_id": pipeline_id,
            "pipeline_run_id": run["pipeline_run_id"],
        }
    )["events"]
    return events if events[-1]["type"] == "run-end" else None


def _event(run: list[dict[str, Any]], event_type: str) -> dict[str, Any]:
    return next(event["data"] for event in run if event["type"] == event_type)


def _speech(run: list[dict[str, Any]]) -> str:
    response = _event(run, "intent-end")["intent_output"]["response"]
    return str(response["speech"]["plain"]["speech"])


def test_assist_answers_with_the_real_llm_server(
    assist_turn: AssistTurn, hass: HassClient, router: Router
) -> None:
    # The dialog opened on the router's pipeline, preferred by the harness.
    assert ROUTER_NAME in assist_turn.dialog_text.splitlines()
    assert QUESTION in assist_turn.dialog_text.splitlines()
    # Home Assistant ran the sentence through the router's agent, which
    # answered (no error), through the Pi: a real chat completion of
    # llama.cpp's server. The dialog shows that answer.
    assert _event(assist_turn.recorded_run, "intent-start")["engine"] == router.agent_id
    response = _event(assist_turn.recorded_run, "intent-end")["intent_output"][
        "response"
    ]
    assert response["response_type"] == "action_done"
    assert state_value(hass, router.last_backend_id) == "Pi"
    assert assist_turn.completions_after > assist_turn.completions_before
    assert shows_whole_answer(
        assist_turn.shown_answer, _speech(assist_turn.recorded_run)
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


def interact(page: Page, what: str, action: Callable[[], object]) -> None:
    """Do action once the element lets it (an opening or closing popup or
    animation may cover it for a moment)."""

    def attempt() -> bool:
        try:
            action()
        except ElementNotInteractableException, ElementClickInterceptedException:
            return False
        return True

    page.wait_for(what, attempt)


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
