import copy
import pytest
from tests import test_repository as T

BASE_STRINGS = T.strings()
BASE_ICONS = T.icons()
BASE_SERVICES = T.services_yaml()


def drop(d, path):
    *parents, last = path.split("/")
    for p in parents:
        d = d[p]
    del d[last]


def put(d, path, value):
    *parents, last = path.split("/")
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = value


STRING_MUTATIONS = [
    ("drop", "entity/sensor/fallbacks", ["test_code_translation_keys_exist", "test_no_orphan_translations"]),
    ("put", "entity/sensor/bogus", ["test_no_orphan_translations"]),
    ("drop", "exceptions/unknown_backend", ["test_code_translation_keys_exist"]),
    ("put", "exceptions/unknown_backend/message", ["test_code_translation_keys_exist"]),
    ("put", "issues/model_missing/title", ["test_code_translation_keys_exist"]),
    ("put", "selector/bogus", ["test_no_orphan_translations"]),
    ("put", "services/ask/fields/bogus", ["test_services_are_translated"]),
    ("drop", "services/benchmark", ["test_services_are_translated"]),
    ("put", "config/step/user/description", []),
]


@pytest.mark.parametrize(("op", "path", "tests"), STRING_MUTATIONS)
def test_string_mutation(monkeypatch, op, path, tests):
    data = copy.deepcopy(BASE_STRINGS)
    if op == "drop":
        drop(data, path)
    else:
        put(data, path, {"name": "x", "description": "y"} if path.count("/") == 3 and path.startswith("services") else "Has {x} only")
    monkeypatch.setattr(T, "strings", lambda: data)
    for name in tests:
        with pytest.raises(AssertionError):
            getattr(T, name)()


FLOW_MUTATIONS = [
    ("put", "config/error/bogus"),
    ("drop", "config/step/model/data/num_ctx"),
    ("put", "config/step/model/data_description/bogus"),
    ("drop", "config/step/user/sections/backend/data/url"),
    ("drop", "config_subentries/backend/abort"),
    ("drop", "config_subentries/backend/error/name_exists"),
    ("drop", "config_subentries/backend/initiate_flow/reconfigure"),
    ("drop", "selector/kind/options/openai"),
    ("put", "selector/policy/options/random"),
    ("drop", "options/step/init/data/policy"),
    ("put", "options/step/other"),
]


@pytest.mark.parametrize(("op", "path"), FLOW_MUTATIONS)
async def test_flow_mutation(monkeypatch, hass, ollama, op, path):
    data = copy.deepcopy(BASE_STRINGS)
    if op == "drop":
        drop(data, path)
    else:
        put(data, path, "X")
    monkeypatch.setattr(T, "strings", lambda: data)
    with pytest.raises(AssertionError):
        await T.test_flow_strings(hass, ollama)


def test_icon_mutations(monkeypatch):
    for op, path in [("put", "entity/sensor/bogus"), ("drop", "services/ask"), ("put", "entity/binary_sensor/online/state/maybe")]:
        data = copy.deepcopy(BASE_ICONS)
        if op == "drop":
            drop(data, path)
        else:
            put(data, path, {"default": "mdi:x"} if path.endswith("bogus") else "mdi:y")
        monkeypatch.setattr(T, "icons", lambda data=data: data)
        with pytest.raises(AssertionError):
            T.test_icons()


async def test_services_mutation(monkeypatch, hass, ollama):
    data = copy.deepcopy(BASE_SERVICES)
    data["ask"]["fields"]["extra"] = {"selector": {"text": None}}
    monkeypatch.setattr(T, "services_yaml", lambda: data)
    with pytest.raises(AssertionError):
        await T.test_registered_actions_match_services_yaml(hass, ollama)


async def test_services_required_mutation(monkeypatch, hass, ollama):
    data = copy.deepcopy(BASE_SERVICES)
    data["ask"]["fields"]["think"]["required"] = True
    monkeypatch.setattr(T, "services_yaml", lambda: data)
    with pytest.raises(AssertionError):
        await T.test_registered_actions_match_services_yaml(hass, ollama)


def test_manifest_mutations(monkeypatch):
    base = T.manifest()
    for change, test in [
        ({"requirements": ["ollama>=0.6"]}, T.test_requirements_are_valid_and_match_home_assistant),
        ({"requirements": []}, T.test_third_party_imports_are_provided),
        ({"version": "v1"}, T.test_manifest_values),
        ({"domain": "other"}, T.test_manifest_values),
        ({"dependencies": []}, T.test_used_integrations_are_declared),
        ({"bogus": 1}, T.test_manifest_keys),
    ]:
        data = {**base, **change}
        if change == {"dependencies": []}:
            # conversation is always allowed; drop it from the allowed list too
            monkeypatch.setattr(T, "ALWAYS_ALLOWED_IMPORTS", T.ALWAYS_ALLOWED_IMPORTS - {"conversation"})
        monkeypatch.setattr(T, "manifest", lambda data=data: data)
        with pytest.raises((AssertionError, Exception)):
            test()
