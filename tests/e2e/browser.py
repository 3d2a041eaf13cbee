"""Home Assistant's own frontend in headless Chromium, for the browser tests.

Chromium and chromedriver are Debian's packages (scripts/setup installs
them); Selenium only talks to the chromedriver started here, so it never
looks for or downloads anything.

The frontend is web components inside shadow roots, so the page is read by
scripts that walk them. Each step leaves a screenshot and the page's text in
a folder under .test-artifacts/, for the developer to look at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
import re
import shutil
import time

from selenium.common.exceptions import (
    ElementClickInterceptedException,
    ElementNotInteractableException,
)
from selenium.webdriver import ChromeOptions, Remote
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement

from tests.e2e.hass_process import Credentials, HassClient
from tests.e2e.servers import ROOT, Server, start_server
from tests.fakes.base import free_port

ARTIFACTS_ROOT = ROOT / ".test-artifacts"
"""Where each browser test module keeps its screenshots, in a folder of its own."""
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

    def __init__(self, driver: Remote, base_url: str, artifacts: Path) -> None:
        self.driver = driver
        self.base_url = base_url
        self.artifacts = artifacts
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
            err.add_note(f"screenshots and page texts: {self.artifacts}")
            raise
        self.keep(stem)

    def keep(self, stem: str) -> None:
        """Save a screenshot and the page's text in the artifacts folder."""
        self.driver.save_screenshot(str(self.artifacts / f"{stem}.png"))
        (self.artifacts / f"{stem}.txt").write_text(
            f"{self.driver.current_url}\n\n{self.text()}\n"
        )


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


def start_chromedriver(log: Path) -> Server:
    """Debian's chromedriver on a loopback port.

    Started here rather than by Selenium, which would look for drivers and
    browsers (and may download them) and talks to "localhost".
    """
    port = free_port()
    return start_server(
        "chromedriver",
        [CHROMEDRIVER, f"--port={port}"],
        port=port,
        ready_path="/status",
        log=log,
        timeout=30,
    )


@contextmanager
def logged_in(
    hass: HassClient,
    chromedriver: Server,
    profile: Path,
    artifacts: Path,
    arguments: Sequence[str] = (),
) -> Iterator[Page]:
    """Chromium (with more arguments), logged in as the owner, on the dashboard.

    The artifacts folder is emptied first.
    """
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    options = ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (*CHROMIUM_ARGUMENTS, *arguments):
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={profile}")
    driver = Remote(command_executor=chromedriver.url, options=options)
    try:
        page = Page(driver, hass.server.url, artifacts)
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


def open_assist(page: Page) -> WebElement:
    """Open the Assist dialog from the top bar; its chat."""
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
    return page.wait_for_element("the Assist dialog", "ha-assist-chat")
