"""Server subprocesses for the demo and the end-to-end tests; llama.cpp's server.

Each server runs on 127.0.0.1 in its own process group, its output in a log
file. Every wait has a timeout, and every failure names its step and the log
file to read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
import os
from pathlib import Path
import re
import signal
import subprocess
import time
from typing import Self
import urllib.request

from tests.fakes.base import free_port

ROOT = Path(__file__).resolve().parents[2]
LLM_MODEL = "smollm2"
"""The model name scripts/llm-server serves."""


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
