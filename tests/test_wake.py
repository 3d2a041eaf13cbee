"""Waking a backend's machine with a Home Assistant action, and letting it sleep."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

from freezegun.api import FrozenDateTimeFactory
from homeassistant.core import HomeAssistant, ServiceCall, State
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers import issue_registry as ir
from homeassistant.util import dt as dt_util
import pytest
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_time_changed,
    mock_restore_cache_with_extra_data,
)

from custom_components.llm_router.coordinator import DID_NOT_WAKE_ISSUE_AFTER
from custom_components.llm_router.engine.wake import PowerState
from tests.conftest import (
    backend,
    form_input,
    gpu_and_pi,
    probe_backends,
    router_entry,
    setup_router,
    until,
)
from tests.fakes.base import Reply
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.power import SleepingMachine
from tests.test_config_flow import MODEL_STEP
from tests.test_sensor import value
from tests.test_services import ask

WAKE_GPU = [{"action": "test.wake_gpu"}]
SUSPEND_GPU = [{"action": "test.suspend_gpu"}]


@pytest.fixture
async def machine() -> AsyncIterator[SleepingMachine]:
    """The GPU server's machine, off; it boots soon after its wake action."""
    machine = SleepingMachine(FakeOpenAI(), boot_time=0.05)
    yield machine
    await machine.off()


class Home:
    """The home's actions that wake and suspend the machine, and their calls."""

    def __init__(self, hass: HomeAssistant, machine: SleepingMachine) -> None:
        self.calls: list[ServiceCall] = []
        self.machine = machine
        hass.services.async_register("test", "wake_gpu", self._wake)
        hass.services.async_register("test", "suspend_gpu", self._suspend)

    async def _wake(self, call: ServiceCall) -> None:
        self.calls.append(call)
        await self.machine.wake()

    async def _suspend(self, call: ServiceCall) -> None:
        self.calls.append(call)
        await self.machine.sleep()


def gpu_that_sleeps(
    machine: SleepingMachine, pi: FakeOllama, **gpu: Any
) -> MockConfigEntry:
    """The README's router, its GPU server on the machine, with a wake action."""
    return gpu_and_pi(pi.url, machine.url, **{"wake_action": WAKE_GPU, **gpu})


async def setup_sleepy_gpu(
    hass: HomeAssistant, machine: SleepingMachine, pi: FakeOllama, idle_minutes: int
) -> MockConfigEntry:
    """The router with the GPU awake, put to sleep after idle_minutes."""
    await machine.start()
    return await setup_router(
        hass,
        gpu_that_sleeps(
            machine,
            pi,
            sleep_action=SUSPEND_GPU,
            idle_time=idle_minutes,
            # Health checks only when the test runs them: not while it stops
            # the fake.
            options={"probe_interval": 24 * 3600},
        ),
    )


async def test_a_turn_wakes_the_gpu_and_the_next_turn_uses_it(
    hass: HomeAssistant, machine: SleepingMachine, ollama: FakeOllama
) -> None:
    home = Home(hass, machine)
    entry = await setup_router(hass, gpu_that_sleeps(machine, ollama))
    power = entry.runtime_data.router.states["GPU server"].power
    assert value(hass, "sensor.gpu_server_power") == PowerState.ASLEEP

    response = await ask(hass, text="Is the garage door closed?")

    assert response["backend"] == "Pi"
    gpu, pi = response["attempts"]
    assert gpu["backend"] == "GPU server"
    assert gpu["waking"] is True
    assert gpu["error"] == "waking, asked Pi"
    # Diagnostics show the GPU's recent attempts: the same words.
    assert power is not None
    (noted,) = entry.runtime_data.router.states["GPU server"].recent_attempts
    assert noted.error == "waking, asked Pi"
    assert pi["waking"] is False
    assert value(hass, "sensor.gpu_server_power") == PowerState.WAKING
    # The action ran once, as the router: with a context of its own.
    assert [call.service for call in home.calls] == ["wake_gpu"]
    assert home.calls[0].context.user_id is None

    await until(lambda: not power.waking, seconds=10)
    await hass.async_block_till_done()
    assert value(hass, "sensor.gpu_server_power") == PowerState.AWAKE
    assert value(hass, "sensor.gpu_server_last_woken") != "unknown"
    assert float(value(hass, "sensor.gpu_server_wake_time")) > 0
    response = await ask(hass, text="And now?")
    assert response["backend"] == "GPU server"
    assert len(home.calls) == 1


async def test_a_failing_wake_action_is_shown_and_repaired(
    hass: HomeAssistant,
    issue_registry: ir.IssueRegistry,
    machine: SleepingMachine,
    ollama: FakeOllama,
) -> None:
    entry = await setup_router(
        hass,
        gpu_that_sleeps(
            machine, ollama, wake_action=[{"action": "test.no_such_action"}]
        ),
    )
    await probe_backends(hass, entry)

    for _ in range(DID_NOT_WAKE_ISSUE_AFTER):
        with pytest.raises(HomeAssistantError) as raised:
            await hass.services.async_call(
                "llm_router",
                "wake",
                {"backend": "GPU server", "warm": True},
                blocking=True,
            )
        assert raised.value.translation_key == "did_not_wake"

    assert value(hass, "sensor.gpu_server_last_error") == "action_failed"
    message = hass.states.get("sensor.gpu_server_last_error").attributes["message"]
    assert "test.no_such_action" in message
    await probe_backends(hass, entry)
    issue = issue_registry.async_get_issue("llm_router", "did_not_wake_gpu_server")
    assert issue is not None
    assert issue.translation_placeholders["count"] == str(DID_NOT_WAKE_ISSUE_AFTER)
    assert value(hass, "sensor.gpu_server_power") == PowerState.UNREACHABLE


async def test_the_wake_action_wakes_ahead_and_warms(
    hass: HomeAssistant, machine: SleepingMachine, ollama: FakeOllama
) -> None:
    home = Home(hass, machine)
    await setup_router(hass, gpu_that_sleeps(machine, ollama))

    response = await hass.services.async_call(
        "llm_router",
        "wake",
        {"backend": "GPU server", "warm": True},
        blocking=True,
        return_response=True,
    )

    assert response == {"backend": "GPU server", "answered": True}
    assert machine.awake
    assert len(home.calls) == 1
    assert (await ask(hass, text="Hello?"))["backend"] == "GPU server"


async def test_the_wake_action_needs_a_backend_with_one(
    hass: HomeAssistant, ollama: FakeOllama, openai: FakeOpenAI
) -> None:
    await setup_router(hass, gpu_and_pi(ollama.url, openai.url))

    with pytest.raises(ServiceValidationError) as raised:
        await hass.services.async_call(
            "llm_router", "wake", {"backend": "Pi"}, blocking=True
        )
    assert raised.value.translation_key == "no_wake_action"
    # Backends without power actions have no power sensors.
    assert hass.states.get("sensor.pi_power") is None


async def test_an_idle_gpu_is_put_to_sleep_without_an_unreachable_repair(
    hass: HomeAssistant,
    issue_registry: ir.IssueRegistry,
    freezer: FrozenDateTimeFactory,
    machine: SleepingMachine,
    ollama: FakeOllama,
) -> None:
    home = Home(hass, machine)
    entry = await setup_sleepy_gpu(hass, machine, ollama, idle_minutes=10)
    assert (await ask(hass, text="Hello?"))["backend"] == "GPU server"

    freezer.tick(timedelta(minutes=9))
    async_fire_time_changed(hass, dt_util.utcnow())
    await hass.async_block_till_done()
    assert home.calls == []
    freezer.tick(timedelta(minutes=2))
    async_fire_time_changed(hass, dt_util.utcnow())
    await hass.async_block_till_done()

    assert [call.service for call in home.calls] == ["suspend_gpu"]
    assert home.calls[0].context.user_id is None
    assert not machine.awake
    assert value(hass, "sensor.gpu_server_power") == PowerState.ASLEEP
    coordinator = entry.runtime_data.coordinators["GPU server"]
    await coordinator.async_refresh()
    freezer.tick(timedelta(hours=2))
    await coordinator.async_refresh()
    assert (
        issue_registry.async_get_issue("llm_router", "unreachable_gpu_server") is None
    )
    assert value(hass, "sensor.gpu_server_power") == PowerState.ASLEEP


async def test_the_sleep_action_never_runs_while_a_request_is_in_flight(
    hass: HomeAssistant,
    freezer: FrozenDateTimeFactory,
    machine: SleepingMachine,
    ollama: FakeOllama,
) -> None:
    home = Home(hass, machine)
    entry = await setup_sleepy_gpu(hass, machine, ollama, idle_minutes=1)
    gpu = entry.runtime_data.router.states["GPU server"]
    assert (await ask(hass, text="Hello?"))["backend"] == "GPU server"
    # The next answer stops after its first word and holds the stream open.
    machine.server.script(Reply(text="one two three", stall_after_chunks=1))
    asking = asyncio.create_task(ask(hass, text="Still there?"))
    try:
        for _ in range(1000):
            if gpu.holding:
                break
            await asyncio.sleep(0)
        assert gpu.holding

        # The idle time runs out while the GPU is streaming: no sleep.
        freezer.tick(timedelta(seconds=61))
        async_fire_time_changed(hass, dt_util.utcnow())
        for _ in range(100):
            await asyncio.sleep(0)
        assert home.calls == []
        assert machine.awake
        assert gpu.holding
    finally:  # a failed assertion does not leave the stream open
        asking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asking

    # The request ended; idle time counts again from there, then the machine sleeps.
    freezer.tick(timedelta(seconds=61))
    async_fire_time_changed(hass, dt_util.utcnow())
    await hass.async_block_till_done()
    assert [call.service for call in home.calls] == ["suspend_gpu"]


async def test_the_backend_form_sets_and_clears_the_power_actions(
    hass: HomeAssistant, machine: SleepingMachine, ollama: FakeOllama
) -> None:
    entry = await setup_router(
        hass, router_entry(backend("Pi", "ollama", ollama.url, "llama3.2", 1))
    )

    async def reconfigure(**power: Any) -> None:
        result = await entry.start_subentry_reconfigure_flow(hass, "pi")
        result = await hass.config_entries.subentries.async_configure(
            result["flow_id"], {"name": "Pi", "kind": "ollama", "url": ollama.url}
        )
        result = await hass.config_entries.subentries.async_configure(
            result["flow_id"], form_input(result, **MODEL_STEP, **power)
        )
        assert result["type"] is FlowResultType.ABORT
        await hass.async_block_till_done()

    await reconfigure(
        wake_action=WAKE_GPU, wake_time=45, sleep_action=SUSPEND_GPU, idle_time=20
    )
    config = entry.runtime_data.router.states["Pi"].power.config
    assert config.wake is not None
    assert config.sleep is not None
    assert (config.wake_time, config.idle_time) == (45, 20 * 60)

    await reconfigure()
    power = entry.runtime_data.router.states["Pi"].power
    assert not power.can_wake
    assert power.config.sleep is None


async def test_the_wake_time_and_last_wake_survive_a_restart(
    hass: HomeAssistant, machine: SleepingMachine, ollama: FakeOllama
) -> None:
    woken = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
    mock_restore_cache_with_extra_data(
        hass,
        [
            (
                State("sensor.gpu_server_last_woken", woken.isoformat()),
                {
                    "native_value": {
                        "__type": str(datetime),
                        "isoformat": woken.isoformat(),
                    },
                    "native_unit_of_measurement": None,
                },
            ),
            (
                State("sensor.gpu_server_wake_time", "42.0"),
                {"native_value": 42.0, "native_unit_of_measurement": "s"},
            ),
        ],
    )

    entry = await setup_router(hass, gpu_that_sleeps(machine, ollama, wake_time=90))

    power = entry.runtime_data.router.states["GPU server"].power
    assert power.last_woken == woken
    # The learnt time counts, not the configured guess.
    assert power.wake_time == 42.0
    assert float(value(hass, "sensor.gpu_server_wake_time")) == 42.0
