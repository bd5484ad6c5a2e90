"""What a newcomer meets first: the README's set-up commands, ``--help`` at 80 columns, usage errors as one line,
and read-only commands that leave no ``.releasegate`` behind in a directory where releasegate never ran."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def rg(*args: str, cwd: Path | None = None, columns: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RELEASEGATE_HOME", "COLUMNS", "TERM")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run([sys.executable, "-m", "releasegate", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=60)


def flat(text: str) -> str:
    """Help text without its frames and line breaks, to look for a phrase wherever the table wrapped it."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


# --- the README's set-up commands ---------------------------------------------------------------------------


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_the_readme_set_up_commands_never_pip_install_into_the_system_python():
    """Debian 12 and Ubuntu 24.04 refuse `pip install` outside a virtual environment (PEP 668): every pip call
    in the set-up commands goes to a virtual environment the command itself creates."""
    commands = _setup_commands()
    assert commands == ["python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/releasegate demo",
                        "./scripts/test"]
    script = (ROOT / "scripts" / "test").read_text()
    pip_calls = [line.strip() for line in script.splitlines() if re.search(r"\bpip\b", line)
                 and not line.strip().startswith("#")]
    assert pip_calls and all('"$VPY" -m pip' in line for line in pip_calls), pip_calls
    assert "exec ./scripts/test" in (ROOT / ".ci" / "run").read_text()


# --- --help ---------------------------------------------------------------------------------------------------


HELP_AT_80 = [(), ("deploy",), ("preflight",), ("plan",), ("status",), ("down",), ("demo",), ("release", "new"),
              ("release", "cut"), ("router",), ("router", "status"), ("approvals",), ("history",),
              ("calendar", "check"), ("calendar", "show"), ("policy", "apply"), ("audit", "export"),
              ("version", "next"), ("migrations", "lint"), ("receive-alerts",)]


@pytest.mark.parametrize("command", HELP_AT_80, ids=lambda c: " ".join(c) or "releasegate")
def test_help_is_readable_at_80_columns_with_plain_flags(command):
    r = rg(*command, "--help", columns=80)
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout, r.stdout  # nothing cut
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
    assert "<bool>" not in r.stdout  # a flag takes no value
    assert not re.search(r"--no-(hotfix|break-glass|allow-breaking|json|fast|force)", r.stdout)
    # One metavar convention: names in capitals, never a type in brackets or an argument in braces.
    assert not re.search(r"<(str|path|dir|file|integer|float|int)>|\{[A-Z@]+\}", r.stdout), r.stdout
    usage = next(line for line in r.stdout.splitlines() if "Usage:" in line)
    assert "{" not in usage and "<" not in usage
    # Descriptions get room: a panel row's description starts within the first 44 columns, whatever the
    # longest option (--allow-breaking-migration is 26 characters).
    for line in r.stdout.splitlines():
        row = re.match(r"│ (\*  |   )?(--[\w-]+|[A-Z@]+)(, -\w)?( \S+)?\s+(\S)", line)
        if row and not r.stdout.startswith(" Usage: releasegate [OPTIONS] COMMAND"):
            assert row.start(5) <= 44, line


def test_deploy_help_names_every_value_the_same_way():
    text = rg("deploy", "--help", columns=80).stdout
    assert "Usage: releasegate deploy [OPTIONS] SPEC " in text
    for shown in ("--version, -v VERSION", "--state-dir DIR", "--env ENV", "--as USER", "--reason TEXT"):
        assert shown in text, shown
    row = re.search(r"--allow-breaking-migration\s+(.*?)\s*│", text)
    assert row and row.group(1).startswith("Apply migrations the backward-compatibility"), text  # on one line
    assert "--env ENV" in rg("calendar", "check", "--help", columns=80).stdout  # as in deploy (was <str>)
    assert "--state-dir DIR" in rg("calendar", "check", "--help", columns=80).stdout


def test_commands_are_grouped_into_panels():
    out = rg("--help", columns=100).stdout
    panels = {m.group(1): m.start() for m in re.finditer(r"╭─ (\w+) ─", out)}
    assert list(panels) == ["Options", "Rollouts", "Governance", "Integrations"]

    def panel_of(command: str) -> str:
        at = re.search(rf"│ {re.escape(command)}\s", out)
        assert at, command
        return max((name for name, start in panels.items() if start < at.start()), key=lambda n: panels[n])

    assert {c: panel_of(c) for c in ("deploy", "down", "status", "demo")} == dict.fromkeys(
        ("deploy", "down", "status", "demo"), "Rollouts")
    assert {c: panel_of(c) for c in ("approve", "calendar", "audit", "release")} == dict.fromkeys(
        ("approve", "calendar", "audit", "release"), "Governance")
    assert {c: panel_of(c) for c in ("router", "metrics", "receive-alerts")} == dict.fromkeys(
        ("router", "metrics", "receive-alerts"), "Integrations")


def test_the_two_versions_cannot_be_confused(tmp_path):
    from releasegate import __version__

    own = rg("--version")
    assert own.returncode == 0 and own.stdout.strip() == f"releasegate {__version__}"
    assert "Print releasegate's own version and exit" in flat(rg("--help", columns=80).stdout)
    assert "VERSION The release's version to roll out" in flat(rg("deploy", "--help", columns=80).stdout)

    spec = str(EXAMPLES / "specs" / "shop-canary.yaml")
    for args, says in ((("deploy", spec, "--version"), "--version takes the version to roll out"),
                       (("plan", spec, "-v"), "-v takes the version to roll out"),
                       (("deploy", spec), "give the version to roll out"),
                       (("status", "--version"), "releasegate's own version is `releasegate --version`")):
        r = rg(*args, cwd=tmp_path)
        assert r.returncode == 2, args
        assert len(r.stderr.splitlines()) == 1 and "╭" not in r.stderr, r.stderr
        assert r.stderr.startswith(f"releasegate {args[0]}: ") and says in r.stderr, r.stderr
        assert f"(see `releasegate {args[0]} --help`)" in r.stderr
    assert not (tmp_path / ".releasegate").exists()


def test_the_global_state_dir_reaches_every_command(tmp_path):
    """`releasegate --state-dir X audit verify` (the demo prints such commands) reads X, not ./.releasegate."""
    from releasegate.store.audit import AuditLog

    state = tmp_path / "state"
    with AuditLog(state) as log:
        log.append("alice", "test.entry")
    r = rg("--state-dir", str(state), "audit", "verify", cwd=tmp_path)
    assert r.returncode == 0 and "audit log ok: 1 entries" in r.stdout, r.stderr
    assert not (tmp_path / ".releasegate").exists()
    assert rg("audit", "verify", "--state-dir", str(state), cwd=tmp_path).returncode == 0  # after the command too


# --- read-only commands -----------------------------------------------------------------------------------------


def _read_only_commands() -> list[tuple[str, ...]]:
    spec = str(EXAMPLES / "governance" / "shop.yaml")
    policy = str(EXAMPLES / "governance" / "policy.yaml")
    calendar = str(EXAMPLES / "governance" / "calendar.yaml")
    return [("status",), ("status", "shop"), ("status", "--json"), ("history", "shop"),
            ("plan", spec, "--version", "1.0.0"), ("preflight", spec, "--version", "1.0.0"),
            ("approvals", "shop@1.0.0", "--policy", policy),
            ("calendar", "check", "--calendar", calendar, "--change", "minor"),
            ("calendar", "show", "--calendar", calendar, "--month", "2026-01"),
            ("audit", "verify"), ("audit", "export"), ("router", "status"), ("gc",),
            ("promote", "shop"), ("abort", "shop"), ("rollback", "shop"), ("resume", "shop"), ("down", "shop"),
            ("router", "restart", "shop"), ("router", "stop", "shop"), ("audit", "head")]


def test_read_only_commands_in_an_empty_directory_create_no_state_dir(tmp_path):
    def run(args: tuple[str, ...]) -> tuple[tuple[str, ...], subprocess.CompletedProcess[str]]:
        return args, rg(*args, cwd=tmp_path)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, _read_only_commands()))
    for args, r in results:
        assert "Traceback" not in r.stderr and r.returncode in (0, 2), (args, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    by = {args[:2]: r for args, r in results}
    assert by[("status",)].stdout.startswith("no services deployed yet")
    assert "unknown service" in by[("down", "shop")].stderr


def test_an_unknown_service_names_the_state_dir_read_and_how_to_read_another(tmp_path):
    """In a directory where releasegate never ran (or with a state dir that holds other services), every command
    about a service says which state dir it read and how to point at another."""
    from releasegate.store.audit import AuditLog

    hint = "to read another state dir: --state-dir DIR or RELEASEGATE_HOME=DIR"
    commands = [("rollback", "shop"), ("status", "shop"), ("promote", "shop"), ("abort", "shop"), ("resume", "shop"),
                ("history", "shop"), ("down", "shop"), ("gc", "shop"), ("router", "status", "shop"),
                ("router", "restart", "shop"), ("router", "stop", "shop")]
    with ThreadPoolExecutor(4) as pool:
        here = list(pool.map(lambda args: rg(*args, cwd=tmp_path), commands))
    for args, r in zip(commands, here, strict=True):
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, (args, r.stderr)
        assert r.stderr.startswith("releasegate: shop: unknown service: there is no releasegate state in "
                                   f".releasegate ({tmp_path / '.releasegate'})"), (args, r.stderr)
        assert r.stderr.rstrip().endswith(hint), (args, r.stderr)
    everything = rg("status", cwd=tmp_path)
    assert everything.returncode == 0 and f"({tmp_path / '.releasegate'})" in everything.stdout
    assert hint in everything.stdout
    assert not (tmp_path / ".releasegate").exists()

    state = tmp_path / "elsewhere"
    with AuditLog(state) as log:  # a state dir in use, by other services
        log.append("alice", "test.entry")
    with ThreadPoolExecutor(4) as pool:
        there = list(pool.map(lambda args: rg("--state-dir", str(state), *args, cwd=tmp_path), commands))
    for args, r in zip(commands, there, strict=True):
        assert r.returncode == 2, (args, r.stderr)
        assert f"shop: unknown service: the state dir {state} has no service 'shop'" in r.stderr, (args, r.stderr)
        assert hint in r.stderr
