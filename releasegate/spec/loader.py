"""Read a spec file into a ``Spec``: ``releasegate.spec.yamlfile`` does the reading and maps every problem to
``FILE:LINE:COL`` at the key or value; this module names what a spec needs, and refuses rules that nothing
configured can measure (``releasegate.spec.capabilities``)."""

from __future__ import annotations

from pathlib import Path

from releasegate.spec.capabilities import unmeasurable
from releasegate.spec.models import Spec
from releasegate.spec.yamlfile import FileKind, load_yaml_model, load_yaml_model_text, unwrap

SPEC_FILE = FileKind("spec", "it needs at least 'service' and 'platform'")


def load_spec(path: str | Path) -> Spec:
    """The validated spec in ``path``; raises ``SpecError`` listing every problem found."""
    return load_yaml_model(path, Spec, SPEC_FILE, unmeasurable)


def load_spec_text(text: str, filename: str) -> Spec:
    """The validated spec in ``text``; ``filename`` only labels the issues."""
    return load_yaml_model_text(text, filename, Spec, SPEC_FILE, unmeasurable)


__all__ = ["SPEC_FILE", "load_spec", "load_spec_text", "unwrap"]
