"""LLM routers made and changed through Home Assistant's config flows.

The same REST calls the frontend makes: a router and its backends, reloads,
removal, and waits until a router is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
import json
from typing import Any

from homeassistant.util import slugify

from tests.e2e.hass_process import DOMAIN, HassClient, state
from tests.e2e.servers import LLM_MODEL, HarnessError, Server, wait_until
from tests.fakes.base import closed_port_url


@dataclass(frozen=True)
class BackendSpec:
    """One backend as the config flows ask for it."""

    name: str
    kind: str
    url: str
    model: str
    priority: int
    api_key: str | None = None
    skip_check: bool = False
    """Save without testing the connection (for a server that is down)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """More fields of the model step (max_parallel, thinking, ...), flat."""

    def connection(self) -> dict[str, Any]:
        """Fields of the step that tests the connection."""
        data: dict[str, Any] = {"name": self.name, "kind": self.kind, "url": self.url}
        if self.api_key is not None:
            data["api_key"] = self.api_key
        return data

    def model_step(self) -> dict[str, Any]:
        """Fields of the model step."""
        return {"model": self.model, "priority": self.priority, **self.options}


@dataclass(frozen=True)
class Router:
    """A router config entry and its entities' ids."""

    entry_id: str
    name: str

    @property
    def slug(self) -> str:
        """The object id Home Assistant derives from the router's name."""
        return str(slugify(self.name))

    @property
    def agent_id(self) -> str:
        """The conversation agent's entity id."""
        return f"conversation.{self.slug}"

    @property
    def last_backend_id(self) -> str:
        """The sensor naming the backend that served the last turn."""
        return f"sensor.{self.slug}_last_backend"

    @property
    def fallbacks_id(self) -> str:
        """The sensor counting turns not served by the first choice."""
        return f"sensor.{self.slug}_fallbacks"


def pi_backend(llm: Server) -> BackendSpec:
    """The demo's Pi: the LLM server, second choice."""
    return BackendSpec("Pi", "openai", llm.url, LLM_MODEL, priority=2)


def gpu_backend_down() -> BackendSpec:
    """The demo's GPU server: first choice, switched off (nothing listens)."""
    return BackendSpec(
        "GPU server",
        "openai",
        closed_port_url(),
        "qwen3-8b",
        priority=1,
        skip_check=True,
    )


FLOW = "/api/config/config_entries/flow"
SUBENTRY_FLOW = "/api/config/config_entries/subentries/flow"


def run_flow(
    client: HassClient,
    base: str,
    start: Mapping[str, Any],
    steps: Sequence[tuple[str, Mapping[str, Any]]],
) -> dict[str, Any]:
    """Start a data entry flow, answer its forms in order, return the result."""
    result: dict[str, Any] = client.post(base, start)
    for step_id, data in steps:
        if result.get("type") != "form" or result.get("step_id") != step_id:
            raise HarnessError(
                f"{base}: expected form {step_id!r}, got {_flow_summary(result)}; "
                f"see {client.server.log}"
            )
        result = client.post(
            f"{base}/{result['flow_id']}", in_sections(result["data_schema"], data)
        )
        if result.get("type") == "form" and result.get("errors"):
            raise HarnessError(
                f"{base}: step {step_id!r} refused: {result['errors']}; "
                f"see {client.server.log}"
            )
    if result.get("type") != "create_entry":
        raise HarnessError(
            f"{base}: expected an entry, got {_flow_summary(result)}; "
            f"see {client.server.log}"
        )
    return result


def in_sections(
    schema: Sequence[Mapping[str, Any]], data: Mapping[str, Any]
) -> dict[str, Any]:
    """Flat fields nested in the form's sections, as a browser sends them.

    A section given as a whole (a mapping under its name) is sent as it is.
    A field the form does not have is refused: it would test nothing.
    """
    if unknown := sorted(set(data) - _field_names(schema)):
        raise HarnessError(f"not a field of this form: {', '.join(unknown)}")
    return _nested(schema, data)


def _field_names(schema: Sequence[Mapping[str, Any]]) -> set[str]:
    """A serialized form's field and section names, those in sections too."""
    names = {field_["name"] for field_ in schema}
    for field_ in schema:
        if field_.get("type") == "expandable":
            names |= _field_names(field_["schema"])
    return names


def _nested(
    schema: Sequence[Mapping[str, Any]], data: Mapping[str, Any]
) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for field_ in schema:
        name = field_["name"]
        if field_.get("type") == "expandable" and name not in data:
            nested[name] = _nested(field_["schema"], data)
        elif name in data:
            nested[name] = data[name]
    return nested


def _flow_summary(result: Mapping[str, Any]) -> str:
    keys = ("type", "step_id", "reason", "errors")
    return json.dumps({key: result[key] for key in keys if key in result})


def create_router(client: HassClient, name: str, first: BackendSpec) -> Router:
    """Create a router whose first backend is first (config flow)."""
    result = run_flow(
        client,
        FLOW,
        {"handler": DOMAIN},
        [
            ("user", {"name": name, "backend": first.connection()}),
            ("model", first.model_step()),
        ],
    )
    router = Router(result["result"]["entry_id"], name)
    wait_loaded(client, router)
    return router


def add_backend(client: HassClient, router: Router, backend: BackendSpec) -> None:
    """Add a backend to a router (config subentry flow)."""
    connection = backend.connection()
    if backend.skip_check:
        connection["skip_check"] = True
    run_flow(
        client,
        SUBENTRY_FLOW,
        {"handler": [router.entry_id, "backend"]},
        [("user", connection), ("model", backend.model_step())],
    )
    # The new subentry reloads the entry later; until then the old router,
    # without this backend, is still loaded and answering.
    wait_until(
        lambda: backend.name in running_backends(client, router),
        timeout=60,
        what=f"router {router.name!r} to run with backend {backend.name!r}",
        server=client.server,
    )
    wait_loaded(client, router)


def running_backends(client: HassClient, router: Router) -> set[str]:
    """Backends of the router as loaded now (none while it reloads)."""
    try:
        diagnostics = client.get(f"/api/diagnostics/config_entry/{router.entry_id}")
    except HarnessError:  # not loaded at this moment
        return set()
    return set(diagnostics["data"]["backends"])


def entry_state(client: HassClient, router: Router) -> str | None:
    """The config entry's state ("loaded", "setup_retry", ...); None if gone."""
    entries = client.get(f"/api/config/config_entries/entry?domain={DOMAIN}")
    for entry in entries:
        if entry["entry_id"] == router.entry_id:
            return str(entry["state"])
    return None


def wait_loaded(client: HassClient, router: Router, timeout: float = 60.0) -> None:
    """Wait until the entry is loaded and its agent is available."""

    def ready() -> bool:
        agent = state(client, router.agent_id)
        return (
            entry_state(client, router) == "loaded"
            and agent is not None
            and agent["state"] != "unavailable"
        )

    wait_until(
        ready,
        timeout=timeout,
        what=f"router {router.name!r} to be loaded with {router.agent_id} available",
        server=client.server,
    )


def reload_router(client: HassClient, router: Router) -> None:
    """Unload and set up the router's entry again."""
    answer = client.post(f"/api/config/config_entries/entry/{router.entry_id}/reload")
    if answer.get("require_restart"):
        raise HarnessError(f"reloading {router.name!r} asks for a restart")
    wait_loaded(client, router)


def remove_router(client: HassClient, router: Router) -> None:
    """Delete the router's entry."""
    client.request("DELETE", f"/api/config/config_entries/entry/{router.entry_id}")
