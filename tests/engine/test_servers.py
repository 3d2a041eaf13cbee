"""The server registry: one slot pool, its holders and breaker per server URL."""

from __future__ import annotations

from custom_components.llm_router.engine.models import BackendConfig, BackendKind
from custom_components.llm_router.engine.servers import Server, ServerRegistry
from tests.engine.test_router import (
    ScriptedBackend,
    TrackedRouter,
    close_routers,  # noqa: F401 - autouse fixture
)
from tests.engine.test_routing import Gated, busy_turn


def config(url: str, kind: BackendKind = BackendKind.OPENAI) -> BackendConfig:
    return BackendConfig(name="x", kind=kind, url=url, model="m", max_parallel=2)


async def test_backends_on_one_server_share_it() -> None:
    registry = ServerRegistry()
    native = registry.acquire(config("pi.local", BackendKind.OLLAMA))
    openai = registry.acquire(config("http://PI.local:11434/v1/"))
    other = registry.acquire(config("http://pi.local:8080"))
    assert openai is native
    assert other is not native
    assert native.slots._value == 2


async def test_a_server_is_dropped_with_its_last_holder() -> None:
    registry = ServerRegistry()
    first = registry.acquire(config("http://gpu:8000"))
    assert registry.acquire(config("http://gpu:8000")) is first
    registry.release(config("http://gpu:8000"))
    assert registry.acquire(config("http://gpu:8000")) is first
    registry.release(config("http://gpu:8000"))
    registry.release(config("http://gpu:8000"))
    assert registry.acquire(config("http://gpu:8000")) is not first


async def test_a_backend_sees_the_wait_another_model_causes_on_its_server() -> None:
    """Two models on one Ollama: while one holds the slot, the other waits."""
    deepseek, qwen = Gated("DeepSeek", 1), ScriptedBackend("Qwen", 2)
    server = Server.create(max_parallel=1, failure_threshold=3)
    router = TrackedRouter(
        [deepseek, qwen], servers={"DeepSeek": server, "Qwen": server}
    )
    assert router.forecast("Qwen").queue == 0.0
    busy = await busy_turn(router, deepseek)

    assert router.states["Qwen"].holding
    assert router.forecast("Qwen").queue > 0.0
    deepseek.gate.set()
    await busy
