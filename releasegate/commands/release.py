"""``releasegate release cut``, ``releasegate version next`` and ``releasegate notes`` (issue 3, sections 1 and 2).

A cut is all or nothing: the changelog entry, the notes file, the release commit and the annotated tag either all
exist afterwards or none does, so a failed cut can simply be run again. The version is computed from the commits
(releasegate.governance.versioning) and checked against the Gitflow branch, never typed by hand.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer

from releasegate.commands import reported as _reported
from releasegate.errors import UserError
from releasegate.governance.gitrepo import GitRepo
from releasegate.governance.notes import prepare_notes, render_notes
from releasegate.governance.versioning import Bump, check_component, next_version, tag_name

MAIN_BRANCHES = ("main", "master", "develop")
CHANGELOG = "CHANGELOG.md"
CHANGELOG_HEADER = "# Changelog"


@dataclass(frozen=True)
class CutResult:
    """What a cut made; ``on_cut`` hooks (e.g. the release record for approvals) receive it."""

    component: str
    version: str
    tag: str
    commit: str
    """Full sha of the release commit the tag points at."""
    notes_path: Path
    changelog_path: Path
    image_tags: list[str]
    bump: Bump | None
    previous_tag: str | None
    explanation: list[str] = field(default_factory=list)


# --- the cut ------------------------------------------------------------------------------------------------------


_ALLOWED = "main, master, develop, release/vX.Y.Z or hotfix/vX.Y.Z"


def refuse_feature_branch(branch: str | None) -> None:
    """Feature branches are refused before anything is computed: their commits have not been integrated yet."""
    if branch is not None and branch.startswith("feature/"):
        raise UserError(f"branch {branch} is a feature branch: cut releases from {_ALLOWED} (Gitflow)")


def check_branch(branch: str | None, version: str, last_tag: str | None) -> None:
    """Gitflow: releases come from main/master/develop or a release/hotfix branch named after the same version."""
    if branch is None or branch in MAIN_BRANCHES:  # a detached HEAD is how CI checks out; nothing to compare
        return
    refuse_feature_branch(branch)
    kind, _, rest = branch.partition("/")
    if kind not in ("release", "hotfix") or not rest:
        raise UserError(f"branch {branch} is not a release branch: cut releases from {_ALLOWED} (Gitflow)")
    named = re.search(r"v?(\d+\.\d+\.\d+)$", rest)
    if named is None:
        raise UserError(f"branch {branch} names no version: call it {kind}/v{version} (Gitflow)")
    if named.group(1) != version:
        since = f"the commits since {last_tag}" if last_tag else "the history (first release)"
        raise UserError(f"branch {branch} says {named.group(1)} but {since} make{'s' if not last_tag else ''} "
                        f"{version}; rename the branch or fix the commit types")


def prepend_changelog(old: str | None, entry: str) -> str:
    """The changelog with ``entry`` first, under the ``# Changelog`` header (and any preamble) kept on top."""
    entry = entry.strip("\n") + "\n"
    if old is None or not old.strip():
        return f"{CHANGELOG_HEADER}\n\n{entry}"
    lines = old.splitlines(keepends=True)
    if not lines[0].startswith("# "):
        return f"{CHANGELOG_HEADER}\n\n{entry}\n{old}"
    first = next((i for i, line in enumerate(lines) if i and line.startswith("## ")), len(lines))
    rest = "".join(lines[first:])
    return "".join(lines[:first]).rstrip("\n") + "\n\n" + entry + (f"\n{rest}" if rest else "")


def cut_release(repo: Path, component: str, *, path: str | None = None, notes_dir: str | Path = "release-notes",
                spec: Path | None = None, template: Path | None = None, pre_1_0: bool = False,
                start: str = "0.1.0", on_cut: Callable[[CutResult], None] | None = None,
                today: dt.date | None = None) -> CutResult:
    """Cut the next release of ``component``: changelog, notes, release commit, annotated tag; all or nothing.

    ``on_cut`` runs last; if it raises, the tag and the commit are undone too and the error propagates.
    """
    check_component(component)
    git = GitRepo(repo)
    dirty = git.dirty_files()
    if dirty:
        more = f" and {len(dirty) - 5} more" if len(dirty) > 5 else ""
        raise UserError(f"release cut: uncommitted changes in {', '.join(dirty[:5])}{more}; commit or stash "
                        "them first (a release is built from committed code only)")
    branch = git.branch()
    refuse_feature_branch(branch)
    plan = next_version(git.path, component, path, pre_1_0, start)
    if plan.next is None:
        raise UserError(f"release cut {component}: no release: {plan.reason}; nothing to cut")
    check_branch(branch, plan.next, plan.last_tag)
    tag = tag_name(component, plan.next)
    if git.tag_exists(tag):
        raise UserError(f"release cut: tag {tag} already exists (on {git.short(tag)}) although it is not in this "
                        f"branch's history; check out that release, or delete the stale tag: git tag -d {tag}")
    notes_file = (git.path / notes_dir / f"{tag}.md").resolve()
    if not notes_file.is_relative_to(git.root.resolve()):
        raise UserError(f"--notes-dir {notes_dir}: outside the repository {git.root}; give a directory inside it")
    if notes_file.exists():
        raise UserError(f"release cut: {notes_file} already exists; remove it (no tag {tag} exists) and cut again")
    notes = prepare_notes(git.path, component, version=plan.next, path=path, spec=spec, template=template,
                          pre_1_0=pre_1_0, start=start, today=today)
    changelog_file = git.path.resolve() / CHANGELOG
    notes_rel = notes_file.relative_to(git.path.resolve()).as_posix() if notes_file.is_relative_to(
        git.path.resolve()) else str(notes_file)
    files = [CHANGELOG, notes_rel]
    old_changelog = changelog_file.read_text(encoding="utf-8") if changelog_file.exists() else None
    created_dirs = [d for d in reversed(notes_file.parents) if not d.exists()]
    before, committed, tagged = git.commit_of("HEAD"), False, False
    try:
        for d in created_dirs:
            d.mkdir()
        notes_file.write_text(notes.markdown, encoding="utf-8")
        changelog_file.write_text(prepend_changelog(old_changelog, notes.changelog_entry(notes_rel)), "utf-8")
        commit = git.commit_files(files, f"chore(release): {component} v{plan.next}")
        committed = True
        git.tag_annotated(tag, f"Release {component} v{plan.next}\n\n{notes.context['summary']}", commit)
        tagged = True
        short = git.short(commit)
        result = CutResult(component, plan.next, tag, commit, notes_file, changelog_file,
                           [f"v{plan.next}", "latest", f"v{plan.next}-sha-{short}"], plan.bump, plan.last_tag,
                           plan.explanation)
        if on_cut is not None:
            on_cut(result)
    except BaseException:
        _undo(git, before, files, committed, tagged, tag, changelog_file, old_changelog, notes_file, created_dirs)
        raise
    return result


def _undo(git: GitRepo, before: str, files: list[str], committed: bool, tagged: bool, tag: str,
          changelog_file: Path, old_changelog: str | None, notes_file: Path, created_dirs: list[Path]) -> None:
    """Put the repository back as it was before the cut: no tag, no release commit, the files as they were."""
    if tagged:
        git.run("tag", "-d", tag, check=False)
    if committed and git.commit_of("HEAD") != before:
        git.run("reset", "-q", "--soft", before, check=False)
    git.unstage(files)
    if old_changelog is None:
        changelog_file.unlink(missing_ok=True)
    else:
        changelog_file.write_text(old_changelog, encoding="utf-8")
    notes_file.unlink(missing_ok=True)
    for d in reversed(created_dirs):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


# --- the command line ---------------------------------------------------------------------------------------------


Component = Annotated[str, typer.Option("--component", "-c", help="Component: tags are COMPONENT-vX.Y.Z.",
                                        show_default=False)]
RepoDir = Annotated[Path, typer.Option("--repo", help="The git repository.", file_okay=False)]
SubPath = Annotated[str | None, typer.Option("--path", help="Only commits touching this directory (monorepos).",
                                             show_default=False)]
Pre10 = Annotated[bool, typer.Option("--pre-1.0", help="While the major version is 0, a breaking change bumps "
                                     "MINOR instead of making 1.0.0.")]
Start = Annotated[str, typer.Option("--start", help="The first version when the component has no tag yet.")]
SpecOpt = Annotated[Path | None, typer.Option("--spec", help="Service spec: fills Rollback Plan and Monitoring.",
                                              show_default=False, metavar="SERVICE_SPEC")]
TemplateOpt = Annotated[Path | None, typer.Option(
    "--template", help="Jinja2 notes template (default: .releasegate/release-notes.md.j2 in the repository, "
    "else the built-in one).", show_default=False, metavar="FILE")]

version_app = typer.Typer(help="Semantic versions computed from Conventional Commits.", no_args_is_help=True)
release_app = typer.Typer(help="Cut releases: changelog, release notes, release commit and annotated tag, "
                               "checked against Gitflow.", no_args_is_help=True)


@version_app.callback()
def _version_group() -> None:
    """Semantic versions computed from Conventional Commits."""


@release_app.callback()
def _release_group() -> None:
    """Cut releases: changelog, release notes, release commit and annotated tag, checked against Gitflow."""


@version_app.command("next")
def version_next(component: Component, repo: RepoDir = Path("."), path: SubPath = None, pre_1_0: Pre10 = False,
                 start: Start = "0.1.0") -> None:
    """Print the next version on the last line (or "no release: why"), after the commits that decided it.

    breaking (type!: or a BREAKING CHANGE footer) -> MAJOR, feat -> MINOR, fix/perf/hotfix -> PATCH.
    """
    with _reported():
        result = next_version(repo, component, path, pre_1_0, start)
    for line in result.explanation:
        typer.echo(line)
    typer.echo(result.last_line)


@release_app.command("cut")
def release_cut(component: Component, repo: RepoDir = Path("."), path: SubPath = None,
                notes_dir: Annotated[Path, typer.Option("--notes-dir", help="Where the notes file goes, relative "
                                                        "to --repo.")] = Path("release-notes"),
                spec: SpecOpt = None, template: TemplateOpt = None, pre_1_0: Pre10 = False,
                start: Start = "0.1.0",
                as_user: Annotated[str | None, typer.Option("--as", metavar="USER", help="Register the release "
                                                            "for approval with you as its author (needs "
                                                            "RELEASEGATE_TOKEN).")] = None,
                service: Annotated[str | None, typer.Option("--service", help="Release name for approvals "
                                                            "(default: the component).")] = None,
                state_dir: Annotated[Path | None, typer.Option("--state-dir", envvar="RELEASEGATE_HOME",
                                                               help="Where approvals live (with --as).")]
                = None) -> None:
    """Commit CHANGELOG.md and release-notes/COMPONENT-vX.Y.Z.md, tag COMPONENT-vX.Y.Z; print the image tags.

    Refuses a dirty tree, an existing tag, nothing to release, a feature branch, or a mismatched release branch.

    With --as, also registers the release for approval (as `release new` does); if that fails, the cut is undone.
    """
    from releasegate.commands.approvals import state_dir_of
    from releasegate.governance.approvals import new_release
    from releasegate.governance.identity import TOKEN_ENV, authenticate

    name = service or component
    register = None
    with _reported():
        if as_user is not None:
            from releasegate.governance.stored import stored_policy

            where = state_dir_of(state_dir)
            authenticate(where, stored_policy(where), as_user, os.environ.get(TOKEN_ENV), action="release cut")

            def register(cut: CutResult) -> None:
                new_release(where, name, cut.version, as_user, commit=cut.commit,
                            commit_at=GitRepo(repo).commit_time(cut.commit))

        result = cut_release(repo, component, path=path, notes_dir=notes_dir, spec=spec, template=template,
                             pre_1_0=pre_1_0, start=start, on_cut=register)
    for line in result.explanation:
        typer.echo(line)
    typer.echo(f"committed {result.commit[:7]} chore(release): {component} v{result.version}")
    typer.echo(f"tagged {result.tag} (annotated); push with: git push --follow-tags")
    typer.echo(f"notes: {result.notes_path}")
    typer.echo(f"registered {name}@{result.version} for approval by {as_user}" if as_user else
               f"register it for approval: releasegate release new {name} {result.version} --as USER")
    typer.echo("image tags:")
    for image_tag in result.image_tags:
        typer.echo(image_tag)


def notes_command(component: Component, repo: RepoDir = Path("."), path: SubPath = None, spec: SpecOpt = None,
                  template: TemplateOpt = None,
                  version: Annotated[str | None, typer.Option(
                      "--version", help="Notes of this version: a tagged one, or a draft for an untagged one.",
                      show_default=False)] = None,
                  pre_1_0: Pre10 = False) -> None:
    """Print the release notes (Markdown) of the next version, or of the tagged version HEAD or --version names."""
    with _reported():
        text = render_notes(repo, component, version=version, path=path, spec=spec, template=template,
                            pre_1_0=pre_1_0)
    typer.echo(text, nl=False)
