"""The Assist dialog's microphone, in headless Chromium: a spoken question is
heard, answered by the router and the answer is played aloud.

The pipeline "LLM Router", the preferred one, hears with pocketsphinx
(scripts/stt-server) and speaks with Piper (scripts/tts-server), both
through Home Assistant's `wyoming` integration, as scripts/demo --keep
leaves it. Chromium's fake microphone plays a WAV file made at test time:
Piper saying the question, in silence (the file loops). A script in the
page records every media element's play(): its source, whether the promise
resolved and whether the audio played to its end (headless Chromium plays
into a silent sink, in real time). Screenshots and the page's text go to
.test-artifacts/voice-dialog/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
import re
from typing import Any
import urllib.request

import pytest

from tests.e2e.browser import (
    ARTIFACTS_ROOT,
    Page,
    interact,
    logged_in,
    open_assist,
    shows_whole_answer,
)
from tests.e2e.hass_process import HassClient
from tests.e2e.pipelines import first_finished_run, run_event, run_speech
from tests.e2e.router_setup import Router, create_router, pi_backend
from tests.e2e.servers import Server
from tests.e2e.voice import (
    Listener,
    Speaker,
    question_wav,
    save_wav,
    speaking_pipeline,
)

pytestmark = pytest.mark.e2e

ARTIFACTS = ARTIFACTS_ROOT / "voice-dialog"
QUESTION = "What is the capital of France?"
ROUTER_NAME = "LLM Router"

# Installed before the page's own scripts: each play() is recorded.
_RECORD_PLAYS = """
window.llmRouterPlays = [];
const play = HTMLMediaElement.prototype.play;
HTMLMediaElement.prototype.play = function (...args) {
  const record = {src: this.src, resolved: null, error: null, ended: false,
                  duration: null};
  window.llmRouterPlays.push(record);
  this.addEventListener("ended", () => {
    record.ended = true;
    record.duration = this.duration;
  }, {once: true});
  const promise = play.apply(this, args);
  promise.then(() => { record.resolved = true; },
               (error) => { record.resolved = false; record.error = String(error); });
  return promise;
};
"""


def _recognisably(question: str, transcript: str) -> bool:
    """Whether the transcript is recognisably the question.

    Chromium's fake microphone captures in real time: on a loaded machine a
    word or two may come through garbled ("what the cap fri..." once), so
    words count by their first three letters, and half of them must be heard.
    """

    def stems(text: str) -> set[str]:
        return {word[:3] for word in re.findall(r"[a-z]+", text.lower())}

    asked = stems(question)
    return 2 * len(asked & stems(transcript)) >= len(asked)


@pytest.fixture(scope="module")
def question(e2e_dir: Path) -> Path:
    """The question as Chromium's fake microphone plays it."""
    return question_wav(QUESTION, e2e_dir / "voice-dialog" / "question.wav")


@pytest.fixture(scope="module")
def router(hass: HassClient, llm_server: Server) -> Router:
    """A router whose only backend is the real LLM server."""
    return create_router(hass, ROUTER_NAME, pi_backend(llm_server))


@pytest.fixture(scope="module")
def pipeline(
    hass: HassClient, router: Router, speaker: Speaker, listener: Listener
) -> str:
    """The demo's pipeline: it hears, answers with the router and speaks."""
    return speaking_pipeline(
        hass, ROUTER_NAME, router.agent_id, speaker, listener=listener, preferred=True
    )


@pytest.fixture(scope="module")
def page(
    hass: HassClient, chromedriver: Server, e2e_dir: Path, question: Path
) -> Iterator[Page]:
    """Chromium with the question in its microphone, logged in as the owner."""
    with logged_in(
        hass,
        chromedriver,
        e2e_dir / "chromium-voice-profile",
        ARTIFACTS,
        (
            # Grant the microphone without asking, and feed it the file.
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={question}",
            "--autoplay-policy=no-user-gesture-required",
        ),
    ) as page:
        page.driver.execute_cdp_cmd(
            "Page.addScriptToEvaluateOnNewDocument", {"source": _RECORD_PLAYS}
        )
        yield page


def test_the_dialog_hears_a_question_and_speaks_the_answer(
    hass: HassClient, router: Router, pipeline: str, page: Page
) -> None:
    with page.step("assist-dialog"):
        chat = open_assist(page)
        microphone = page.wait_for(
            "the dialog's microphone button",
            lambda: [
                button
                for button in page.find("ha-icon-button", chat)
                if button.get_property("label") == "Start listening"
            ],
        )[0]
        dialog = page.find("ha-voice-command-dialog")[0]
        assert ROUTER_NAME in page.text(dialog).splitlines()

    with page.step("assist-spoken"):
        interact(page, "to click the microphone", microphone.click)
        run = page.wait_for(
            "the pipeline run to end",
            lambda: first_finished_run(hass, pipeline),
            timeout=240,
        )
        speech = run_speech(run)
        transcript = run_event(run, "stt-end")["stt_output"]["text"]

        def shown() -> list[str] | None:
            # The greeting, what was heard, then the whole answer.
            texts = [page.text(message) for message in page.find(".message", chat)]
            return (
                texts
                if len(texts) >= 3 and shows_whole_answer(texts[2], speech)
                else None
            )

        messages = page.wait_for(f"the dialog to show {speech!r}", shown)
        audio_url = hass.server.url + run_event(run, "run-start")["tts_output"]["url"]
        plays = page.wait_for(
            "the answer to be played to its end",
            lambda: _played_to_the_end(page, audio_url),
            timeout=120,
        )

    # Heard: pocketsphinx's transcript, once Home Assistant's VAD heard the
    # question end, is the user's message and what the router was asked.
    assert not [event for event in run if event["type"] == "error"]
    assert "stt-vad-end" in [event["type"] for event in run]
    assert _recognisably(QUESTION, transcript)
    assert messages[1] == transcript
    intent = run_event(run, "intent-start")
    assert intent["engine"] == router.agent_id
    assert intent["intent_input"] == transcript
    # Answered by the router, shown whole.
    assert speech.strip()
    # Spoken: the dialog played the answer's audio through to its end.
    assert any(play["duration"] > 0 for play in plays)
    with urllib.request.urlopen(audio_url, timeout=60) as response:
        audio = response.read()
    assert save_wav(audio, ARTIFACTS / "answer.wav").seconds > 0


def _played_to_the_end(page: Page, url: str) -> list[dict[str, Any]] | None:
    """The page's plays of url whose promise resolved and that ended, if any."""
    plays: list[dict[str, Any]] = page.driver.execute_script(
        "return window.llmRouterPlays"
    )
    ended = [
        play
        for play in plays or []
        if play["src"] == url and play["resolved"] and play["ended"]
    ]
    return ended or None
