"""The governance policy: who holds which roles, and which stages a release must pass per environment.

It is the seed's five-stage approval flow (Developer -> Reviewer x2 -> QA -> SRE -> PM, each with its checklist)
written as data, plus the environment pipeline (``requires`` and ``soak``). Like a spec, it is written by hand, so
every problem is reported at once as ``FILE:LINE:COL: message``, including the ones only the whole file can show:
a ``requires`` naming no environment, a stage whose role nobody holds (it could never be signed), a stage that
needs more approvals than there are people to give them.

The ``admin`` role is not a stage: its holders may replace the stored policy and calendar and issue tokens
(``releasegate policy apply``, ``calendar apply``, ``token new --as``). A policy that goes into the state must name
at least one admin, or nobody could ever change it again (``admin_problems``).

Loading goes through ``releasegate.spec.yamlfile``, like the spec and the calendar.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr

from releasegate.errors import UserError
from releasegate.spec.errors import Loc, SpecError, SpecIssue, did_you_mean, format_loc
from releasegate.spec.models import Duration
from releasegate.spec.yamlfile import FileKind, load_yaml_model, load_yaml_model_text

ADMIN_ROLE = "admin"
"""Holders may change the stored policy and calendar and issue tokens; never an approval stage."""

_EMPTY = "a policy needs 'users' (name: [roles]) and 'environments' (name: {stages: [...]})"


def _roles(value: object) -> object:
    """``alice: developer`` means ``alice: [developer]``: one role is common enough to write without brackets."""
    return [value] if isinstance(value, str) else value


def _count(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"approvals must be a whole number of at least 1, got {value!r}")
    return value


def _text(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        raise ValueError("expected a non-empty text")
    return value


Text = Annotated[str, BeforeValidator(_text)]


class Stage(BaseModel):
    """One sign-off: ``approvals`` distinct people holding ``role``, each ticking every checklist item."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Text
    approvals: Annotated[int, BeforeValidator(_count)] = 1
    checklist: list[Text] = Field(default_factory=list)


class Environment(BaseModel):
    """What a deploy to this environment needs: its stages, and success (and ``soak``) in ``requires`` first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requires: Text | None = None
    soak: Duration = 0.0
    """How long the version must have run successfully in ``requires`` before it may be deployed here."""
    stages: list[Stage] = Field(default_factory=list)

    def stage(self, role: str) -> Stage | None:
        return next((s for s in self.stages if s.role == role), None)


class Policy(BaseModel):
    """The whole policy file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    users: dict[str, Annotated[list[Text], BeforeValidator(_roles)]]
    environments: dict[str, Environment]
    _source: str = PrivateAttr("the policy")

    @property
    def source(self) -> str:
        """Where it came from, ``policy FILE`` or ``stored policy v3``, for messages that say where to fix a role."""
        return self._source

    def admins(self) -> list[str]:
        return self.holders(ADMIN_ROLE)

    def roles_of(self, user: str) -> list[str]:
        return list(self.users.get(user, []))

    def holders(self, role: str) -> list[str]:
        return [user for user, roles in self.users.items() if role in roles]

    def user_problem(self, user: str) -> str | None:
        """None when ``user`` is in the policy; else the refusal, with the closest name."""
        if user in self.users:
            return None
        hint = did_you_mean(user, list(self.users))
        return (f"user {user!r} is not in {self.source}" + (f" (did you mean {hint!r}?)" if hint else "")
                + f"; users: {', '.join(self.users) or 'none'}")

    def environment(self, name: str) -> Environment:
        env = self.environments.get(name)
        if env is None:
            hint = did_you_mean(name, list(self.environments))
            raise UserError(f"--env {name}: {self.source} has no such environment"
                            + (f" (did you mean {hint!r}?)" if hint else "")
                            + f"; environments: {', '.join(self.environments) or 'none'}")
        return env

    def stage(self, env_name: str, role: str) -> Stage:
        stage = self.environment(env_name).stage(role)
        if stage is None:
            roles = [s.role for s in self.environment(env_name).stages]
            hint = did_you_mean(role, roles)
            raise UserError(f"--stage {role}: environment {env_name} of {self.source} has no such stage"
                            + (f" (did you mean {hint!r}?)" if hint else "")
                            + f"; its stages: {', '.join(roles) or 'none'}")
        return stage


_FILE = FileKind("policy", _EMPTY, located_at_key=True)


def load_policy(path: str | Path) -> Policy:
    """The validated policy in ``path``; raises ``SpecError`` (a ``UserError``) listing every problem."""
    policy = load_yaml_model(path, Policy, _FILE)
    problems = cross_check(policy)
    if problems:
        raise SpecError(_locate(str(path), Path(path).read_text(encoding="utf-8-sig"), problems))
    policy._source = f"policy {path}"
    return policy


def load_policy_text(text: str, filename: str, source: str | None = None) -> Policy:
    """Like ``load_policy`` for text already read (the stored copy); ``source`` names it in messages."""
    policy = load_yaml_model_text(text, filename, Policy, _FILE)
    problems = cross_check(policy)
    if problems:
        raise SpecError(_locate(filename, text, problems))
    policy._source = source or f"policy {filename}"
    return policy


def admin_problems(policy: Policy, filename: str, text: str) -> None:
    """Refuse (``SpecError`` at ``users``) a policy nobody could change again: one that names no admin."""
    if policy.admins():
        return
    example = next(iter(policy.users), "alice")
    roles = ", ".join([*policy.roles_of(example), ADMIN_ROLE])
    message = (f"no user holds role {ADMIN_ROLE}, so nobody could change the stored policy or calendar again; give "
               f"the role to someone under users, e.g. {example}: [{roles}]")
    raise SpecError(_locate(filename, text, [(("users",), message)]))


def cross_check(policy: Policy) -> list[tuple[Loc, str]]:
    """Problems a single key cannot show: references between environments, roles nobody holds, duplicates."""
    problems: list[tuple[Loc, str]] = []
    envs = policy.environments
    for name, env in envs.items():
        at: Loc = ("environments", name)
        if env.requires is not None and env.requires not in envs:
            hint = did_you_mean(env.requires, list(envs))
            problems.append(((*at, "requires"), f"requires {env.requires!r}, which is not an environment"
                             + (f" (did you mean {hint!r}?)" if hint else "")
                             + f"; environments: {', '.join(envs)}"))
        elif env.requires is not None:
            cycle = _cycle(policy, name)
            if cycle:
                problems.append(((*at, "requires"), f"requires makes a cycle: {' -> '.join(cycle)}; "
                                                    "an environment cannot (indirectly) require itself"))
        if env.soak > 0 and env.requires is None:
            problems.append(((*at, "soak"), "soak needs requires: it is how long the version must have run in "
                                            "the required environment"))
        seen: dict[str, int] = {}
        for i, stage in enumerate(env.stages):
            where: Loc = (*at, "stages", i)
            if stage.role in seen:
                problems.append(((*where, "role"), f"stage {stage.role!r} appears twice in environment {name} "
                                                   f"(first at stages[{seen[stage.role]}]); merge the two"))
                continue
            seen[stage.role] = i
            holders = policy.holders(stage.role)
            if stage.role == ADMIN_ROLE:
                problems.append(((*where, "role"), f"{ADMIN_ROLE} is the role that may change the stored policy and "
                                 "calendar, not an approval stage; name the stage after another role"))
            elif not holders:
                held = sorted({r for roles in policy.users.values() for r in roles})
                hint = did_you_mean(stage.role, held)
                problems.append(((*where, "role"), f"no user holds role {stage.role!r}, so this stage could "
                                 "never be signed" + (f" (did you mean {hint!r}?)" if hint else "")
                                 + "; give the role to a user under users"))
            elif len(holders) < stage.approvals:
                problems.append(((*where, "approvals"), f"stage {stage.role} needs {stage.approvals} approvals but "
                                 f"only {len(holders)} user(s) hold role {stage.role} ({', '.join(holders)})"))
            for j, item in enumerate(stage.checklist):
                if stage.checklist.index(item) != j:
                    problems.append(((*where, "checklist", j), f"checklist item {item!r} is listed twice"))
    return problems


def _cycle(policy: Policy, start: str) -> list[str]:
    path = [start]
    current = policy.environments[start].requires
    while current is not None and current in policy.environments:
        path.append(current)
        if current == start:
            return path
        if path.count(current) > 1:  # a cycle that does not pass through start: reported at its own members
            return []
        current = policy.environments[current].requires
    return []


def _locate(file: str, text: str, problems: list[tuple[Loc, str]]) -> list[SpecIssue]:
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    issues = []
    for loc, message in problems:
        node = _node_at(root, loc)
        mark = node.start_mark if node is not None else None
        issues.append(SpecIssue(file, mark.line + 1 if mark else 1, mark.column + 1 if mark else 1, message,
                                format_loc(loc)))
    return issues


def _node_at(node: yaml.Node | None, loc: Loc) -> yaml.Node | None:
    """The value node at ``loc``, or the deepest one on the way (a key left to its default has no node)."""
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            return node
        node = child
    return node


__all__ = ["ADMIN_ROLE", "Environment", "Policy", "Stage", "admin_problems", "cross_check", "load_policy",
           "load_policy_text"]
