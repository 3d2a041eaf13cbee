"""Waking a stopped GPU server in a real Home Assistant, as a user wires it.

The GPU server's wake action is a script that calls a rest_command; the
rest_command reaches a control endpoint on 127.0.0.1 (this test), which
starts a second real llama-server where the GPU backend points. Nothing
leaves the machine: no Wake-on-LAN packet is sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
import threading
import time

import pytest

from tests.e2e.conversations import ask_action
from tests.e2e.hass_process import HassClient, state_value
from tests.e2e.router_setup import (
    BackendSpec,
    add_backend,
    create_router,
    pi_backend,
    remove_router,
)
from tests.e2e.servers import LLM_MODEL, Server, start_llm_server, wait_until
from tests.fakes.base import free_port

pytestmark = pytest.mark.e2e

CONTROL_PORT = free_port()
GPU_PORT = free_port()
HASS_CONFIG = f"""
rest_command:
  start_gpu_server:
    url: http://127.0.0.1:{CONTROL_PORT}/wake
    method: post
script:
  wake_gpu:
    sequence:
      - action: rest_command.start_gpu_server
"""


@dataclass
class Machine:
    """The GPU machine: its server starts when the control endpoint is called."""

    log: Path
    wakes: int = 0
    server: Server | None = None

    def wake(self) -> None:
        """Boot: start the server and wait until it serves."""
        self.wakes += 1
        if self.server is None:
            self.server = start_llm_server(self.log, port=GPU_PORT)

    def off(self) -> None:
        """Stop the server."""
        if self.server is not None:
            self.server.stop()


class _Control(HTTPServer):
    def __init__(self, machine: Machine) -> None:
        super().__init__(("127.0.0.1", CONTROL_PORT), _ControlHandler)
        self.machine = machine


class _ControlHandler(BaseHTTPRequestHandler):
    server: _Control

    def do_POST(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.wfile.flush()
        # After the answer, as a machine boots after its magic packet; in
        # this thread, which outlives the server (its parent-death signal).
        if self.path == "/wake":
            self.server.machine.wake()

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def machine(e2e_dir: Path, llm_server: Server) -> Iterator[Machine]:
    """The GPU machine, off, and its control endpoint (after the install)."""
    machine = Machine(e2e_dir / "gpu-server.log")
    control = _Control(machine)
    thread = threading.Thread(target=control.serve_forever, name="control")
    thread.start()
    try:
        yield machine
    finally:
        control.shutdown()
        control.server_close()
        thread.join()
        machine.off()


def test_a_turn_wakes_the_stopped_gpu_server_through_a_script(
    hass: HassClient, llm_server: Server, machine: Machine
) -> None:
    router = create_router(hass, "Wake router", pi_backend(llm_server))
    try:
        add_backend(
            hass,
            router,
            BackendSpec(
                "GPU server",
                "openai",
                f"http://127.0.0.1:{GPU_PORT}",
                LLM_MODEL,
                priority=1,
                skip_check=True,
                options={"wake_action": [{"action": "script.wake_gpu"}]},
            ),
        )
        power = "sensor.gpu_server_power"
        wait_until(
            lambda: state_value(hass, power) == "asleep",
            timeout=60,
            what="the GPU server's health check to find it down",
            server=hass.server,
        )

        started = time.monotonic()
        first = ask_action(hass, router, "Say hello.")
        waking_turn = time.monotonic() - started

        assert first["backend"] == "Pi"
        assert first["attempts"][0]["backend"] == "GPU server"
        assert first["attempts"][0]["waking"] is True
        wait_until(
            lambda: state_value(hass, power) == "awake",
            timeout=180,
            what="the GPU server to wake",
            server=hass.server,
        )
        woken = time.monotonic() - started
        second = ask_action(hass, router, "Say hello again.")

        assert second["backend"] == "GPU server"
        assert machine.wakes == 1
        assert state_value(hass, "sensor.gpu_server_last_woken") not in (
            None,
            "unknown",
        )
        wake_time = state_value(hass, "sensor.gpu_server_wake_time")
        assert wake_time is not None
        assert float(wake_time) > 0
        print(  # the figures, for the report; no bound is asserted
            f"waking turn {waking_turn:.2f} s; GPU awake after {woken:.2f} s; "
            f"learnt wake time {float(wake_time):.2f} s"
        )
    finally:
        remove_router(hass, router)
