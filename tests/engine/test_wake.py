"""Tests of waking and sleeping one backend's server, against a booting fake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from custom_components.llm_router.engine.errors import (
    ActionFailed,
    BackendError,
    ErrorKind,
)
from custom_components.llm_router.engine.models import (
    BackendConfig,
    BackendKind,
    ChatMessage,
    ChatRequest,
)
from custom_components.llm_router.engine.ollama import OllamaBackend
from custom_components.llm_router.engine.openai import OpenAIBackend
from custom_components.llm_router.engine.router import Router
from custom_components.llm_router.engine.settings import RouterSettings
from custom_components.llm_router.engine.turn import Turn
from custom_components.llm_router.engine.wake import (
    Power,
    PowerConfig,
    PowerState,
    WakeTiming,
)
from tests.conftest import until
from tests.fakes.base import Reply
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.power import SleepingMachine

# Short, so the tests run fast; the proportions are the real ones'.
TIMING = WakeTiming(probe_interval=0.02, margin=0.2, retry_after=0.5)


@pytest.fixture
async def machine() -> AsyncIterator[SleepingMachine]:
    machine = SleepingMachine(FakeOpenAI(), boot_time=0.1)
    yield machine
    await machine.off()


class Harness:
    """A Power for the machine, probing it with a real backend client."""

    def __init__(
        self,
        machine: SleepingMachine,
        session: aiohttp.ClientSession,
        *,
        wake: Callable[[], Awaitable[None]] | None = None,
        **config: Any,
    ) -> None:
        self.backend = OpenAIBackend(
            BackendConfig(
                name="gpu", kind=BackendKind.OPENAI, url=machine.url, model="m"
            ),
            session,
        )
        self.errors: list[BackendError] = []
        self.changes = 0
        self.busy = False
        self.probes: list[bool] = []
        self.power = Power(
            PowerConfig(wake=wake or machine.wake, **config),
            name="gpu",
            probe=self.probe,
            in_flight=lambda: self.busy,
            report=self.errors.append,
            changed=self.changed,
            timing=TIMING,
        )

    def changed(self) -> None:
        self.changes += 1

    async def probe(self) -> bool:
        try:
            await self.backend.probe()
        except BackendError:
            self.probes.append(False)
        else:
            self.probes.append(True)
        self.power.note_probe(self.probes[-1])
        return self.probes[-1]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_a_wake_probes_until_the_server_answers_and_learns_the_time(
    machine: SleepingMachine, session: aiohttp.ClientSession
) -> None:
    harness = Harness(machine, session, wake_time=0.05)
    power = harness.power
    assert power.state(online=False) is PowerState.ASLEEP

    assert power.wake_on_demand()
    assert power.state(online=False) is PowerState.WAKING
    await until(lambda: not power.waking)

    assert machine.wakes == 1
    assert machine.awake
    assert harness.probes[-1] is True
    assert harness.probes.count(False) >= 1
    assert power.state(online=True) is PowerState.AWAKE
    assert power.last_woken is not None
    learnt = power.learnt_wake_time
    assert learnt is not None
    # Learnt from the wake, not the configured guess: at least the boot.
    assert learnt >= machine.boot_time
    assert power.wake_time == learnt
    assert harness.errors == []


async def test_turns_run_the_wake_action_once_per_retry_time(
    machine: SleepingMachine, session: aiohttp.ClientSession
) -> None:
    machine.boot_time = 10.0  # boots too late for this test
    harness = Harness(machine, session, wake_time=0.05)
    power = harness.power

    results = [power.wake_on_demand() for _ in range(5)]

    assert results == [True] * 5
    await until(lambda: not power.waking)
    assert machine.wakes == 1
    # Ran out, and within retry_after of the last run: no new action.
    assert not power.wake_on_demand()
    assert machine.wakes == 1
    await asyncio.sleep(TIMING.retry_after)
    assert power.wake_on_demand()
    await until(lambda: machine.wakes == 2)
    await power.close()


async def test_a_wake_that_never_answers_is_reported(
    machine: SleepingMachine, session: aiohttp.ClientSession
) -> None:
    machine.boot_time = 10.0
    harness = Harness(machine, session, wake_time=0.05)
    power = harness.power

    assert not await power.wake(wait=True)

    assert [error.kind for error in harness.errors] == [ErrorKind.DID_NOT_WAKE]
    assert harness.errors[0].message.startswith("did not wake within")
    assert power.failed_wakes == 1
    assert power.learnt_wake_time is None
    assert power.last_woken is None
    assert power.state(online=False) is PowerState.UNREACHABLE
    await power.close()


async def test_a_failing_wake_action_is_reported_and_counted(
    machine: SleepingMachine, session: aiohttp.ClientSession
) -> None:
    async def broken() -> None:
        raise ActionFailed("wake action: switch.plug not found")

    harness = Harness(machine, session, wake=broken)

    assert not await harness.power.wake(wait=True)

    assert [error.kind for error in harness.errors] == [ErrorKind.ACTION_FAILED]
    assert harness.probes == []
    assert harness.power.failed_wakes == 1


async def test_a_good_wake_resets_the_failures(
    machine: SleepingMachine, session: aiohttp.ClientSession
) -> None:
    machine.boot_time = 10.0
    harness = Harness(machine, session, wake_time=0.05)
    power = harness.power
    assert not await power.wake(wait=True)
    await machine.off()  # the late boot is abandoned
    machine.boot_time = 0.05

    assert await power.wake(wait=True)

    assert power.failed_wakes == 0
    assert power.wakes == 2


async def test_a_server_that_was_up_teaches_no_wake_time(
    machine: SleepingMachine, session: aiohttp.ClientSession
) -> None:
    await machine.start()
    harness = Harness(machine, session, wake_time=7.0)

    assert await harness.power.wake(wait=True)

    assert harness.probes == [True]
    assert harness.power.learnt_wake_time is None
    assert harness.power.wake_time == 7.0


async def test_a_kept_wake_time_counts_until_one_is_learnt(
    machine: SleepingMachine, session: aiohttp.ClientSession
) -> None:
    harness = Harness(machine, session, wake_time=7.0)
    harness.power.learn(3.0)
    harness.power.learn(4.0)

    assert harness.power.wake_time == 3.0


async def test_the_server_sleeps_after_the_idle_time(
    machine: SleepingMachine, session: aiohttp.ClientSession
) -> None:
    await machine.start()
    harness = Harness(machine, session, sleep=machine.sleep, idle_time=0.05)
    power = harness.power

    await harness.probe()  # seen up: idle time counts
    await until(lambda: machine.sleeps == 1)

    assert power.put_to_sleep
    assert power.state(online=True) is PowerState.ASLEEP
    # Still asleep to a probe that saw it down, then woken by someone else.
    await harness.probe()
    assert power.state(online=False) is PowerState.ASLEEP
    await machine.start()
    await harness.probe()
    assert not power.put_to_sleep
    assert power.state(online=True) is PowerState.AWAKE
    await power.close()


async def test_no_sleep_while_a_request_is_in_flight(
    machine: SleepingMachine, session: aiohttp.ClientSession
) -> None:
    await machine.start()
    harness = Harness(machine, session, sleep=machine.sleep, idle_time=0.05)
    harness.busy = True

    harness.power.note_served()
    # Several idle times pass with the request in flight.
    await asyncio.sleep(0.3)
    assert machine.sleeps == 0

    harness.busy = False
    await until(lambda: machine.sleeps == 1)


async def test_served_turns_push_the_sleep_back(
    machine: SleepingMachine, session: aiohttp.ClientSession
) -> None:
    await machine.start()
    harness = Harness(machine, session, sleep=machine.sleep, idle_time=0.1)

    for _ in range(6):
        harness.power.note_served()
        await asyncio.sleep(0.05)

    assert machine.sleeps == 0
    await until(lambda: machine.sleeps == 1)


async def test_a_failing_sleep_action_is_reported_and_tried_again(
    machine: SleepingMachine, session: aiohttp.ClientSession
) -> None:
    await machine.start()
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise ActionFailed("sleep action: script.suspend_gpu failed")

    harness = Harness(machine, session, sleep=broken, idle_time=0.05)
    harness.power.note_served()
    await until(lambda: calls == 2)

    assert not harness.power.put_to_sleep
    assert harness.errors[0].kind is ErrorKind.ACTION_FAILED
    await harness.power.close()


async def test_a_turn_during_the_sleep_action_wakes_after_it(
    machine: SleepingMachine, session: aiohttp.ClientSession
) -> None:
    await machine.start()
    release = asyncio.Event()
    order: list[str] = []

    async def slow_sleep() -> None:
        order.append("sleep")
        await release.wait()
        await machine.sleep()

    async def wake() -> None:
        order.append("wake")
        await machine.wake()

    harness = Harness(machine, session, wake=wake, sleep=slow_sleep, idle_time=0.01)
    harness.power.note_served()
    await until(lambda: order == ["sleep"])

    assert harness.power.wake_on_demand()
    await asyncio.sleep(0.05)
    assert order == ["sleep"]
    release.set()
    await until(lambda: not harness.power.waking)

    assert order == ["sleep", "wake"]
    assert machine.awake
    await harness.power.close()


class Home:
    """A router with a Pi that is always on and a GPU machine that sleeps."""

    def __init__(
        self,
        machine: SleepingMachine,
        pi: FakeOpenAI,
        session: aiohttp.ClientSession,
        **power: Any,
    ) -> None:
        self.machine = machine
        self.router = Router(
            [
                OpenAIBackend(
                    BackendConfig("gpu", BackendKind.OPENAI, machine.url, "fake-model"),
                    session,
                ),
                OpenAIBackend(
                    BackendConfig(
                        "pi", BackendKind.OPENAI, pi.url, "fake-model", priority=2
                    ),
                    session,
                ),
            ],
            settings=RouterSettings(wake=TIMING),
            power={"gpu": PowerConfig(**{"wake": machine.wake, **power})},
        )
        self.gpu = self.router.states["gpu"]

    async def ask(self) -> Turn:
        turn = self.router.route(REQUEST)
        async for _event in turn:
            pass
        return turn


REQUEST = ChatRequest(messages=(ChatMessage("user", "Is the lamp on?"),))


@pytest.fixture
async def pi() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


async def test_the_waking_turn_is_answered_by_the_next_backend_at_once(
    machine: SleepingMachine, pi: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    home = Home(machine, pi, session, wake_time=0.1)
    assert not await home.router.async_probe("gpu")  # the health check

    turn = await home.ask()

    assert turn.served_by == "pi"
    gpu_attempt, pi_attempt = turn.attempts
    assert gpu_attempt.waking
    assert gpu_attempt.error == "waking, asked pi"
    assert not pi_attempt.waking
    # The Pi answered while the GPU still boots: the turn did not wait.
    assert home.gpu.power.waking
    assert not machine.awake
    assert machine.wakes == 1
    await home.router.close()


async def test_the_woken_backend_serves_the_first_turn_after_it_answers(
    machine: SleepingMachine, pi: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    home = Home(machine, pi, session, wake_time=0.1)
    await home.router.async_probe("gpu")
    await home.ask()

    await until(lambda: not home.gpu.power.waking)

    assert home.gpu.breaker.allows()
    assert home.gpu.power.state(home.gpu.online) is PowerState.AWAKE
    turn = await home.ask()
    assert turn.served_by == "gpu"
    assert [a.backend for a in turn.attempts] == ["gpu"]
    assert machine.wakes == 1
    await home.router.close()


async def test_a_request_refused_by_the_sleeping_server_wakes_it(
    machine: SleepingMachine, pi: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    home = Home(machine, pi, session, wake_time=0.1)

    turn = await home.ask()  # no health check yet: the GPU is tried

    assert turn.served_by == "pi"
    assert turn.attempts[0].error_kind is ErrorKind.UNREACHABLE
    assert turn.attempts[0].waking
    assert home.gpu.power.waking
    await home.router.close()


async def test_turns_during_a_wake_run_no_second_action(
    machine: SleepingMachine, pi: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    machine.boot_time = 10.0
    home = Home(machine, pi, session, wake_time=0.05)
    await home.router.async_probe("gpu")

    turns = [await home.ask() for _ in range(3)]
    await until(lambda: not home.gpu.power.waking)
    after = await home.ask()

    assert [t.served_by for t in [*turns, after]] == ["pi"] * 4
    assert [t.attempts[0].waking for t in turns] == [True] * 3
    # Within retry_after of the failed wake: skipped, not woken again.
    assert not after.attempts[0].waking
    assert after.attempts[0].error == "skipped, not answering"
    assert machine.wakes == 1
    assert home.gpu.last_error is not None
    assert home.gpu.last_error.kind is ErrorKind.DID_NOT_WAKE
    await home.router.close()


async def test_the_router_puts_an_idle_server_to_sleep_and_wakes_it_again(
    machine: SleepingMachine, pi: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    await machine.start()
    home = Home(machine, pi, session, wake_time=0.1, sleep=machine.sleep, idle_time=0.1)
    assert (await home.ask()).served_by == "gpu"

    await until(lambda: machine.sleeps == 1)
    assert home.gpu.power.state(home.gpu.online) is PowerState.ASLEEP
    # Not yet seen down by a probe: still passed over, and woken.
    turn = await home.ask()

    assert turn.served_by == "pi"
    assert turn.attempts[0].waking
    await until(lambda: not home.gpu.power.waking)
    assert (await home.ask()).served_by == "gpu"
    assert machine.wakes == 1
    await home.router.close()


async def test_no_sleep_while_the_server_answers_a_request(
    machine: SleepingMachine, pi: FakeOpenAI, session: aiohttp.ClientSession
) -> None:
    await machine.start()
    home = Home(machine, pi, session, sleep=machine.sleep, idle_time=0.05)
    assert (await home.ask()).served_by == "gpu"
    # A slow answer: longer than several idle times.
    machine.server.script(Reply(text="a slow answer " * 4, tokens_per_second=20))

    turn = await home.ask()

    assert turn.served_by == "gpu"
    assert machine.sleeps == 0
    await until(lambda: machine.sleeps == 1)
    await home.router.close()


@pytest.mark.parametrize("keep_warm", [False, None])
async def test_waking_ahead_with_warm_loads_the_model(
    session: aiohttp.ClientSession, keep_warm: bool | None
) -> None:
    """Warmed by the wake itself, or joined to the keep-warm load of the first choice."""
    machine = SleepingMachine(FakeOllama(load_seconds=0.05), boot_time=0.05)
    router = Router(
        [
            OllamaBackend(
                BackendConfig(
                    "gpu",
                    BackendKind.OLLAMA,
                    machine.url,
                    "llama3.2",
                    keep_warm=keep_warm,
                ),
                session,
            )
        ],
        settings=RouterSettings(wake=TIMING),
        power={"gpu": PowerConfig(wake=machine.wake, wake_time=0.1)},
    )
    try:
        assert await router.wake("gpu", warm=True)

        assert isinstance(machine.server, FakeOllama)
        assert machine.server.loads == 1
        assert machine.server.is_loaded("llama3.2")
    finally:
        await router.close()
        await machine.off()


async def test_waking_needs_a_wake_action_and_an_open_router(
    machine: SleepingMachine, session: aiohttp.ClientSession
) -> None:
    harness = Harness(machine, session)
    without = Power(
        PowerConfig(),
        name="pi",
        probe=harness.probe,
        in_flight=lambda: False,
        report=harness.errors.append,
        changed=harness.changed,
    )

    with pytest.raises(ValueError, match="pi has no wake action"):
        await without.wake(wait=False)
    assert not without.wake_on_demand()
    await harness.power.close()
    assert not await harness.power.wake(wait=True)
    assert not harness.power.wake_on_demand()
    assert machine.wakes == 0
