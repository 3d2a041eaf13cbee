"""Assist pipelines for a router, and what their runs recorded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tests.e2e.hass_process import HassClient
from tests.e2e.router_setup import Router


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
