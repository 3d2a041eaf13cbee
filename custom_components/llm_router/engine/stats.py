"""Throughput statistics of one generation.

Server-reported numbers win (Ollama's eval durations, llama.cpp timings);
otherwise speeds are measured on the client from chunk arrival times.
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import ServerStats


@dataclass(frozen=True, slots=True)
class GenerationStats:
    """Timings and speeds of one completed generation (seconds, tokens/s)."""

    time_to_first_token: float | None
    response_time: float
    prompt_tokens: int | None
    completion_tokens: int | None
    generation_speed: float | None
    prompt_speed: float | None
    load_time: float | None
    server_reported: bool


@dataclass(slots=True)
class StreamClock:
    """Arrival times of one stream, relative to when the request was sent."""

    started: float
    first_token: float | None = None
    last_token: float | None = None
    tokens: int = 0

    def token(self, now: float) -> None:
        """Note one streamed piece of output."""
        if self.first_token is None:
            self.first_token = now
        self.last_token = now
        self.tokens += 1


def _rate(count: int | None, seconds: float | None) -> float | None:
    if count is None or not seconds or seconds <= 0:
        return None
    return count / seconds


def summarize(
    server: ServerStats, clock: StreamClock, finished: float
) -> GenerationStats:
    """Combine what the server reported with what the client measured."""
    ttft = None if clock.first_token is None else clock.first_token - clock.started
    generation_speed = _rate(server.completion_tokens, server.generation_seconds)
    prompt_speed = _rate(server.prompt_tokens, server.prompt_seconds)
    server_reported = generation_speed is not None
    if generation_speed is None and clock.first_token is not None:
        # The first token's time is prompt processing; decoding is the rest.
        tokens = server.completion_tokens or clock.tokens
        assert clock.last_token is not None
        generation_speed = _rate(tokens - 1, clock.last_token - clock.first_token)
    if prompt_speed is None:
        prompt_speed = _rate(server.prompt_tokens, ttft)
    return GenerationStats(
        time_to_first_token=ttft,
        response_time=finished - clock.started,
        prompt_tokens=server.prompt_tokens,
        completion_tokens=server.completion_tokens or clock.tokens or None,
        generation_speed=generation_speed,
        prompt_speed=prompt_speed,
        load_time=server.load_seconds,
        server_reported=server_reported,
    )
