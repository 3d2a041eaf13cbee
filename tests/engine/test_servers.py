"""The server registry: one slot pool and breaker per server URL."""

from __future__ import annotations

from custom_components.llm_router.engine.models import BackendConfig, BackendKind
from custom_components.llm_router.engine.servers import ServerRegistry


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
