"""Real servers for the demo and the end-to-end tests, and how to drive them.

Starts llama.cpp's server (scripts/llm-server) and a real Home Assistant
process, each in its own process group with its output in a log file,
onboards Home Assistant through its REST API as a new install does, and
creates and uses an LLM router through the same REST calls the frontend
makes. Everything talks to 127.0.0.1 only. Every wait has a timeout, and
every failure names its step and the log file to read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
import json
import os
from pathlib import Path
import re
import signal
import subprocess
import time
from typing import Any, Self
import urllib.error
import urllib.parse
import urllib.request

import aiohttp
from homeassistant.util import slugify

from tests.fakes.base import closed_port_url, free_port
from tests.reports import reports_in

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "llm_router"
LLM_MODEL = "smollm2"
"""The model name scripts/llm-server serves."""
HASS_PYTHON = ROOT / ".venv-hass" / "bin" / "python"
"""The real Home Assistant (requirements_hass.txt; scripts/setup makes it)."""


class HarnessError(Exception):
    """A step failed; the message says which and where to read more."""


@dataclass
class Server:
    """A server subprocess in its own process group, logging to a file."""

    name: str
    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """Terminate the whole process group; kill it if it lingers."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout)
        # Children that outlived the leader, or a leader that ignored TERM.
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_server(
    name: str,
    argv: Sequence[str | Path],
    *,
    port: int,
    log: Path,
    timeout: float,
    ready_path: str = "/",
    ready: Callable[[], bool] | None = None,
    keep: bool = False,
) -> Server:
    """Start argv and wait until GET ready_path answers 200 on port.

    A server that speaks no HTTP gives its own ready check instead.

    The server gets SIGTERM when this process dies, however it dies, unless
    keep says it is to outlive it.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    # util-linux's setpriv arranges the signal, then execs argv.
    orphan_guard = [] if keep else ["setpriv", "--pdeathsig", "TERM", "--"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*orphan_guard, *map(str, argv)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
    server = Server(name, f"http://127.0.0.1:{port}", log, process)
    try:
        wait_until(
            ready or (lambda: _answers(server.url + ready_path)),
            timeout=timeout,
            what=f"{name} to be ready"
            if ready
            else f"{name} to answer GET {ready_path}",
            server=server,
        )
    except BaseException:
        server.stop()
        raise
    return server


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    server: Server,
    interval: float = 0.25,
) -> None:
    """Poll condition until true; fail if the server dies or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if not server.alive():
            raise HarnessError(
                f"{server.name} exited with code {server.process.returncode} "
                f"while waiting for {what}; see {server.log}"
            )
        if time.monotonic() > deadline:
            raise HarnessError(
                f"timed out after {timeout:.0f} s waiting for {what}; see {server.log}"
            )
        time.sleep(interval)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:  # refused, reset, timed out, HTTP error status
        return False


# The LLM server


def install_llm_server(log: Path, timeout: float = 600.0) -> None:
    """Install the model for llama.cpp's server (seconds; quick once installed)."""
    run_install("llm-server", log, timeout)


def run_install(script: str, log: Path, timeout: float) -> None:
    """Run `scripts/<script> install`, its output in log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        try:
            subprocess.run(
                [ROOT / "scripts" / script, "install"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=True,
            )
        except subprocess.CalledProcessError as err:
            raise HarnessError(
                f"scripts/{script} install failed (exit {err.returncode}); see {log}"
            ) from err
        except subprocess.TimeoutExpired as err:
            raise HarnessError(
                f"scripts/{script} install took over {timeout:.0f} s; see {log}"
            ) from err


def start_llm_server(
    log: Path,
    *,
    slots: int = 1,
    port: int | None = None,
    timeout: float = 120.0,
    keep: bool = False,
) -> Server:
    """Serve LLM_MODEL with that many slots on a loopback port (default: free).

    llama-server answers GET /health with 503 while it loads the model and
    200 once it serves (after install_llm_server).
    """
    port = port or free_port()
    return start_server(
        "LLM server",
        [
            ROOT / "scripts" / "llm-server",
            "run",
            "--port",
            str(port),
            "--parallel",
            str(slots),
        ],
        port=port,
        ready_path="/health",
        log=log,
        timeout=timeout,
        keep=keep,
    )


def chat_completions_served(server: Server) -> int:
    """Completions the LLM server has finished so far (its log).

    llama-server logs no access lines; it prints the timings of each task
    it finishes, ending with its total time.
    """
    log = server.log.read_text(errors="replace")
    return len(re.findall(r"print_timing: .*\btotal time\b", log))


def llm_server_metrics(server: Server) -> dict[str, float]:
    """llama-server's Prometheus counters and gauges (GET /metrics), by name."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        name.removeprefix("llamacpp:"): float(value)
        for name, value in (
            line.split() for line in text.splitlines() if line and line[0] != "#"
        )
    }


# Home Assistant

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


# The router


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


def prefer_in_assist(client: HassClient, router: Router) -> str:
    """Make an Assist pipeline for the router the preferred one; its id.

    The pipeline is named after the router and sends every sentence to it;
    the Assist dialog opens with the preferred pipeline.
    """
    return create_pipeline(client, router.name, router.agent_id, preferred=True)


def create_pipeline(
    client: HassClient,
    name: str,
    agent_id: str,
    *,
    preferred: bool = False,
    engines: Mapping[str, str | None] | None = None,
) -> str:
    """Make an Assist pipeline that sends every sentence to agent_id; its id.

    engines: the stt_* and tts_* fields (none: it neither hears nor speaks).
    """
    pipeline = client.websocket(
        {
            "type": "assist_pipeline/pipeline/create",
            "name": name,
            "language": "en",
            "conversation_engine": agent_id,
            # What the frontend's editor sets for an agent of any language.
            "conversation_language": "*",
            # Not even "turn on the light" goes to Home Assistant's intents first.
            "prefer_local_intents": False,
            "stt_engine": None,
            "stt_language": None,
            "tts_engine": None,
            "tts_language": None,
            "tts_voice": None,
            "wake_word_entity": None,
            "wake_word_id": None,
            **(engines or {}),
        }
    )
    if preferred:
        client.websocket(
            {
                "type": "assist_pipeline/pipeline/set_preferred",
                "pipeline_id": pipeline["id"],
            }
        )
    return str(pipeline["id"])


def first_finished_run(
    client: HassClient, pipeline_id: str
) -> list[dict[str, Any]] | None:
    """The events of the pipeline's first run (its debug page), once it ended."""
    runs = client.websocket(
        {"type": "assist_pipeline/pipeline_debug/list", "pipeline_id": pipeline_id}
    )["pipeline_runs"]
    if not runs:
        return None
    events: list[dict[str, Any]] = client.websocket(
        {
            "type": "assist_pipeline/pipeline_debug/get",
            "pipeline_id": pipeline_id,
            "pipeline_run_id": runs[0]["pipeline_run_id"],
        }
    )["events"]
    return events if events[-1]["type"] == "run-end" else None


def run_event(run: Sequence[Mapping[str, Any]], event_type: str) -> dict[str, Any]:
    """The data of a pipeline run's first event of a type."""
    return dict(next(event["data"] for event in run if event["type"] == event_type))


def run_speech(run: Sequence[Mapping[str, Any]]) -> str:
    """The agent's answer in a pipeline run."""
    response = run_event(run, "intent-end")["intent_output"]["response"]
    return str(response["speech"]["plain"]["speech"])


@dataclass(frozen=True)
class Reply:
    """What the conversation agent answered to one sentence."""

    speech: str
    response_type: str
    conversation_id: str | None
    seconds: float


def converse(
    client: HassClient,
    router: Router,
    text: str,
    *,
    conversation_id: str | None = None,
    timeout: float = 180.0,
) -> Reply:
    """Send text to the router's conversation agent."""
    body: dict[str, Any] = {"text": text, "agent_id": router.agent_id, "language": "en"}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    started = time.monotonic()
    result = client.post("/api/conversation/process", body, timeout=timeout)
    seconds = time.monotonic() - started
    response = result["response"]
    return Reply(
        speech=response.get("speech", {}).get("plain", {}).get("speech", ""),
        response_type=response["response_type"],
        conversation_id=result.get("conversation_id"),
        seconds=seconds,
    )


def ask_action(
    client: HassClient,
    router: Router,
    text: str,
    *,
    timeout: float = 180.0,
    **fields: Any,
) -> dict[str, Any]:
    """Call llm_router.ask through the REST API; its response data."""
    result = client.post(
        "/api/services/llm_router/ask?return_response",
        {"text": text, "config_entry_id": router.entry_id, **fields},
        timeout=timeout,
    )
    return dict(result["service_response"])


def chat_log(client: HassClient, conversation_id: str) -> list[dict[str, Any]]:
    """The content of a conversation's chat log (Home Assistant 2026.11+)."""
    _, (initial,) = client.websocket(
        {"type": "conversation/chat_log/subscribe", "conversation_id": conversation_id},
        events=1,
    )
    return list(initial["data"]["content"])


def last_attempts(client: HassClient, router: Router) -> dict[str, dict[str, Any]]:
    """Each backend's most recent attempt, from the router's diagnostics."""
    diagnostics = client.get(f"/api/diagnostics/config_entry/{router.entry_id}")
    return {
        name: backend["health"]["recent_attempts"][-1]
        for name, backend in diagnostics["data"]["backends"].items()
        if backend["health"]["recent_attempts"]
    }


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
