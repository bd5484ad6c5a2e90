"""The generated reference and JSON Schema must stay in step with the models, and describe every key."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from releasegate.durations import format_duration, parse_duration
from releasegate.spec import json_schema, load_spec
from releasegate.spec.models import DURATION_PATTERN, THRESHOLD_PATTERN
from releasegate.spec.reference import EXAMPLE_SPEC, iter_models, render_reference

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "spec-reference.md"
REGENERATE = "python -m releasegate.spec.reference > docs/spec-reference.md"


def test_committed_reference_matches_the_models() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == render_reference(), f"docs are stale: run `{REGENERATE}`"


def test_module_entry_point_prints_the_reference_cleanly() -> None:
    done = subprocess.run([sys.executable, "-m", "releasegate.spec.reference"], capture_output=True,
                          text=True, check=True, cwd=ROOT)
    assert done.stdout == render_reference()
    assert done.stderr == ""


def test_every_field_and_section_is_described() -> None:
    missing = [f"{model.__name__}.{name}" for model, _ in iter_models()
               for name, field in model.model_fields.items() if not (field.description or "").strip()]
    assert missing == [], "add a Field(description=...) to these"
    assert [m.__name__ for m, _ in iter_models() if not m.__doc__] == []


def test_reference_lists_every_key_with_its_default() -> None:
    text = render_reference()
    for model, _ in iter_models():
        for name, field in model.model_fields.items():
            assert f"| `{field.alias or name}` |" in text
    assert "| `keep_previous` | duration | `24h` |" in text  # durations as written, not seconds
    assert ("| `steps` | list of mappings ([steps](#steps)) | `[{weight: 5, pause: 10m}, {weight: 25, "
            "pause: 10m}, {weight: 50, pause: 30m}]` |") in text
    assert "`[{metric: error_rate, max: 0.05, for: 5m}, {metric: latency_p95, max: 2.5s, for: 5m}]`" in text
    assert "| `command` | string | **required** |" in text


def test_canonical_example_is_in_the_reference_and_the_examples() -> None:
    assert (ROOT / "examples" / "specs" / "shop-canary.yaml").read_text(encoding="utf-8") == EXAMPLE_SPEC
    assert f"```yaml\n{EXAMPLE_SPEC}```" in render_reference()


# --- JSON Schema --------------------------------------------------------------------------------------------


def test_schema_is_plain_json_with_the_spec_structure() -> None:
    schema = json_schema()
    assert json.loads(json.dumps(schema)) == schema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object" and schema["required"] == ["service", "platform"]
    assert set(schema["properties"]) == {"service", "tier", "platform", "router", "health", "smoke", "strategy",
                                         "analysis", "rollback", "governance", "metrics", "notify", "migrations"}
    for name, definition in schema["$defs"].items():
        if definition.get("type") == "object":
            assert definition["additionalProperties"] is False, name
    assert "for" in schema["$defs"]["Rule"]["properties"]  # by alias, as written in YAML
    assert schema["$defs"]["Step"]["properties"]["weight"] == {
        "description": "Percent of traffic on the new version during this step.",
        "maximum": 100, "minimum": 1, "title": "Weight", "type": "integer"}


def test_schema_describes_durations_as_strings_with_defaults_as_written() -> None:
    schema = json_schema()
    duration = schema["$defs"]["Duration"]["anyOf"][0]
    assert duration["type"] == "string" and duration["pattern"] == DURATION_PATTERN
    interval = schema["$defs"]["Analysis"]["properties"]["interval"]
    assert interval["$ref"] == "#/$defs/Duration" and interval["default"] == "10s"
    assert schema["$defs"]["Step"]["properties"]["pause"]["anyOf"] == [{"$ref": "#/$defs/Duration"},
                                                                       {"type": "null"}]
    assert schema["$defs"]["Canary"]["properties"]["keep_previous"]["default"] == "24h"
    assert schema["$defs"]["Rollback"]["properties"]["staircase"]["default"] == [
        {"weight": 50, "wait": "5m"}, {"weight": 10, "wait": "10m"}, {"weight": 0}]


@pytest.mark.parametrize("text", ["250ms", "5s", "10m", "24h", "1h30m", "0", "0s", "2.5s", "10M"])
def test_duration_pattern_accepts_what_the_parser_reads(text: str) -> None:
    assert re.match(DURATION_PATTERN, text)
    parse_duration(text)


@pytest.mark.parametrize("text", ["", "5", "10 minutes", "5x", "10:00", "-1s"])
def test_duration_pattern_refuses_what_the_parser_refuses(text: str) -> None:
    assert not re.match(DURATION_PATTERN, text)
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(("text", "ok"), [("2.5s", True), ("5%", True), ("0.5 %", True), ("lots", False)])
def test_threshold_pattern(text: str, ok: bool) -> None:
    assert bool(re.match(THRESHOLD_PATTERN, text)) is ok


def test_every_duration_default_reads_back_as_the_model_default() -> None:
    schema = json_schema()
    for model, _ in iter_models():
        node = schema if model.__name__ == "Spec" else schema["$defs"][model.__name__]
        for name, field in model.model_fields.items():
            prop = node["properties"][field.alias or name]
            if prop.get("$ref") == "#/$defs/Duration" and "default" in prop:
                assert parse_duration(prop["default"]) == field.default
                assert prop["default"] == format_duration(field.default)


def _matches(instance: Any, schema: dict[str, Any], defs: dict[str, Any]) -> bool:
    """Just the JSON Schema keywords this schema uses: enough to show it accepts specs and refuses typos."""
    if "$ref" in schema and not _matches(instance, defs[schema["$ref"].rsplit("/", 1)[-1]], defs):
        return False
    if "anyOf" in schema and not any(_matches(instance, s, defs) for s in schema["anyOf"]):
        return False
    if "const" in schema and instance != schema["const"]:
        return False
    if "enum" in schema and instance not in schema["enum"]:
        return False
    types = {"object": dict, "array": list, "string": str, "integer": int, "number": int | float,
             "boolean": bool, "null": type(None)}
    kind = schema.get("type")
    if kind and (not isinstance(instance, types[kind]) or (kind in ("integer", "number")
                                                             and isinstance(instance, bool))):
        return False
    if isinstance(instance, str) and "pattern" in schema and not re.search(schema["pattern"], instance):
        return False
    if isinstance(instance, int | float) and not isinstance(instance, bool) and not (
            schema.get("minimum", instance) <= instance <= schema.get("maximum", instance)):
        return False
    if isinstance(instance, list):
        return all(_matches(item, schema.get("items", {}), defs) for item in instance)
    if isinstance(instance, dict):
        props = schema.get("properties", {})
        if any(key not in instance for key in schema.get("required", [])):
            return False
        extra = schema.get("additionalProperties", True)
        for key, value in instance.items():
            sub = props.get(key, extra)
            if sub is False or (isinstance(sub, dict) and not _matches(value, sub, defs)):
                return False
    return True


@pytest.mark.parametrize("name", ["shop-canary.yaml", "bluegreen.yaml", "rolling.yaml", "judged-canary.yaml"])
def test_schema_accepts_the_example_specs(name: str) -> None:
    path = ROOT / "examples" / "specs" / name
    load_spec(path)
    schema = json_schema()
    assert _matches(yaml.safe_load(path.read_text(encoding="utf-8")), schema, schema["$defs"])


@pytest.mark.parametrize(
    ("change", "where"),
    [({"stratgy": {}}, ()), ({"tier": "importnt"}, ()), ({"interval": "10 minutes"}, ("analysis",)),
     ({"metric": "eror_rate"}, ("analysis", "rules", 0)),
     ({"weight": 150}, ("strategy", "canary", "steps", 0))],
)
def test_schema_refuses_what_the_loader_refuses(change: dict[str, Any], where: tuple[str | int, ...]) -> None:
    doc = yaml.safe_load(EXAMPLE_SPEC)
    node = doc
    for part in where:
        node = node[part]
    node.update(change)
    schema = json_schema()
    assert not _matches(doc, schema, schema["$defs"])
