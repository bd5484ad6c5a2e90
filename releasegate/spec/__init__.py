"""The release spec: models, YAML loading with line numbers, and errors that point at the offending key."""

from __future__ import annotations

from typing import Any

from releasegate.spec.errors import SpecError, SpecIssue
from releasegate.spec.loader import load_spec, load_spec_text
from releasegate.spec.models import Spec


def json_schema() -> dict[str, Any]:
    """The spec's JSON Schema; see ``releasegate.spec.reference.json_schema``.

    Imported on call so that ``python -m releasegate.spec.reference`` does not find its module imported.
    """
    from releasegate.spec.reference import json_schema as generate

    return generate()


__all__ = ["Spec", "SpecError", "SpecIssue", "json_schema", "load_spec", "load_spec_text"]
