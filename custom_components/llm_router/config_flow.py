"""Config flow: a router entry whose backends are subentries."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from homeassistant.config_entries import (
    SOURCE_RECONFIGURE,
    ConfigEntry,
    ConfigEntryState,
    ConfigFlow,
    ConfigFlowResult,
    ConfigSubentryFlow,
    OptionsFlow,
    SubentryFlowResult,
)
from homeassistant.const import (
    CONF_API_KEY,
    CONF_LLM_HASS_API,
    CONF_MODEL,
    CONF_NAME,
    CONF_URL,
)
from homeassistant.core import HomeAssistant, callback
from homeassistant.data_entry_flow import section
from homeassistant.helpers import llm
from homeassistant.helpers.selector import (
    BooleanSelector,
    SelectOptionDict,
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
    TextSelector,
    TextSelectorConfig,
    TextSelectorType,
)
import probatio

from .const import (
    CONF_BACKEND,
    CONF_FIRST_TOKEN_TIMEOUT,
    CONF_HEDGING,
    CONF_KEEP_ALIVE,
    CONF_KIND,
    CONF_LATENCY_BUDGET,
    CONF_MAX_HISTORY,
    CONF_POLICY,
    CONF_PRIORITY,
    CONF_PROBE_INTERVAL,
    CONF_PROMPT,
    CONF_SKIP_CHECK,
    CONF_TURN_TIMEOUT,
    CONFIG_ENTRY_VERSION,
    DEFAULT_FIRST_TOKEN_TIMEOUT,
    DEFAULT_LATENCY_BUDGET,
    DEFAULT_MAX_HISTORY,
    DEFAULT_PRIORITY,
    DEFAULT_PROBE_INTERVAL,
    DEFAULT_ROUTER_NAME,
    DEFAULT_TURN_TIMEOUT,
    DOMAIN,
    REAUTH_SUBENTRY_ID,
    SUBENTRY_BACKEND,
)
from .engine.errors import AuthFailed, BackendError, ModelNotFound
from .engine.models import BackendKind
from .engine.ollama import parse_keep_alive
from .engine.policy import PolicyName
from .engine.urls import InvalidURL, normalize_url, without_credentials
from .forms import (
    BACKEND_SECTIONS,
    MAX_PRIORITY,
    SECTION_TIMING,
    flatten,
    model_form,
    model_values,
    nest,
    options_form,
)
from .runtime import backend_config, backend_subentries, create_backend

DEFAULT_OPTIONS: dict[str, Any] = {
    CONF_PROMPT: llm.DEFAULT_INSTRUCTIONS_PROMPT,
    CONF_LLM_HASS_API: [llm.LLM_API_ASSIST],
    CONF_MAX_HISTORY: DEFAULT_MAX_HISTORY,
    CONF_POLICY: PolicyName.ORDERED,
    CONF_PROBE_INTERVAL: DEFAULT_PROBE_INTERVAL,
    CONF_TURN_TIMEOUT: DEFAULT_TURN_TIMEOUT,
    CONF_LATENCY_BUDGET: DEFAULT_LATENCY_BUDGET,
    CONF_HEDGING: False,
}


def _model_input(user_input: Mapping[str, Any]) -> dict[str, Any]:
    """The model step's input, flat as it is stored."""
    return flatten(user_input, (s.key for s in BACKEND_SECTIONS))


def _api_key_field() -> TextSelector:
    return TextSelector(TextSelectorConfig(type=TextSelectorType.PASSWORD))


def _server_fields(defaults: Mapping[str, Any]) -> dict[probatio.Marker, Any]:
    """Fields that say where a backend is."""
    return {
        probatio.Required(
            CONF_NAME, default=defaults.get(CONF_NAME, probatio.UNDEFINED)
        ): str,
        probatio.Required(
            CONF_KIND, default=defaults.get(CONF_KIND, BackendKind.OLLAMA)
        ): (
            SelectSelector(
                SelectSelectorConfig(
                    options=list(BackendKind),
                    translation_key=CONF_KIND,
                    mode=SelectSelectorMode.LIST,
                )
            )
        ),
        probatio.Required(
            CONF_URL, default=defaults.get(CONF_URL, probatio.UNDEFINED)
        ): (TextSelector(TextSelectorConfig(type=TextSelectorType.URL))),
        # Never sent back to the browser; reconfiguring keeps it when left empty.
        probatio.Optional(CONF_API_KEY): _api_key_field(),
    }


CONNECTION_TEST_TIMEOUT = 20.0
"""Seconds a connection test may take, however slowly a server answers."""


@dataclass
class _Check:
    """What testing a server found: form errors, its models, why it failed."""

    errors: dict[str, str] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    reason: str = ""

    def placeholders(self, server: Mapping[str, Any]) -> dict[str, str]:
        """What the errors' texts name: the server's URL and the reason."""
        return {"url": str(server.get(CONF_URL, "")), "reason": self.reason}


def _cannot_connect(err: BackendError | TimeoutError) -> _Check:
    """The form error for a server that did not answer, and why."""
    if isinstance(err, BackendError):
        return _Check({"base": "cannot_connect"}, reason=err.message)
    return _Check(
        {"base": "cannot_connect"},
        reason=f"no answer within {CONNECTION_TEST_TIMEOUT:g} s",
    )


def _url_check(server: dict[str, Any]) -> _Check:
    """Normalize the server's URL in place; a form error when it is unusable."""
    try:
        server[CONF_URL] = normalize_url(
            server[CONF_URL], BackendKind(server[CONF_KIND])
        )
    except InvalidURL:
        return _Check({"base": "invalid_url"})
    return _Check()


async def _async_check_server(hass: HomeAssistant, server: dict[str, Any]) -> _Check:
    """Normalize the URL and test the connection; form errors and models."""
    if (check := _url_check(server)).errors:
        return check
    backend = create_backend(hass, backend_config(server))
    try:
        async with asyncio.timeout(CONNECTION_TEST_TIMEOUT):
            await backend.probe()
            models = await backend.list_models()
    except AuthFailed:
        return _Check({"base": "invalid_auth"})
    except (BackendError, TimeoutError) as err:
        return _cannot_connect(err)
    finally:
        await backend.close()
    return _Check(models=models)


async def _async_check_model(
    hass: HomeAssistant,
    data: Mapping[str, Any],
    *,
    turn_timeout: float = DEFAULT_TURN_TIMEOUT,
    reach_server: bool = True,
) -> _Check:
    """Check the model step; reach_server also asks the server."""
    if float(data.get(CONF_FIRST_TOKEN_TIMEOUT, 0)) > turn_timeout:
        return _Check({CONF_FIRST_TOKEN_TIMEOUT: "exceeds_turn_timeout"})
    if CONF_KEEP_ALIVE in data:
        try:
            parse_keep_alive(str(data[CONF_KEEP_ALIVE]))
        except ValueError:
            return _Check({CONF_KEEP_ALIVE: "invalid_keep_alive"})
    if not reach_server:
        return _Check()
    backend = create_backend(hass, backend_config(data))
    try:
        async with asyncio.timeout(CONNECTION_TEST_TIMEOUT):
            await backend.check_model()
    except ModelNotFound:
        return _Check({CONF_MODEL: "model_not_found"})
    except AuthFailed:
        return _Check({"base": "invalid_auth"})
    except (BackendError, TimeoutError) as err:
        return _cannot_connect(err)
    finally:
        await backend.close()
    return _Check()


class LLMRouterConfigFlow(ConfigFlow, domain=DOMAIN):
    """Create a router with its first backend."""

    VERSION = CONFIG_ENTRY_VERSION

    def __init__(self) -> None:
        """Start with nothing known."""
        self._router_name = DEFAULT_ROUTER_NAME
        self._server: dict[str, Any] = {}
        self._models: list[str] = []
        self._reauth_subentry_id = ""

    @staticmethod
    @callback
    def async_get_options_flow(config_entry: ConfigEntry) -> OptionsFlow:
        """The router's options."""
        return LLMRouterOptionsFlow()

    @classmethod
    @callback
    def async_get_supported_subentry_types(
        cls, config_entry: ConfigEntry
    ) -> dict[str, type[ConfigSubentryFlow]]:
        """Backends are subentries."""
        return {SUBENTRY_BACKEND: BackendSubentryFlow}

    async def async_step_user(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Ask for the router's name and where its first backend is."""
        check = _Check()
        if user_input is not None:
            self._router_name = user_input[CONF_NAME]
            self._server = dict(user_input[CONF_BACKEND])
            check = await _async_check_server(self.hass, self._server)
            if not check.errors:
                self._models = check.models
                return await self.async_step_model()
        schema = probatio.Schema(
            {
                probatio.Required(CONF_NAME, default=self._router_name): str,
                probatio.Required(CONF_BACKEND): section(
                    probatio.Schema(_server_fields(self._server)), {"collapsed": False}
                ),
            }
        )
        return self.async_show_form(
            step_id="user",
            data_schema=schema,
            errors=check.errors,
            description_placeholders=check.placeholders(self._server),
        )

    async def async_step_model(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Choose the first backend's model and limits."""
        kind = BackendKind(self._server[CONF_KIND])
        check = _Check()
        values: dict[str, Any] = {}
        if user_input is not None:
            values = _model_input(user_input)
            data = {**self._server, **values}
            check = await _async_check_model(self.hass, data)
            if not check.errors:
                return self.async_create_entry(
                    title=self._router_name,
                    data={},
                    options=DEFAULT_OPTIONS,
                    subentries=[
                        {
                            "subentry_type": SUBENTRY_BACKEND,
                            "data": data,
                            "title": data[CONF_NAME],
                            "unique_id": None,
                        }
                    ],
                )
        schema, errors = model_form(kind, self._models, check.errors)
        return self.async_show_form(
            step_id="model",
            data_schema=self.add_suggested_values_to_schema(
                schema, nest(schema, model_values(kind, values))
            ),
            errors=errors,
            description_placeholders=check.placeholders(self._server),
        )

    async def async_step_reauth(
        self, entry_data: Mapping[str, Any]
    ) -> ConfigFlowResult:
        """A backend's server rejected its API key."""
        self._reauth_subentry_id = entry_data[REAUTH_SUBENTRY_ID]
        return await self.async_step_reauth_confirm()

    async def async_step_reauth_confirm(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Ask for the backend's new API key; test it, save it, reload."""
        # Removing a backend reloads the router, which ends this flow.
        entry = self._get_reauth_entry()
        subentry = entry.subentries[self._reauth_subentry_id]
        check = _Check()
        if user_input is not None:
            data = {**subentry.data, CONF_API_KEY: user_input[CONF_API_KEY]}
            # Only the key is new: the model and limits were checked when
            # saved, and a missing model raises its own repair.
            check = await _async_check_server(self.hass, data)
            if not check.errors:
                # The router reloads on the change, with the new key.
                self.hass.config_entries.async_update_subentry(
                    entry, subentry, data=data
                )
                return self.async_abort(reason="reauth_successful")
        url = without_credentials(str(subentry.data[CONF_URL]))
        return self.async_show_form(
            step_id="reauth_confirm",
            data_schema=probatio.Schema(
                {probatio.Required(CONF_API_KEY): _api_key_field()}
            ),
            errors=check.errors,
            description_placeholders={
                **check.placeholders(subentry.data),
                "backend": subentry.title,
                "url": url,
            },
        )


class BackendSubentryFlow(ConfigSubentryFlow):
    """Add or reconfigure one backend of a router."""

    def __init__(self) -> None:
        """Start with nothing known."""
        self._server: dict[str, Any] = {}
        self._models: list[str] = []
        self._skip_check = False

    def _defaults(self) -> Mapping[str, Any]:
        if self.source == SOURCE_RECONFIGURE:
            return self._get_reconfigure_subentry().data
        # Tried after the others, not tied with one: ties break by name.
        priorities = [
            int(subentry.data.get(CONF_PRIORITY, DEFAULT_PRIORITY))
            for subentry in backend_subentries(self._get_entry())
        ]
        return {CONF_PRIORITY: min(max(priorities, default=0) + 1, MAX_PRIORITY)}

    def _not_answering(self) -> bool:
        """Whether the reconfigured backend's server is down right now."""
        entry = self._get_entry()
        if (
            self.source != SOURCE_RECONFIGURE
            or entry.state is not ConfigEntryState.LOADED
        ):
            return False
        name = self._get_reconfigure_subentry().data[CONF_NAME]
        state = entry.runtime_data.router.states.get(name)
        return state is not None and state.online is False

    async def async_step_user(
        self, user_input: dict[str, Any] | None = None
    ) -> SubentryFlowResult:
        """Ask where the backend is."""
        check = _Check()
        if user_input is not None:
            self._server = {k: v for k, v in user_input.items() if k != CONF_SKIP_CHECK}
            self._skip_check = bool(user_input.get(CONF_SKIP_CHECK))
            stored_key = self._defaults().get(CONF_API_KEY)
            if stored_key and not self._server.get(CONF_API_KEY):
                self._server[CONF_API_KEY] = stored_key
            if self._name_taken(self._server[CONF_NAME]):
                check = _Check({CONF_NAME: "name_exists"})
            elif self._skip_check:
                check = _url_check(self._server)
            else:
                check = await _async_check_server(self.hass, self._server)
            if not check.errors:
                self._models = check.models
                return await self.async_step_model()
        else:
            # A server that is down now cannot be tested: offer to skip that.
            self._skip_check = self._not_answering()
        fields = _server_fields(self._server or self._defaults())
        fields[probatio.Optional(CONF_SKIP_CHECK, default=self._skip_check)] = (
            BooleanSelector()
        )
        placeholders = check.placeholders(self._server)
        step_id = "user"
        if self.source == SOURCE_RECONFIGURE:
            # Its own step, so the form's title says which backend it changes.
            step_id = "reconfigure"
            placeholders["backend"] = self._get_reconfigure_subentry().title
        return self.async_show_form(
            step_id=step_id,
            data_schema=probatio.Schema(fields),
            errors=check.errors,
            description_placeholders=placeholders,
        )

    async_step_reconfigure = async_step_user

    def _name_taken(self, name: str) -> bool:
        own = (
            self._reconfigure_subentry_id if self.source == SOURCE_RECONFIGURE else None
        )
        return any(
            subentry.data[CONF_NAME] == name and subentry.subentry_id != own
            for subentry in backend_subentries(self._get_entry())
        )

    async def async_step_model(
        self, user_input: dict[str, Any] | None = None
    ) -> SubentryFlowResult:
        """Choose the model and limits."""
        kind = BackendKind(self._server[CONF_KIND])
        check = _Check()
        values = self._defaults()
        if user_input is not None:
            values = _model_input(user_input)
            data = {**self._server, **values}
            check = await _async_check_model(
                self.hass,
                data,
                turn_timeout=float(
                    self._get_entry().options.get(
                        CONF_TURN_TIMEOUT, DEFAULT_TURN_TIMEOUT
                    )
                ),
                reach_server=not self._skip_check,
            )
            if not check.errors:
                if self.source == SOURCE_RECONFIGURE:
                    return self.async_update_and_abort(
                        self._get_entry(),
                        self._get_reconfigure_subentry(),
                        title=data[CONF_NAME],
                        data=data,
                    )
                return self.async_create_entry(title=data[CONF_NAME], data=data)
        schema, errors = model_form(kind, self._models, check.errors)
        return self.async_show_form(
            step_id="model",
            data_schema=self.add_suggested_values_to_schema(
                schema, nest(schema, model_values(kind, values))
            ),
            errors=errors,
            description_placeholders=check.placeholders(self._server),
        )


class LLMRouterOptionsFlow(OptionsFlow):
    """Router-wide options: prompt, Home Assistant API, history, policy."""

    async def async_step_init(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Show and save the options."""
        errors: dict[str, str] = {}
        values: dict[str, Any] = {}
        if user_input is not None:
            values = flatten(user_input, [SECTION_TIMING])
            if float(values[CONF_TURN_TIMEOUT]) < self._longest_first_token():
                errors = {CONF_TURN_TIMEOUT: "turn_timeout_too_short"}
            else:
                # Cleared fields are stored empty, so defaults do not come back.
                return self.async_create_entry(
                    data={CONF_PROMPT: "", CONF_LLM_HASS_API: [], **values}
                )
        apis = [
            SelectOptionDict(value=api.id, label=api.name)
            for api in llm.async_get_apis(self.hass)
        ]
        schema, shown_errors = options_form(apis, DEFAULT_OPTIONS, errors)
        options = {**DEFAULT_OPTIONS, **self.config_entry.options, **values}
        return self.async_show_form(
            step_id="init",
            data_schema=self.add_suggested_values_to_schema(
                schema, nest(schema, options)
            ),
            errors=shown_errors,
        )

    def _longest_first_token(self) -> float:
        """The longest first-token timeout of the router's backends."""
        return max(
            (
                float(s.data.get(CONF_FIRST_TOKEN_TIMEOUT, DEFAULT_FIRST_TOKEN_TIMEOUT))
                for s in backend_subentries(self.config_entry)
            ),
            default=0.0,
        )
