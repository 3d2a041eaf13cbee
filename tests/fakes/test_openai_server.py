"""Checks of the OpenAI fake's own behaviour that the backend never uses."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.fakes.base import Reply
from tests.fakes.openai_server import FakeOpenAI

ASK: dict[str, Any] = {
    "model": "fake-model",
    "messages": [{"role": "user", "content": "Turn on the light"}],
}


async def post(url: str, body: dict[str, Any], **headers: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + "/v1/chat/completions", json=body, headers=headers
        ) as answer,
    ):
        return answer.status, await answer.json()


async def test_whole_completion_when_not_streaming() -> None:
    async with FakeOpenAI(llama_cpp=True) as fake:
        fake.script(
            Reply(
                thinking="Light wanted.",
                text="",
                tool_calls=[{"name": "HassTurnOn", "arguments": {"name": "light"}}],
                prompt_tokens=10,
                completion_tokens=4,
                generation_seconds=0.5,
            )
        )
        status, completion = await post(fake.url, ASK)

    assert status == 200
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0] == {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": None,
            "reasoning_content": "Light wanted.",
            "tool_calls": [
                {
                    "id": "call_fake0",
                    "type": "function",
                    "function": {
                        "name": "HassTurnOn",
                        "arguments": '{"name": "light"}',
                    },
                }
            ],
        },
        "logprobs": None,
        "finish_reason": "tool_calls",
    }
    assert completion["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 4,
        "total_tokens": 14,
    }
    assert completion["timings"]["predicted_per_second"] == pytest.approx(8.0)


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([{"role": "tool", "tool_call_id": "call_1", "content": "ok"}], "'tool'"),
        (
            [
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "HassTurnOn", "arguments": {}},
                        }
                    ],
                }
            ],
            "expected a string",
        ),
    ],
)
async def test_rejects_what_openai_rejects(
    messages: list[dict[str, Any]], problem: str
) -> None:
    async with FakeOpenAI() as fake:
        status, answer = await post(fake.url, {**ASK, "messages": messages})

    assert status == 400
    assert answer["error"]["type"] == "invalid_request_error"
    assert problem in answer["error"]["message"]


async def test_llama_cpp_key_check_and_error_shape() -> None:
    async with FakeOpenAI(llama_cpp=True, api_key="k") as fake:
        status, answer = await post(fake.url, ASK, Authorization="Bearer nope")
        async with (
            aiohttp.ClientSession() as session,
            session.get(fake.url + "/health") as health,
        ):
            assert (health.status, await health.json()) == (200, {"status": "ok"})

    assert (status, answer) == (
        401,
        {
            "error": {
                "code": 401,
                "message": "Invalid API Key",
                "type": "authentication_error",
            }
        },
    )
    assert [request["headers"].get("Authorization") for request in fake.requests] == [
        "Bearer nope",
        None,
    ]


async def test_refuses_strict_schemas_with_open_objects() -> None:
    schema = {"type": "object", "properties": {"on": {"type": "boolean"}}}
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema, "strict": True},
    }
    async with FakeOpenAI() as fake:
        status, answer = await post(
            fake.url, {**ASK, "response_format": response_format}
        )

    assert status == 400
    assert "'additionalProperties' is required" in answer["error"]["message"]
