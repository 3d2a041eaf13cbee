"""The router in a real Assist voice pipeline: real Home Assistant, real Piper.

Each test runs `assist_pipeline/run` to speech, as the Assist dialog does,
with a local Piper voice (scripts/tts-server) behind Home Assistant's own
`wyoming` integration: from text, or from a question Piper spoke, heard by
pocketsphinx (scripts/stt-server) through the same integration. "Pi" is the real llama.cpp server,
or an Ollama fake where the answer must be scripted (its reasoning, or a
Pi's pace, which keeps a several-sentence answer streaming long enough for
the order of events to say something).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count
from pathlib import Path

import pytest

from tests.e2e.hass_process import HassClient, state_value
from tests.e2e.router_setup import (
    BackendSpec,
    add_backend,
    create_router,
    gpu_backend_down,
    pi_backend,
    remove_router,
)
from tests.e2e.servers import Server
from tests.e2e.voice import (
    Listener,
    Speaker,
    SpokenTurn,
    ask_aloud,
    question_wav,
    save_wav,
    serving,
    speak,
    speaking_pipeline,
)
from tests.fakes.base import Reply
from tests.fakes.ollama_server import FakeOllama

pytestmark = pytest.mark.e2e

PIPER_RATE = 22050
SENTENCES = (
    "A bedroom sleeps best when it is cool. "
    "Around eighteen degrees suits most people at night. "
    "Keep the room dark and the air fresh. "
    "A window left open a little helps on mild nights."
)
REASONING = "The user asks about plants; SECRET-REASONING says keep it short."
_names = (f"Voice {number}" for number in count(1))


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    """An Ollama fake on 127.0.0.1, served from a thread."""
    with serving(FakeOllama()) as server:
        yield server


def spoken(
    hass: HassClient, speaker: Speaker, first: BackendSpec, question: str
) -> SpokenTurn:
    """A new router with first as its backend, asked through a pipeline."""
    router = create_router(hass, next(_names), first)
    try:
        pipeline = speaking_pipeline(hass, router.name, router.agent_id, speaker)
        return speak(hass, pipeline, question)
    finally:
        remove_router(hass, router)


def test_an_answer_is_spoken_as_a_22050_hz_wav(
    hass: HassClient, llm_server: Server, speaker: Speaker, tmp_path: Path
) -> None:
    turn = spoken(
        hass, speaker, pi_backend(llm_server), "How often should I water a cactus?"
    )

    assert not turn.errors
    assert turn.answer.strip()
    assert [e.type for e in turn.events if not e.type.startswith("intent-")] == [
        "run-start",
        "tts-start",
        "tts-end",
        "run-end",
    ]
    wav = save_wav(turn.audio, tmp_path / "answer.wav")
    assert (wav.rate, wav.channels, wav.sample_bytes) == (PIPER_RATE, 1, 2)
    assert wav.seconds > 0


def test_first_audio_is_ready_before_the_answer_ends(
    hass: HassClient, speaker: Speaker, fake: FakeOllama
) -> None:
    # A Pi's pace: the answer streams for several seconds.
    fake.default_reply = Reply(text=SENTENCES, tokens_per_second=8)

    turn = spoken(
        hass,
        speaker,
        BackendSpec("Pi", "ollama", fake.url, "llama3.2", priority=1),
        "What temperature is best for a bedroom?",
    )

    assert not turn.errors
    assert turn.answer == SENTENCES
    assert turn.first_word is not None
    assert turn.first_audio is not None
    assert turn.tts_streaming_started is not None
    assert turn.agent_done is not None
    # In order: the first word, the TTS fed while the agent talks, the first
    # audio, and only then the end of the agent's answer.
    assert turn.first_word <= turn.tts_streaming_started < turn.first_audio
    assert turn.first_audio < turn.agent_done


@pytest.mark.parametrize(
    ("model", "thinking", "reply"),
    [
        pytest.param(
            "qwen3", "on", Reply(text=SENTENCES, thinking=REASONING), id="field"
        ),
        pytest.param(
            "llama3.2",
            "off",
            Reply(text=SENTENCES, thinking=REASONING, inline_think=True),
            id="inline-tags",
        ),
    ],
)
def test_reasoning_never_reaches_the_speech(
    hass: HassClient,
    speaker: Speaker,
    fake: FakeOllama,
    model: str,
    thinking: str,
    reply: Reply,
) -> None:
    fake.default_reply = reply
    backend = BackendSpec(
        "Pi", "ollama", fake.url, model, priority=1, options={"thinking": thinking}
    )

    turn = spoken(hass, speaker, backend, "How often should I water a fern?")

    assert not turn.errors
    # The reasoning reached the chat log, as reasoning (the dialog shows it)...
    assert "SECRET-REASONING" in turn.thinking
    # ...and nothing of it what the TTS was fed, streamed or whole.
    assert turn.tts_streaming_started is not None
    assert turn.spoken_text == SENTENCES
    assert turn.tts_input == SENTENCES
    assert turn.audio


def test_a_fallback_turn_still_speaks(
    hass: HassClient, llm_server: Server, speaker: Speaker, tmp_path: Path
) -> None:
    router = create_router(hass, next(_names), pi_backend(llm_server))
    try:
        add_backend(hass, router, gpu_backend_down())
        pipeline = speaking_pipeline(hass, router.name, router.agent_id, speaker)

        turn = speak(hass, pipeline, "Give me one tip to save energy.")

        assert not turn.errors
        assert state_value(hass, router.last_backend_id) == "Pi"
        assert state_value(hass, router.fallbacks_id) == "1"
    finally:
        remove_router(hass, router)
    assert turn.answer.strip()
    assert "none of the language model servers" not in turn.answer
    assert save_wav(turn.audio, tmp_path / "fallback.wav").seconds > 0


def test_a_spoken_question_is_heard_answered_and_spoken(
    hass: HassClient,
    llm_server: Server,
    speaker: Speaker,
    listener: Listener,
    tmp_path: Path,
) -> None:
    question = question_wav("What is the capital of France?", tmp_path / "q.wav")
    router = create_router(hass, next(_names), pi_backend(llm_server))
    try:
        pipeline = speaking_pipeline(
            hass, router.name, router.agent_id, speaker, listener=listener
        )

        turn = ask_aloud(hass, pipeline, question)
    finally:
        remove_router(hass, router)

    assert not turn.errors
    # Home Assistant's VAD heard the question start and end, pocketsphinx
    # what it said, and that went to the router.
    assert [e.type for e in turn.events if not e.type.startswith("intent-")] == [
        "run-start",
        "stt-start",
        "stt-vad-start",
        "stt-vad-end",
        "stt-end",
        "tts-start",
        "tts-end",
        "run-end",
    ]
    assert turn.transcript is not None
    assert {"capital", "france"} <= set(turn.transcript.split())
    intent = turn.first("intent-start")
    assert intent is not None
    assert intent.data["engine"] == router.agent_id
    assert intent.data["intent_input"] == turn.transcript
    assert turn.answer.strip()
    wav = save_wav(turn.audio, tmp_path / "answer.wav")
    assert (wav.rate, wav.channels, wav.sample_bytes) == (PIPER_RATE, 1, 2)
    assert wav.seconds > 0
