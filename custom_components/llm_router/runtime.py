"""Wiring the routing engine to a config entry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from homeassistant.config_entries import ConfigEntry, ConfigSubentry
from homeassistant.const import CONF_API_KEY, CONF_MODEL, CONF_NAME, CONF_URL
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.util.hass_dict import HassKey
from homeassistant.util.ssl import get_default_context

from .const import (
    CONF_CONNECT_TIMEOUT,
    CONF_FIRST_TOKEN_TIMEOUT,
    CONF_HEDGING,
    CONF_KEEP_ALIVE,
    CONF_KEEP_WARM,
    CONF_KIND,
    CONF_LATENCY_BUDGET,
    CONF_MAX_PARALLEL,
    CONF_MAX_TOKENS,
    CONF_NUM_CTX,
    CONF_POLICY,
    CONF_PRIORITY,
    CONF_THINKING,
    CONF_TURN_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_FIRST_TOKEN_TIMEOUT,
    DEFAULT_LATENCY_BUDGET,
    DEFAULT_MAX_PARALLEL,
    DEFAULT_MAX_TOKENS,
    DEFAULT_PRIORITY,
    DEFAULT_TURN_TIMEOUT,
    DOMAIN,
    SUBENTRY_BACKEND,
    Thinking,
)
from .coordinator import BackendHealthCoordinator
from .engine.backend import Backend
from .engine.models import BackendConfig, BackendKind
from .engine.ollama import OllamaBackend, parse_keep_alive
from .engine.openai import OpenAIBackend
from .engine.policy import PolicyName, create_policy
from .engine.router import Router
from .engine.servers import ServerRegistry
from .engine.settings import RouterSettings
from .engine.urls import InvalidURL, normalize_url
from .engine.wake import PowerConfig
from .power import power_config
from .updates import BackendUpdates


@dataclass
class LLMRouterData:
    """What a loaded router entry holds."""

    router: Router
    backend_subentries: dict[str, str]
    """Backend name -> subentry id."""
    router_device_id: str
    """The router's device, which the backends' devices are linked to."""
    coordinators: dict[str, BackendHealthCoordinator] = field(default_factory=dict)
    """Backend name -> its health coordinator."""
    unusable: dict[str, InvalidURL] = field(default_factory=dict)
    """Subentry id -> why that backend is left out of the router."""
    fallbacks: int = 0
    """User turns answered by other than the first choice."""
    last_backend: str | None = None
    backend_updates: dict[str, BackendUpdates] = field(default_factory=dict)
    """Backend name -> when its entities update."""
    _listeners: list[CALLBACK_TYPE] = field(default_factory=list)

    @callback
    def async_add_listener(self, listener: CALLBACK_TYPE) -> Callable[[], None]:
        """Call listener when an answered request was counted."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    @callback
    def async_add_backend_listener(
        self, name: str, listener: CALLBACK_TYPE
    ) -> Callable[[], None]:
        """Call listener when what the router knows of backend name changed.

        Rate limited but for trouble: see BackendUpdates.
        """
        return self.backend_updates[name].add(listener)

    @callback
    def async_backends_changed(self, names: frozenset[str]) -> None:
        """Tell the listeners of these backends that their state changed."""
        for name in names:
            self.backend_updates[name].changed()

    @callback
    def async_record(self, served_by: str | None, *, fell_back: bool) -> None:
        """Count one answered user request."""
        if served_by is None:
            return
        self.last_backend = served_by
        self.fallbacks += fell_back
        for listener in list(self._listeners):
            listener()


type LLMRouterConfigEntry = ConfigEntry[LLMRouterData]

DATA_SERVERS: HassKey[ServerRegistry] = HassKey(f"{DOMAIN}_servers")


def backend_config(data: Mapping[str, Any]) -> BackendConfig:
    """The engine's view of a backend subentry's data.

    Raises InvalidURL for a URL no server can be reached at.
    """
    kind = BackendKind(data[CONF_KIND])
    is_ollama = kind is BackendKind.OLLAMA
    thinking = Thinking(data.get(CONF_THINKING, Thinking.OFF))
    return BackendConfig(
        name=data[CONF_NAME],
        kind=kind,
        url=normalize_url(data[CONF_URL], kind),
        model=data.get(CONF_MODEL, ""),
        api_key=data.get(CONF_API_KEY) or None,
        priority=int(data.get(CONF_PRIORITY, DEFAULT_PRIORITY)),
        max_parallel=int(data.get(CONF_MAX_PARALLEL, DEFAULT_MAX_PARALLEL)),
        connect_timeout=float(data.get(CONF_CONNECT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT)),
        first_token_timeout=float(
            data.get(CONF_FIRST_TOKEN_TIMEOUT, DEFAULT_FIRST_TOKEN_TIMEOUT)
        ),
        think=thinking is Thinking.ON,
        think_auto=thinking is Thinking.AUTO,
        max_tokens=int(data.get(CONF_MAX_TOKENS, DEFAULT_MAX_TOKENS)),
        keep_warm=data.get(CONF_KEEP_WARM),
        keep_alive=(
            parse_keep_alive(str(data[CONF_KEEP_ALIVE]))
            if is_ollama and data.get(CONF_KEEP_ALIVE) is not None
            else None
        ),
        num_ctx=int(data[CONF_NUM_CTX])
        if is_ollama and data.get(CONF_NUM_CTX)
        else None,
    )


def router_settings(options: Mapping[str, Any]) -> RouterSettings:
    """The engine's router settings from the entry's options."""
    return RouterSettings(
        turn_timeout=float(options.get(CONF_TURN_TIMEOUT, DEFAULT_TURN_TIMEOUT)),
        latency_budget=float(options.get(CONF_LATENCY_BUDGET, DEFAULT_LATENCY_BUDGET)),
        hedging=bool(options.get(CONF_HEDGING, False)),
    )


def create_backend(hass: HomeAssistant, config: BackendConfig) -> Backend:
    """A backend client for one server, on Home Assistant's shared session."""
    session = async_get_clientsession(hass)
    if config.kind is BackendKind.OLLAMA:
        return OllamaBackend(config, session, verify=get_default_context())
    return OpenAIBackend(config, session)


def backend_subentries(entry: ConfigEntry) -> list[ConfigSubentry]:
    """The entry's backend subentries."""
    return [
        subentry
        for subentry in entry.subentries.values()
        if subentry.subentry_type == SUBENTRY_BACKEND
    ]


def create_router(
    hass: HomeAssistant, entry: ConfigEntry, router_device_id: str
) -> LLMRouterData:
    """Build the router for a config entry from its subentries and options.

    A backend whose stored URL is unusable is left out; the others work.
    Backends share their server's slots and breaker with every router on it,
    until the entry unloads.
    """
    configs: dict[str, BackendConfig] = {}
    unusable: dict[str, InvalidURL] = {}
    for subentry in backend_subentries(entry):
        try:
            configs[subentry.subentry_id] = backend_config(subentry.data)
        except InvalidURL as err:
            unusable[subentry.subentry_id] = err
    settings = router_settings(entry.options)
    policy = create_policy(
        PolicyName(entry.options.get(CONF_POLICY, PolicyName.ORDERED)),
        latency_budget=settings.latency_budget,
    )
    power: dict[str, PowerConfig] = {}
    for subentry_id, config in configs.items():
        power[config.name], runners = power_config(
            hass, config.name, entry.subentries[subentry_id].data
        )
        for runner in runners:
            entry.async_on_unload(runner.async_unload)
    registry = hass.data.setdefault(DATA_SERVERS, ServerRegistry())
    servers = {config.name: registry.acquire(config) for config in configs.values()}

    @callback
    def release_servers() -> None:
        for config in configs.values():
            registry.release(config)

    entry.async_on_unload(release_servers)
    router = Router(
        [create_backend(hass, config) for config in configs.values()],
        policy=policy,
        settings=settings,
        servers=servers,
        power=power,
    )
    data = LLMRouterData(
        router=router,
        backend_subentries={
            config.name: subentry_id for subentry_id, config in configs.items()
        },
        router_device_id=router_device_id,
        unusable=unusable,
        backend_updates={
            name: BackendUpdates(hass, state) for name, state in router.states.items()
        },
    )
    data.router.add_listener(data.async_backends_changed)
    return data
