"""``release cut`` in real git repositories: all or nothing, Gitflow-checked, annotated tags, changelog on top."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from releasegate.commands.release import CutResult, cut_release, prepend_changelog, release_app
from releasegate.errors import UserError
from releasegate.governance.notes import render_notes
from tests.support.git import clean_git_identity, commit, git  # noqa: F401 (autouse fixture)

TODAY = dt.date(2025, 11, 22)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """app-v1.2.0 released; since then a fix (so the next version is 1.2.1)."""
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    commit(path, "feat: shop")
    git(path, "tag", "-a", "app-v1.2.0", "-m", "app 1.2.0")
    commit(path, "fix(cart): rounding")
    return path


def cut(repo: Path, *args: str) -> Result:
    return CliRunner().invoke(release_app, ["cut", "--component", "app", "--repo", str(repo), *args])


def state(repo: Path) -> tuple[str, str, str]:
    """HEAD, tags and the working tree status: what a refused or undone cut must leave as it was."""
    return (git(repo, "rev-parse", "HEAD"), git(repo, "tag", "--list"),
            git(repo, "status", "--porcelain", "--untracked-files=all"))


def assert_refused(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr


# --- a successful cut ---------------------------------------------------------------------------------------------


def test_cut_commits_changelog_and_notes_and_creates_an_annotated_tag(repo: Path) -> None:
    result = cut(repo)
    assert result.exit_code == 0, result.output
    head = git(repo, "rev-parse", "HEAD")
    assert git(repo, "cat-file", "-t", "app-v1.2.1") == "tag"
    assert git(repo, "rev-parse", "app-v1.2.1^{commit}") == head
    assert git(repo, "log", "-1", "--format=%s") == "chore(release): app v1.2.1"
    assert sorted(git(repo, "show", "--name-only", "--format=", "HEAD").splitlines()) == [
        "CHANGELOG.md", "release-notes/app-v1.2.1.md"]
    assert git(repo, "status", "--porcelain") == ""
    short = git(repo, "rev-parse", "--short=7", "HEAD")
    assert result.stdout.splitlines()[-3:] == ["v1.2.1", "latest", f"v1.2.1-sha-{short}"]
    notes = (repo / "release-notes" / "app-v1.2.1.md").read_text()
    for section in ("## Summary", "## New Features", "## Improvements", "## Fixes", "## Breaking Changes",
                    "## Database Migrations", "## Rollback Plan", "## Monitoring", "## Known Issues",
                    "## Contributors"):
        assert section in notes
    assert "# 🚀 app v1.2.1" in notes and "[cart] rounding" in notes
    assert render_notes(repo, "app") == notes  # HEAD is at the tag: `notes` renders the same release


def test_the_changelog_is_created_with_a_header_and_each_cut_goes_on_top(repo: Path) -> None:
    first = cut_release(repo, "app", today=TODAY)
    text = (repo / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n\n## app v1.2.1 (2025-11-22)")
    commit(repo, "feat(search): fuzzy")
    second = cut_release(repo, "app", today=TODAY)
    assert (first.version, second.version, second.previous_tag) == ("1.2.1", "1.3.0", "app-v1.2.1")
    text = (repo / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n\n## app v1.3.0")
    assert text.index("## app v1.3.0") < text.index("## app v1.2.1")
    assert "**search:** fuzzy" in text and text.count("# Changelog") == 1


def test_an_existing_changelog_keeps_its_header_and_preamble() -> None:
    old = "# Changelog\n\nAll notable changes.\n\n## app v1.0.0\n\n- old\n"
    new = prepend_changelog(old, "## app v1.1.0\n\n- new\n")
    assert new == "# Changelog\n\nAll notable changes.\n\n## app v1.1.0\n\n- new\n\n## app v1.0.0\n\n- old\n"
    assert prepend_changelog("- loose line\n", "## x\n").startswith("# Changelog\n\n## x\n\n- loose line")


def test_cut_result_names_everything_the_release_record_needs(repo: Path) -> None:
    seen: list[CutResult] = []
    result = cut_release(repo, "app", notes_dir="docs/notes", on_cut=seen.append)
    assert seen == [result]
    assert (result.component, result.version, result.tag, result.bump) == ("app", "1.2.1", "app-v1.2.1", "patch")
    assert result.commit == git(repo, "rev-parse", "HEAD")
    assert result.notes_path == (repo / "docs" / "notes" / "app-v1.2.1.md").resolve()
    assert result.image_tags[2] == f"v1.2.1-sha-{result.commit[:7]}"


# --- refusals -----------------------------------------------------------------------------------------------------


def test_a_dirty_tree_is_refused_naming_the_file(repo: Path) -> None:
    (repo / "app.txt").write_text("edited\n")
    before = state(repo)
    assert_refused(cut(repo), "app.txt", "commit or stash")
    assert state(repo) == before


def test_an_existing_tag_is_refused(repo: Path) -> None:
    git(repo, "checkout", "-q", "-b", "side")
    commit(repo, "fix: elsewhere")
    git(repo, "tag", "-a", "app-v1.2.1", "-m", "cut elsewhere")
    git(repo, "checkout", "-q", "main")
    before = state(repo)
    assert_refused(cut(repo), "tag app-v1.2.1 already exists")
    assert state(repo) == before


def test_nothing_to_release_is_refused(repo: Path) -> None:
    commit(repo, "docs: only docs")
    git(repo, "tag", "-a", "app-v1.2.1", "-m", "x", "HEAD~1")
    assert_refused(cut(repo), "no release: 1 commit since app-v1.2.1")


@pytest.mark.parametrize(("branch", "fragments"), [
    ("release/v1.3.0", ("branch release/v1.3.0 says 1.3.0 but the commits since app-v1.2.0 make 1.2.1",)),
    ("hotfix/v1.2.2", ("says 1.2.2", "make 1.2.1")),
    ("feature/search", ("feature branch", "develop")),
    ("wip", ("not a release branch",)),
    ("release/next", ("names no version", "release/v1.2.1")),
])
def test_gitflow_branches_that_disagree_are_refused(repo: Path, branch: str, fragments: tuple[str, ...]) -> None:
    git(repo, "checkout", "-q", "-b", branch)
    before = state(repo)
    assert_refused(cut(repo), *fragments)
    assert state(repo) == before


@pytest.mark.parametrize("branch", ["develop", "release/v1.2.1", "hotfix/app-v1.2.1", "master"])
def test_gitflow_branches_that_agree_are_allowed(repo: Path, branch: str) -> None:
    git(repo, "checkout", "-q", "-b", branch)
    assert cut(repo).exit_code == 0


def test_a_notes_dir_outside_the_repository_is_refused(repo: Path, tmp_path: Path) -> None:
    assert_refused(cut(repo, "--notes-dir", str(tmp_path / "elsewhere")), "--notes-dir", "outside")


# --- nothing half-applied -----------------------------------------------------------------------------------------


def test_a_failing_hook_after_the_tag_undoes_tag_commit_and_files(repo: Path) -> None:
    (repo / "CHANGELOG.md").write_text("# Changelog\n\n## app v1.2.0\n")
    git(repo, "add", "CHANGELOG.md")
    git(repo, "commit", "-q", "-m", "docs: changelog")
    before = state(repo)

    def refuse(result: CutResult) -> None:
        raise UserError("approvals store unavailable")

    with pytest.raises(UserError, match="approvals store unavailable"):
        cut_release(repo, "app", on_cut=refuse)
    assert state(repo) == before
    assert (repo / "CHANGELOG.md").read_text() == "# Changelog\n\n## app v1.2.0\n"
    assert not (repo / "release-notes").exists()


def test_a_failing_commit_leaves_no_files_behind(repo: Path) -> None:
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'error: lint failed' >&2\nexit 1\n")
    hook.chmod(0o755)
    before = state(repo)
    result = cut(repo)
    assert_refused(result, "git commit failed")
    assert state(repo) == before
    assert not (repo / "CHANGELOG.md").exists()


def test_cut_with_as_registers_the_release_for_approval_and_a_bad_token_cuts_nothing(
        repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from releasegate.governance.identity import new_token
    from releasegate.governance.policy import load_policy
    from releasegate.store.governance import GovernanceStore

    policy = load_policy(Path(__file__).resolve().parent.parent / "examples" / "governance" / "policy.yaml")
    state = tmp_path / "state"
    monkeypatch.setenv("RELEASEGATE_TOKEN", "rg_wrong")
    refused = cut(repo, "--as", "alice", "--state-dir", str(state), "--service", "shop")
    assert refused.exit_code == 2 and "token" in refused.stderr
    assert git(repo, "tag", "--list").split() == ["app-v1.2.0"]  # nothing was cut
    monkeypatch.setenv("RELEASEGATE_TOKEN", new_token(state, policy, "alice"))
    done = cut(repo, "--as", "alice", "--state-dir", str(state), "--service", "shop")
    assert done.exit_code == 0, done.stderr
    tagged = git(repo, "rev-parse", "app-v1.2.1^{commit}").strip()
    with GovernanceStore(state) as store:
        release = store.release("shop", "1.2.1")
    assert release is not None and release.author == "alice" and release.commit == tagged
    # its commit time is kept: where the DORA lead time starts (docs/dora.md)
    assert release.commit_at == float(git(repo, "show", "-s", "--format=%ct", tagged).strip())
