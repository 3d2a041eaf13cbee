"""Time to first audio: from a question's text to the first byte of its answer's audio.

One real Home Assistant 2026.11.0, one Piper voice (scripts/tts-server,
through Home Assistant's wyoming integration), one Assist pipeline per
agent that differs only in its conversation agent; each question runs
`assist_pipeline/run` from intent to TTS as the Assist dialog does, and the
answer's audio is fetched while the agent still talks. The agents:

  router (llama-server)  LLM Router with the real llama.cpp server and
                         SmolLM2 (scripts/llm-server)
  core ollama (fake)     Home Assistant core's ollama integration against
                         a loopback Ollama fake
  router (fake)          LLM Router against the same fake

The fake answers every request with the same several sentences at --pace
words per second. Rounds go round-robin so that drift hits all alike.
Reported per agent (medians): the time to the first answer word, the
answer characters Home Assistant waits for before it starts the TTS
(assist_pipeline's STREAM_RESPONSE_CHARS) and when that was, Piper's first
sentence (TTS started to first audio byte), and the time to first audio.
Then LLM Router's ratio to core's ollama (same fake) and what it adds
between its first word and its first audio (median of per-round
differences).

    .venv/bin/python -m bench.time_to_first_audio [--rounds 8] [--pace 10]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
import statistics
import tempfile

from tests.e2e.hass_process import Credentials, HassClient, onboard, start_hass
from tests.e2e.router_setup import (
    FLOW,
    SUBENTRY_FLOW,
    BackendSpec,
    create_router,
    pi_backend,
    run_flow,
)
from tests.e2e.servers import (
    HarnessError,
    install_llm_server,
    start_llm_server,
    wait_until,
)
from tests.e2e.voice import (
    SpokenTurn,
    add_wyoming_tts,
    install_tts_server,
    serving,
    speak,
    speaking_pipeline,
    start_tts_server,
)
from tests.fakes.base import Reply
from tests.fakes.ollama_server import FakeOllama

QUESTION = "What temperature is best for a bedroom at night?"
ANSWER = (
    "A bedroom sleeps best when it is cool. "
    "Around eighteen degrees suits most people at night. "
    "Keep the room dark and the air fresh."
)
FAKE_MODEL = "llama3.2:latest"


def add_core_ollama(hass: HassClient, url: str, model: str) -> str:
    """Core's ollama integration for url with a conversation agent; its id."""
    entry_id = run_flow(hass, FLOW, {"handler": "ollama"}, [("user", {"url": url})])[
        "result"
    ]["entry_id"]
    run_flow(
        hass,
        SUBENTRY_FLOW,
        {"handler": [entry_id, "conversation"]},
        [("set_options", {"name": "Ollama", "model": model})],
    )
    found: list[str] = []

    def agent_added() -> bool:
        registry = hass.websocket({"type": "config/entity_registry/list"})
        found[:] = [
            item["entity_id"]
            for item in registry
            if item["config_entry_id"] == entry_id
            and item["entity_id"].startswith("conversation.")
        ]
        return bool(found) and hass.get(f"/api/states/{found[0]}", missing_ok=True)

    wait_until(agent_added, timeout=60, what="core ollama's agent", server=hass.server)
    return found[0]


def median(turns: list[SpokenTurn], value: Callable[[SpokenTurn], float | None]) -> str:
    """The median of a measurement over turns, in seconds; "-" if never seen."""
    values = [v for turn in turns if (v := value(turn)) is not None]
    return f"{statistics.median(values):.2f}" if values else "-"


def between(start: float | None, end: float | None) -> float | None:
    """end - start, when both happened."""
    return None if start is None or end is None else end - start


def main(rounds: int, pace: float) -> None:
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        print("starting the servers and Home Assistant ...", flush=True)
        install_llm_server(work / "llm-server-install.log")
        install_tts_server(work / "tts-server-install.log")
        llm = stack.enter_context(start_llm_server(work / "llm-server.log"))
        tts = stack.enter_context(start_tts_server(work / "tts-server.log"))
        fake = stack.enter_context(serving(FakeOllama()))
        fake.default_reply = Reply(text=ANSWER, tokens_per_second=pace)
        hass_server = stack.enter_context(
            start_hass(work / "config", work / "home-assistant.out")
        )
        hass = HassClient(hass_server)
        onboard(hass, Credentials())
        speaker = add_wyoming_tts(hass, tts)
        real = create_router(hass, "Router real", pi_backend(llm))
        routed = create_router(
            hass,
            "Router fake",
            BackendSpec("Pi", "ollama", fake.url, FAKE_MODEL, priority=1),
        )
        agents = {
            "router (llama-server)": real.agent_id,
            "core ollama (fake)": add_core_ollama(hass, fake.url, FAKE_MODEL),
            "router (fake)": routed.agent_id,
        }
        pipelines = {
            name: speaking_pipeline(hass, name, agent, speaker)
            for name, agent in agents.items()
        }
        turns: dict[str, list[SpokenTurn]] = {name: [] for name in agents}
        for pipeline in pipelines.values():  # voice loading, connections
            speak(hass, pipeline, QUESTION)
        for _ in range(rounds):
            for name, pipeline in pipelines.items():
                turn = speak(hass, pipeline, QUESTION)
                if turn.errors or not turn.audio:
                    raise HarnessError(f"{name}: no spoken answer {turn.errors}")
                turns[name].append(turn)

    print(
        f"\n{rounds} rounds, Piper en_US-joe-medium; the fake says "
        f"{len(ANSWER)} characters at {pace:g} words/s"
    )
    header = (
        f"{'agent':<23}{'first word':>11}{'chars':>7}{'TTS start':>10}"
        f"{'Piper 1st':>10}{'first audio':>12}{'answer done':>12}"
    )
    print(header + "\n" + "-" * len(header))
    for name, spoken in turns.items():
        chars = [c for turn in spoken if (c := turn.characters_before_tts) is not None]
        waited = f"{statistics.median(chars):.0f}" if chars else "-"
        print(
            f"{name:<23}"
            f"{median(spoken, lambda t: t.first_word):>10}s"
            f"{waited:>7}"
            f"{median(spoken, lambda t: t.tts_streaming_started):>9}s"
            f"{median(spoken, lambda t: between(t.tts_streaming_started, t.first_audio)):>9}s"
            f"{median(spoken, lambda t: t.first_audio):>11}s"
            f"{median(spoken, lambda t: t.agent_done):>11}s"
        )
    core, router = turns["core ollama (fake)"], turns["router (fake)"]

    def gap(turn: SpokenTurn) -> float:
        return float(between(turn.first_word, turn.first_audio) or 0.0)

    ratio = statistics.median(
        (r.first_audio or 0.0) / (c.first_audio or 1.0)
        for r, c in zip(router, core, strict=True)
    )
    added = statistics.median(
        gap(r) - gap(c) for r, c in zip(router, core, strict=True)
    )
    added_first = statistics.median(
        (r.first_word or 0.0) - (c.first_word or 0.0)
        for r, c in zip(router, core, strict=True)
    )
    print(
        f"\nLLM Router / core ollama, time to first audio (same fake): {ratio:.3f}"
        f"\nLLM Router's added time to the first word: {added_first * 1000:+.0f} ms;"
        f" from the first word to the first audio: {added * 1000:+.0f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--pace", type=float, default=10.0)
    arguments = parser.parse_args()
    main(arguments.rounds, arguments.pace)
