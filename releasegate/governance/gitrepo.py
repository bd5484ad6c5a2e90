"""A thin wrapper over the ``git`` command line, the only way releasegate reads or changes a repository.

The CLI rather than a library: it is what every CI machine has, it honours the user's own configuration (hooks,
signing, identity, safe.directory), and its plumbing output is a stable contract. Every failure becomes a
``GitError`` (a ``UserError``): one line naming the repository, the git command and git's own explanation.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from releasegate.errors import UserError

_FIELD = "\x1f"  # unit separator between the fields of one commit in `git log` output
_RECORD = "\x1e"  # record separator between commits
_LOG_FORMAT = f"%H{_FIELD}%an{_FIELD}%ae{_FIELD}%aI{_FIELD}%B{_RECORD}"


class GitError(UserError):
    """A git command failed; the message carries git's first line of explanation."""


@dataclass(frozen=True)
class GitCommit:
    """One commit as `git log` reports it; ``message`` is the full message (subject, blank line, body)."""

    sha: str
    author: str
    email: str
    date: str
    """Author date, ISO 8601."""
    message: str

    @property
    def subject(self) -> str:
        return self.message.split("\n", 1)[0].strip()


class GitRepo:
    """One working tree; git runs in ``path`` so path arguments are relative to it, as on the command line."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserError(f"--repo {self.path}: no such directory; pass the repository's directory")
        try:
            top = self.run("rev-parse", "--show-toplevel")
        except GitError:
            raise UserError(f"--repo {self.path}: not a git repository; run it inside one or pass --repo DIR"
                            ) from None
        self.root = Path(top)

    def run(self, *args: str, check: bool = True) -> str:
        """git's stdout without the trailing newline; ``GitError`` when git fails and ``check`` is set."""
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        try:
            proc = subprocess.run(["git", *args], cwd=self.path, capture_output=True, text=True, env=env,
                                  check=False)
        except FileNotFoundError:
            raise UserError("git is not installed or not on PATH; install git") from None
        if check and proc.returncode != 0:
            lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            why = next((ln for ln in lines if ln.startswith(("fatal:", "error:"))), lines[0] if lines else "")
            if "Please tell me who you are" in proc.stderr:
                why = "git has no identity to commit with; run git config user.name NAME and user.email EMAIL"
            raise GitError(f"git {args[0]} failed in {self.path}: {why or f'exit {proc.returncode}'}")
        return proc.stdout.rstrip("\n")

    def ok(self, *args: str) -> bool:
        """Whether git succeeds; for questions git answers with its exit status."""
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
        return subprocess.run(["git", *args], cwd=self.path, capture_output=True, env=env,
                              check=False).returncode == 0

    # --- reading ------------------------------------------------------------------------------------------------

    def head(self) -> str | None:
        """The full sha of HEAD, or None in a repository without commits."""
        return self.run("rev-parse", "--verify", "-q", "HEAD^{commit}", check=False) or None

    def short(self, rev: str) -> str:
        return self.run("rev-parse", "--short=7", rev)

    def branch(self) -> str | None:
        """The checked-out branch, or None on a detached HEAD (as CI checkouts often are)."""
        return self.run("symbolic-ref", "-q", "--short", "HEAD", check=False) or None

    def tags(self, pattern: str, merged_into: str | None = "HEAD") -> list[str]:
        """Tags matching the glob ``pattern``; only those reachable from ``merged_into`` unless it is None."""
        args = ["tag", "--list", pattern]
        if merged_into is not None:
            if self.head() is None:
                return []
            args += ["--merged", merged_into]
        return [t for t in self.run(*args).splitlines() if t]

    def tags_at(self, rev: str) -> list[str]:
        return [t for t in self.run("tag", "--points-at", rev).splitlines() if t]

    def tag_exists(self, tag: str) -> bool:
        return self.ok("rev-parse", "--verify", "-q", f"refs/tags/{tag}")

    def commit_of(self, rev: str) -> str:
        return self.run("rev-parse", "--verify", f"{rev}^{{commit}}")

    def commit_time(self, rev: str) -> float:
        """When ``rev`` was committed (committer date, Unix time): the start of the DORA lead time."""
        return float(self.run("show", "-s", "--format=%ct", f"{rev}^{{commit}}"))

    def object_type(self, rev: str) -> str:
        return self.run("cat-file", "-t", rev)

    def tag_date(self, tag: str) -> str:
        """When an annotated tag was made (the commit's date for a lightweight one), ISO 8601."""
        return self.run("for-each-ref", "--format=%(if)%(taggerdate)%(then)%(taggerdate:iso-strict)%(else)"
                        "%(committerdate:iso-strict)%(end)", f"refs/tags/{tag}")

    def log(self, rev_range: str, path: str | None = None) -> list[GitCommit]:
        """Commits in ``rev_range`` (e.g. ``app-v1.2.0..HEAD``), newest first; only those touching ``path``."""
        if self.head() is None:
            return []
        args = ["log", f"--format={_LOG_FORMAT}", rev_range]
        if path:
            args += ["--", path]
        commits = []
        for record in self.run(*args).split(_RECORD):
            record = record.strip("\n")
            if not record:
                continue
            sha, author, email, date, message = record.split(_FIELD, 4)
            commits.append(GitCommit(sha, author, email, date, message.strip("\n")))
        return commits

    def changed_files(self, rev_range: str, path: str | None = None) -> list[str]:
        """Paths added or modified by the commits in ``rev_range``, repository-relative, sorted."""
        if self.head() is None:
            return []
        args = ["log", "--format=", "--name-only", "--diff-filter=AMR", "--no-renames", rev_range]
        if path:
            args += ["--", path]
        return sorted({line for line in self.run(*args).splitlines() if line})

    def show(self, rev: str, file: str) -> str | None:
        """The content of ``file`` (repository-relative) at ``rev``, or None when it does not exist there."""
        if not self.ok("cat-file", "-e", f"{rev}:{file}"):
            return None
        return self.run("show", f"{rev}:{file}")

    def dirty_files(self) -> list[str]:
        """Tracked files with staged or unstaged changes (untracked files do not end up in a release commit)."""
        out = self.run("status", "--porcelain=v1", "--untracked-files=no")
        return sorted(line[3:] for line in out.splitlines() if line.strip())

    # --- writing ------------------------------------------------------------------------------------------------

    def commit_files(self, files: list[str], message: str) -> str:
        """Commit exactly ``files`` (paths relative to ``path``) with ``message``; returns the new sha."""
        self.run("add", "--", *files)
        self.run("commit", "-q", "-m", message, "--", *files)
        return self.commit_of("HEAD")

    def tag_annotated(self, tag: str, message: str, rev: str) -> None:
        self.run("tag", "-a", tag, "-m", message, rev)

    def delete_tag(self, tag: str) -> None:
        self.run("tag", "-d", tag)

    def reset_hard(self, rev: str) -> None:
        self.run("reset", "-q", "--hard", rev)

    def unstage(self, files: list[str]) -> None:
        """Take ``files`` out of the index again (after a failed commit); quiet if HEAD does not exist yet."""
        self.run("reset", "-q", "--", *files, check=False)
