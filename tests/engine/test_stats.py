"""Tests of throughput statistics."""

from __future__ import annotations

import pytest

from custom_components.llm_router.engine.models import ServerStats
from custom_components.llm_router.engine.stats import StreamClock, summarize


def clock_with_tokens(started: float, times: list[float]) -> StreamClock:
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
    )
    stats = summarize(server, clock_with_tokens(100.0, [101.0, 105.0]), 111.0)
    assert stats.generation_speed == pytest.approx(9.0)
    assert stats.prompt_speed == pytest.approx(60.0)
    assert stats.time_to_first_token == pytest.approx(1.0)
    assert stats.response_time == pytest.approx(11.0)
    assert stats.load_time == 1.5
    assert stats.server_reported


def test_client_measured_from_usage_counts() -> None:
    # 11 tokens: the first at t=1, the last at t=3 -> 10 tokens in 2 s.
    server = ServerStats(prompt_tokens=20, completion_tokens=11)
    stats = summarize(server, clock_with_tokens(0.0, [1.0, 2.0, 3.0]), 3.5)
    assert stats.generation_speed == pytest.approx(5.0)
    assert stats.prompt_speed == pytest.approx(20.0)
    assert not stats.server_reported


def test_client_measured_from_chunks_without_usage() -> None:
    stats = summarize(ServerStats(), clock_with_tokens(0.0, [0.5, 1.0, 1.5, 2.5]), 3.0)
    assert stats.generation_speed == pytest.approx(1.5)
    assert stats.completion_tokens == 4
    assert stats.prompt_speed is None


def test_nothing_streamed() -> None:
    stats = summarize(ServerStats(), StreamClock(started=0.0), 2.0)
    assert stats.time_to_first_token is None
    assert stats.generation_speed is None
    assert stats.completion_tokens is None
    assert stats.response_time == 2.0


def test_zero_duration_is_not_a_speed() -> None:
    server = ServerStats(completion_tokens=5, generation_seconds=0.0)
    stats = summarize(server, clock_with_tokens(0.0, [1.0]), 1.0)
    assert stats.generation_speed is None
