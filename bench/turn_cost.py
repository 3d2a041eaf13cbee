"""What a conversation turn costs through LLM Router and through core's ollama.

One Home Assistant (pytest-homeassistant-custom-component's) holds both
integrations, pointed at the same loopback Ollama fake that answers 20
words at once. Each round sends one turn each way, in a rotating order, so
that drift hits all alike:

  bare     ollama.AsyncClient.chat(stream=True), iterated: the floor,
           over httpx's own transport, as core's ollama uses the client
  session  the same over LLM Router's transport: Home Assistant's shared
           aiohttp session (engine/ollama_http.py)
  core     conversation.async_converse to core's ollama agent
  router   conversation.async_converse to LLM Router's agent (one backend)

once without an LLM API and once with the Assist API. Reported: the median
time of each, the medians of the per-round differences (each - bare, each
- core, and router - session: its own cost over the client it streams
with), the ratio router / core, and the entity state writes each agent
makes per turn. LLM Router updates a backend's sensors at once
after a quiet second, else once at the end of that second: back to back,
its turns write them about once a second; with --gap 1 every turn does.

    .venv/bin/python -m bench.turn_cost [--rounds 200] [--gap 0]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import sys

import pytest

ROUNDS_VARIABLE = "TURN_COST_ROUNDS"
GAP_VARIABLE = "TURN_COST_GAP"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument(
        "--gap",
        type=float,
        default=0.0,
        help="seconds between rounds, untimed (1: every turn updates its sensors)",
    )
    arguments = parser.parse_args()
    os.environ[ROUNDS_VARIABLE] = str(arguments.rounds)
    os.environ[GAP_VARIABLE] = str(arguments.gap)
    # Home Assistant's test plugin must load before Home Assistant does.
    here = Path(__file__).parent
    sys.exit(
        pytest.main(
            [
                str(here / "turn_cost_hass.py"),
                "-q",
                "-s",
                "-p",
                "no:cacheprovider",
                "--rootdir",
                str(here.parent),
            ]
        )
    )
