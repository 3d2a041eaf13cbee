"""Repository checks that stand in for hassfest and the HACS action.

manifest.json, hacs.json, translations, icons, services.yaml, the brand
images and the examples are checked against the code and against a router
set up on loopback fakes. Nothing here uses the network.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
import importlib
import importlib.metadata
import importlib.util
import json
from pathlib import Path
import re
import string
import sys
from typing import Any, get_type_hints

from awesomeversion import AwesomeVersion, AwesomeVersionStrategy
from freezegun.api import FrozenDateTimeFactory
import homeassistant.components
from homeassistant.components.automation.config import (
    async_validate_config_item as async_validate_automation,
)
from homeassistant.components.script.config import (
    async_validate_config_item as async_validate_script,
)
from homeassistant.config_entries import (
    SOURCE_RECONFIGURE,
    SOURCE_USER,
    ConfigFlow,
    OptionsFlow,
)
from homeassistant.const import Platform, __version__ as HA_VERSION
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType, section as form_section
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import (
    config_validation as cv,
    entity_registry as er,
    issue_registry as ir,
    selector,
)
from homeassistant.helpers.entity import EntityDescription
from homeassistant.helpers.translation import async_get_exception_message
from homeassistant.loader import Manifest
from homeassistant.setup import async_setup_component
from homeassistant.util.yaml import load_yaml_dict, parse_yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image
import probatio
import pytest
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_time_changed,
    async_mock_service,
)

from custom_components.llm_router import config_flow
from custom_components.llm_router.const import DOMAIN
from tests.conftest import (
    backend,
    gpu_and_pi,
    probe_backends,
    router_entry,
    setup_router,
)
from tests.fakes.base import Reply
from tests.fakes.ollama_server import FakeOllama
from tests.fakes.openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
INTEGRATION = ROOT / "custom_components" / DOMAIN
PACKAGE = f"custom_components.{DOMAIN}"
EXAMPLES = ROOT / "examples"
BRAND = INTEGRATION / "brand"

# The entities of a router "LLM Router" with the backends "Pi" (Ollama) and
# "GPU server" (OpenAI-compatible): the names the README and examples use.
ENTITY_IDS = {
    "conversation.llm_router",
    "ai_task.llm_router_ai_task",
    "sensor.llm_router_last_backend",
    "sensor.llm_router_fallbacks",
    "sensor.pi_loaded_model",
    *(
        f"{entity}.{backend}_{key}"
        for backend in ("pi", "gpu_server")
        for entity, key in (
            ("binary_sensor", "connection"),
            ("sensor", "generation_speed"),
            ("sensor", "prompt_speed"),
            ("sensor", "time_to_first_token"),
            ("sensor", "response_time"),
            ("sensor", "requests_sent"),
            ("sensor", "failed_requests"),
            ("sensor", "skipped_requests"),
            ("sensor", "failed_health_checks"),
            ("sensor", "last_error"),
        )
    ),
}


def read_json(path: Path) -> Any:
    """A JSON file's content."""
    return json.loads(path.read_text(encoding="utf-8"))


def manifest() -> dict[str, Any]:
    """The integration's manifest.json."""
    data: dict[str, Any] = read_json(INTEGRATION / "manifest.json")
    return data


def strings() -> dict[str, Any]:
    """The integration's translations/en.json."""
    data: dict[str, Any] = read_json(INTEGRATION / "translations" / "en.json")
    return data


def icons() -> dict[str, Any]:
    """The integration's icons.json."""
    data: dict[str, Any] = read_json(INTEGRATION / "icons.json")
    return data


def services_yaml() -> dict[str, Any]:
    """The integration's services.yaml."""
    return load_yaml_dict(str(INTEGRATION / "services.yaml"))


def example(name: str) -> Any:
    """An example YAML file, parsed as Home Assistant parses its YAML."""
    return parse_yaml((EXAMPLES / name).read_text(encoding="utf-8"))


def python_files() -> list[Path]:
    """The integration's Python files."""
    return sorted(INTEGRATION.rglob("*.py"))


def module_namespace(path: Path) -> dict[str, Any]:
    """The globals of the integration's module at path."""
    parts = path.relative_to(INTEGRATION).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return vars(importlib.import_module(".".join((PACKAGE, *parts))))


def evaluate(node: ast.expr, namespace: dict[str, Any], where: str) -> Any:
    """The value of a constant expression (a literal or a module-level name)."""
    try:
        return eval(compile(ast.Expression(node), where, "eval"), dict(namespace))
    except NameError as err:
        pytest.fail(f"{where}: {ast.unparse(node)} is not a constant ({err})")


def last_name(node: ast.expr) -> str | None:
    """The last name of an expression: f, a.f and self.f give f."""
    match node:
        case ast.Name(id=name) | ast.Attribute(attr=name):
            return name
    return None


def fields_of(text: str) -> set[str]:
    """The {placeholders} of a translated string."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


# ---------------------------------------------------------------------------
# manifest.json (hassfest's manifest, dependencies and requirements checks)

REQUIRED_MANIFEST_KEYS = {
    "domain",
    "name",
    "version",
    "codeowners",
    "documentation",
    "issue_tracker",
    "config_flow",
    "iot_class",
    "integration_type",
    "dependencies",
    "requirements",
}
# Keys of homeassistant.loader.Manifest that Home Assistant sets, not files.
INTERNAL_MANIFEST_KEYS = {"is_built_in", "overwrites_built_in"}
# script/hassfest/manifest.py
IOT_CLASSES = {
    "assumed_state",
    "calculated",
    "cloud_polling",
    "cloud_push",
    "local_polling",
    "local_push",
}
INTEGRATION_TYPES = {
    "device",
    "entity",
    "hardware",
    "helper",
    "hub",
    "service",
    "system",
    "virtual",
}
# script/hassfest/dependencies.py: integrations anyone may import undeclared.
ALWAYS_ALLOWED_IMPORTS = {platform.value for platform in Platform} | {
    "alert",
    "automation",
    "conversation",
    "default_config",
    "device_automation",
    "frontend",
    "group",
    "homeassistant",
    "input_boolean",
    "input_button",
    "input_datetime",
    "input_number",
    "input_select",
    "input_text",
    "media_source",
    "onboarding",
    "panel_custom",
    "persistent_notification",
    "person",
    "script",
    "shopping_list",
    "sun",
    "system_health",
    "system_log",
    "timer",
    "webhook",
    "websocket_api",
    "zone",
}


def test_manifest_keys() -> None:
    data = manifest()
    known = set(get_type_hints(Manifest)) - INTERNAL_MANIFEST_KEYS
    assert data.keys() >= REQUIRED_MANIFEST_KEYS
    assert data.keys() <= known
    keys = list(data)
    # hassfest's order: domain, name, then alphabetical.
    assert keys[:2] == ["domain", "name"]
    assert keys[2:] == sorted(keys[2:])


def test_manifest_values() -> None:
    data = manifest()
    assert data["domain"] == INTEGRATION.name
    assert data["name"]
    assert data["config_flow"] is True
    assert data["iot_class"] in IOT_CLASSES
    assert data["integration_type"] in INTEGRATION_TYPES
    assert data["codeowners"]
    assert all(re.fullmatch(r"@[\w-]+(/[\w-]+)?", o) for o in data["codeowners"])
    for key in ("documentation", "issue_tracker"):
        assert cv.url(data[key]).startswith("https://"), key
    version = AwesomeVersion(data["version"])
    assert version.valid
    assert version.strategy is AwesomeVersionStrategy.SEMVER


def test_manifest_dependencies_exist() -> None:
    data = manifest()
    dependencies = set(data["dependencies"])
    after = set(data.get("after_dependencies", []))
    assert not dependencies & after
    for domain in dependencies | after:
        spec = importlib.util.find_spec(f"homeassistant.components.{domain}")
        assert spec is not None, domain


def imported_modules(tree: ast.Module) -> Iterator[str]:
    """Absolute imports, with `from a import b` as a.b; TYPE_CHECKING skipped."""
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        match node:
            case ast.If(test=ast.Name(id="TYPE_CHECKING"), orelse=orelse):
                todo.extend(orelse)
                continue
            case ast.Import(names=names):
                yield from (alias.name for alias in names)
            case ast.ImportFrom(module=str(module), level=0, names=names):
                yield module
                yield from (f"{module}.{alias.name}" for alias in names)
        todo.extend(ast.iter_child_nodes(node))


def all_imports() -> set[str]:
    """Every module the integration imports."""
    return {
        name
        for path in python_files()
        for name in imported_modules(ast.parse(path.read_text(encoding="utf-8")))
    }


def test_used_integrations_are_declared() -> None:
    data = manifest()
    used = {
        name.split(".")[2]
        for name in all_imports()
        if name.startswith("homeassistant.components.")
    }
    allowed = (
        ALWAYS_ALLOWED_IMPORTS
        | set(data["dependencies"])
        | set(data.get("after_dependencies", []))
        # Platforms of other integrations this integration implements.
        | {path.stem for path in INTEGRATION.glob("*.py")}
    )
    assert used - allowed == set()


def core_pins() -> dict[str, str]:
    """Package name -> the version Home Assistant's own integrations pin."""
    pins: dict[str, str] = {}
    components = Path(homeassistant.components.__file__).parent
    for path in components.glob("*/manifest.json"):
        for text in read_json(path).get("requirements", []):
            requirement = Requirement(text)
            for spec in requirement.specifier:
                if spec.operator == "==":
                    pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def test_requirements_are_valid_and_match_home_assistant() -> None:
    pins = core_pins()
    for text in manifest()["requirements"]:
        requirement = Requirement(text)  # raises when not a valid requirement
        assert requirement.url is None, text
        installed = importlib.metadata.version(requirement.name)
        assert requirement.specifier.contains(installed, prereleases=True), text
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is not None:
            # Both can be installed next to Home Assistant's own integration,
            # and the tests run what Home Assistant installs.
            assert requirement.specifier.contains(pinned, prereleases=True), text
            assert installed == pinned, f"tests run {installed}, HA pins {pinned}"


def distribution_requirements(name: str) -> set[str]:
    """Canonical names of what a distribution requires (extras left out)."""
    names: set[str] = set()
    for text in importlib.metadata.requires(name) or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None or marker.evaluate({"extra": ""}):
            names.add(canonicalize_name(requirement.name))
    return names


def test_third_party_imports_are_provided() -> None:
    """Every package imported comes with Home Assistant or the manifest."""
    provided = distribution_requirements("homeassistant")
    for text in manifest()["requirements"]:
        name = Requirement(text).name
        provided |= {canonicalize_name(name)} | distribution_requirements(name)
    distributions = importlib.metadata.packages_distributions()
    for top in sorted({name.split(".")[0] for name in all_imports()}):
        if top in sys.stdlib_module_names or top in {
            "homeassistant",
            "custom_components",
        }:
            continue
        names = {canonicalize_name(d) for d in distributions.get(top, [])}
        assert names & provided, f"{top} is neither in Home Assistant nor required"


# ---------------------------------------------------------------------------
# hacs.json (the HACS action)

# HACS_MANIFEST_JSON_SCHEMA in hacs/integration custom_components/hacs/utils/validate.py
HACS_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "content_in_root": bool,
    "country": (str, list),
    "filename": str,
    "hacs": str,
    "hide_default_branch": bool,
    "homeassistant": str,
    "persistent_directory": str,
    "render_readme": bool,
    "zip_release": bool,
}


def test_hacs_json() -> None:
    hacs = read_json(ROOT / "hacs.json")
    assert isinstance(hacs.get("name"), str)
    for key, value in hacs.items():
        assert key in HACS_KEYS, key
        assert isinstance(value, HACS_KEYS[key]), key
    minimum = AwesomeVersion(hacs["homeassistant"])
    assert minimum.valid
    assert minimum <= AwesomeVersion(HA_VERSION)


def test_hacs_repository_layout() -> None:
    """One integration under custom_components/, and a README."""
    integrations = [
        path
        for path in (ROOT / "custom_components").iterdir()
        if path.is_dir() and path.name != "__pycache__"
    ]
    assert integrations == [INTEGRATION]
    assert (ROOT / "README.md").is_file()


def read_jsonc(path: Path) -> Any:
    """JSON whose comments are whole lines starting with //."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return json.loads("\n".join(x for x in lines if not x.lstrip().startswith("//")))


@pytest.mark.parametrize(
    ("annotated", "real"),
    [
        ("manifest.annotated.jsonc", INTEGRATION / "manifest.json"),
        ("hacs.annotated.jsonc", ROOT / "hacs.json"),
    ],
)
def test_annotated_copies_match(annotated: str, real: Path) -> None:
    path = EXAMPLES / annotated
    copy = read_jsonc(path)
    assert copy == read_json(real)
    assert list(copy) == list(read_json(real))
    # Every key is explained by the comment right above it.
    lines = path.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if re.match(r'\s*"\w+":', line):
            assert lines[index - 1].lstrip().startswith("//"), line


# ---------------------------------------------------------------------------
# translations/en.json and icons.json (hassfest's translations and icons)

# script/hassfest/translations.py
RE_TRANSLATION_KEY = re.compile(r"^(?!.+[_-]{2})(?![_-])[a-z0-9-_]+(?<![_-])$")
RE_URL = re.compile(
    r"(((ftp|ftps|scp|http|https|mqtt|mqtts|socket|socks5):\/\/|www\.)"
    r"[a-z0-9]+([\-\.]{1}[a-z0-9]+)*\.[a-z]{2,5}(:[0-9]{1,5})?(\/.*)?)",
    re.IGNORECASE,
)
RE_PLACEHOLDER_IN_SINGLE_QUOTES = re.compile(r"'{\w+}'")
RE_HTML = re.compile(r"<[a-z/!][^>]*>", re.IGNORECASE)
STRINGS_SECTIONS = {
    "title",
    "config",
    "config_subentries",
    "options",
    "preview_features",
    "selector",
    "device_automation",
    "system_health",
    "config_panel",
    "application_credentials",
    "issues",
    "entity_component",
    "device",
    "entity",
    "exceptions",
    "services",
    "conditions",
    "triggers",
    "conversation",
    "common",
}


def leaves(
    tree: dict[str, Any], path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, value) of every leaf of a nested dict."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, (*path, key))
        else:
            yield (*path, key), value


def test_strings_are_well_formed() -> None:
    data = strings()
    assert data.keys() <= STRINGS_SECTIONS
    for path, value in leaves(data):
        where = ".".join(path)
        assert all(RE_TRANSLATION_KEY.match(key) for key in path), where
        assert isinstance(value, str), where
        assert value, where
        assert value == value.strip(), where
        assert not RE_URL.search(value), where
        assert not RE_HTML.search(value), where
        assert not RE_PLACEHOLDER_IN_SINGLE_QUOTES.search(value), where
        assert all(name.isidentifier() for name in fields_of(value)), where


# A URL with a host, not inside backticks: the frontend renders it as a link.
RE_BARE_URL = re.compile(r"(?<!`)https?://[^\s`]+")


def test_example_urls_are_code_not_links() -> None:
    for path, value in leaves(strings()):
        assert not RE_BARE_URL.search(value), ".".join(path)


def test_connect_error_names_the_switch_that_saves_anyway() -> None:
    """A backend that is switched off can be saved: the error says how."""
    backend = strings()["config_subentries"]["backend"]
    for step in ("user", "reconfigure"):
        label = backend["step"][step]["data"]["skip_check"]
        assert f'"{label}"' in backend["error"]["cannot_connect"], step


def test_server_type_help_says_more_than_the_labels() -> None:
    """The help for the server type tells what each choice gives."""
    data = strings()
    labels = data["selector"]["kind"]["options"].values()
    label_words = {w for label in labels for w in re.findall(r"[\w.']+", label)}
    helps = [
        data["config"]["step"]["user"]["sections"]["backend"]["data_description"],
        *(
            step["data_description"]
            for step in data["config_subentries"]["backend"]["step"].values()
            if "kind" in step.get("data", {})
        ),
    ]
    for help_texts in helps:
        words = re.findall(r"[\w.']+", help_texts["kind"])
        assert len([w for w in words if w not in label_words]) >= 20


type Function = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True)
class KeyUse:
    """A translation key the code uses, and the placeholders it passes."""

    section: str
    """Where en.json has it: exceptions, issues, selector or entity.<platform>."""
    key: str
    placeholders: frozenset[str] | None
    """None when the code computes them."""
    where: str


def placeholder_names(
    node: ast.expr | None, unpacked: Mapping[str, frozenset[str]] | None = None
) -> frozenset[str] | None:
    """Placeholder names of a dict literal (none given: none).

    `**name` entries count as the names unpacked maps name to; None when the
    names are computed.
    """
    if node is None:
        return frozenset()
    if not isinstance(node, ast.Dict):
        return None
    names: set[str] = set()
    for key, value in zip(node.keys, node.values, strict=True):
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            names.add(key.value)
        elif (
            key is None and isinstance(value, ast.Name) and value.id in (unpacked or {})
        ):
            names |= (unpacked or {})[value.id]
        else:
            return None
    return frozenset(names)


def parameters(function: Function) -> list[str]:
    """A function's parameter names, in order (keyword-only ones last)."""
    arguments = function.args
    return [
        a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)
    ]


def argument(call: ast.Call, function: Function, name: str) -> ast.expr:
    """The expression a call passes to a function's parameter."""
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    positional = [a.arg for a in (*function.args.posonlyargs, *function.args.args)]
    if isinstance(call.func, ast.Attribute) and positional[:1] in (["self"], ["cls"]):
        positional = positional[1:]
    index = positional.index(name)
    assert index < len(call.args), f"{function.name}() call without {name}"
    return call.args[index]


def section_of(target: Any, platform: str, where: str) -> str:
    """The en.json section of a key passed as translation_key= to target."""
    if target is selector.SelectSelectorConfig:
        return "selector"
    if target is ir.async_create_issue:
        return "issues"
    if isinstance(target, type) and issubclass(target, HomeAssistantError):
        return "exceptions"
    if isinstance(target, type) and issubclass(target, EntityDescription):
        assert platform in {p.value for p in Platform}, where
        return f"entity.{platform}"
    pytest.fail(f"{where}: translation_key for {target!r}; teach this test its section")


class SourceModule:
    """One of the integration's modules: its syntax tree and its globals."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tree = ast.parse(path.read_text(encoding="utf-8"))
        self.namespace = module_namespace(path)
        self.platform = path.stem
        self.function_of: dict[ast.AST, Function | None] = {}
        self._map_functions(self.tree, None)

    def _map_functions(self, node: ast.AST, function: Function | None) -> None:
        """Note each node's innermost enclosing function."""
        for child in ast.iter_child_nodes(node):
            self.function_of[child] = function
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                self._map_functions(child, child)
            else:
                self._map_functions(child, function)

    def where(self, node: ast.AST) -> str:
        """File and line of a node."""
        return f"{self.path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"

    def value(self, node: ast.expr) -> Any:
        """The value of a constant expression of this module."""
        return evaluate(node, self.namespace, self.where(node))

    def key_uses(self) -> Iterator[KeyUse]:
        """Every translation key this module uses."""
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call):
                yield from self._call_uses(node)
            elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value:
                targets = (
                    node.targets if isinstance(node, ast.Assign) else [node.target]
                )
                if any(last_name(t) == "_attr_translation_key" for t in targets):
                    yield KeyUse(
                        f"entity.{self.platform}",
                        self.value(node.value),
                        None,
                        self.where(node),
                    )

    def _call_uses(self, call: ast.Call) -> Iterator[KeyUse]:
        keywords = {k.arg: k.value for k in call.keywords if k.arg is not None}
        where = self.where(call)
        if last_name(call.func) == async_get_exception_message.__name__:
            assert self.value(call.args[0]) == DOMAIN, where
            given = call.args[2] if len(call.args) > 2 else None
            yield KeyUse(
                "exceptions",
                self.value(call.args[1]),
                placeholder_names(keywords.get("translation_placeholders", given)),
                where,
            )
            return
        if "translation_key" not in keywords:
            return
        section = section_of(self.value(call.func), self.platform, where)
        if section == "exceptions":
            assert "translation_domain" in keywords, where
            assert self.value(keywords["translation_domain"]) == DOMAIN, where
        if section == "issues":
            assert self.value(call.args[1]) == DOMAIN, where
        key = keywords["translation_key"]
        placeholders = keywords.get("translation_placeholders")
        function = self.function_of.get(call)
        if not (
            isinstance(key, ast.Name)
            and function is not None
            and key.id in parameters(function)
        ):
            yield KeyUse(
                section, self.value(key), placeholder_names(placeholders), where
            )
            return
        # A helper passes its parameter on: the keys are its callers'.
        sites = [
            node
            for node in ast.walk(self.tree)
            if isinstance(node, ast.Call) and last_name(node.func) == function.name
        ]
        assert sites, f"{where}: {function.name} is never called"
        kwargs = function.args.kwarg
        for site in sites:
            extra = frozenset(
                k.arg
                for k in site.keywords
                if k.arg is not None and k.arg not in parameters(function)
            )
            yield KeyUse(
                section,
                self.value(argument(site, function, key.id)),
                placeholder_names(
                    placeholders, {kwargs.arg: extra} if kwargs else None
                ),
                self.where(site),
            )


def code_key_uses() -> list[KeyUse]:
    """Every translation key the integration's code uses."""
    return [use for path in python_files() for use in SourceModule(path).key_uses()]


def lookup(data: dict[str, Any], section: str, key: str) -> Any:
    """en.json's entry for a key of a section such as entity.sensor."""
    node: Any = data
    for part in (*section.split("."), key):
        assert isinstance(node, dict), f"{section}.{key}"
        assert part in node, f"{section}.{key} is missing from en.json"
        node = node[part]
    return node


def test_code_translation_keys_exist() -> None:
    data = strings()
    uses = code_key_uses()
    assert uses
    for use in uses:
        entry = lookup(data, use.section, use.key)
        texts = {
            "exceptions": [entry.get("message", "")],
            "issues": [entry.get("title", ""), entry.get("description", "")],
        }.get(use.section)
        if texts is not None and use.placeholders is not None:
            wanted = set().union(*(fields_of(text) for text in texts))
            assert wanted == use.placeholders, use.where


def service_selector_keys() -> set[str]:
    """Translation keys of select selectors in services.yaml."""
    return {
        spec["selector"]["select"]["translation_key"]
        for service in services_yaml().values()
        for spec in service_fields(service)[0].values()
        if "translation_key" in (spec.get("selector", {}).get("select") or {})
    }


def test_no_orphan_translations() -> None:
    data = strings()
    used: dict[str, set[str]] = {}
    for use in code_key_uses():
        used.setdefault(use.section, set()).add(use.key)
    used.setdefault("selector", set()).update(service_selector_keys())
    for name in ("exceptions", "issues", "selector"):
        assert set(data.get(name, {})) == used.get(name, set()), name
    entities = {
        f"entity.{platform}": set(keys)
        for platform, keys in data.get("entity", {}).items()
    }
    assert entities == {k: v for k, v in used.items() if k.startswith("entity.")}


def test_icons() -> None:
    icon_data = icons()
    entities = strings().get("entity", {})
    assert icon_data.keys() <= {"entity", "services", "config", "options", "issues"}
    for path, value in leaves(icon_data):
        assert value.startswith("mdi:"), ".".join(path)
    for platform, keys in icon_data.get("entity", {}).items():
        for key, icon in keys.items():
            assert key in entities.get(platform, {}), f"{platform}.{key}"
            assert icon.keys() <= {"default", "state", "state_attributes"}
            assert icon.get("default") not in icon.get("state", {}).values()
            if platform == Platform.BINARY_SENSOR:
                assert icon.get("state", {}).keys() <= {"on", "off"}
            attributes = entities[platform][key].get("state_attributes", {})
            assert icon.get("state_attributes", {}).keys() <= attributes.keys()
    assert icon_data.get("services", {}).keys() == services_yaml().keys()
    for name, icon in icon_data.get("services", {}).items():
        assert icon.keys() <= {"service", "sections"}, name
        assert "service" in icon, name


# ---------------------------------------------------------------------------
# Config flow, subentry flow and options flow strings


@dataclass
class Form:
    """What a shown form asks for."""

    step_id: str
    data: set[str]
    sections: dict[str, set[str]]
    selectors: list[Mapping[str, Any]]
    """Configs of its select selectors that have a translation key."""


def form(result: Any) -> Form:
    """The form of a flow result."""
    assert result["type"] is FlowResultType.FORM, result
    shown = Form(result["step_id"], set(), {}, [])
    values: list[Any] = []
    for marker, value in result["data_schema"].schema.items():
        if isinstance(value, form_section):
            shown.sections[str(marker)] = {str(m) for m in value.schema.schema}
            values.extend(value.schema.schema.values())
        else:
            shown.data.add(str(marker))
            values.append(value)
    shown.selectors = [
        value.config
        for value in values
        if isinstance(value, selector.SelectSelector)
        and value.config.get("translation_key")
    ]
    return shown


def check_forms(flow_strings: dict[str, Any], forms: list[Form]) -> None:
    """Every shown form is translated, and every translated step is shown."""
    steps = flow_strings["step"]
    assert set(steps) == {f.step_id for f in forms}
    for shown in forms:
        step = steps[shown.step_id]
        assert set(step.get("data", {})) == shown.data, shown.step_id
        assert set(step.get("data_description", {})) <= shown.data, shown.step_id
        assert set(step.get("sections", {})) == set(shown.sections), shown.step_id
        for name, keys in shown.sections.items():
            texts = step["sections"][name]
            assert "name" in texts, name
            assert set(texts.get("data", {})) == keys, name
            assert set(texts.get("data_description", {})) <= keys, name


def check_selectors(data: dict[str, Any], forms: list[Form]) -> None:
    """Select selectors' options are translated, with no extra ones."""
    for shown in forms:
        for config in shown.selectors:
            options = {
                o["value"] if isinstance(o, dict) else o for o in config["options"]
            }
            translated = data["selector"][config["translation_key"]]["options"]
            assert set(translated) == options, config["translation_key"]


# Helpers of flows that abort, and their reasons when none is passed.
ABORT_HELPERS = {
    "async_abort": None,
    "async_update_and_abort": "reconfigure_successful",
    "async_update_reload_and_abort": "reconfigure_successful",
    "_abort_if_unique_id_configured": "already_configured",
    "_async_abort_entries_match": "already_configured",
}


def flow_outcomes(flow: type) -> tuple[set[str], set[str]]:
    """Error and abort keys a flow class can show, read from config_flow.py.

    Errors are the values of dict literals keyed by "base" or a CONF_ name;
    module functions the class calls are read too.
    """
    tree = ast.parse(Path(config_flow.__file__).read_text(encoding="utf-8"))
    functions = {
        node.name: node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    todo: list[ast.AST] = [
        next(
            n
            for n in tree.body
            if isinstance(n, ast.ClassDef) and n.name == flow.__name__
        )
    ]
    followed: set[str] = set()
    errors: set[str] = set()
    aborts: set[str] = set()
    while todo:
        for node in ast.walk(todo.pop()):
            if isinstance(node, ast.Dict) and node.keys:
                keyed_by_field = all(
                    (isinstance(k, ast.Constant) and k.value == "base")
                    or (isinstance(k, ast.Name) and k.id.startswith("CONF_"))
                    for k in node.keys
                )
                values = [
                    v.value
                    for v in node.values
                    if isinstance(v, ast.Constant) and isinstance(v.value, str)
                ]
                if keyed_by_field and len(values) == len(node.values) and all(values):
                    errors.update(values)
            elif isinstance(node, ast.Call):
                name = last_name(node.func)
                if name in functions and name not in followed:
                    followed.add(name)
                    todo.append(functions[name])
                if name in ABORT_HELPERS:
                    reason = next(
                        (k.value for k in node.keywords if k.arg == "reason"), None
                    )
                    if isinstance(reason, ast.Constant) and isinstance(
                        reason.value, str
                    ):
                        aborts.add(reason.value)
                    elif ABORT_HELPERS[name] is not None:
                        aborts.add(str(ABORT_HELPERS[name]))
                    else:
                        pytest.fail(f"{flow.__name__}: abort reason is not a literal")
    return errors, aborts


def check_outcomes(flow_strings: dict[str, Any], flow: type) -> None:
    """The flow's errors and aborts are translated, with no extra ones."""
    errors, aborts = flow_outcomes(flow)
    assert set(flow_strings.get("error", {})) == errors, flow.__name__
    assert set(flow_strings.get("abort", {})) == aborts, flow.__name__


def flow_class[T](base: type[T]) -> type[T]:
    """The config_flow module's subclass of a flow base class."""
    (found,) = [
        value
        for value in vars(config_flow).values()
        if isinstance(value, type)
        and issubclass(value, base)
        and value is not base
        and value.__module__ == config_flow.__name__
    ]
    return found


async def test_flow_strings(hass: HomeAssistant, ollama: FakeOllama) -> None:
    """Forms are shown by running the flows up to each form."""
    data = strings()
    server = {"name": "Pi", "kind": "ollama", "url": ollama.url}
    entry = await setup_router(
        hass, router_entry(backend("Pi", "ollama", ollama.url, "llama3.2", 1))
    )

    flows = hass.config_entries.flow
    result: Any = await flows.async_init(DOMAIN, context={"source": SOURCE_USER})
    config_forms = [form(result)]
    result = await flows.async_configure(
        result["flow_id"], {"name": "LLM Router", "backend": server}
    )
    config_forms.append(form(result))
    flows.async_abort(result["flow_id"])
    result = await entry.start_reauth_flow(hass, data={"subentry_id": "pi"})
    config_forms.append(form(result))
    flows.async_abort(result["flow_id"])
    check_forms(data["config"], config_forms)
    check_selectors(data, config_forms)
    check_outcomes(data["config"], flow_class(ConfigFlow))

    subentry_types = flow_class(ConfigFlow).async_get_supported_subentry_types(entry)
    assert set(subentry_types) == set(data.get("config_subentries", {}))
    subentries = hass.config_entries.subentries
    for subentry_type, subentry_flow in subentry_types.items():
        flow_strings = data["config_subentries"][subentry_type]
        sources = {"user"}
        if hasattr(subentry_flow, "async_step_reconfigure"):
            sources.add("reconfigure")
        assert set(flow_strings["initiate_flow"]) == sources
        assert flow_strings["entry_type"]
        subentry_forms = []
        for source in sorted(sources):
            if source == SOURCE_RECONFIGURE:
                result = await entry.start_subentry_reconfigure_flow(
                    hass, next(iter(entry.subentries))
                )
            else:
                result = await subentries.async_init(
                    (entry.entry_id, subentry_type), context={"source": source}
                )
            subentry_forms.append(form(result))
            result = await subentries.async_configure(
                result["flow_id"], {**server, "name": f"{source} server"}
            )
            subentry_forms.append(form(result))
            subentries.async_abort(result["flow_id"])
        check_forms(flow_strings, subentry_forms)
        check_selectors(data, subentry_forms)
        check_outcomes(flow_strings, subentry_flow)

    result = await hass.config_entries.options.async_init(entry.entry_id)
    options_forms = [form(result)]
    hass.config_entries.options.async_abort(result["flow_id"])
    check_forms(data["options"], options_forms)
    check_selectors(data, options_forms)
    check_outcomes(data["options"], flow_class(OptionsFlow))


# ---------------------------------------------------------------------------
# services.yaml (hassfest's services check) and the registered actions

# script/hassfest/services.py, for a custom integration's untargeted actions.
SERVICE_KEYS = {"fields", "target", "name", "description"}
FIELD_KEYS = {
    "example",
    "default",
    "required",
    "advanced",
    "selector",
    "filter",
    "name",
    "description",
}
SECTION_KEYS = {"fields", "collapsed", "name", "description"}


def service_fields(
    service: dict[str, Any] | None,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """A services.yaml entry's fields (sections flattened) and sections."""
    fields: dict[str, dict[str, Any]] = {}
    sections: dict[str, dict[str, Any]] = {}
    for name, spec in ((service or {}).get("fields") or {}).items():
        if "fields" in (spec or {}):
            sections[name] = spec
            fields.update(spec["fields"])
        else:
            fields[name] = spec or {}
    return fields, sections


def test_services_yaml_schema() -> None:
    for name, service in services_yaml().items():
        assert cv.slug(name) == name
        assert (service or {}).keys() <= SERVICE_KEYS, name
        fields, sections = service_fields(service)
        for spec in sections.values():
            assert spec.keys() <= SECTION_KEYS, name
        for field, spec in fields.items():
            assert spec.keys() <= FIELD_KEYS, f"{name}.{field}"
            assert isinstance(spec.get("required", False), bool), f"{name}.{field}"
            if "selector" in spec:
                selector.validate_selector(spec["selector"])


def test_services_are_translated() -> None:
    services = services_yaml()
    translated = strings().get("services", {})
    assert translated.keys() == services.keys()
    for name, service in services.items():
        texts = translated[name]
        assert {"name", "description"} <= texts.keys(), name
        fields, sections = service_fields(service)
        assert set(texts.get("fields", {})) == set(fields), name
        for field, field_texts in texts.get("fields", {}).items():
            assert {"name", "description"} <= field_texts.keys(), f"{name}.{field}"
        assert set(texts.get("sections", {})) == set(sections), name
    assert service_selector_keys() <= set(strings().get("selector", {}))


async def test_registered_actions_match_services_yaml(
    hass: HomeAssistant, ollama: FakeOllama
) -> None:
    await setup_router(
        hass, router_entry(backend("Pi", "ollama", ollama.url, "llama3.2", 1))
    )
    services = services_yaml()
    registered = hass.services.async_services_for_domain(DOMAIN)
    assert registered.keys() == services.keys()
    for name, service in registered.items():
        fields, _ = service_fields(services[name])
        schema = service.schema
        assert isinstance(schema, probatio.Schema), name
        assert {str(m) for m in schema.schema} == set(fields), name
        required = {str(m) for m in schema.schema if isinstance(m, probatio.Required)}
        assert required == {f for f, s in fields.items() if s.get("required")}, name


# ---------------------------------------------------------------------------
# Brand images (home-assistant/brands README: image specification)

BRAND_NAMES = {
    f"{dark}{kind}{hdpi}.png"
    for dark in ("", "dark_")
    for kind in ("icon", "logo")
    for hdpi in ("", "@2x")
}


def test_brand_images() -> None:
    present = {path.name for path in BRAND.iterdir()}
    assert present <= BRAND_NAMES
    assert {"icon.png", "icon@2x.png", "logo.png", "logo@2x.png"} <= present
    for name in sorted(present):
        with Image.open(BRAND / name) as image:
            assert image.format == "PNG", name
            assert "A" in image.getbands() or "transparency" in image.info, name
            width, height = image.size
            hdpi = 2 if "@2x" in name else 1
            if "icon" in name:
                assert (width, height) == (256 * hdpi, 256 * hdpi), name
            else:
                assert width >= height, name  # landscape
                assert 128 * hdpi <= height <= 256 * hdpi, name
            # Trimmed: something opaque touches every edge.
            assert image.getbbox() == (0, 0, width, height), name
        if hdpi == 2:
            with Image.open(BRAND / name.replace("@2x", "")) as normal:
                assert (width, height) == (normal.width * 2, normal.height * 2), name


# ---------------------------------------------------------------------------
# Examples

YAML_EXAMPLES = sorted(path.name for path in EXAMPLES.glob("*.yaml"))
# `domain.name` of the integration's actions and entities, and of the
# domains the examples use them through.
REFERENCE = re.compile(
    r"\b(?:llm_router|ai_task|conversation|sensor|binary_sensor)\.[a-z0-9_]+\b"
)


@pytest.fixture
async def router(
    hass: HomeAssistant, ollama: FakeOllama, openai: FakeOpenAI
) -> MockConfigEntry:
    """The README's router: the GPU server first, the Pi second.

    The GPU server has a wake action, so that its power sensors exist too.
    """
    entry = await setup_router(
        hass,
        gpu_and_pi(ollama.url, openai.url, wake_action=[{"action": "script.wake_gpu"}]),
    )
    await probe_backends(hass, entry)
    return entry


@pytest.mark.parametrize("name", YAML_EXAMPLES)
def test_example_parses_and_explains_itself(name: str) -> None:
    assert example(name)
    assert (EXAMPLES / name).read_text(encoding="utf-8").startswith("# ")


def test_readme_links_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    links = set(re.findall(r"\]\(([^)#]+)\)", readme))
    examples = {path.name for path in EXAMPLES.iterdir()} - {"README.md"}
    assert links == examples


async def test_example_configs_are_valid(hass: HomeAssistant) -> None:
    await async_setup_component(hass, "homeassistant", {})
    for object_id, config in example("script_ask.yaml").items():
        assert await async_validate_script(hass, object_id, config)
    for name in ("automation_morning_briefing.yaml", "automation_gpu_offline.yaml"):
        for config in example(name):
            assert await async_validate_automation(hass, "automation", config)
    card = example("dashboard_card.yaml")
    assert card["type"] == "vertical-stack"
    assert all("type" in child for child in card["cards"])


def actions(node: Any) -> Iterator[dict[str, Any]]:
    """Every action call (a mapping with `action: domain.name`) in a config."""
    if isinstance(node, dict):
        if isinstance(node.get("action"), str):
            yield node
        for value in node.values():
            yield from actions(value)
    elif isinstance(node, list):
        for value in node:
            yield from actions(value)


@pytest.mark.usefixtures("router")
async def test_examples_refer_to_real_actions_and_entities(
    hass: HomeAssistant,
) -> None:
    entity_ids = set(hass.states.async_entity_ids())
    assert entity_ids >= ENTITY_IDS
    known = entity_ids | {
        f"{domain}.{name}"
        for domain, services in hass.services.async_services().items()
        for name in services
    }
    for path in sorted(EXAMPLES.iterdir()):
        for reference in REFERENCE.findall(path.read_text(encoding="utf-8")):
            assert reference in known, f"{path.name}: {reference}"
    for name in YAML_EXAMPLES:
        for call in actions(example(name)):
            domain, service = call["action"].split(".")
            if domain in (DOMAIN, "ai_task"):
                schema = hass.services.async_services_for_domain(domain)[service].schema
                assert schema is not None
                schema({**call.get("data", {}), **call.get("target", {})})


async def test_registered_entities_are_translated(
    hass: HomeAssistant, router: MockConfigEntry, entity_registry: er.EntityRegistry
) -> None:
    """Entities' translation keys exist; translated attributes are theirs."""
    entities = strings().get("entity", {})
    translated: set[tuple[str, str]] = set()
    for entry in er.async_entries_for_config_entry(entity_registry, router.entry_id):
        if entry.translation_key is None:
            continue
        texts = entities.get(entry.domain, {}).get(entry.translation_key)
        assert texts is not None, entry.entity_id
        translated.add((entry.domain, entry.translation_key))
        state = hass.states.get(entry.entity_id)
        assert state is not None, entry.entity_id
        attributes = texts.get("state_attributes", {}).keys()
        assert attributes <= state.attributes.keys(), entry.entity_id
        if "state" in texts and "options" in state.attributes:
            # An enum sensor's every state is translated.
            assert texts["state"].keys() == set(state.attributes["options"])
    assert translated == {
        (platform, key) for platform, keys in entities.items() for key in keys
    }


async def test_script_example_posts_the_answer(
    hass: HomeAssistant,
    router: MockConfigEntry,
    openai: FakeOpenAI,
    ollama: FakeOllama,
) -> None:
    notifications = async_mock_service(hass, "persistent_notification", "create")
    assert await async_setup_component(
        hass, "script", {"script": example("script_ask.yaml")}
    )

    async def ask() -> Any:
        return await hass.services.async_call(
            "script",
            "ask_llm_router",
            {"question": "What is the capital of France?"},
            blocking=True,
            return_response=True,
        )

    openai.script(Reply(text="Paris is the capital of France."))
    response = await ask()
    assert response["response"] == "Paris is the capital of France."
    notification = notifications[-1].data
    assert notification["title"] == "Answered by GPU server (fake-model)"
    assert notification["message"].startswith("Paris is the capital of France.\n\n")
    assert "tokens/s" in notification["message"]
    assert "did not answer" not in notification["message"]

    openai.script(Reply(status=500, error="out of memory"))
    ollama.script(Reply(text="Paris."))
    response = await ask()
    assert response["backend"] == "Pi"
    notification = notifications[-1].data
    assert notification["title"] == "Answered by Pi (llama3.2), after a fallback"
    assert "GPU server did not answer: " in notification["message"]


async def test_morning_briefing_example_speaks_the_structured_answer(
    hass: HomeAssistant, router: MockConfigEntry, openai: FakeOpenAI
) -> None:
    briefing = {"greeting": "Good morning!", "reminders": ["Bins out", "Dentist"]}
    openai.script(Reply(text=json.dumps(briefing)))
    spoken = async_mock_service(hass, "tts", "speak")
    notified = async_mock_service(hass, "notify", "notify")
    assert await async_setup_component(
        hass, "automation", {"automation": example("automation_morning_briefing.yaml")}
    )
    (automation,) = hass.states.async_entity_ids("automation")
    await hass.services.async_call(
        "automation",
        "trigger",
        {"entity_id": automation, "skip_condition": True},
        blocking=True,
    )
    await hass.async_block_till_done()
    (speech,) = spoken
    assert speech.data["message"] == "Good morning! Bins out. Dentist"
    assert speech.data["entity_id"] == ["tts.piper"]
    (notification,) = notified
    assert notification.data["message"] == "Good morning!\n• Bins out\n• Dentist"
    # Its 07:00 trigger would outlive the test.
    await hass.services.async_call(
        "automation", "turn_off", {"entity_id": automation}, blocking=True
    )


async def test_gpu_offline_example_notifies_outages_not_blips(
    hass: HomeAssistant,
    router: MockConfigEntry,
    openai: FakeOpenAI,
    freezer: FrozenDateTimeFactory,
) -> None:
    notified = async_mock_service(hass, "notify", "notify")
    assert await async_setup_component(
        hass, "automation", {"automation": example("automation_gpu_offline.yaml")}
    )
    coordinator = router.runtime_data.coordinators["GPU server"]
    online = "binary_sensor.gpu_server_connection"

    async def switch(on: bool) -> None:
        # Down as a broken server is: stopping and restarting the fake's
        # socket raced the health checks in flight (a connection accepted as
        # the socket closed was never answered).
        openai.models_body = None if on else "<html>502 Bad Gateway</html>"
        await coordinator.async_refresh()
        await hass.async_block_till_done()
        assert hass.states.is_state(online, "on" if on else "off")

    async def wait(minutes: float) -> None:
        freezer.tick(timedelta(minutes=minutes))
        async_fire_time_changed(hass)
        await hass.async_block_till_done()

    assert hass.states.is_state(online, "on")
    await switch(on=False)
    await wait(1)
    await switch(on=True)
    assert notified == []  # a blip

    await switch(on=False)
    await wait(5)
    assert [call.data["title"] for call in notified] == ["GPU server offline"]
    await switch(on=True)
    assert [call.data["title"] for call in notified] == [
        "GPU server offline",
        "GPU server back",
    ]
    assert "after 5 minutes offline" in notified[1].data["message"]
