"""Release notes and changelog entries from the commits of a release (seed: MegaCity guide, section 7).

Notes are generated from the same commits that decide the version, so the version, the tag and the notes agree:
for a version already tagged the range is the previous tag..that tag, otherwise the last tag..HEAD. Sections follow
the guide (Summary, New Features, Improvements, Fixes, Breaking Changes, Database Migrations, Rollback Plan,
Monitoring, Known Issues, Contributors) and keep user-facing changes apart from internal ones (section 7.3:
refactoring, tests, CI, build, chores, docs and style are internal; performance work users can feel is an
improvement). The Markdown comes from a Jinja2 template a project may replace with its own.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from releasegate.durations import format_duration
from releasegate.errors import UserError
from releasegate.governance.gitrepo import GitRepo
from releasegate.governance.versioning import (
    ConventionalCommit,
    NextVersion,
    analyse,
    check_component,
    format_semver,
    last_release,
    next_version,
    normalise_path,
    parse_commit_message,
    parse_semver,
    tag_name,
)

BUILTIN_TEMPLATE = "templates/release-notes.md.j2"
PROJECT_TEMPLATE = ".releasegate/release-notes.md.j2"
INTERNAL_TYPES = frozenset({"refactor", "test", "tests", "ci", "build", "chore", "docs", "style"})
_INCOMPATIBLE = re.compile(r"\b(DROP\s+COLUMN|DROP\s+TABLE|RENAME|drop_column|drop_table|rename_table)\b", re.I)


@dataclass(frozen=True)
class ReleaseNotes:
    """Everything ``release cut`` writes for one release: the notes, the changelog entry and their inputs."""

    component: str
    version: str
    tag: str
    released: bool
    """Whether the tag already exists (notes for a cut release) or the version is still to be cut."""
    analysis: NextVersion
    context: dict[str, Any]
    markdown: str

    def changelog_entry(self, notes_link: str | None = None) -> str:
        """The CHANGELOG.md entry: the user-facing changes only, with a link to the full notes."""
        ctx = self.context
        lines = [f"## {self.component} v{self.version} ({ctx['date']})", ""]
        for title, entries in (("⚠ Breaking Changes", ctx["breaking"]), ("New Features", ctx["features"]),
                               ("Improvements", ctx["improvements"]), ("Fixes", ctx["fixes"])):
            if entries:
                lines += [f"### {title}", "", *(f"- {_line(c)}" for c in entries), ""]
        if not any(ctx[k] for k in ("breaking", "features", "improvements", "fixes")):
            lines += ["Internal changes only.", ""]
        if notes_link:
            lines += [f"Release notes: [{notes_link}]({notes_link})", ""]
        return "\n".join(lines)


def _line(c: ConventionalCommit) -> str:
    return f"{f'**{c.scope}:** ' if c.scope else ''}{c.subject} ({c.short_sha})"


def render_notes(repo: Path, component: str, *, version: str | None = None, path: str | None = None,
                 spec: Path | None = None, template: Path | None = None, pre_1_0: bool = False,
                 start: str = "0.1.0", today: dt.date | None = None) -> str:
    """The release notes (Markdown) of ``component`` at ``version`` (default: the version HEAD is tagged with,
    else the next version computed from the history)."""
    return prepare_notes(repo, component, version=version, path=path, spec=spec, template=template,
                         pre_1_0=pre_1_0, start=start, today=today).markdown


def prepare_notes(repo: Path, component: str, *, version: str | None = None, path: str | None = None,
                  spec: Path | None = None, template: Path | None = None, pre_1_0: bool = False,
                  start: str = "0.1.0", today: dt.date | None = None) -> ReleaseNotes:
    """The notes, their context and the version analysis; ``UserError`` when tag and version disagree."""
    check_component(component)
    git = GitRepo(repo)
    clean = normalise_path(git, path)
    wanted = parse_semver(version, "--version") if version is not None else None
    released_tag = _released_tag(git, component, wanted)
    if released_tag is not None:
        tag, ver = released_tag
        prev_tag, prev = last_release(git, component, tag, below=ver)
        commits = git.log(f"{prev_tag}..{tag}" if prev_tag else tag, clean)
        analysis = analyse(component, prev_tag, prev, commits, path=clean, pre_1_0=pre_1_0)
        name, date, tip = format_semver(ver), git.tag_date(tag)[:10], tag
    else:
        analysis = next_version(git.path, component, clean, pre_1_0, start)
        if wanted is not None:
            last = parse_semver(analysis.last_version) if analysis.last_version else None
            if last is not None and wanted <= last:
                raise UserError(f"--version {version}: not above the last release {analysis.last_tag}; "
                                f"give a higher version or omit --version ({analysis.last_line})")
            name = format_semver(wanted)
        elif analysis.next is None:
            raise UserError(f"notes for {component}: no release: {analysis.reason}; "
                            "pass --version X.Y.Z to write notes anyway")
        else:
            name = analysis.next
        date, tip = (today or dt.date.today()).isoformat(), "HEAD"
    ctx = notes_context(git, analysis, version=name, date=date, tip=tip, spec=spec)
    source, filename = _template_source(git, template)
    markdown = render_template(source, filename, ctx)
    return ReleaseNotes(component, name, tag_name(component, name), released_tag is not None, analysis, ctx, markdown)


def _released_tag(git: GitRepo, component: str, wanted: tuple[int, int, int] | None
                  ) -> tuple[str, tuple[int, int, int]] | None:
    """The existing tag the notes describe: ``--version``'s if tagged, else the one HEAD is exactly at."""
    if wanted is not None and git.tag_exists(tag_name(component, format_semver(wanted))):
        return tag_name(component, format_semver(wanted)), wanted
    exact = re.compile(rf"^{re.escape(component)}-v(\d+\.\d+\.\d+)$")
    at_head = sorted((parse_semver(m.group(1)), t) for t in (git.tags_at("HEAD") if git.head() else [])
                     if (m := exact.match(t)))
    if not at_head:
        return None
    head_version, head_tag = at_head[-1]
    if wanted is not None and wanted != head_version:
        raise UserError(f"--version {format_semver(wanted)}: HEAD is at tag {head_tag}, so its notes are for "
                        f"{format_semver(head_version)}; pass --version {format_semver(head_version)} or omit it")
    return head_tag, head_version


# --- the context --------------------------------------------------------------------------------------------------


def notes_context(git: GitRepo, analysis: NextVersion, *, version: str, date: str, tip: str,
                  spec: Path | None) -> dict[str, Any]:
    """The template's variables (listed at the top of the built-in template)."""
    commits = analysis.commits
    features = [c for c in commits if c.type == "feat"]
    improvements = [c for c in commits if c.type == "perf"]
    fixes = [c for c in commits if c.type in ("fix", "hotfix", "revert")]
    breaking = [c for c in commits if c.breaking]
    internal = [c for c in commits if c.type in INTERNAL_TYPES]
    user_types = {"feat", "perf", "fix", "hotfix", "revert", *INTERNAL_TYPES}
    other = [c for c in commits if c.type not in user_types]
    cancelled = {c.sha for c in analysis.cancelled}
    other += [ConventionalCommit(type="other", scope=None, breaking=False, subject=g.subject, sha=g.sha,
                                 author=g.author, email=g.email)
              for g in analysis.git_commits if g.sha not in cancelled and not parse_commit_message(g.message)]
    counts = [(len(features), "new feature"), (len(improvements), "improvement"), (len(fixes), "fix"),
              (len(breaking), "breaking change")]
    parts = [f"{n} {word}{'es' if word == 'fix' and n != 1 else 's' if n != 1 else ''}" for n, word in counts if n]
    since = f"since {analysis.last_tag}" if analysis.last_tag else "first release"
    summary = (f"{analysis.component} v{version}: {', '.join(parts) if parts else 'internal changes only'} "
               f"({since}{f', {analysis.path}' if analysis.path else ''}).")
    migrations = _migrations(git, analysis, tip)
    ctx: dict[str, Any] = {
        "component": analysis.component, "version": version, "tag": tag_name(analysis.component, version),
        "previous_tag": analysis.last_tag, "date": date, "summary": summary, "features": features,
        "improvements": improvements, "fixes": fixes, "breaking": breaking, "internal": internal, "other": other,
        "migrations": migrations, "migrations_backward_compatible": all(m["backward_compatible"] for m in migrations),
        "known_issues": list(dict.fromkeys(i for c in commits for i in c.known_issues)),
        "contributors": sorted({g.author for g in analysis.git_commits if g.sha not in cancelled}, key=str.casefold),
        "spec_given": spec is not None, "service": None, "rollback_plan": [], "rollback_triggers": [],
        "monitoring": []}
    if spec is not None:
        ctx.update(_spec_sections(spec))
    return ctx


def _migrations(git: GitRepo, analysis: NextVersion, tip: str) -> list[dict[str, Any]]:
    """Migration files added or changed in the range; incompatible when they drop or rename (a first cut)."""
    shas = [g.sha for g in analysis.git_commits]
    if not shas:
        return []
    rng = f"{analysis.last_tag}..{tip}" if analysis.last_tag else tip
    found = []
    for file in git.changed_files(rng, analysis.path):
        if "/migrations/" not in f"/{file}":
            continue
        content = git.show(tip, file)
        if content is None:
            continue
        match = _INCOMPATIBLE.search(content)
        found.append({"path": file, "backward_compatible": match is None,
                      "reason": " ".join(match.group(1).upper().split()) if match else None})
    return found


def _spec_sections(spec_path: Path) -> dict[str, Any]:
    """Rollback Plan and Monitoring as the service spec will really run them."""
    from releasegate.spec import SpecError, load_spec

    try:
        spec = load_spec(spec_path)
    except SpecError as exc:
        more = len(exc.issues) - 1
        tail = f" (and {more} more: `releasegate validate {spec_path}` lists them all)" if more else ""
        raise UserError(f"--spec {exc.issues[0]}{tail}") from None
    strategy, rb, analysis = spec.strategy, spec.rollback, spec.analysis
    if strategy.kind == "rolling":
        plan = ["Automatic rollback: the rolling replacement runs backwards batch by batch under the same "
                "max_unavailable/max_surge; no previous version is kept after promotion"]
    elif spec.rollback_mode == "staircase":
        waits = {rb.wait_at(w) for w in rb.weights if w}
        if len(waits) <= 1:
            steps = (" → ".join(f"{w}%" for w in rb.weights)
                     + f", {format_duration(waits.pop() if waits else 0)} between steps")
        else:
            steps = " → ".join(f"{w}% ({format_duration(rb.wait_at(w))})" if w else "0%" for w in rb.weights)
        plan = [f"Automatic staircase rollback: traffic on the new version steps down {steps} while errors "
                "persist; where they stop it holds for an operator"]
    else:
        plan = ["Automatic immediate rollback: all traffic back to the previous version at once"
                + (" (tier critical)" if spec.tier == "critical" and rb.mode is None else "")]
    if strategy.kind != "rolling":
        plan.append(f"Previous version kept for {format_duration(strategy.keep_previous)} after promotion: "
                    f"`releasegate rollback {spec.service}` switches all traffic back to it")
    plan.append(f"Manual: `releasegate abort {spec.service}` during the rollout")
    monitoring = []
    if strategy.steps:
        route = " → ".join(f"{s.weight}% for {format_duration(s.pause) if s.pause is not None else 'manual promote'}"
                           for s in strategy.steps)
        monitoring.append(f"{strategy.kind}: {route} → 100%")
    else:
        monitoring.append(f"{strategy.kind}: traffic follows the replaced instances")
    monitoring.append(f"Analysis every {format_duration(analysis.interval)}: "
                      + "; ".join(r.describe() for r in analysis.rules))
    monitoring.append(f"Watched for {format_duration(analysis.post_promotion)} after promotion (post_promotion)")
    return {"service": spec.service, "rollback_plan": plan,
            "rollback_triggers": [r.describe() for r in analysis.rules], "monitoring": monitoring}


# --- templates ----------------------------------------------------------------------------------------------------


def _template_source(git: GitRepo, template: Path | None) -> tuple[str, str]:
    """(source, filename): ``--template``, else the repository's own template, else the built-in one."""
    candidate = template if template is not None else git.root / PROJECT_TEMPLATE
    if template is not None or candidate.is_file():
        try:
            return candidate.read_text(encoding="utf-8"), str(candidate)
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--template {candidate}: cannot read it ({exc}); give a UTF-8 Jinja2 file") from None
    source = importlib.resources.files("releasegate.governance").joinpath(BUILTIN_TEMPLATE).read_text("utf-8")
    return source, f"<built-in {BUILTIN_TEMPLATE}>"


def render_template(source: str, filename: str, context: dict[str, Any]) -> str:
    """Render a notes template; any error is one ``UserError`` line naming ``filename:line`` and the problem.
    (Jinja2 is imported here, where it is used: ~13 ms every CLI command paid otherwise.)"""
    import jinja2
    import jinja2.sandbox

    class OneTemplate(jinja2.BaseLoader):
        def get_source(self, environment: jinja2.Environment, template: str
                       ) -> tuple[str, str | None, Callable[[], bool] | None]:
            return source, filename, lambda: True

    env = jinja2.sandbox.SandboxedEnvironment(loader=OneTemplate(), undefined=jinja2.StrictUndefined,
                                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                                              autoescape=False)
    try:
        text = env.get_template("notes").render(context)
    except jinja2.TemplateSyntaxError as exc:
        message = " ".join((exc.message or "syntax error").split()).rstrip(".")
        raise UserError(f"release notes template {filename}:{exc.lineno}: {message} (Jinja2 syntax)") from None
    except Exception as exc:  # undefined names, bad filters, errors inside expressions: all the template's fault
        line = _template_line(exc, filename)
        where = f"{filename}:{line}" if line else filename
        hint = f"; the variables are: {', '.join(sorted(context))}" if isinstance(exc, jinja2.UndefinedError) else ""
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"release notes template {where}: {message}{hint}") from None
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


def _template_line(exc: BaseException, filename: str) -> int | None:
    """The template line of a render error: Jinja2 rewrites tracebacks so template frames carry its filename."""
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
