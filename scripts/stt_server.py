"""A Wyoming speech-to-text server on pocketsphinx (run by scripts/stt-server).

For the demo and the end-to-end tests only: pocketsphinx's own en-US model,
shipped inside its package, recognizes a clearly spoken question well enough,
offline and in a fraction of a second. Home Assistant's `wyoming` integration
asks for Info (`describe`), then sends `transcribe`, `audio-start`, the
`audio-chunk`s and `audio-stop`, and waits for the `transcript`.
"""

from __future__ import annotations

import argparse
import asyncio
from functools import partial
from importlib.metadata import version
import logging

from pocketsphinx import Decoder  # type: ignore[import-untyped]
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
from wyoming.server import AsyncEventHandler, AsyncServer

RATE = 16000
"""What pocketsphinx's en-US model was trained on: 16 kHz, 16-bit, mono."""
LANGUAGE = "en"

_LOGGER = logging.getLogger("stt_server")


def info(model_version: str) -> Info:
    """What this server offers, as Home Assistant's `describe` reads it."""
    attribution = Attribution(name="CMU Sphinx", url="https://cmusphinx.github.io/")
    model = AsrModel(
        name="en-us",
        description="pocketsphinx's en-US model (in its package)",
        attribution=attribution,
        installed=True,
        version=model_version,
        languages=[LANGUAGE],
    )
    return Info(
        asr=[
            AsrProgram(
                name="pocketsphinx",
                description="Offline speech-to-text for the demo and the tests",
                attribution=attribution,
                installed=True,
                version=model_version,
                models=[model],
                # It only transcribes: Home Assistant's VAD ends the question.
                requires_external_vad=True,
            )
        ]
    )


class Decoders:
    """Loaded decoders, one per transcription running at the same time.

    Loading one takes a quarter of a second, so they are kept between
    requests; one is enough unless requests overlap.
    """

    def __init__(self) -> None:
        self._idle: list[Decoder] = [self._load()]

    @staticmethod
    def _load() -> Decoder:
        return Decoder(samprate=RATE, loglevel="FATAL")

    def take(self) -> Decoder:
        """An idle decoder, or a new one when all are busy."""
        return self._idle.pop() if self._idle else self._load()

    def give_back(self, decoder: Decoder) -> None:
        """Return a decoder that is not in an utterance."""
        self._idle.append(decoder)


class Transcription(AsyncEventHandler):
    """One client connection: Info on `describe`, a transcript per utterance."""

    def __init__(
        self,
        server_info: Info,
        decoders: Decoders,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        super().__init__(reader, writer)
        self._info = server_info
        self._decoders = decoders
        self._decoder: Decoder | None = None
        self._converter = AudioChunkConverter(rate=RATE, width=2, channels=1)

    async def handle_event(self, event: Event) -> bool:
        """Answer one event; False ends the connection."""
        if Describe.is_type(event.type):
            await self.write_event(self._info.event())
        elif Transcribe.is_type(event.type):
            language = Transcribe.from_event(event).language
            if language and not language.startswith(LANGUAGE):
                _LOGGER.warning("asked for %s; transcribing as %s", language, LANGUAGE)
        elif AudioStart.is_type(event.type):
            self._start()
        elif AudioChunk.is_type(event.type):
            # (Audio without audio-start starts an utterance too.)
            decoder = self._decoder or self._start()
            chunk = self._converter.convert(AudioChunk.from_event(event))
            # Decoding as the audio comes leaves little to do at audio-stop;
            # a chunk takes milliseconds, so the event loop is not held up.
            decoder.process_raw(chunk.audio, False, False)
        elif AudioStop.is_type(event.type):
            text = self._finish()
            _LOGGER.info("transcript: %r", text)
            await self.write_event(Transcript(text=text, language=LANGUAGE).event())
            return False
        return True

    def _start(self) -> Decoder:
        """Start an utterance (over, after a second audio-start); its decoder."""
        self._finish()
        self._converter = AudioChunkConverter(rate=RATE, width=2, channels=1)
        decoder = self._decoder = self._decoders.take()
        decoder.start_utt()
        return decoder

    def _finish(self) -> str:
        """End the utterance (if any); its best hypothesis."""
        decoder, self._decoder = self._decoder, None
        if decoder is None:
            return ""
        decoder.end_utt()
        hypothesis = decoder.hyp()
        self._decoders.give_back(decoder)
        return "" if hypothesis is None else str(hypothesis.hypstr)

    async def disconnect(self) -> None:
        """A client that left mid-utterance gives its decoder back."""
        self._finish()


async def serve(uri: str) -> None:
    """Serve on uri until stopped."""
    server = AsyncServer.from_uri(uri)
    handler = partial(Transcription, info(version("pocketsphinx")), Decoders())
    _LOGGER.info("serving on %s", uri)
    await server.run(handler)


def main() -> None:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uri", required=True, help="e.g. tcp://127.0.0.1:10300")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(serve(args.uri))


if __name__ == "__main__":
    main()
