"""Throughput statistics of one generation.

Each figure is defined once, here and in the README's entities table.
Server-reported numbers win (Ollama's eval durations, llama.cpp timings);
otherwise generation speed is measured on the client from chunk arrival
times. Times count from when the request was sent, after any wait for a
free slot.
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import ServerStats


@dataclass(frozen=True, slots=True)
class GenerationStats:
    """Timings and speeds of one completed generation (seconds, tokens/s)."""

    time_to_first_token: float | None
    """Request sent to first streamed output (reasoning, text, tool call)."""
    response_time: float
    """Request sent to the end of the stream."""
    prompt_tokens: int | None
    """As the server counts them; None when it does not say."""
    prompt_cached_tokens: int | None
    """Prompt tokens the server took from its cache; None when it does not say."""
    completion_tokens: int | None
    """As the server counts them, reasoning included; None when it does not say."""
    generation_speed: float | None
    """Completion tokens per second of decoding: the server's durations, else
    from the first streamed output to the last (the first token ends the
    prompt, so it is not counted). Without a count, each chunk that carried
    output is a token."""
    prompt_speed: float | None
    """Prompt tokens per second of prompt processing, as the server reports it;
    None otherwise (the time to the first token also holds queueing, model
    loading and the network), and None when the server's cache held most of
    the prompt: the few tokens it processed time its fixed cost per batch,
    not its speed (a second turn of a conversation: 1 token in 40 ms)."""
    load_time: float | None
    server_reported: bool
    """Whether generation_speed is the server's own."""


@dataclass(slots=True)
class StreamClock:
    """When a stream's output arrived (event loop time)."""

    started: float
    first_token: float | None = None
    last_token: float | None = None

    def token(self, now: float) -> None:
        """Note that a piece of output arrived."""
        if self.first_token is None:
            self.first_token = now
        self.last_token = now


def _rate(count: int | None, seconds: float | None) -> float | None:
    if count is None or count <= 0 or seconds is None or seconds <= 0:
        return None
    return count / seconds


def _mostly_cached(server: ServerStats) -> bool:
    cached, processed = server.prompt_cached_tokens, server.prompt_tokens
    return cached is not None and processed is not None and cached > processed


def summarize(
    server: ServerStats, clock: StreamClock, finished: float
) -> GenerationStats:
    """Combine what the server reported with what the client measured."""
    ttft = None if clock.first_token is None else clock.first_token - clock.started
    generation_speed = _rate(server.completion_tokens, server.generation_seconds)
    server_reported = generation_speed is not None
    if generation_speed is None and clock.first_token is not None:
        assert clock.last_token is not None
        tokens = (
            server.output_chunks
            if server.completion_tokens is None
            else server.completion_tokens
        )
        generation_speed = _rate(tokens - 1, clock.last_token - clock.first_token)
    return GenerationStats(
        time_to_first_token=ttft,
        response_time=finished - clock.started,
        prompt_tokens=server.prompt_tokens,
        prompt_cached_tokens=server.prompt_cached_tokens,
        completion_tokens=server.completion_tokens,
        generation_speed=generation_speed,
        prompt_speed=None
        if _mostly_cached(server)
        else _rate(server.prompt_tokens, server.prompt_seconds),
        load_time=server.load_seconds,
        server_reported=server_reported,
    )
