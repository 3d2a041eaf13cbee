"""A real Home Assistant process for the demo and the end-to-end tests.

Writes its configuration with the integration linked in, starts it, onboards
it through its REST API as a new install does, and reads entity states.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
import json
from pathlib import Path
from typing import Any
import urllib.error
import urllib.parse
import urllib.request

import aiohttp

from tests.e2e.servers import ROOT, HarnessError, Server, start_server, wait_until
from tests.fakes.base import free_port
from tests.reports import reports_in

DOMAIN = "llm_router"
HASS_PYTHON = ROOT / ".venv-hass" / "bin" / "python"
"""The real Home Assistant (requirements_hass.txt; scripts/setup makes it)."""


_CONFIGURATION = """\
# Only what the LLM router and the frontend's screens for it need (no
# default_config: nothing reaches the network and no requirement is missing).
# Home Assistant sets up the frontend itself.
homeassistant:
  name: LLM Router
  country: GB
  time_zone: UTC
  unit_system: metric
api:
assist_pipeline:
config:
conversation:
diagnostics:
onboarding:
logger:
  default: warning
  logs:
    homeassistant.setup: info
    custom_components.llm_router: debug
"""

# Onboarding's location step is done before the first start: configuration.yaml
# holds the location, and finishing the step would start the config flows of
# met, google_translate, radio_browser and shopping_list, which need the
# network or requirements this Home Assistant does not have.
_ONBOARDING_STORE = {
    "version": 4,
    "minor_version": 1,
    "key": "onboarding",
    "data": {"done": ["core_config"]},
}


def _http_store(port: int) -> dict[str, Any]:
    """HTTP settings as Home Assistant 2026.11 stores them, bound to 127.0.0.1.

    Not `http:` in YAML: since 2026.11 that is migrated and raises a repair
    that a user of the demo would see.
    """
    return {
        "version": 3,
        "minor_version": 1,
        "key": "http",
        "data": {
            "stable": {
                "server_port": port,
                "server_host": ["127.0.0.1"],
                "cors_allowed_origins": ["https://cast.home-assistant.io"],
                "login_attempts_threshold": -1,
                "ip_ban_enabled": True,
                "ssl_profile": "intermediate_v6",
                "use_x_frame_options": True,
                "created_at": "2026-11-29T00:00:00+00:00",
                "error": None,
                "error_message": None,
            },
            "pending": None,
            "yaml_migration_done": True,
        },
    }


def write_hass_config(config_dir: Path, port: int, extra: str = "") -> None:
    """A minimal configuration plus extra YAML, and the integration linked in."""
    storage = config_dir / ".storage"
    storage.mkdir(parents=True, exist_ok=True)
    (config_dir / "configuration.yaml").write_text(_CONFIGURATION + extra)
    (storage / "http").write_text(json.dumps(_http_store(port)))
    onboarding = storage / "onboarding"
    if not onboarding.exists():
        onboarding.write_text(json.dumps(_ONBOARDING_STORE))
    link_integration(config_dir)


def link_integration(config_dir: Path) -> None:
    """Make the working tree's integration a custom integration of config_dir."""
    link = config_dir / "custom_components" / DOMAIN
    target = ROOT / "custom_components" / DOMAIN
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and link.readlink() != target:  # a moved checkout
        link.unlink()
    if not link.is_symlink():
        link.symlink_to(target, target_is_directory=True)


def start_hass(
    config_dir: Path,
    log: Path,
    *,
    port: int | None = None,
    timeout: float = 180.0,
    keep: bool = False,
    extra_config: str = "",
) -> Server:
    """Run Home Assistant on 127.0.0.1 with a fresh minimal configuration.

    extra_config is YAML appended to it. Requirements are never installed
    at start (--skip-pip): its venv has what this configuration needs.
    """
    port = port or free_port()
    write_hass_config(config_dir, port, extra_config)
    return start_server(
        "Home Assistant",
        [
            HASS_PYTHON,
            "-m",
            "homeassistant",
            "--config",
            config_dir,
            "--skip-pip",
            "--log-no-color",
        ],
        port=port,
        ready_path="/api/onboarding",
        log=log,
        timeout=timeout,
        keep=keep,
    )


def check_no_reports(server: Server) -> None:
    """Fail when Home Assistant's log reports deprecated or blocking use by us."""
    with server.log.open(errors="replace") as log:
        if reports := reports_in(log):
            raise HarnessError(
                "Home Assistant reported llm_router:\n"
                + "\n".join(reports)
                + f"\nsee {server.log}"
            )


@dataclass
class HassClient:
    """Home Assistant's REST API, as an administrator once onboarded."""

    server: Server
    token: str | None = None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        form: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        missing_ok: bool = False,
    ) -> Any:
        """Send a request; the decoded JSON answer (None for a 404 if missing_ok)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.server.url + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as err:
            if missing_ok and err.code == 404:
                return None
            detail = err.read().decode(errors="replace")[:500]
            raise HarnessError(
                f"{method} {path}: HTTP {err.code} {detail}; see {self.server.log}"
            ) from err
        except OSError as err:
            raise HarnessError(
                f"{method} {path}: {err}; see {self.server.log}"
            ) from err
        try:
            return json.loads(text) if text else None
        except ValueError:
            return text

    def websocket(
        self, command: Mapping[str, Any], *, events: int = 0, timeout: float = 30.0
    ) -> Any:
        """Send one command over the WebSocket API; its result.

        With events, a subscription: the result and that many event messages.
        """

        async def exchange() -> Any:
            url = self.server.url.replace("http", "ws", 1) + "/api/websocket"
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(url) as socket,
            ):
                await socket.receive_json()  # auth_required
                await socket.send_json({"type": "auth", "access_token": self.token})
                if (reply := await socket.receive_json())["type"] != "auth_ok":
                    raise HarnessError(f"WebSocket auth: {reply}")
                await socket.send_json({"id": 1, **command})
                reply = await socket.receive_json()
                received = [
                    (await socket.receive_json())["event"] for _ in range(events)
                ]
            if not reply.get("success"):
                raise HarnessError(
                    f"WebSocket {command['type']}: {reply.get('error')}; "
                    f"see {self.server.log}"
                )
            return (reply.get("result"), received) if events else reply.get("result")

        # A loop of its own: asyncio.run would reset the thread's loop, which
        # the Home Assistant test plugin's fixtures still use.
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(asyncio.wait_for(exchange(), timeout))
        except (aiohttp.ClientError, TimeoutError) as err:
            raise HarnessError(
                f"WebSocket {command['type']}: {err!r}; see {self.server.log}"
            ) from err
        finally:
            loop.close()

    def get(self, path: str, **kwargs: Any) -> Any:
        """GET path."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        """POST JSON to path."""
        return self.request("POST", path, body, **kwargs)


@dataclass(frozen=True)
class Credentials:
    """The owner account onboarding creates."""

    username: str = "demo"
    password: str = "demo-password"
    name: str = "Demo"


def onboard(client: HassClient, user: Credentials, timeout: float = 60.0) -> None:
    """Finish onboarding as a new install's screens do; log in as the owner.

    The owner is created, analytics stay off, and the HTTP settings that
    Home Assistant moved from configuration.yaml to its storage are
    confirmed, as the dialog the frontend shows asks; unconfirmed, they are
    reverted five minutes after the start, with a restart on 0.0.0.0:8123.
    """
    client_id = client.server.url + "/"
    code = client.post(
        "/api/onboarding/users",
        {
            "client_id": client_id,
            "name": user.name,
            "username": user.username,
            "password": user.password,
            "language": "en",
        },
        timeout=timeout,
    )["auth_code"]
    tokens = client.request(
        "POST",
        "/auth/token",
        form={
            "grant_type": "authorization_code",
            "code": code,
            "client_id": client_id,
        },
    )
    client.token = tokens["access_token"]
    client.post("/api/onboarding/analytics")
    client.post(
        "/api/onboarding/integration",
        {"client_id": client_id, "redirect_uri": client_id + "?auth_callback=1"},
    )
    wait_until(
        lambda: client.get("/api/config").get("state") == "RUNNING",
        timeout=timeout,
        what="Home Assistant to finish starting",
        server=client.server,
    )


# Entity states


def state(client: HassClient, entity_id: str) -> dict[str, Any] | None:
    """An entity's state object, None if it does not exist."""
    found: dict[str, Any] | None = client.get(
        f"/api/states/{entity_id}", missing_ok=True
    )
    return found


def state_value(client: HassClient, entity_id: str) -> str | None:
    """An entity's state, None if it does not exist."""
    found = state(client, entity_id)
    return None if found is None else str(found["state"])


def integration_states(client: HassClient) -> list[dict[str, Any]]:
    """State objects of every entity of the integration, by entity id."""
    ids = set(
        client.post(
            "/api/template",
            {"template": f"{{{{ integration_entities('{DOMAIN}') | tojson }}}}"},
        )
    )
    states: list[dict[str, Any]] = client.get("/api/states")
    return sorted(
        (item for item in states if item["entity_id"] in ids),
        key=lambda item: str(item["entity_id"]),
    )
