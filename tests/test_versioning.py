"""Next versions from Conventional Commits in real git repositories (no git identity needed on the machine)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from releasegate.commands.release import version_app
from releasegate.errors import UserError
from releasegate.governance.versioning import next_version, parse_commit_message, parse_semver, semver_kind
from tests.support.git import clean_git_identity, commit, git  # noqa: F401 (autouse fixture)


def tag(repo: Path, name: str, rev: str = "HEAD") -> None:
    git(repo, "tag", "-a", name, "-m", name, rev)


def new_repo(tmp_path: Path, name: str = "repo") -> Path:
    path = tmp_path / name
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = new_repo(tmp_path)
    commit(path, "chore: start")
    tag(path, "app-v1.2.0")
    return path


# --- parsing ------------------------------------------------------------------------------------------------------


def test_headers_scopes_bang_and_both_footer_spellings() -> None:
    [feat] = parse_commit_message("feat(api): add search")
    assert (feat.type, feat.scope, feat.breaking, feat.subject) == ("feat", "api", False, "add search")
    assert parse_commit_message("fix(db)!: drop legacy column")[0].breaking
    for footer in ("BREAKING CHANGE", "BREAKING-CHANGE"):
        [c] = parse_commit_message(f"refactor: auth\n\nBody.\n\n{footer}: tokens are JWT now\nre-login needed")
        assert c.breaking and c.breaking_note == "tokens are JWT now\nre-login needed"
    assert parse_commit_message("Update the readme") == []
    assert parse_commit_message("Merge branch 'develop'") == []


def test_a_squash_body_counts_each_conventional_message() -> None:
    messages = parse_commit_message("Checkout rework (#42)\n\n* feat(cart): saved carts\n\n* fix: rounding\n"
                                    "details of the fix\n\n- perf: fewer queries\n\nNote: not a commit type")
    assert [(m.type, m.scope, m.subject) for m in messages] == [
        ("feat", "cart", "saved carts"), ("fix", None, "rounding"), ("perf", None, "fewer queries")]
    assert messages[1].body == "details of the fix"


def test_reverts_in_git_and_conventional_form_name_the_reverted_commit() -> None:
    [git_style] = parse_commit_message('Revert "feat: x"\n\nThis reverts commit 0123456789abcdef.')
    [conventional] = parse_commit_message("revert: feat x\n\nThis reverts commit 0123456789abcdef.")
    assert git_style.type == conventional.type == "revert"
    assert git_style.reverts == conventional.reverts == "0123456789abcdef"


def test_semver_kind_and_parse() -> None:
    assert semver_kind("1.2.3", "2.0.0") == "major"
    assert semver_kind("1.2.3", "1.3.0") == "minor"
    assert semver_kind("1.2.3", "v1.2.4") == "patch"
    assert semver_kind("1.2.3", "1.2.3") is None
    assert parse_semver("v10.0.1") == (10, 0, 1)
    with pytest.raises(UserError, match=re.escape("'1.2' is not a version")):
        parse_semver("1.2")


# --- bumps --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("message", "expected", "bump"), [
    ("feat!: remove the v1 API", "2.0.0", "major"),
    ("fix: tidy\n\nBREAKING CHANGE: the config key moved", "2.0.0", "major"),
    ("feat(search): fuzzy matching", "1.3.0", "minor"),
    ("fix(login): token expiry", "1.2.1", "patch"),
    ("perf: cache the catalogue", "1.2.1", "patch"),
    ("hotfix: null price", "1.2.1", "patch"),
])
def test_the_commit_type_decides_the_bump(repo: Path, message: str, expected: str, bump: str) -> None:
    commit(repo, "docs: readme")
    commit(repo, message)
    result = next_version(repo, "app")
    assert (result.last_tag, result.next, result.bump) == ("app-v1.2.0", expected, bump)
    subject = message.splitlines()[0].split(": ", 1)[1]
    assert any(subject in line and line.startswith(bump) for line in result.explanation)


def test_the_largest_bump_wins_and_the_scope_is_kept(repo: Path) -> None:
    commit(repo, "fix: a")
    commit(repo, "feat(api): b")
    commit(repo, "fix: c")
    result = next_version(repo, "app")
    assert result.next == "1.3.0"
    assert [(c.type, c.scope) for c in result.commits] == [("fix", None), ("feat", "api"), ("fix", None)]


def test_no_release_without_feat_fix_perf_hotfix_or_breaking(repo: Path) -> None:
    for message in ("docs: a", "chore: b", "refactor: c"):
        commit(repo, message)
    result = next_version(repo, "app")
    assert result.next is None and result.bump is None
    assert result.last_line == ("no release: 3 commits since app-v1.2.0, none is feat, fix, perf, hotfix or "
                                "breaking")


def test_a_squash_commit_with_a_feat_inside_is_minor(repo: Path) -> None:
    commit(repo, "Checkout rework (#42)\n\n* fix: rounding\n\n* feat: saved carts")
    result = next_version(repo, "app")
    assert result.next == "1.3.0"
    assert len(result.commits) == 2


# --- reverts ------------------------------------------------------------------------------------------------------


def test_a_revert_in_the_same_range_cancels_the_feat(repo: Path) -> None:
    commit(repo, "fix: rounding")
    feat = commit(repo, "feat: saved carts")
    git(repo, "revert", "--no-edit", feat)
    result = next_version(repo, "app")
    assert result.next == "1.2.1"
    assert {c.subject for c in result.cancelled} == {"saved carts", 'Revert "feat: saved carts"'}
    assert [c.type for c in result.commits] == ["fix"]


def test_a_conventional_revert_cancels_too(repo: Path) -> None:
    feat = commit(repo, "feat: saved carts")
    commit(repo, f"revert: saved carts\n\nThis reverts commit {feat[:10]}.")
    result = next_version(repo, "app")
    assert result.next is None and result.commits == []


def test_a_revert_of_a_released_commit_cancels_nothing_in_the_range(tmp_path: Path) -> None:
    repo = new_repo(tmp_path, "r")
    old_feat = commit(repo, "feat: wishlist")
    tag(repo, "app-v1.0.0")
    commit(repo, "feat: gift cards")
    commit(repo, f'Revert "feat: wishlist"\n\nThis reverts commit {old_feat}.')
    result = next_version(repo, "app")
    assert result.cancelled == []
    assert result.next == "1.1.0"
    assert [c.type for c in result.commits] == ["feat", "revert"]


# --- tags, monorepos, first releases ------------------------------------------------------------------------------


def test_components_have_their_own_tags_and_paths(tmp_path: Path) -> None:
    repo = new_repo(tmp_path, "mono")
    commit(repo, "feat: api", "services/api/main.py")
    tag(repo, "api-v1.0.0")
    commit(repo, "feat: web", "services/web/index.html")
    tag(repo, "web-v2.0.0")
    commit(repo, "feat(api): search", "services/api/search.py")
    commit(repo, "fix(web): layout", "services/web/style.css")
    api = next_version(repo, "api", path="services/api")
    web = next_version(repo, "web", path="services/web")
    assert (api.last_tag, api.next, [c.subject for c in api.commits]) == ("api-v1.0.0", "1.1.0", ["search"])
    assert (web.last_tag, web.next, [c.subject for c in web.commits]) == ("web-v2.0.0", "2.0.1", ["layout"])
    assert next_version(repo, "web").next == "2.1.0"  # without --path the api feat counts too
    with pytest.raises(UserError, match="--path services/nope"):
        next_version(repo, "api", path="services/nope")


def test_the_highest_reachable_semver_tag_is_the_last_release(repo: Path) -> None:
    tag(repo, "app-v1.10.0")
    tag(repo, "app-v1.9.0")
    tag(repo, "app-v2.0.0-rc.1")
    git(repo, "checkout", "-q", "-b", "side")
    commit(repo, "feat: elsewhere")
    tag(repo, "app-v3.0.0")
    git(repo, "checkout", "-q", "main")
    commit(repo, "fix: here")
    assert next_version(repo, "app").last_tag == "app-v1.10.0"
    assert next_version(repo, "app").next == "1.10.1"


def test_pre_1_0_breaking_bumps_minor_only_when_asked(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    commit(repo, "feat: first")
    tag(repo, "app-v0.3.0")
    commit(repo, "feat!: new config format")
    assert next_version(repo, "app").next == "1.0.0"
    assert any("--pre-1.0" in line for line in next_version(repo, "app").explanation)
    pre = next_version(repo, "app", pre_1_0=True)
    assert (pre.next, pre.bump) == ("0.4.0", "minor")


def test_no_tag_yet_starts_at_0_1_0_or_at_start(tmp_path: Path) -> None:
    repo = new_repo(tmp_path, "new")
    commit(repo, "chore: scaffold")
    assert next_version(repo, "app").next == "0.1.0"
    assert next_version(repo, "app", start="1.0.0").next == "1.0.0"
    assert next_version(repo, "other", path="app.txt").last_tag is None
    with pytest.raises(UserError, match=re.escape("--start '1.0' is not a version")):
        next_version(repo, "app", start="1.0")


# --- the command --------------------------------------------------------------------------------------------------


def _cli() -> typer.Typer:
    return version_app


def test_cli_prints_the_explanation_then_the_version_on_the_last_line(repo: Path) -> None:
    commit(repo, "feat(api): search")
    result = CliRunner().invoke(_cli(), ["next", "--component", "app", "--repo", str(repo)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[-1] == "1.3.0"
    assert any("feat(api): search" in line for line in lines[:-1])


def test_cli_no_release_exits_0_and_user_errors_exit_2_with_one_line(repo: Path, tmp_path: Path) -> None:
    commit(repo, "docs: a")
    result = CliRunner().invoke(_cli(), ["next", "-c", "app", "--repo", str(repo)])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1].startswith("no release: 1 commit since app-v1.2.0")
    (tmp_path / "plain").mkdir()
    for args in (["--repo", str(tmp_path / "plain")], ["--repo", str(repo), "--start", "x"],
                 ["--repo", str(repo), "-c", "bad name"]):
        result = CliRunner().invoke(_cli(), ["next", "-c", "app", *args])
        assert result.exit_code == 2, result.output
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("releasegate: ")
        assert "Traceback" not in result.output
