"""Release notes from real git histories: the guide's sections, user-facing vs internal, templates, tag checks."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from releasegate.commands.release import notes_command
from releasegate.errors import UserError
from releasegate.governance.notes import render_notes
from tests.support.git import clean_git_identity, commit, git  # noqa: F401 (autouse fixture)

TODAY = dt.date(2025, 11, 22)
SPEC = """\
service: shop
platform: {kind: local, command: "python3 -m http.server {port}"}
strategy:
  canary:
    steps: [{weight: 5, pause: 10m}, {weight: 50, pause: 30m}]
analysis:
  post_promotion: 30m
  rules:
    - {metric: error_rate, max: 0.05, for: 5m}
    - {metric: latency_p95, max: 2.5s, for: 5m}
rollback: {mode: staircase, staircase: [50, 10, 0], step_wait: 5m}
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    commit(path, "feat: shop")
    git(path, "tag", "-a", "app-v1.2.0", "-m", "app 1.2.0")
    return path


def section(notes: str, title: str) -> str:
    """The body of one ``## title`` section."""
    start = notes.index(f"## {title}")
    end = notes.find("\n## ", start + 1)
    return notes[start:end if end != -1 else None]


def test_each_change_lands_in_its_section_and_internal_changes_stay_apart(repo: Path) -> None:
    commit(repo, "feat(search): fuzzy matching", author="Bob")
    commit(repo, "perf: cache the catalogue")
    commit(repo, "fix(cart): rounding", author="Carol")
    commit(repo, "hotfix: null price")
    for kind in ("refactor", "test", "ci", "build", "chore", "docs", "style"):
        commit(repo, f"{kind}: some {kind} work", author="Bob")
    notes = render_notes(repo, "app", today=TODAY)
    assert notes.startswith("# 🚀 app v1.3.0 (2025-11-22)")
    assert "2 fixes" in section(notes, "Summary") and "1 new feature" in section(notes, "Summary")
    assert "[search] fuzzy matching" in section(notes, "New Features")
    assert "cache the catalogue" in section(notes, "Improvements")
    fixes = section(notes, "Fixes")
    assert "[cart] rounding" in fixes and "null price" in fixes
    internal = section(notes, "Internal Changes")
    for kind in ("refactor", "test", "ci", "build", "chore", "docs", "style"):
        assert f"some {kind} work" in internal
        assert f"some {kind} work" not in notes.replace(internal, "")
    assert section(notes, "Breaking Changes").splitlines()[1] == "None (backward compatible)"
    assert section(notes, "Known Issues").splitlines()[1] == "None known"
    assert section(notes, "Contributors").split("\n", 1)[1].split() == ["-", "Ada", "Lovelace", "-", "Bob",
                                                                        "-", "Carol"]
    assert "No service spec given" in section(notes, "Rollback Plan")
    assert "No service spec given" in section(notes, "Monitoring")


def test_breaking_changes_carry_their_migration_guide(repo: Path) -> None:
    commit(repo, "feat(api)!: remove /v1/orders\n\nThe old endpoint is gone.\n\n"
                 "BREAKING CHANGE: /v1/orders no longer exists\n\n"
                 "Migration: call /v2/orders; the response\nwraps items in `data`.\n\n"
                 "Known-Issue: exports over 10k rows time out; split them meanwhile")
    notes = render_notes(repo, "app")
    breaking = section(notes, "Breaking Changes")
    assert "[api] remove /v1/orders" in breaking
    assert "/v1/orders no longer exists" in breaking
    assert "Migration: call /v2/orders; the response\n    wraps items in `data`." in breaking
    assert "exports over 10k rows time out" in section(notes, "Known Issues")
    assert notes.startswith("# 🚀 app v2.0.0")


def test_database_migrations_say_whether_they_are_backward_compatible(repo: Path) -> None:
    commit(repo, "feat: gift cards", "db/migrations/001_gift_cards.sql", "ALTER TABLE o ADD COLUMN gift text;\n")
    commit(repo, "feat: drop legacy", "migrations/002_legacy.sql", "DROP TABLE legacy_orders;\n")
    migrations = section(render_notes(repo, "app"), "Database Migrations")
    assert "`db/migrations/001_gift_cards.sql`\n  - Backward compatible: yes" in migrations
    assert "`migrations/002_legacy.sql`\n  - Backward compatible: no (DROP TABLE)" in migrations


def test_rollback_plan_and_monitoring_come_from_the_service_spec(repo: Path, tmp_path: Path) -> None:
    commit(repo, "fix: a")
    spec = tmp_path / "shop.yaml"
    spec.write_text(SPEC)
    notes = render_notes(repo, "app", spec=spec)
    rollback = section(notes, "Rollback Plan")
    assert "50% → 10% → 0%, 5m between steps" in rollback
    assert "Previous version kept for 24h" in rollback and "releasegate rollback shop" in rollback
    assert "  - error_rate > 5% for 5m\n  - latency_p95 > 2.5s for 5m" in rollback
    monitoring = section(notes, "Monitoring")
    assert "canary: 5% for 10m → 50% for 30m → 100%" in monitoring
    assert "Watched for 30m after promotion" in monitoring
    spec.write_text("service: Shop!\n")
    with pytest.raises(UserError, match=r"--spec .*shop.yaml") as bad:
        render_notes(repo, "app", spec=spec)
    assert "\n" not in str(bad.value)


def test_notes_of_a_tagged_release_cover_the_previous_tag_to_that_tag(repo: Path) -> None:
    commit(repo, "feat: wishlist")
    git(repo, "tag", "-a", "app-v1.3.0", "-m", "app 1.3.0")
    commit(repo, "fix: later")
    old = render_notes(repo, "app", version="1.3.0")
    assert old.startswith("# 🚀 app v1.3.0") and "wishlist" in old and "later" not in old
    assert "since app-v1.2.0" in section(old, "Summary")
    git(repo, "checkout", "-q", "app-v1.3.0")
    assert render_notes(repo, "app") == old  # HEAD exactly at the tag: its version, its range
    with pytest.raises(UserError, match=re.escape("HEAD is at tag app-v1.3.0")):
        render_notes(repo, "app", version="1.4.0")


def test_no_release_needs_an_explicit_draft_version(repo: Path) -> None:
    commit(repo, "docs: readme")
    with pytest.raises(UserError, match=r"no release: 1 commit since app-v1\.2\.0.*--version"):
        render_notes(repo, "app")
    assert render_notes(repo, "app", version="1.2.1").startswith("# 🚀 app v1.2.1")
    with pytest.raises(UserError, match=re.escape("not above the last release app-v1.2.0")):
        render_notes(repo, "app", version="1.1.0")


# --- templates ----------------------------------------------------------------------------------------------------


def test_a_project_template_overrides_the_built_in_one_and_template_wins_over_both(repo: Path,
                                                                                   tmp_path: Path) -> None:
    commit(repo, "feat: wishlist")
    (repo / ".releasegate").mkdir()
    (repo / ".releasegate" / "release-notes.md.j2").write_text(
        "{{ component }} {{ version }}:{% for c in features %} {{ c.subject }}{% endfor %}\n")
    assert render_notes(repo, "app") == "app 1.3.0: wishlist\n"
    own = tmp_path / "mine.j2"
    own.write_text("Release {{ tag }} by {{ contributors | join(', ') }}\n")
    assert render_notes(repo, "app", template=own) == "Release app-v1.3.0 by Ada Lovelace\n"


@pytest.mark.parametrize(("source", "line", "problem"), [
    ("# {{ version }}\n\n{% for c in features %}\n- {{ c.subject }}\n", 4, "Unexpected end of template"),
    ("# {{ version }}\n{{ summary }}\n{{ no_such_thing }}\n", 3, "'no_such_thing' is undefined"),
    ("ok\n{{ version | nosuchfilter }}\n", 2, "nosuchfilter"),
])
def test_template_errors_are_one_line_naming_file_and_line(repo: Path, tmp_path: Path, source: str, line: int,
                                                           problem: str) -> None:
    commit(repo, "fix: a")
    bad = tmp_path / "bad.j2"
    bad.write_text(source)
    with pytest.raises(UserError) as error:
        render_notes(repo, "app", template=bad)
    message = str(error.value)
    assert f"{bad}:{line}:" in message and problem in message
    assert "\n" not in message


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(notes_command)
    return app


def test_cli_prints_the_notes_and_exits_2_with_one_line_on_user_errors(repo: Path, tmp_path: Path) -> None:
    commit(repo, "feat: wishlist")
    result = CliRunner().invoke(_cli(), ["--component", "app", "--repo", str(repo)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# 🚀 app v1.3.0")
    bad = tmp_path / "bad.j2"
    bad.write_text("{% if %}\n")
    for args in (["--template", str(bad)], ["--template", str(tmp_path / "missing.j2")], ["--version", "1.x"],
                 ["--spec", str(tmp_path / "missing.yaml")]):
        result = CliRunner().invoke(_cli(), ["-c", "app", "--repo", str(repo), *args])
        assert result.exit_code == 2, result.output
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("releasegate: "), result.stderr
        assert "Traceback" not in result.output
