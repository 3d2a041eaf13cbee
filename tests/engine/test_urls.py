"""Server URLs: one function checks and writes them."""

from __future__ import annotations

import pytest

from custom_components.llm_router.engine.models import BackendKind
from custom_components.llm_router.engine.urls import (
    InvalidURL,
    normalize_url,
    without_credentials,
)

OLLAMA = BackendKind.OLLAMA
OPENAI = BackendKind.OPENAI


@pytest.mark.parametrize(
    ("url", "kind", "normalized"),
    [
        ("http://192.168.1.20:11434", OLLAMA, "http://192.168.1.20:11434"),
        (" HTTP://Pi.local:11434/ ", OLLAMA, "http://pi.local:11434"),
        ("localhost:11434", OLLAMA, "http://localhost:11434"),
        ("pi.local", OLLAMA, "http://pi.local:11434"),
        ("[::1]:8080", OLLAMA, "http://[::1]:8080"),
        ("http://[::1]:8000/v1/", OPENAI, "http://[::1]:8000/v1"),
        ("https://gpu.example.org", OPENAI, "https://gpu.example.org"),
        ("http://gpu:80/", OPENAI, "http://gpu"),
        ("http://user:pass@gpu:8000", OPENAI, "http://user:pass@gpu:8000"),
    ],
)
def test_normalized(url: str, kind: BackendKind, normalized: str) -> None:
    assert normalize_url(url, kind) == normalized
    assert normalize_url(normalized, kind) == normalized


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://host:99999", OLLAMA),
        ("http://host:0", OPENAI),
        ("http://[::1", OLLAMA),
        ("http://::1:11434", OLLAMA),
        ("http://host:port", OPENAI),
        ("localhost:8000", OPENAI),
        ("ftp://host", OPENAI),
        ("http://", OLLAMA),
        ("", OLLAMA),
        ("not a url", OLLAMA),
        ("http://gpu:8000/v1?key=1", OPENAI),
        ("http://gpu:8000/#top", OPENAI),
    ],
)
def test_refused(url: str, kind: BackendKind) -> None:
    with pytest.raises(InvalidURL):
        normalize_url(url, kind)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://ada:hunter2@gpu:8000/v1", "http://gpu:8000/v1"),
        ("http://ada@gpu:99999", "http://gpu:99999"),
        ("http://gpu:8000/a@b", "http://gpu:8000/a@b"),
        ("pi.local:11434", "pi.local:11434"),
    ],
)
def test_without_credentials(url: str, shown: str) -> None:
    assert without_credentials(url) == shown
