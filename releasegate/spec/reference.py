"""The spec's JSON Schema and its Markdown reference, both generated from the models so neither can drift.

``python -m releasegate.spec.reference > docs/spec-reference.md`` regenerates the reference; a test compares
the committed file with this output. The schema is what editors (VS Code YAML) validate and complete against,
so durations appear as the strings people write (``10m``), not the seconds the models hold.
"""

from __future__ import annotations

import copy
import inspect
import json
import sys
from collections.abc import Iterator
from typing import Any, get_args

import yaml
from pydantic import BaseModel

from releasegate.durations import format_duration
from releasegate.spec import placeholders
from releasegate.spec.loader import unwrap
from releasegate.spec.models import (
    DURATION_JSON_SCHEMA,
    LATENCY_METRICS,
    THRESHOLD_JSON_SCHEMA,
    Rule,
    Spec,
)
from releasegate.spec.rollback import PERCENT_JSON_SCHEMA

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

EXAMPLE_SPEC = """\
service: shop
tier: important                 # critical | important | supporting
platform:
  kind: local
  command: "python3 -m http.server {port} --bind 127.0.0.1 --directory site-{version}"
  instances: 2
  cwd: .
  env: {LOG_LEVEL: info}
router:
  kind: builtin
  listen: 127.0.0.1:8080
health:
  path: /
  interval: 5s
  timeout: 2s
  attempts: 60
  expect: {}                    # optional JSON subset of the body, e.g. {status: healthy, version: "{version}"}
  failure_threshold: 3          # under traffic: 3 failed checks in a row of an instance roll back
  down_after: 30s               # under traffic: every instance down this long rolls back
smoke:
  - {method: GET, path: /, expect_status: [200], max_latency: 500ms}
# - {command: "pytest tests/smoke --base-url {url}", timeout: 5m}   # your own suite, against one new instance
strategy:
  canary:
    steps:
      - {weight: 5, pause: 10m}
      - {weight: 25, pause: 10m}
      - {weight: 50, pause: 30m}
# or:  bluegreen: {ramp: [{weight: 10, pause: 5m}, {weight: 50, pause: 10m}], keep_previous: 24h}
# or:  rolling: {max_unavailable: 1, max_surge: 1}
analysis:
  interval: 10s
  post_promotion: 30m            # keep watching at 100 % while the previous version is kept
  rules:
    - {metric: error_rate, max: 0.05, for: 5m}
    - {metric: latency_p95, max: 2.5s, for: 5m}
rollback:
  mode: staircase               # staircase | immediate
  staircase:                    # each stair holds while errors persist; where they stop, it pauses for an operator
    - {weight: 50, wait: 5m}
    - {weight: 10, wait: 10m}
    - 0
  rising: 50%                   # straight to 0 % when the breaching metric gets this much worse over a stair
  immediate_error_rate: 50%     # straight to 0 % at once above this error rate
"""
"""The canonical spec, shown in the reference; examples/specs/shop-canary.yaml is a copy (a test checks)."""


def iter_models(root: type[BaseModel] = Spec) -> list[tuple[type[BaseModel], list[str]]]:
    """Every model reachable from ``root`` in field order, with the paths where it appears (``steps[]``)."""
    found: dict[type[BaseModel], list[str]] = {}

    def visit(model: type[BaseModel], path: str) -> None:
        first = model not in found
        found.setdefault(model, []).append(path)
        if not first:
            return
        for name, field in model.model_fields.items():
            key = field.alias or name
            for child, suffix in _models_in(field.annotation):
                visit(child, f"{path}.{key}{suffix}" if path else f"{key}{suffix}")

    visit(root, "")
    return list(found.items())


def _models_in(tp: Any, suffix: str = "") -> Iterator[tuple[type[BaseModel], str]]:
    tp = unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        yield tp, suffix
        return
    is_list = getattr(tp, "__origin__", None) is list
    for arg in get_args(tp):
        yield from _models_in(arg, suffix + ("[]" if is_list else ""))


# --- JSON Schema --------------------------------------------------------------------------------------------


def json_schema() -> dict[str, Any]:
    """The spec's JSON Schema: keys by alias, durations as strings such as ``10m``, defaults as in YAML."""
    schema = Spec.model_json_schema(by_alias=True)
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    for model, _ in iter_models():
        node = schema if model is Spec else defs[model.__name__]
        for name, field in model.model_fields.items():
            prop = node["properties"][field.alias or name]
            if field.default_factory is not None:
                default = field.get_default(call_default_factory=True, validated_data={})
                if not isinstance(default, BaseModel):  # whole sections would flood editors' completions
                    prop["default"] = _as_written(default)
            elif _is_duration(prop) and isinstance(prop.get("default"), int | float):
                prop["default"] = format_duration(prop["default"])
    schema = _use_refs(schema, DURATION_JSON_SCHEMA, "Duration")
    schema = _use_refs(schema, THRESHOLD_JSON_SCHEMA, "Threshold")
    schema = _use_refs(schema, PERCENT_JSON_SCHEMA, "Percent")
    schema["$defs"]["Duration"] = copy.deepcopy(DURATION_JSON_SCHEMA)
    schema["$defs"]["Threshold"] = copy.deepcopy(THRESHOLD_JSON_SCHEMA)
    schema["$defs"]["Percent"] = copy.deepcopy(PERCENT_JSON_SCHEMA)
    schema["$defs"] = dict(sorted(schema["$defs"].items()))
    return {"$schema": SCHEMA_DIALECT, **schema, "title": "releasegate release spec"}


def _is_duration(prop: dict[str, Any]) -> bool:
    """Pydantic flattens ``Duration | None`` into one ``anyOf``, so look for the duration's members in it."""
    members = prop.get("anyOf", [])
    return DURATION_JSON_SCHEMA in members or all(m in members for m in DURATION_JSON_SCHEMA["anyOf"])


def _use_refs(node: Any, target: dict[str, Any], name: str) -> Any:
    """Replace each inline copy of ``target`` (pydantic inlines ``WithJsonSchema``) by a ``$ref``."""
    if isinstance(node, list):
        return [_use_refs(item, target, name) for item in node]
    if not isinstance(node, dict):
        return node
    if node == target:
        return {"$ref": f"#/$defs/{name}"}
    out = {k: _use_refs(v, target, name) for k, v in node.items()}
    members = out.get("anyOf", [])
    if members and all(m in members for m in target["anyOf"]):  # inlined, possibly flattened with null
        rest = [m for m in members if m not in target["anyOf"]]
        ref = {"$ref": f"#/$defs/{name}"}
        del out["anyOf"]
        out = {**ref, **out} if not rest else {"anyOf": [ref, *rest], **out}
    return out


def _as_written(value: Any) -> Any:
    """A default as the user would write it in YAML: durations as ``10m``, latency bounds as ``2.5s``."""
    if isinstance(value, list):
        return [_as_written(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_written(v) for k, v in value.items()}
    if not isinstance(value, BaseModel):
        return value
    out: dict[str, Any] = {}
    schema = type(value).model_json_schema(by_alias=True)
    for name, field in type(value).model_fields.items():
        item = getattr(value, name)
        if item is None:
            continue
        key = field.alias or name
        latency_bound = isinstance(value, Rule) and value.metric in LATENCY_METRICS and name in ("max", "min")
        if latency_bound or (_is_duration(schema["properties"][key]) and isinstance(item, int | float)):
            out[key] = format_duration(item)
        else:
            out[key] = _as_written(item)
    return out


# --- Markdown reference -------------------------------------------------------------------------------------


def render_reference() -> str:
    """docs/spec-reference.md: each section and key with type, default and description, plus the example."""
    schema = json_schema()
    models = iter_models()
    anchors = {model: paths[0].rsplit(".", 1)[-1].removesuffix("[]") or "top-level"
               for model, paths in models}
    kinds = {model: _kind(model) for model, _ in models}
    shared = [a for a in anchors.values() if list(anchors.values()).count(a) > 1]
    for model in anchors:  # router: builtin, nginx, haproxy share a path: each section is named by its kind
        if anchors[model] in shared and kinds[model]:
            anchors[model] = f"{anchors[model]}-{kinds[model]}"
    out = [
        "# Release spec reference",
        "",
        "<!-- Generated from releasegate/spec/models.py by `python -m releasegate.spec.reference > "
        "docs/spec-reference.md`. Do not edit by hand: tests/test_spec_reference.py fails when this file "
        "and the models disagree. -->",
        "",
        "A release spec is one YAML file per service. Only `service` and `platform.command` are required; "
        "everything else defaults to the numbers of the seed runbooks.",
        "",
        "**Durations** are written with a unit: `250ms`, `5s`, `10m`, `24h`, `1h30m` (units `ms`, `s`, `m`, "
        "`h`, `d`; `0` needs none). Bare numbers are refused, because `pause: 10` could mean seconds or "
        "minutes.",
        "",
        "**Rule bounds** (`max`, `min`) are durations for latency metrics (`2.5s`), a fraction or a "
        "percentage for `error_rate` (`0.05` or `5%`), and plain numbers otherwise.",
        "",
        "**Placeholders**: only a `{word}` is one, and each field substitutes the ones in this table (`{url}` is "
        "`http://HOST:PORT` of the instance, `{host}` its address, `{port}` its port). Other braces stay as "
        "written (JSON in a body or a command, `${HOME}` in a shell command), `{{word}}` is a literal `{word}`, and "
        "a `{word}` the field does not substitute is refused by `validate` where it is written. A value that is "
        "exactly `\"{port}\"` in `health.expect` or `expect_json` matches the number. (PromQL queries have their "
        "own `{{service}}`, `{{version}}`, `{{baseline_version}}`: see `rules`.)",
        "",
        *placeholders.table_markdown().splitlines(),
        "",
        "**Editor support**: `releasegate schema > releasegate.schema.json`, then start the spec with "
        "`# yaml-language-server: $schema=releasegate.schema.json` for validation and completion in VS Code.",
        "",
        "## Example",
        "",
        "```yaml",
        EXAMPLE_SPEC.rstrip("\n"),
        "```",
    ]
    for model, paths in models:
        node = schema if model is Spec else schema["$defs"][model.__name__]
        title = "Top level" if model is Spec else ", ".join(f"`{p}`" for p in paths)
        if anchors[model].endswith(f"-{kinds[model]}"):
            title += f" (kind: {kinds[model]})"
        out += ["", f'<a id="{anchors[model]}"></a>', "", f"## {title}", ""]
        out += _table(model, node, schema["$defs"], anchors)
    return "\n".join(out + _release_sections()) + "\n"


def _table(model: type[BaseModel], node: dict[str, Any], defs: dict[str, Any],
           anchors: dict[type[BaseModel], str]) -> list[str]:
    """A section's summary and its keys: type, default, description."""
    out = [inspect.cleandoc(model.__doc__).split("\n\n")[0].replace("\n", " "), ""] if model.__doc__ else []
    out += ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        key = field.alias or name
        prop = node["properties"][key]
        cells = [f"`{key}`", _type(prop, defs, anchors), _default(key, prop, node, field), field.description or ""]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return out


def _release_sections() -> list[str]:
    """The release file of a multi-service release (releasegate/spec/release.py), generated the same way."""
    from releasegate.spec.release import MemberEntry, ReleaseFile

    schema = ReleaseFile.model_json_schema(by_alias=True)
    anchors: dict[type[BaseModel], str] = {ReleaseFile: "release-file", MemberEntry: "release-file-services"}
    out = ["", '<a id="release-file"></a>', "", "## Release file (multi-service releases)", "",
           "Not a spec: a file that releases several services' specs as one group (`deploy release.yaml --version "
           "V`); how the group switches, what each tier's failure does, and the commands: docs/multi-service.md.",
           ""]
    out += _table(ReleaseFile, schema, schema["$defs"], anchors)
    out += ["", '<a id="release-file-services"></a>', "", "## Release file: `services[]`", ""]
    return out + _table(MemberEntry, schema["$defs"]["MemberEntry"], schema["$defs"], anchors)


def _kind(model: type[BaseModel]) -> str | None:
    """The ``kind`` a provider section is chosen by (its Literal), if it has one."""
    field = model.model_fields.get("kind")
    args = get_args(field.annotation) if field is not None else ()
    return str(args[0]) if len(args) == 1 else None


def _type(prop: dict[str, Any], defs: dict[str, Any], anchors: dict[type[BaseModel], str]) -> str:
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        if name == "Duration":
            return "duration"
        if name == "Threshold":
            return "number, duration, percent or size"
        if name == "Percent":
            return "fraction or percent"
        anchor = next((a for m, a in anchors.items() if m.__name__ == name), name.lower())
        return f"mapping ([{anchor}](#{anchor}))"
    if "anyOf" in prop:
        return " or ".join(_type(p, defs, anchors) for p in prop["anyOf"] if p.get("type") != "null")
    if "oneOf" in prop:  # chosen by kind: one section per kind
        refs = [p["$ref"].rsplit("/", 1)[-1] for p in prop["oneOf"] if "$ref" in p]
        links = [next((f"[{a.rsplit('-', 1)[-1]}](#{a})" for m, a in anchors.items() if m.__name__ == r), r)
                 for r in refs]
        return "mapping by kind: " + ", ".join(links)
    if "const" in prop:
        return f"`{prop['const']}`"
    if "enum" in prop:
        return "one of " + ", ".join(f"`{v}`" for v in prop["enum"])
    kind = prop.get("type")
    if kind == "array":
        item = _type(prop.get("items", {}), defs, anchors)
        if item.startswith("one of "):
            return "list, each " + item
        return "list of " + (item.replace("mapping", "mappings", 1) if item.startswith("mapping (")
                             else item + "s")
    if kind == "object":
        values = prop.get("additionalProperties")
        if isinstance(values, dict):
            return f"mapping of string to {_type(values, defs, anchors)}"
        return "mapping"
    words = {"integer": "integer", "number": "number", "string": "string", "boolean": "boolean"}
    text = words.get(str(kind), "any")
    low, high = prop.get("minimum"), prop.get("maximum")
    if low is not None and high is not None:
        text += f", {low}-{high}"
    elif low is not None:
        text += f", at least {low}"
    elif prop.get("exclusiveMinimum") is not None:
        text += f", above {prop['exclusiveMinimum']}"
    return text


def _default(key: str, prop: dict[str, Any], node: dict[str, Any], field: Any) -> str:
    if key in node.get("required", []):
        return "**required**"
    if "default" in prop:
        return "unset" if prop["default"] is None else f"`{_flow(prop['default'])}`"
    return "see section" if isinstance(field.get_default(call_default_factory=True, validated_data={}),
                                       BaseModel) else ""


def _flow(value: Any) -> str:
    """YAML flow style, as the value would be written in a spec."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        plain = value and not any(c in value for c in ",{}[]#'\"") and yaml.safe_load(value) == value
        return value if plain else json.dumps(value)
    return str(value)


if __name__ == "__main__":
    sys.stdout.write(render_reference())
