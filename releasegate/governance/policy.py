"""The governance policy: who holds which roles, and which stages a release must pass per environment.

It is the seed's five-stage approval flow (Developer -> Reviewer x2 -> QA -> SRE -> PM, each with its checklist)
written as data, plus the environment pipeline (``requires`` and ``soak``). Like a spec, it is written by hand, so
every problem is reported at once as ``FILE:LINE:COL: message``, including the ones only the whole file can show:
a ``requires`` naming no environment, a stage whose role nobody holds (it could never be signed), a stage that
needs more approvals than there are people to give them.

The ``admin`` role is not a stage: its holders may replace the stored policy and calendar and issue tokens
(``releasegate policy apply``, ``calendar apply``, ``token new --as``). Two more roles have a meaning, named by the
policy so that teams who call them otherwise are not locked out: ``author_role`` (default ``developer``), the one
stage a release's author may sign, and ``emergency_role`` (default ``sre``, accountable for prod deploys and
rollbacks in the seed's RACI), whose approval break-glass and ``--allow-breaking-migration`` need. A policy that
goes into the state must name at least one admin, or nobody could ever change it again, and those two roles must
be held and be stages, or every author, or every emergency, would be stuck (``store_problems``).

Loading goes through ``releasegate.spec.yamlfile``, like the spec and the calendar.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr

from releasegate.durations import parse_duration
from releasegate.errors import UserError
from releasegate.governance.filecheck import Broken, Problem, load_text
from releasegate.spec.errors import Loc, did_you_mean
from releasegate.spec.models import Duration
from releasegate.spec.yamlfile import FileKind, read_yaml_text

ADMIN_ROLE = "admin"
"""Holders may change the stored policy and calendar and issue tokens; never an approval stage."""
AUTHOR_ROLE = "developer"
"""The default ``author_role``: the seed's stage 1, the Developer who wrote the change."""
EMERGENCY_ROLE = "sre"
"""The default ``emergency_role``: the seed's SRE, R/A for prod deploys and rollback decisions (RACI, section 2.2)."""

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
    author_role: Text | None = AUTHOR_ROLE
    """The one stage a release's author may sign (None: none); nobody else's change is reviewed by its author."""
    emergency_role: Text | None = EMERGENCY_ROLE
    """Whose approval on the release ``--break-glass`` and ``--allow-breaking-migration`` need (None: neither is
    possible)."""
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


POLICY_FILE = FileKind("policy", _EMPTY, located_at_key=True)


def load_policy(path: str | Path) -> Policy:
    """The validated policy in ``path``; raises ``SpecError`` (a ``UserError``) listing every problem."""
    return load_policy_text(read_yaml_text(path, POLICY_FILE), str(path), f"policy {path}")


def load_policy_text(text: str, filename: str, source: str | None = None, *, storing: bool = False) -> Policy:
    """Like ``load_policy`` for text already read (the stored copy); ``source`` names it in messages.

    ``storing``: also refuse what only a policy going into the state must not have (``store_problems``). A policy
    stored before a check existed still loads: the state must never become unreadable by an upgrade.
    """
    def checks(policy: Policy) -> list[Problem]:
        return cross_check(policy) + (store_problems(policy) if storing else [])

    def salvage(raw: dict[str, Any], broken: Broken) -> list[Problem]:
        draft, users_known, stages_known = _draft(raw, broken)
        problems = cross_check(draft, users_known=users_known)
        return problems + (store_problems(draft, stages_known=stages_known) if storing and users_known else [])

    policy = load_text(text, filename, Policy, POLICY_FILE, checks, salvage)
    policy._source = source or f"policy {filename}"
    return policy


def store_problems(policy: Policy, *, stages_known: bool = True) -> list[Problem]:
    """What a policy that goes into the state must not have: no admin (nobody could ever change it again), and an
    author or emergency role that cannot be satisfied (every author blocked, break-glass impossible). The roles
    are not judged when ``stages_known`` is False (a stage or environment did not validate)."""
    problems: list[Problem] = []
    if not policy.admins():
        example = next(iter(policy.users), "alice")
        roles = ", ".join([*policy.roles_of(example), ADMIN_ROLE])
        problems.append((("users",), f"no user holds role {ADMIN_ROLE}, so nobody could change the stored policy or "
                                     f"calendar again; give the role to someone under users, e.g. {example}: "
                                     f"[{roles}]"))
    if not stages_known:
        return problems
    stages = sorted({s.role for env in policy.environments.values() for s in env.stages} - {ADMIN_ROLE})
    if stages:  # with no stage at all, nobody signs anything: there is nothing an author could be stuck on
        problems += _role_problems(policy, stages, "author_role", policy.author_role,
                                   "the stage a release's author may sign", "if authors sign no stage")
    problems += _role_problems(policy, stages, "emergency_role", policy.emergency_role,
                               "whose approval --break-glass and --allow-breaking-migration need",
                               "to allow neither")
    return problems


def _role_problems(policy: Policy, stages: list[str], key: str, role: str | None, what: str,
                   opt_out: str) -> list[Problem]:
    if role is None:
        return []
    written = key in policy.model_fields_set
    named = f"{key} names it" if written else f"the default {key}"
    hint = did_you_mean(role, stages)
    other = (f"{key}: {hint}" if hint else f"{key}: ROLE") + f" (stages: {', '.join(stages) or 'none yet'})"
    held, staged = bool(policy.holders(role)), role in stages
    if held and staged:
        return []
    wrong = ("no user holds it and it is no stage of any environment" if not held and not staged else
             "no user holds it" if not held else "it is no stage of any environment, so its approval could never "
             "be given")
    fix = " and ".join(([] if staged else [f"add a stage {{role: {role}}}"])
                       + ([] if held else [f"give role {role} to a user under users"]))
    where: Loc = (key,) if written else ("users",) if not held else ("environments",)
    return [(where, f"role {role!r} ({named}: {what}): {wrong}; {fix}, or write {other}, or {key}: null "
                    f"{opt_out}")]


def _draft(raw: dict[str, Any], broken: Broken) -> tuple[Policy, bool, bool]:
    """The parts of a policy that validation refused, as far as they can be judged: a user whose roles are
    broken makes every "who holds this role" question unanswerable (``users_known`` False), a broken environment
    or stage role every "is this role a stage" question (``stages_known`` False); a broken stage role or
    ``requires`` is left out; a broken ``soak`` still counts as one that was written."""
    users_raw = raw.get("users")
    users: dict[str, list[str]] = {}
    users_known = isinstance(users_raw, dict) and not broken.at("users")
    if isinstance(users_raw, dict) and users_known:
        users = {str(u): [r] if isinstance(r, str) else list(r) for u, r in users_raw.items()}
    envs: dict[str, Environment] = {}
    envs_raw = raw.get("environments")
    stages_known = isinstance(envs_raw, dict)
    for name, env in (envs_raw.items() if isinstance(envs_raw, dict) else []):
        at: Loc = ("environments", name)
        if not isinstance(env, dict) or not isinstance(env.get("stages", []), list):
            stages_known = False
            envs[name] = Environment.model_construct(requires=None, soak=0.0, stages=[])
            continue
        requires = env.get("requires") if not broken.at(*at, "requires") else None
        soak_raw = env.get("soak")
        try:
            soak = 0.0 if broken.at(*at, "requires") or soak_raw is None else parse_duration(soak_raw)
        except ValueError:  # written, but not as a duration: it still needs a requires to mean anything
            soak = 1.0
        stages = []
        stages_raw = env.get("stages")
        for i, st in enumerate(stages_raw if isinstance(stages_raw, list) else []):
            where = (*at, "stages", i)
            if not isinstance(st, dict) or broken.at(*where, "role") or not isinstance(st.get("role"), str):
                stages_known = False
                continue
            approvals = 1 if broken.at(*where, "approvals") else st.get("approvals", 1)
            checklist = [] if broken.at(*where, "checklist") else list(st.get("checklist") or [])
            stages.append(Stage.model_construct(role=st["role"], approvals=approvals, checklist=checklist))
        envs[name] = Environment.model_construct(requires=requires, soak=soak, stages=stages)
    fields = {k: None if broken.at(k) else raw[k] for k in ("author_role", "emergency_role") if k in raw}
    draft = Policy.model_construct(users=users, environments=envs, **fields)
    return draft, users_known, stages_known


def cross_check(policy: Policy, *, users_known: bool = True) -> list[Problem]:
    """Problems a single key cannot show: references between environments, roles nobody holds, duplicates.

    ``users_known`` False (the users did not validate): who holds which role cannot be judged, so it is not."""
    problems: list[Problem] = []
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
            elif not users_known:
                pass
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


__all__ = ["ADMIN_ROLE", "AUTHOR_ROLE", "EMERGENCY_ROLE", "POLICY_FILE", "Environment", "Policy", "Stage",
           "cross_check", "load_policy", "load_policy_text", "store_problems"]
