"""The release spec: models, YAML loading with line numbers, and errors that point at the offending key."""

from releasegate.spec.models import Spec

__all__ = ["Spec"]
