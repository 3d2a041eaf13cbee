"""Tests of throughput statistics: each figure as the README defines it."""

from __future__ import annotations

import pytest

from custom_components.llm_router.engine.models import ServerStats
from custom_components.llm_router.engine.stats import StreamClock, summarize


def clock_with_output(started: float, times: list[float]) -> StreamClock:
    clock = StreamClock(started=started)
    for when in times:
        clock.token(when)
    return clock


def test_server_reported_speeds_win() -> None:
    server = ServerStats(
        prompt_tokens=30,
        completion_tokens=90,
        prompt_seconds=0.5,
        generation_seconds=10.0,
        load_seconds=1.5,
        output_chunks=2,
    )
    stats = summarize(server, clock_with_output(100.0, [101.0, 105.0]), 111.0)
    assert stats.generation_speed == pytest.approx(9.0)
    assert stats.prompt_speed == pytest.approx(60.0)
    assert stats.time_to_first_token == pytest.approx(1.0)
    assert stats.response_time == pytest.approx(11.0)
    assert (stats.prompt_tokens, stats.completion_tokens) == (30, 90)
    assert stats.load_time == 1.5
    assert stats.server_reported


def test_generation_measured_from_the_servers_token_count() -> None:
    # 11 tokens: the first at t=1, the last at t=3 -> 10 tokens in 2 s.
    server = ServerStats(prompt_tokens=20, completion_tokens=11, output_chunks=3)
    stats = summarize(server, clock_with_output(0.0, [1.0, 2.0, 3.0]), 3.5)
    assert stats.generation_speed == pytest.approx(5.0)
    assert stats.completion_tokens == 11
    assert not stats.server_reported


def test_prompt_speed_only_from_the_server() -> None:
    """The time to the first token holds queueing, loading and the network."""
    server = ServerStats(prompt_tokens=2000, completion_tokens=11)
    stats = summarize(server, clock_with_output(0.0, [4.0, 5.0]), 5.0)
    assert stats.prompt_speed is None
    assert stats.prompt_tokens == 2000


@pytest.mark.parametrize(
    ("cached", "processed", "speed"),
    [(None, 200, 400.0), (0, 200, 400.0), (100, 200, 400.0), (220, 1, None)],
)
def test_no_prompt_speed_from_a_mostly_cached_prompt(
    cached: int | None, processed: int, speed: float | None
) -> None:
    """A few processed tokens time llama.cpp's cost per batch, not its speed."""
    server = ServerStats(
        prompt_tokens=processed,
        prompt_cached_tokens=cached,
        prompt_seconds=processed / 400.0,
    )
    stats = summarize(server, clock_with_output(0.0, [0.5]), 1.0)
    assert stats.prompt_speed == (None if speed is None else pytest.approx(speed))
    assert (stats.prompt_tokens, stats.prompt_cached_tokens) == (processed, cached)


def test_without_a_count_each_chunk_is_a_token() -> None:
    """Not each event: one chunk can carry reasoning and text."""
    server = ServerStats(output_chunks=4)
    clock = clock_with_output(0.0, [0.5, 1.0, 1.0, 1.5, 2.0])
    stats = summarize(server, clock, 3.0)
    assert stats.generation_speed == pytest.approx(2.0)
    assert stats.completion_tokens is None


def test_nothing_streamed() -> None:
    stats = summarize(ServerStats(), StreamClock(started=0.0), 2.0)
    assert stats.time_to_first_token is None
    assert stats.generation_speed is None
    assert stats.completion_tokens is None
    assert stats.response_time == 2.0


@pytest.mark.parametrize(
    "server",
    [
        ServerStats(completion_tokens=5, generation_seconds=0.0),
        ServerStats(completion_tokens=0, generation_seconds=1.0, output_chunks=1),
        ServerStats(output_chunks=1),
    ],
)
def test_no_speed_without_tokens_or_time(server: ServerStats) -> None:
    stats = summarize(server, clock_with_output(0.0, [1.0]), 1.0)
    assert stats.generation_speed is None
