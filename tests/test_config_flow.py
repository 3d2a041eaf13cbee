"""Config flow: router creation, backend subentries, options."""

from __future__ import annotations

import asyncio
from typing import Any

from homeassistant.config_entries import SOURCE_USER, ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.setup import async_setup_component
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.llm_router import config_flow
from custom_components.llm_router.config_flow import DEFAULT_OPTIONS
from custom_components.llm_router.const import DOMAIN, SUBENTRY_BACKEND
from tests.conftest import backend, gpu_and_pi, router_entry, setup_router
from tests.fakes.base import Endless, closed_port_url
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI

MODEL_STEP = {
    "model": "llama3.2:latest",
    "priority": 2,
    "max_parallel": 1,
    "connect_timeout": 3,
    "first_token_timeout": 30,
    "think": False,
    "keep_alive": "30m",
    "num_ctx": 4096,
}


@pytest.fixture(autouse=True)
async def _core(hass: HomeAssistant) -> None:
    await async_setup_component(hass, "homeassistant", {})


async def start_flow(hass: HomeAssistant, server: dict[str, Any]) -> Any:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": SOURCE_USER}
    )
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "user"
    return await hass.config_entries.flow.async_configure(
        result["flow_id"], {"name": "Home", "backend": server}
    )


async def test_create_router_with_first_backend(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    result = await start_flow(hass, {"name": "Pi", "kind": "ollama", "url": ollama.url})
    assert result["type"] is FlowResultType.FORM
    assert result["step_id"] == "model"
    model_field = next(k for k in result["data_schema"].schema if k == "model")
    options = result["data_schema"].schema[model_field].config["options"]
    assert sorted(options) == ["gemma2:latest", "llama3.2:latest", "qwen3:latest"]

    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], MODEL_STEP
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["title"] == "Home"
    entry = result["result"]
    assert entry.options == DEFAULT_OPTIONS
    (subentry,) = entry.subentries.values()
    assert subentry.subentry_type == SUBENTRY_BACKEND
    assert subentry.title == "Pi"
    assert subentry.data == {
        "name": "Pi",
        "kind": "ollama",
        "url": ollama.url,
        **MODEL_STEP,
        "connect_timeout": 3,
        "first_token_timeout": 30,
        "always_on": True,
        "think_auto": False,
        "max_tokens": 512,
    }
    assert entry.state is ConfigEntryState.LOADED


@pytest.mark.parametrize(
    ("url", "error"),
    [("not a url", "invalid_url"), ("ftp://127.0.0.1", "invalid_url")],
)
async def test_user_step_invalid_url(hass: HomeAssistant, url: str, error: str) -> None:
    result = await start_flow(hass, {"name": "Pi", "kind": "ollama", "url": url})
    assert result["errors"] == {"base": error}


async def test_user_step_cannot_connect_then_recovers(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    url = closed_port_url()
    result = await start_flow(hass, {"name": "Pi", "kind": "ollama", "url": url})
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {"base": "cannot_connect"}
    # The error text names the URL and why.
    assert result["description_placeholders"]["url"] == url
    assert result["description_placeholders"]["reason"] == "connection refused"
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"],
        {
            "name": "Home",
            "backend": {"name": "Pi", "kind": "ollama", "url": ollama.url},
        },
    )
    assert result["step_id"] == "model"


async def test_user_step_invalid_auth(hass: HomeAssistant) -> None:
    async with FakeOpenAI(api_key="right") as server:
        result = await start_flow(
            hass,
            {"name": "GPU", "kind": "openai", "url": server.url, "api_key": "wrong"},
        )
    assert result["errors"] == {"base": "invalid_auth"}


async def test_model_step_model_not_found(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    result = await start_flow(hass, {"name": "Pi", "kind": "ollama", "url": ollama.url})
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {**MODEL_STEP, "model": "deepseek-r1:1.5b"}
    )
    assert result["type"] is FlowResultType.FORM
    assert result["errors"] == {"model": "model_not_found"}


async def test_openai_backend_custom_model_checked_against_list(
    hass: HomeAssistant, openai: FakeOpenAI
) -> None:
    result = await start_flow(
        hass, {"name": "GPU", "kind": "openai", "url": openai.url}
    )
    model_step = {
        k: v for k, v in MODEL_STEP.items() if k not in ("keep_alive", "num_ctx")
    }
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {**model_step, "model": "other"}
    )
    assert result["errors"] == {"model": "model_not_found"}
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {**model_step, "model": "fake-model"}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    (subentry,) = result["result"].subentries.values()
    assert "keep_alive" not in subentry.data


async def test_model_step_server_gone(hass: HomeAssistant) -> None:
    server = FakeOllama()
    await server.start()
    result = await start_flow(hass, {"name": "Pi", "kind": "ollama", "url": server.url})
    await server.stop()
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], MODEL_STEP
    )
    assert result["errors"] == {"base": "cannot_connect"}


async def test_model_step_invalid_auth(hass: HomeAssistant) -> None:
    async with FakeOpenAI(api_key="right") as server:
        result = await start_flow(
            hass,
            {"name": "GPU", "kind": "openai", "url": server.url, "api_key": "right"},
        )
        server.api_key = "rotated"
        result = await hass.config_entries.flow.async_configure(
            result["flow_id"],
            {k: v for k, v in MODEL_STEP.items() if k not in ("keep_alive", "num_ctx")},
        )
    assert result["errors"] == {"base": "invalid_auth"}


def field_default(result: Any, name: str) -> Any:
    """The default a shown form gives one of its fields."""
    marker = next(k for k in result["data_schema"].schema if k == name)
    return marker.default()


async def router_with_pi(hass: HomeAssistant, ollama: FakeOllama) -> MockConfigEntry:
    return await setup_router(
        hass, router_entry(backend("Pi", "ollama", ollama.url, "llama3.2", 2))
    )


async def test_add_backend(
    hass: HomeAssistant, ollama: FakeOllama, openai: FakeOpenAI
) -> None:
    entry = await router_with_pi(hass, ollama)
    result = await hass.config_entries.subentries.async_init(
        (entry.entry_id, SUBENTRY_BACKEND), context={"source": SOURCE_USER}
    )
    assert result["type"] is FlowResultType.FORM
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], {"name": "Pi", "kind": "openai", "url": openai.url}
    )
    assert result["errors"] == {"name": "name_exists"}
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], {"name": "GPU server", "kind": "openai", "url": openai.url}
    )
    assert result["step_id"] == "model"
    # After the Pi's priority 2, not tied with it.
    assert field_default(result, "priority") == 3
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"],
        {
            "model": "fake-model",
            "priority": 1,
            "max_parallel": 4,
            "connect_timeout": 2,
            "first_token_timeout": 20,
            "think": False,
        },
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    await hass.async_block_till_done()
    router = entry.runtime_data.router
    assert [s.name for s in router.candidates()] == ["GPU server", "Pi"]
    assert router.states["GPU server"].config.max_parallel == 4


async def test_add_backend_that_is_switched_off(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    entry = await router_with_pi(hass, ollama)
    result = await hass.config_entries.subentries.async_init(
        (entry.entry_id, SUBENTRY_BACKEND), context={"source": SOURCE_USER}
    )
    url = closed_port_url()
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], {"name": "GPU server", "kind": "openai", "url": url}
    )
    assert result["errors"] == {"base": "cannot_connect"}
    assert result["description_placeholders"] == {
        "url": url,
        "reason": "connection refused",
    }
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"],
        {"name": "GPU server", "kind": "openai", "url": url, "skip_check": True},
    )
    assert result["step_id"] == "model"
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"],
        {
            "model": "qwen2.5:14b",
            "priority": 1,
            "max_parallel": 1,
            "connect_timeout": 3,
            "first_token_timeout": 30,
            "think": False,
        },
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    await hass.async_block_till_done()
    assert "GPU server" in entry.runtime_data.router.states
    gpu = next(s for s in entry.subentries.values() if s.title == "GPU server")
    assert gpu.data["model"] == "qwen2.5:14b"
    assert "skip_check" not in gpu.data


async def test_reconfigure_backend(hass: HomeAssistant, ollama: FakeOllama) -> None:
    entry = await router_with_pi(hass, ollama)
    (subentry_id,) = entry.subentries
    result = await entry.start_subentry_reconfigure_flow(hass, subentry_id)
    assert result["type"] is FlowResultType.FORM
    # Its own title, naming the backend; the server answers, so it is tested.
    assert result["step_id"] == "reconfigure"
    assert result["description_placeholders"]["backend"] == "Pi"
    assert field_default(result, "skip_check") is False
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], {"name": "Pi", "kind": "ollama", "url": ollama.url}
    )
    assert result["step_id"] == "model"
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], {**MODEL_STEP, "model": "qwen3:latest", "priority": 5}
    )
    assert result["type"] is FlowResultType.ABORT
    assert result["reason"] == "reconfigure_successful"
    await hass.async_block_till_done()
    assert entry.subentries[subentry_id].data["model"] == "qwen3:latest"
    assert entry.runtime_data.router.states["Pi"].config.priority == 5


async def test_reconfigure_switched_off_backend(hass: HomeAssistant) -> None:
    url = closed_port_url()
    entry = await setup_router(
        hass, router_entry(backend("GPU server", "openai", url, "qwen2.5:14b", 1))
    )
    await hass.async_block_till_done(wait_background_tasks=True)  # setup's probe
    assert hass.states.is_state("binary_sensor.gpu_server_connection", "off")
    (subentry_id,) = entry.subentries
    result = await entry.start_subentry_reconfigure_flow(hass, subentry_id)
    # It cannot be tested now: saving without the test is offered at once.
    assert field_default(result, "skip_check") is True
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"],
        {"name": "GPU server", "kind": "openai", "url": url, "skip_check": True},
    )
    assert result["step_id"] == "model"
    assert field_default(result, "model") == "qwen2.5:14b"
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"],
        {
            "model": "qwen2.5:14b",
            "priority": 1,
            "max_parallel": 2,
            "connect_timeout": 3,
            "first_token_timeout": 30,
            "think": False,
        },
    )
    assert result["type"] is FlowResultType.ABORT
    assert entry.subentries[subentry_id].data["max_parallel"] == 2


async def test_remove_backend_reloads_router(
    hass: HomeAssistant, ollama: FakeOllama, openai: FakeOpenAI
) -> None:
    entry = await setup_router(hass, gpu_and_pi(ollama.url, openai.url))
    gpu_id = next(k for k, s in entry.subentries.items() if s.title == "GPU server")
    assert hass.config_entries.async_remove_subentry(entry, gpu_id)
    await hass.async_block_till_done()
    assert list(entry.runtime_data.router.states) == ["Pi"]


async def test_options(hass: HomeAssistant, ollama: FakeOllama) -> None:
    entry = await router_with_pi(hass, ollama)
    result = await hass.config_entries.options.async_init(entry.entry_id)
    assert result["type"] is FlowResultType.FORM
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], {"max_history": 3, "policy": "ordered", "probe_interval": 60}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    await hass.async_block_till_done()
    assert entry.options == {
        "prompt": "",
        "llm_hass_api": [],
        "max_history": 3,
        "policy": "ordered",
        "probe_interval": 60,
        "turn_timeout": 120.0,
        "latency_budget": 3.0,
        "hedging": False,
    }
    assert entry.state is ConfigEntryState.LOADED


async def test_routing_options_reach_the_router(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    entry = await router_with_pi(hass, ollama)
    result = await hass.config_entries.options.async_init(entry.entry_id)
    fields = {
        "max_history": 3,
        "policy": "local_first",
        "probe_interval": 60,
        "latency_budget": 2.5,
        "hedging": True,
    }
    # The Pi's first-token timeout is 30 s: a shorter turn could never wait for it.
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], {**fields, "turn_timeout": 20}
    )
    assert result["errors"] == {"turn_timeout": "turn_timeout_too_short"}
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], {**fields, "turn_timeout": 600}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    await hass.async_block_till_done()
    router = entry.runtime_data.router
    assert (router.settings.turn_timeout, router.settings.latency_budget) == (600, 2.5)
    assert router.settings.hedging
    assert type(router.policy).__name__ == "LocalFirstPolicy"


async def test_first_token_timeout_beyond_the_turn_timeout_is_refused(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    entry = await router_with_pi(hass, ollama)
    (subentry_id,) = entry.subentries
    result = await entry.start_subentry_reconfigure_flow(hass, subentry_id)
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], {"name": "Pi", "kind": "ollama", "url": ollama.url}
    )
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"], {**MODEL_STEP, "first_token_timeout": 300}
    )
    assert result["errors"] == {"first_token_timeout": "exceeds_turn_timeout"}
    result = await hass.config_entries.subentries.async_configure(
        result["flow_id"],
        {**MODEL_STEP, "max_tokens": 64, "think_auto": True, "keep_warm": False},
    )
    assert result["type"] is FlowResultType.ABORT
    await hass.async_block_till_done()
    config = entry.runtime_data.router.states["Pi"].config
    assert (config.max_tokens, config.think_auto, config.keep_warm) == (
        64,
        True,
        False,
    )


@pytest.mark.parametrize("keep_alive", ["forever", "30 minutes", "1d"])
async def test_model_step_invalid_keep_alive(
    hass: HomeAssistant, ollama: FakeOllama, keep_alive: str
) -> None:
    result = await start_flow(hass, {"name": "Pi", "kind": "ollama", "url": ollama.url})
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {**MODEL_STEP, "keep_alive": keep_alive}
    )
    assert result["errors"] == {"keep_alive": "invalid_keep_alive"}


async def test_keep_alive_in_seconds_is_sent_as_a_number(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    result = await start_flow(hass, {"name": "Pi", "kind": "ollama", "url": ollama.url})
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {**MODEL_STEP, "keep_alive": "-1"}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    await hass.services.async_call(
        "llm_router", "ask", {"text": "Hi"}, blocking=True, return_response=True
    )
    assert ollama.chat_bodies[-1]["keep_alive"] == -1


async def test_connection_tests_end_however_slowly_a_server_answers(
    hass: HomeAssistant, openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server dribbling bytes does not hold the form open."""
    monkeypatch.setattr(config_flow, "CONNECTION_TEST_TIMEOUT", 0.3)
    dribbling = Endless(head=b'{"data": [', dribble=0.02)
    openai.endless["/v1/models"] = dribbling
    server = {"name": "GPU", "kind": "openai", "url": openai.url}
    model_step = {
        k: v for k, v in MODEL_STEP.items() if k not in ("keep_alive", "num_ctx")
    }
    async with asyncio.timeout(10):  # a bound on a hang, not a measurement
        result = await start_flow(hass, server)
        assert result["errors"] == {"base": "cannot_connect"}

        del openai.endless["/v1/models"]
        result = await hass.config_entries.flow.async_configure(
            result["flow_id"], {"name": "Home", "backend": server}
        )
        assert result["step_id"] == "model"
        openai.endless["/v1/models"] = dribbling
        result = await hass.config_entries.flow.async_configure(
            result["flow_id"], {**model_step, "model": "fake-model"}
        )
        assert result["errors"] == {"base": "cannot_connect"}
