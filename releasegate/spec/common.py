"""The building blocks every spec section uses: the strict base model, durations, thresholds, addresses.

Kept apart from models.py so provider-specific spec sections (spec/routers_*.py and friends) can be written
next to the rest without an import cycle.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, PlainSerializer, WithJsonSchema

from releasegate.durations import duration_text, parse_duration

_NUMBER_WITH_UNIT = r"(?:\d+(?:\.\d+)?(?:[mM][sS]|[sSmMhHdD]))+"
DURATION_PATTERN = rf"^\s*(?:0|{_NUMBER_WITH_UNIT})\s*$"
"""What ``parse_duration`` reads, for the JSON schema (JSON Schema's own ``format: duration`` is ISO 8601)."""
DURATION_JSON_SCHEMA: dict[str, Any] = {"anyOf": [
    {"type": "string", "pattern": DURATION_PATTERN, "examples": ["250ms", "5s", "10m", "24h", "1h30m"],
     "description": "A duration with a unit: ms, s, m, h or d, e.g. 250ms, 5s, 10m, 24h, 1h30m."},
    {"const": 0, "description": "Zero needs no unit."},
]}
SIZE_PATTERN = r"\d+(?:\.\d+)?\s*(?:[kKmMgG](?:i?[bB])?)"
"""A memory size such as 300MB, 1.5GB or 512MiB (what ``memory_mb`` bounds accept besides a plain number)."""
THRESHOLD_PATTERN = rf"^\s*(?:{_NUMBER_WITH_UNIT}|\d+(?:\.\d+)?\s*%|{SIZE_PATTERN})\s*$"
THRESHOLD_JSON_SCHEMA: dict[str, Any] = {"anyOf": [
    {"type": "number"},
    {"type": "string", "pattern": THRESHOLD_PATTERN,
     "description": "A duration for latency metrics (2.5s), a percentage for error_rate, cpu and "
                    "memory_percent (5%, 90%), a size for memory_mb (300MB, 1.5GB)."},
]}


def _duration(value: object) -> float:
    """parse_duration, with a plain message for values that are not even scalars (``pause: {}``)."""
    if value is None or isinstance(value, dict | list):
        got = "an empty value" if value is None else ("a mapping" if isinstance(value, dict) else "a list")
        raise ValueError(f"expected a duration such as 250ms, 5s, 10m or 24h, got {got}")
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_duration),
                     PlainSerializer(duration_text, return_type=str, when_used="json"),
                     WithJsonSchema(DURATION_JSON_SCHEMA)]
"""Seconds, written in YAML as 250ms, 5s, 10m, 24h."""
Threshold = Annotated[float, WithJsonSchema(THRESHOLD_JSON_SCHEMA)]
"""A rule's bound: a plain number, a duration for latency metrics, a percentage (error_rate, cpu,
memory_percent) or a size (memory_mb)."""

SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")

BASELINE_SUFFIX = "+baseline"
"""A baseline (``analysis.baseline``) runs the previous version's artifact under its own version name, so routers,
platforms and statistics tell it apart from the previous version's own instances. Every router accepts the name:
nginx writes versions in ``[A-Za-z0-9._+-]``, HAProxy keeps them in its state file (its servers are slots), the
built-in router takes any string."""


def baseline_name(previous: str) -> str:
    """The version name the baseline of ``previous`` runs, routes and is counted under."""
    return previous + BASELINE_SUFFIX


def artifact_version(version: str) -> str:
    """The version whose artifact (``{version}`` in commands, images, working directories) an instance runs: a
    baseline runs its previous version's."""
    return version.removesuffix(BASELINE_SUFFIX)

ROUTER_METRICS = ("error_rate", "rps", "latency_p50", "latency_p95", "latency_p99")
PROCESS_METRICS = ("cpu", "memory_mb", "memory_percent")
METRICS = ROUTER_METRICS + PROCESS_METRICS
LATENCY_METRICS = ("latency_p50", "latency_p95", "latency_p99")


def host_port(value: str, *, loopback_only: bool = False) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:8080, got {value!r}")
    if loopback_only and host not in {"127.0.0.1", "localhost", "::1", "[::1]"}:
        raise ValueError(f"the admin API must listen on loopback (127.0.0.1:PORT), got {value!r}")
    return value


class SpecModel(BaseModel):
    """Strict (unknown keys are errors), immutable, and YAML keys may use the field's alias."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


HostPort = Annotated[str, AfterValidator(host_port)]
"""HOST:PORT where users connect, e.g. 127.0.0.1:8080."""
