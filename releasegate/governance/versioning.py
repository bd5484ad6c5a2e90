"""The next version of a component, read from its git history (seed: MegaCity release guide, section 1).

Semantic versioning from Conventional Commits: a breaking change (``type!:`` or a ``BREAKING CHANGE:`` footer) bumps
MAJOR, ``feat`` MINOR, ``fix``/``perf``/``hotfix`` PATCH; anything else alone releases nothing. Tags are
``<component>-vX.Y.Z`` so several components can share one repository (with ``path`` limiting each to its own
directory). The version is computed, never typed, so the tag, the changelog and the notes cannot disagree.

Documented choices:

- The last release is the highest ``X.Y.Z`` among the component's tags reachable from HEAD (pre-release tags such as
  ``app-v1.2.0-rc.1`` are not releases). Without one, the first release is ``start`` (0.1.0) if anything changed.
- A squash commit whose body holds several conventional messages (``* feat: x`` lines) counts each of them.
- A revert of a commit in the same range cancels both; a revert of an already released commit is a PATCH (it
  changes what users have, as semantic-release also decides).
- ``pre_1_0``: while the major version is 0 a breaking change bumps MINOR. It is an explicit option, never
  automatic: without it a breaking change on 0.x makes 1.0.0, and the explanation says how to stay below 1.0.
- ``chore(release): <component> vX.Y.Z`` commits (made by ``release cut``) are not changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from releasegate.errors import UserError
from releasegate.governance.gitrepo import GitCommit, GitRepo

Bump = Literal["major", "minor", "patch"]
SemVer = tuple[int, int, int]

RELEASE_TYPES: dict[str, Bump] = {"feat": "minor", "fix": "patch", "perf": "patch", "hotfix": "patch"}
KNOWN_TYPES = frozenset({*RELEASE_TYPES, "revert", "refactor", "docs", "style", "test", "tests", "build", "ci",
                         "chore"})
"""Only these start a new message inside a commit body, so prose such as ``Note: ...`` is never mistaken for one."""
_RANK: dict[Bump | None, int] = {None: 0, "patch": 1, "minor": 2, "major": 3}

_SEMVER = re.compile(r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HEADER = re.compile(r"^(?P<type>[A-Za-z]+)(?:\((?P<scope>[^()\r\n]*)\))?(?P<bang>!)?:[ \t]+(?P<subject>\S.*?)\s*$")
_BULLET = re.compile(r"^[ \t]*(?:[*+-][ \t]+)?")
_GIT_REVERT = re.compile(r'^Revert "(?P<original>.+)"')
_REVERTS = re.compile(r"This reverts commit (?P<sha>[0-9a-fA-F]{7,64})")
_FOOTER = re.compile(r"^(?P<token>BREAKING[ -]CHANGE|[A-Za-z][\w-]*)(?::[ \t]+|[ \t]+#)(?P<value>.*)$")


@dataclass(frozen=True)
class ConventionalCommit:
    """One conventional message; a squash commit yields several with the same sha."""

    type: str
    scope: str | None
    breaking: bool
    subject: str
    body: str = ""
    sha: str = ""
    author: str = ""
    email: str = ""
    breaking_note: str | None = None
    """The ``BREAKING CHANGE:`` footer's text: what changed and, usually, how to migrate."""
    migration: str | None = None
    """A ``Migration:`` paragraph."""
    known_issues: tuple[str, ...] = ()
    """``Known-Issue:`` footers."""
    reverts: str | None = None
    """For a revert: the (possibly abbreviated) sha from ``This reverts commit <sha>.``"""

    @property
    def bump(self) -> Bump | None:
        if self.breaking:
            return "major"
        if self.type == "revert":
            return "patch"
        return RELEASE_TYPES.get(self.type)

    @property
    def short_sha(self) -> str:
        return self.sha[:7]

    @property
    def header(self) -> str:
        if self.type == "revert" and self.subject.startswith("Revert "):
            return self.subject
        scope = f"({self.scope})" if self.scope else ""
        return f"{self.type}{scope}{'!' if self.breaking else ''}: {self.subject}"


@dataclass(frozen=True)
class NextVersion:
    """What the history since the last tag makes of a component; ``next`` is None when nothing is released."""

    component: str
    last_tag: str | None
    last_version: str | None
    next: str | None
    bump: Bump | None
    commits: list[ConventionalCommit]
    """The conventional messages that count, oldest first (reverted pairs removed)."""
    cancelled: list[ConventionalCommit] = field(default_factory=list)
    """Messages taken out by a revert in the same range, with those reverts."""
    git_commits: list[GitCommit] = field(default_factory=list)
    """Every commit in the range (touching ``path``), oldest first, release commits excluded."""
    explanation: list[str] = field(default_factory=list)
    reason: str = ""
    """For no release: why, as one line."""
    path: str | None = None

    @property
    def tag(self) -> str | None:
        return None if self.next is None else tag_name(self.component, self.next)

    @property
    def last_line(self) -> str:
        return self.next if self.next is not None else f"no release: {self.reason}"


# --- versions -----------------------------------------------------------------------------------------------------


def parse_semver(text: str, what: str = "version") -> SemVer:
    """``X.Y.Z`` (an optional leading ``v``) as three ints; ``UserError`` naming ``what`` otherwise."""
    match = _SEMVER.match(text.strip())
    if not match:
        raise UserError(f"{what} {text!r} is not a version: write X.Y.Z, e.g. 1.4.2")
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


def format_semver(version: SemVer) -> str:
    return ".".join(str(n) for n in version)


def semver_kind(old: str, new: str) -> Bump | None:
    """The kind of change from ``old`` to ``new`` by the most significant part that differs; None if equal.

    A change freeze allows a patch but not a minor release, so it judges the versions themselves, not commits.
    """
    a, b = parse_semver(old), parse_semver(new)
    if a[0] != b[0]:
        return "major"
    if a[1] != b[1]:
        return "minor"
    return "patch" if a[2] != b[2] else None


def bump_version(version: SemVer, bump: Bump) -> SemVer:
    major, minor, patch = version
    if bump == "major":
        return major + 1, 0, 0
    if bump == "minor":
        return major, minor + 1, 0
    return major, minor, patch + 1


def check_component(component: str) -> str:
    """A component names git tags, so it is kept to characters every tool accepts in a ref."""
    if not _COMPONENT.match(component):
        raise UserError(f"--component {component!r}: use letters, digits, '.', '_' or '-' (e.g. backend-api)")
    return component


def tag_name(component: str, version: str) -> str:
    return f"{component}-v{version}"


def component_tags(git: GitRepo, component: str, merged_into: str | None = "HEAD") -> list[tuple[SemVer, str]]:
    """The component's release tags (``NAME-vX.Y.Z`` exactly), lowest version first."""
    exact = re.compile(rf"^{re.escape(component)}-v(\d+\.\d+\.\d+)$")
    found = []
    for tag in git.tags(f"{component}-v*", merged_into):
        match = exact.match(tag)
        if match and _SEMVER.match(match.group(1)):
            found.append((parse_semver(match.group(1)), tag))
    return sorted(found)


def last_release(git: GitRepo, component: str, upto: str = "HEAD",
                 below: SemVer | None = None) -> tuple[str | None, SemVer | None]:
    """The highest release tag reachable from ``upto`` (below version ``below`` when given)."""
    tags = [(v, t) for v, t in component_tags(git, component, upto) if below is None or v < below]
    return (tags[-1][1], tags[-1][0]) if tags else (None, None)


# --- commit messages ----------------------------------------------------------------------------------------------


def parse_commit_message(msg: str, *, sha: str = "", author: str = "", email: str = "") -> list[ConventionalCommit]:
    """The conventional messages in one commit message: its header, and each body line that is itself one.

    A body line counts when it looks like ``type(scope)!: subject`` with a known type, optionally as a list item
    (``* feat: x``, as GitHub writes squash commits). Text after such a line, up to the next one, is its body.
    A git-style ``Revert "..."`` subject is read as type ``revert``. Non-conventional messages yield nothing.
    """
    lines = msg.strip("\n").splitlines()
    if not lines:
        return []
    segments: list[tuple[re.Match[str] | str | None, list[str]]] = []
    first = lines[0].strip()
    head = _HEADER.match(first)
    segments.append((head if head else first if _GIT_REVERT.match(first) else None, []))
    for line in lines[1:]:
        sub = _HEADER.match(_BULLET.sub("", line, count=1))
        if sub and sub.group("type").lower() in KNOWN_TYPES:
            segments.append((sub, []))
        else:
            segments[-1][1].append(line)
    found = []
    for header, body_lines in segments:
        if header is None:
            continue
        if isinstance(header, str):  # Revert "feat: x"
            kind, scope, bang, subject = "revert", None, False, header
        else:
            kind, scope = header.group("type").lower(), (header.group("scope") or "").strip() or None
            bang, subject = bool(header.group("bang")), header.group("subject")
        footers = _footers(body_lines)
        breaking_notes = footers.get("BREAKING CHANGE", [])
        reverted = _REVERTS.search("\n".join(body_lines)) if kind == "revert" else None
        found.append(ConventionalCommit(
            type=kind, scope=scope, breaking=bang or bool(breaking_notes), subject=subject,
            body="\n".join(body_lines).strip(), sha=sha, author=author, email=email,
            breaking_note="\n".join(breaking_notes) or None,
            migration="\n".join(footers.get("MIGRATION", [])) or None,
            known_issues=tuple(footers.get("KNOWN-ISSUE", []) + footers.get("KNOWN-ISSUES", [])),
            reverts=reverted.group("sha").lower() if reverted else None))
    return found


def _footers(lines: list[str]) -> dict[str, list[str]]:
    """``Token: value`` paragraphs by upper-cased token; a value runs to a blank line or the next token."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in [*lines, ""]:
        match = _FOOTER.match(line)
        if match or not line.strip():
            if current is not None:
                found.setdefault(current[0], []).append("\n".join(current[1:]).strip())
            current = None
        if match:
            token = match.group("token").upper().replace("BREAKING-CHANGE", "BREAKING CHANGE")
            current = [token, match.group("value").strip()]
        elif current is not None:
            current.append(line.strip())
    return found


# --- the decision -------------------------------------------------------------------------------------------------


def is_release_commit(commit: GitCommit, component: str) -> bool:
    """``release cut``'s own commit: not a change, or notes rendered after the cut would list it."""
    return re.match(rf"^chore\(release\): {re.escape(component)} v\d", commit.subject) is not None


def analyse(component: str, last_tag: str | None, last: SemVer | None, git_commits: list[GitCommit], *,
            path: str | None = None, pre_1_0: bool = False, start: SemVer = (0, 1, 0)) -> NextVersion:
    """The decision for commits already read (``git_commits`` newest first, as ``git log`` gives them)."""
    git_commits = [c for c in git_commits if not is_release_commit(c, component)]
    parsed = [parse_commit_message(c.message, sha=c.sha, author=c.author, email=c.email) for c in git_commits]
    in_range = [c.sha for c in git_commits]
    cancelled_shas: set[str] = set()
    for messages in parsed:  # newest first: a revert that is itself reverted cancels nothing
        for m in messages:
            if m.sha in cancelled_shas or m.reverts is None:
                continue
            target = next((s for s in in_range if s.startswith(m.reverts) and s != m.sha), None)
            if target is not None:
                cancelled_shas.update({target, m.sha})
    ordered = [m for messages in reversed(parsed) for m in messages]
    commits = [m for m in ordered if m.sha not in cancelled_shas]
    cancelled = [m for m in ordered if m.sha in cancelled_shas]
    bump = max((m.bump for m in commits), key=_RANK.__getitem__, default=None)
    since = f"since {last_tag}" if last_tag else "in the history"
    where = f" touching {path}" if path else ""
    n = len(git_commits)
    counted = f"{n} commit{'' if n == 1 else 's'}{where} {since}"
    explanation = [f"{component}: last release {last_tag} ({format_semver(last)})" if last_tag and last else
                   f"{component}: no tag {component}-vX.Y.Z reachable from HEAD yet", counted]
    explanation += [f"cancelled: {m.short_sha} {m.header} (reverted in the same range)" for m in cancelled]

    def result(next_: SemVer | None, applied: Bump | None, reason: str = "") -> NextVersion:
        return NextVersion(component=component, last_tag=last_tag,
                           last_version=format_semver(last) if last else None,
                           next=format_semver(next_) if next_ else None, bump=applied, commits=commits,
                           cancelled=cancelled, git_commits=list(reversed(git_commits)), explanation=explanation,
                           reason=reason, path=path)

    if last is None:
        if not git_commits:
            return result(None, None, f"no commits{where} yet")
        explanation.append(f"first release: {format_semver(start)} (--start X.Y.Z chooses another)")
        return result(start, bump)
    if bump is None:
        return result(None, None, f"{counted}, none is feat, fix, perf, hotfix or breaking" if n
                      else f"no commits{where} {since}")
    deciding = [m for m in commits if m.bump == bump]
    explanation += [f"{bump}: {m.short_sha} {m.header}" + (" (BREAKING CHANGE footer)" if m.breaking_note else "")
                    for m in deciding[:8]]
    if len(deciding) > 8:
        explanation.append(f"{bump}: and {len(deciding) - 8} more")
    lesser = [m.bump or "releasing nothing" for m in commits if m.bump != bump]
    if lesser:
        counts = ", ".join(f"{lesser.count(k)} {k}" for k in ("minor", "patch", "releasing nothing") if k in lesser)
        explanation.append(f"also: {counts}")
    applied = bump
    if bump == "major" and last[0] == 0:
        if pre_1_0:
            applied = "minor"
            explanation.append("breaking below 1.0 with --pre-1.0: bumps minor")
        else:
            explanation.append(f"breaking on 0.x makes 1.0.0; --pre-1.0 keeps it at "
                               f"{format_semver(bump_version(last, 'minor'))}")
    return result(bump_version(last, applied), applied)


def normalise_path(git: GitRepo, path: str | None, rev: str = "HEAD") -> str | None:
    """``--path`` relative to the repository directory given, checked to exist at ``rev``."""
    if path is None or path.strip() in ("", ".", "./"):
        return None
    clean = path.strip().removeprefix("./").rstrip("/")
    if git.head() is not None and not git.ok("cat-file", "-e", f"{rev}:./{clean}"):
        raise UserError(f"--path {path}: not in {git.path} at {rev}; give a directory relative to --repo")
    return clean


def next_version(repo: Path, component: str, path: str | None = None, pre_1_0: bool = False,
                 start: str = "0.1.0") -> NextVersion:
    """The next version of ``component`` from the commits since its last tag (touching ``path`` if given)."""
    check_component(component)
    start_version = parse_semver(start, "--start")
    git = GitRepo(repo)
    clean = normalise_path(git, path)
    last_tag, last = last_release(git, component)
    commits = git.log(f"{last_tag}..HEAD" if last_tag else "HEAD", clean)
    return analyse(component, last_tag, last, commits, path=clean, pre_1_0=pre_1_0, start=start_version)
