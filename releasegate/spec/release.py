"""A release file: several services' specs released as one group (docs/multi-service.md).

Read through the same YAML loader as a spec, so every problem is ``FILE:LINE:COL: message`` at the key or value:
a member spec that does not exist, two members of the same service, ``depends_on`` naming a non-member or making a
cycle. Each member's own spec is loaded (and its problems reported in its own file) before anything starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from releasegate.errors import UserError
from releasegate.spec.common import SERVICE_NAME
from releasegate.spec.common import SpecModel as _Model
from releasegate.spec.errors import Loc, SpecError, SpecIssue
from releasegate.spec.loader import load_spec
from releasegate.spec.models import Spec, check_version
from releasegate.spec.yamlfile import FileKind, load_yaml_model, read_yaml_text

Tier = Literal["critical", "important", "supporting"]
RELEASE_FILE = FileKind("release file", "it needs 'release' and 'services'")


class MemberEntry(_Model):
    """One service of the group: its spec, what its failure does (tier), and the members it needs first."""

    spec: str = Field(description="The member's spec file, relative to the release file.")
    tier: Tier | None = Field(None, description="critical: its failure rolls the whole group back; important: "
                                                "pauses the group for an operator; supporting: only it rolls "
                                                "back. Default: the spec's own tier.")
    depends_on: list[str] = Field([], description="Members (by their spec's `service` name) "
                                                                    "promoted or switched before this one.")


class ReleaseFile(_Model):
    """A multi-service release: the members and how they switch."""

    release: str = Field(description="The group's name: `status`, `promote`, `abort`, `rollback`, `history` and "
                                     "`resume` take it.")
    services: list[MemberEntry] = Field(min_length=1, description="The members, each a service's spec.")
    switch: Literal["together", "ordered"] = Field(
        "ordered", description="together: every member's new version passes health and smoke and holds, then "
                               "all switch to 100 % in one step (in depends_on order); ordered: each member's own "
                               "rollout, one after another by depends_on, independent ones in parallel.")

    @field_validator("release")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SERVICE_NAME.match(value):
            raise ValueError(f"release name {value!r} must be lowercase letters, digits, '-' or '_' (at most 63)")
        return value


@dataclass(frozen=True)
class LoadedMember:
    service: str
    spec: Spec
    spec_path: Path
    tier: Tier
    depends_on: tuple[str, ...]


@dataclass(frozen=True)
class LoadedRelease:
    path: Path
    release: str
    switch: Literal["together", "ordered"]
    members: tuple[LoadedMember, ...]

    def member(self, service: str) -> LoadedMember | None:
        return next((m for m in self.members if m.service == service), None)


_TOP_KEY = re.compile(r"^(release|services)\s*:", re.MULTILINE)


def is_release_file(path: Path) -> bool:
    """A file with top-level ``release:`` and ``services:`` keys is a release file, not a service's spec."""
    try:
        text = read_yaml_text(path, RELEASE_FILE)
    except UserError:
        return False
    return {m.group(1) for m in _TOP_KEY.finditer(text)} == {"release", "services"}


def load_release(path: Path) -> LoadedRelease:
    """The validated group, every member's spec loaded; raises ``SpecError`` naming each problem's place."""
    loaded: list[LoadedMember] = []

    def checks(model: ReleaseFile) -> list[tuple[Loc, str]]:
        problems: list[tuple[Loc, str]] = []
        seen: dict[str, int] = {}
        for i, entry in enumerate(model.services):
            spec_path = (path.parent / entry.spec)
            if not spec_path.is_file():
                problems.append((("services", i, "spec"), f"no such spec file {entry.spec} (relative to "
                                                         f"{path.parent or '.'}); fix the path"))
                continue
            spec = load_spec(spec_path)  # its own problems, in its own file
            if spec.service in seen:
                problems.append((("services", i, "spec"), f"service {spec.service} is already member "
                                                         f"{seen[spec.service] + 1}; list each service once"))
                continue
            if spec.service == model.release:
                problems.append((("release",), f"release {model.release} has the name of a member service; "
                                               "name the group differently"))
            if model.switch == "together" and spec.strategy.kind == "rolling":
                problems.append((("services", i, "spec"), f"{spec.service} rolls instance by instance, which "
                                 "cannot hold before traffic: use canary or bluegreen, or switch: ordered"))
            seen[spec.service] = i
            loaded.append(LoadedMember(spec.service, spec, spec_path, entry.tier or spec.tier,
                                       tuple(entry.depends_on)))
        for i, entry in enumerate(model.services):
            for j, dep in enumerate(entry.depends_on):
                if dep not in seen and all(p[0][:3] != ("services", i, "spec") for p in problems):
                    problems.append((("services", i, "depends_on", j),
                                     f"depends_on {dep}: not a member of this release (members: "
                                     f"{', '.join(sorted(seen))})"))
        if not problems:
            cycle = _cycle({m.service: m.depends_on for m in loaded})
            if cycle:
                at = seen[cycle[0]]
                problems.append((("services", at, "depends_on"),
                                 f"depends_on makes a cycle: {' -> '.join(cycle)}; remove one of these"))
        return problems

    model = load_yaml_model(path, ReleaseFile, RELEASE_FILE, checks)
    return LoadedRelease(path, model.release, model.switch, tuple(loaded))


def _cycle(deps: dict[str, tuple[str, ...]]) -> list[str] | None:
    """A dependency cycle as a path that ends where it starts, or None."""
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        if state.get(node) == 1:
            return [*trail[trail.index(node):], node]
        if state.get(node) == 2:
            return None
        state[node] = 1
        for nxt in deps.get(node, ()):
            found = visit(nxt, [*trail, node])
            if found:
                return found
        state[node] = 2
        return None

    for name in deps:
        found = visit(name, [])
        if found:
            return found
    return None


def member_versions(release: LoadedRelease, given: list[str]) -> dict[str, str]:
    """``--version V`` (every member) or ``--version SERVICE=V`` repeated (each member once, all of them)."""
    where = f"{release.path}: --version"
    plain = [v for v in given if "=" not in v]
    pinned = [v.split("=", 1) for v in given if "=" in v]
    if len(plain) > 1 or (plain and pinned) or not given:
        raise UserError(f"{where}: give one VERSION for every member, or SERVICE=VERSION once per member "
                        f"(members: {', '.join(m.service for m in release.members)})")
    if plain:
        check_version(plain[0])
        return {m.service: plain[0] for m in release.members}
    out: dict[str, str] = {}
    for service, version in pinned:
        if release.member(service) is None:
            raise UserError(f"{where} {service}={version}: {service} is not a member of {release.release} "
                            f"(members: {', '.join(m.service for m in release.members)})")
        if service in out:
            raise UserError(f"{where} {service}=...: given twice; give each member once")
        check_version(version)
        out[service] = version
    missing = [m.service for m in release.members if m.service not in out]
    if missing:
        raise UserError(f"{where}: no version for {', '.join(missing)}; add --version SERVICE=VERSION for each")
    return out


def issue(path: Path, message: str) -> SpecError:
    """A problem with the release file as a whole."""
    return SpecError([SpecIssue(str(path), None, None, message)])
