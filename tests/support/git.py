"""Real git repositories for tests, as on a fresh CI machine: no global config, identity from the environment."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def clean_git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Import into a test module to apply it to every test there."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "Ada Lovelace")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "ada@example.com")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, message: str, file: str = "app.txt", content: str | None = None,
           author: str | None = None) -> str:
    """A commit changing ``file`` (appending the subject, or writing ``content``); returns its sha."""
    target = repo / file
    target.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        with target.open("a") as fh:
            fh.write(message.splitlines()[0] + "\n")
    else:
        target.write_text(content)
    git(repo, "add", file)
    git(repo, "commit", "-q", "-m", message, *([f"--author={author} <{author.lower()}@example.com>"]
                                               if author else []))
    return git(repo, "rev-parse", "HEAD")
