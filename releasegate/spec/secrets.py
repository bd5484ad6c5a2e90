"""``${env:NAME}`` in the spec values that commonly hold secrets, resolved only where the value is used.

The database keeps every rollout's spec (``rollouts.spec_json``, ``services.spec_json``); a token or password written
literally in a spec would be at rest there. A reference is stored as written, and each user of the value (the
notifier building an Apprise target, the migrations runner connecting, the platform building an instance's
environment, the Prometheus source) calls ``resolve`` at the moment it needs the text. Messages name the reference,
never the value it resolves to. Fields that take references: ``REFERENCE_FIELDS``; anything else that starts with
``${`` in those fields is refused when the spec is loaded, so a typo cannot reach a service as written (in
``platform.env`` only a malformed ``${env:...}``: other ``${...}`` there have always been passed on literally).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from releasegate.spec.models import Spec

REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
REFERENCE_FIELDS = ("notify[].url", "migrations.database", "platform.env values", "metrics.prometheus.url")
"""Where ``${env:NAME}`` is resolved (docs/guide.md and the field descriptions in docs/spec-reference.md)."""
_FIX = "write ${env:NAME}, NAME being an environment variable (letters, digits and _, not starting with a digit)"


def syntax_problem(text: str) -> str | None:
    """Why a ``${`` in ``text`` is not a reference releasegate resolves, or None when every one is."""
    start = text.find("${")
    while start != -1:
        match = REFERENCE.match(text, start)
        if match is None:
            end = text.find("}", start)
            shown = text[start:end + 1] if end != -1 and end - start <= 40 else text[start:start + 12] + "..."
            if end == -1:
                return f"unclosed '${{' in {shown!r}; {_FIX}"
            return f"{shown!r} is not a reference releasegate resolves; {_FIX} (the only kind: ${{env:...}})"
        start = text.find("${", match.end())
    return None


def env_form_problem(text: str) -> str | None:
    """Like ``syntax_problem``, for values where any other ``${...}`` is literal text (an instance's environment:
    ``${HOME}`` reaches the process as written, as it always did): only a malformed ``${env:`` is a mistake."""
    start = text.find("${env:")
    while start != -1:
        if REFERENCE.match(text, start) is None:
            return syntax_problem(text[start:])
        start = text.find("${env:", start + 1)
    return None


def check(text: str) -> str:
    """``text`` unchanged, or ValueError (for a field validator) naming the malformed reference and the fix."""
    problem = syntax_problem(text)
    if problem:
        raise ValueError(problem)
    return text


def names(text: str) -> list[str]:
    """The variables ``text`` refers to, in order."""
    return [m.group(1) for m in REFERENCE.finditer(text)]


def missing_message(where: str, name: str, command: str = "deploy") -> str:
    return (f"{where}: ${{env:{name}}} is not set in this environment; export {name} before {command}")


def resolve(text: str, where: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with each ``${env:NAME}`` replaced by the variable's value; ``UserError`` naming ``where`` and the
    variable (never a value) when one is not set."""
    env = os.environ if environ is None else environ

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            from releasegate.errors import UserError

            raise UserError(missing_message(where, name))
        return env[name]

    return REFERENCE.sub(one, text)


def for_checking(text: str, fallback: str = "x") -> str:
    """``text`` as a validator may check it without the environment being complete: set variables resolved, unset
    ones replaced by ``fallback`` (deploy refuses those before anything starts)."""
    return REFERENCE.sub(lambda m: os.environ.get(m.group(1), fallback), text)


def hide(message: str, template: str) -> str:
    """``message`` with the value of every reference in ``template`` put back as the reference, so that an error
    quoting a resolved URL does not print the secret."""
    for name in names(template):
        value = os.environ.get(name)
        if value:
            message = message.replace(value, f"${{env:{name}}}")
    return message


def references(spec: Spec) -> list[tuple[str, str]]:
    """Each (key path, variable) the spec refers to, in the order the fields are listed in REFERENCE_FIELDS."""
    found = [(f"notify[{i}].url", name) for i, t in enumerate(spec.notify) for name in names(t.url)]
    if spec.migrations is not None:
        found += [("migrations.database", name) for name in names(spec.migrations.database)]
    found += [(f"platform.env.{key}", name) for key, value in spec.platform.env.items() for name in names(value)]
    if spec.metrics.prometheus is not None:
        found += [("metrics.prometheus.url", name) for name in names(spec.metrics.prometheus.url)]
    return found


def unset(spec: Spec, command: str = "deploy", environ: Mapping[str, str] | None = None) -> str | None:
    """The one-line refusal for the first reference whose variable is not set, or None when all are."""
    env = os.environ if environ is None else environ
    for where, name in references(spec):
        if name not in env:
            return missing_message(where, name, command)
    return None


def require(spec: Spec, command: str = "deploy") -> None:
    """Refuse (``UserError``) before anything starts when a referenced variable is not set."""
    problem = unset(spec, command)
    if problem:
        from releasegate.errors import UserError

        raise UserError(problem)
