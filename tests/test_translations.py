"""Translations beyond English: only en.json's keys, with its placeholders."""

from __future__ import annotations

from collections.abc import Iterator
import json
from pathlib import Path
import string
from typing import Any

import pytest

TRANSLATIONS = (
    Path(__file__).resolve().parent.parent
    / "custom_components"
    / "llm_router"
    / "translations"
)


def leaves(tree: dict[str, Any], path: str = "") -> Iterator[tuple[str, str]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{path}{key}.")
        else:
            yield f"{path}{key}", value


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def strings(name: str) -> dict[str, str]:
    return dict(leaves(json.loads((TRANSLATIONS / name).read_text(encoding="utf-8"))))


@pytest.mark.parametrize(
    "name", sorted(p.name for p in TRANSLATIONS.glob("*.json") if p.name != "en.json")
)
def test_translation_matches_english(name: str) -> None:
    english, translated = strings("en.json"), strings(name)
    assert translated
    assert translated.keys() <= english.keys()
    for key, text in translated.items():
        # Home Assistant drops a string whose placeholders differ from English.
        assert placeholders(text) == placeholders(english[key]), key


def test_everything_said_or_raised_is_in_german() -> None:
    assert strings("de.json").keys() >= {
        key for key in strings("en.json") if key.startswith("exceptions.")
    }


def test_forms_are_in_german() -> None:
    """Every form a user fills, its errors and its choices."""
    forms = ("config.", "config_subentries.", "options.", "selector.")
    assert strings("de.json").keys() >= {
        key for key in strings("en.json") if key.startswith(forms)
    }
