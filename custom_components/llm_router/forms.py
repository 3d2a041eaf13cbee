"""The backend's model step and the router's options as forms with sections.

What most users never change sits in collapsed sections. The form nests
those fields under their section; stored data stays flat.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from homeassistant.const import CONF_LLM_HASS_API, CONF_MODEL
from homeassistant.data_entry_flow import section
from homeassistant.helpers.selector import (
    ActionSelector,
    BooleanSelector,
    NumberSelector,
    NumberSelectorConfig,
    NumberSelectorMode,
    SelectOptionDict,
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
    TemplateSelector,
)
import probatio

from .const import (
    CONF_ALWAYS_ON,
    CONF_CONNECT_TIMEOUT,
    CONF_FIRST_TOKEN_TIMEOUT,
    CONF_HEDGING,
    CONF_IDLE_TIME,
    CONF_KEEP_ALIVE,
    CONF_KEEP_WARM,
    CONF_LATENCY_BUDGET,
    CONF_MAX_HISTORY,
    CONF_MAX_PARALLEL,
    CONF_MAX_TOKENS,
    CONF_NUM_CTX,
    CONF_POLICY,
    CONF_PRIORITY,
    CONF_PROBE_INTERVAL,
    CONF_PROMPT,
    CONF_SLEEP_ACTION,
    CONF_THINKING,
    CONF_TURN_TIMEOUT,
    CONF_WAKE_ACTION,
    CONF_WAKE_TIME,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_FIRST_TOKEN_TIMEOUT,
    DEFAULT_KEEP_ALIVE,
    DEFAULT_MAX_PARALLEL,
    DEFAULT_MAX_TOKENS,
    DEFAULT_NUM_CTX,
    DEFAULT_PRIORITY,
    Thinking,
)
from .engine.models import BackendKind
from .engine.policy import PolicyName

MAX_PRIORITY = 100

# Sections of the backend's model step.
SECTION_ANSWER = "answer"
SECTION_DEADLINES = "deadlines"
SECTION_MODEL_MEMORY = "model_memory"
SECTION_POWER = "power"
# Section of the router's options.
SECTION_TIMING = "timing"

type Fields = dict[probatio.Marker, Any]


@dataclass(frozen=True)
class FormSection:
    """A collapsed section of a backend's model step."""

    key: str
    fields: Callable[[BackendKind], Fields]
    """Its fields for a server type; none: the section is not shown."""


def _seconds(maximum: float) -> NumberSelector:
    """A number of seconds, typed in."""
    return NumberSelector(
        NumberSelectorConfig(
            min=0.5,
            max=maximum,
            step=0.5,
            unit_of_measurement="s",
            mode=NumberSelectorMode.BOX,
        )
    )


def _count(minimum: int, maximum: int, step: int = 1) -> NumberSelector:
    return NumberSelector(
        NumberSelectorConfig(
            min=minimum, max=maximum, step=step, mode=NumberSelectorMode.BOX
        )
    )


def thinking_choices(kind: BackendKind) -> list[Thinking]:
    """The thinking choices that mean something on a server type.

    Only Ollama can switch thinking off per request, so only there can the
    router decide per turn; elsewhere the choice says whether the model thinks.
    """
    if kind is BackendKind.OLLAMA:
        return list(Thinking)
    return [Thinking.OFF, Thinking.ON]


def _answer_fields(kind: BackendKind) -> Fields:
    return {
        probatio.Required(CONF_THINKING, default=Thinking.OFF): SelectSelector(
            SelectSelectorConfig(
                options=thinking_choices(kind),
                translation_key=CONF_THINKING,
                mode=SelectSelectorMode.LIST,
            )
        ),
        probatio.Required(CONF_MAX_TOKENS, default=DEFAULT_MAX_TOKENS): _count(
            16, 32768
        ),
    }


def _deadline_fields(kind: BackendKind) -> Fields:
    return {
        probatio.Required(CONF_MAX_PARALLEL, default=DEFAULT_MAX_PARALLEL): _count(
            1, 64
        ),
        probatio.Required(
            CONF_CONNECT_TIMEOUT, default=DEFAULT_CONNECT_TIMEOUT
        ): _seconds(60),
        probatio.Required(
            CONF_FIRST_TOKEN_TIMEOUT, default=DEFAULT_FIRST_TOKEN_TIMEOUT
        ): _seconds(600),
    }


def _model_memory_fields(kind: BackendKind) -> Fields:
    if kind is not BackendKind.OLLAMA:
        return {}
    return {
        # Unset: kept warm only while it is the first choice.
        probatio.Optional(CONF_KEEP_WARM): BooleanSelector(),
        probatio.Required(CONF_KEEP_ALIVE, default=DEFAULT_KEEP_ALIVE): str,
        probatio.Required(CONF_NUM_CTX, default=DEFAULT_NUM_CTX): _count(
            256, 1048576, 256
        ),
    }


def _power_fields(kind: BackendKind) -> Fields:
    return {
        probatio.Required(CONF_ALWAYS_ON, default=True): BooleanSelector(),
        probatio.Optional(CONF_WAKE_ACTION): ActionSelector(),
        probatio.Optional(CONF_WAKE_TIME): NumberSelector(
            NumberSelectorConfig(
                min=1, max=3600, unit_of_measurement="s", mode=NumberSelectorMode.BOX
            )
        ),
        probatio.Optional(CONF_SLEEP_ACTION): ActionSelector(),
        probatio.Optional(CONF_IDLE_TIME): NumberSelector(
            NumberSelectorConfig(
                min=1, max=1440, unit_of_measurement="min", mode=NumberSelectorMode.BOX
            )
        ),
    }


BACKEND_SECTIONS: tuple[FormSection, ...] = (
    FormSection(SECTION_ANSWER, _answer_fields),
    FormSection(SECTION_DEADLINES, _deadline_fields),
    FormSection(SECTION_MODEL_MEMORY, _model_memory_fields),
    FormSection(SECTION_POWER, _power_fields),
)

INTEGER_FIELDS = (
    CONF_PRIORITY,
    CONF_MAX_PARALLEL,
    CONF_NUM_CTX,
    CONF_MAX_TOKENS,
    CONF_MAX_HISTORY,
    CONF_PROBE_INTERVAL,
)
"""Fields whose number selectors give floats."""


def flatten(user_input: Mapping[str, Any], sections: Iterable[str]) -> dict[str, Any]:
    """A form's input with its sections' fields at the top, integers as int."""
    sections = set(sections)
    flat: dict[str, Any] = {}
    for key, value in user_input.items():
        if key in sections:
            flat.update(value)
        else:
            flat[key] = value
    for key in INTEGER_FIELDS:
        if key in flat:
            flat[key] = int(flat[key])
    return flat


def nest(schema: probatio.Schema, values: Mapping[str, Any]) -> dict[str, Any]:
    """Flat values grouped as the schema's sections ask for them."""
    nested: dict[str, Any] = {}
    for marker, value in schema.schema.items():
        if isinstance(value, section):
            nested[str(marker)] = nest(value.schema, values)
        elif str(marker) in values:
            nested[str(marker)] = values[str(marker)]
    return nested


def with_sections(
    top: Fields,
    sections: Iterable[tuple[str, Fields]],
    errors: Mapping[str, str],
) -> tuple[probatio.Schema, dict[str, str]]:
    """A form of top fields and collapsed sections, and its errors.

    The frontend shows errors above a section, not at its fields: an error
    of a field in a section is keyed by the section, which opens.
    """
    fields = dict(top)
    shown_errors = dict(errors)
    for key, inner in sections:
        if not inner:
            continue
        names = {str(marker) for marker in inner}
        failed = sorted(names & shown_errors.keys())
        for name in failed:
            shown_errors[key] = shown_errors.pop(name)
        fields[probatio.Required(key)] = section(
            probatio.Schema(inner), {"collapsed": not failed}
        )
    return probatio.Schema(fields), shown_errors


def model_form(
    kind: BackendKind, models: list[str], errors: Mapping[str, str]
) -> tuple[probatio.Schema, dict[str, str]]:
    """The model step: the model and its priority, the rest in sections."""
    top: Fields = {
        probatio.Required(CONF_MODEL): SelectSelector(
            SelectSelectorConfig(
                options=models,
                custom_value=True,
                mode=SelectSelectorMode.DROPDOWN,
                sort=True,
            )
        ),
        probatio.Required(CONF_PRIORITY, default=DEFAULT_PRIORITY): _count(
            1, MAX_PRIORITY
        ),
    }
    return with_sections(
        top, ((s.key, s.fields(kind)) for s in BACKEND_SECTIONS), errors
    )


def model_values(kind: BackendKind, values: Mapping[str, Any]) -> dict[str, Any]:
    """Values to fill the model step with; a choice the type lacks is mapped."""
    filled = dict(values)
    thinking = filled.get(CONF_THINKING)
    if thinking is not None and thinking not in thinking_choices(kind):
        # Only Ollama thinks "when fast enough"; other servers think then.
        filled[CONF_THINKING] = Thinking.ON
    return filled


def options_form(
    apis: list[SelectOptionDict],
    defaults: Mapping[str, Any],
    errors: Mapping[str, str],
) -> tuple[probatio.Schema, dict[str, str]]:
    """The router's options: routing and prompt first, timing in a section."""

    def required(key: str) -> probatio.Required:
        return probatio.Required(key, default=defaults[key])

    top: Fields = {
        required(CONF_POLICY): SelectSelector(
            SelectSelectorConfig(options=list(PolicyName), translation_key=CONF_POLICY)
        ),
        probatio.Optional(CONF_LLM_HASS_API): SelectSelector(
            SelectSelectorConfig(options=apis, multiple=True)
        ),
        probatio.Optional(CONF_PROMPT): TemplateSelector(),
        required(CONF_MAX_HISTORY): _count(0, 100),
    }
    timing: Fields = {
        required(CONF_LATENCY_BUDGET): _seconds(600),
        required(CONF_HEDGING): BooleanSelector(),
        required(CONF_TURN_TIMEOUT): _seconds(1800),
        required(CONF_PROBE_INTERVAL): NumberSelector(
            NumberSelectorConfig(
                min=5, max=3600, unit_of_measurement="s", mode=NumberSelectorMode.BOX
            )
        ),
    }
    return with_sections(top, [(SECTION_TIMING, timing)], errors)
