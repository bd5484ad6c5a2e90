"""Hostile and malformed specs, calendars and policies (docs/security.md, section 2): whatever the file holds, the
answer is exit 2 and ``FILE:LINE:COL: message`` (``FILE: message`` for a file that cannot be read at all), fast
and in bounded memory, never an internal error; and ``validate`` refuses what ``deploy`` would refuse for the
spec's content.

The attacks run through the real CLI in a subprocess under an address-space limit, so a loader that expands a
bomb fails these tests with a MemoryError (exit 1) instead of taking the machine's memory.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from releasegate.errors import UserError
from releasegate.notifications import build_notifications
from releasegate.spec import SpecError, load_spec, load_spec_text
from releasegate.spec.yamlcompose import MAX_BYTES, MAX_DEPTH, MAX_ITEMS, MAX_VALUES

HEAD = 'service: shop\nplatform: {command: "app --port {port}"}\n'
LOL = '"lol"'


def billion_laughs() -> str:
    """The classic attack: 9 levels of 9 aliases, a few hundred bytes that expand to 9**9 (387 million) values."""
    rows = [f"a: &a [{','.join([LOL] * 9)}]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        rows.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    return HEAD + "\n".join(rows) + "\n"


def limit_memory() -> None:  # in the child: 1.5 GiB of address space, far below what the bomb needs
    resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))


def rg(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RELEASEGATE_HOME": str(cwd / "home")}
    env.pop("RELEASEGATE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "releasegate", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=60, preexec_fn=limit_memory)


@contextmanager
def bounded_memory(extra: int = 1 << 30) -> Iterator[None]:
    """In this process: at most ``extra`` more address space while the block runs, so a loader that expands a bomb
    fails with MemoryError rather than taking the machine's memory (the hard limit is left alone)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    size = int(re.search(r"VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024  # type: ignore[union-attr]
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def only_issue(text: str, filename: str = "spec.yaml") -> str:
    with pytest.raises(SpecError) as info, bounded_memory():
        load_spec_text(text, filename)
    assert len(info.value.issues) == 1, str(info.value)
    return str(info.value)


# --- the billion laughs, through every command that reads a spec -------------------------------------------------


@pytest.mark.parametrize("command", [["validate"], ["plan", "--version", "2.0.0"],
                                     ["deploy", "--version", "2.0.0", "--state-dir", "state"]])
def test_a_billion_laughs_is_refused_at_the_alias_by_validate_plan_and_deploy(tmp_path: Path,
                                                                              command: list[str]) -> None:
    bomb = billion_laughs()
    assert len(bomb.encode()) < 600
    (tmp_path / "bomb.yaml").write_text(bomb)
    done = rg(command[0], "bomb.yaml", *command[1:], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    # the first alias whose expansion passes the bound: in row f (9**5 values), the fifth line after the head
    assert done.stderr.startswith("releasegate: bomb.yaml:7:")
    assert f'YAML aliases expand to more than {MAX_VALUES} values here (a "billion laughs" document?); write the ' \
           "values out or use fewer aliases" in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "state").exists()  # deploy refused before creating anything


CHILD_LOAD = """
import sys
from releasegate.governance.calendar_models import load_calendar
from releasegate.governance.policy import load_policy
from releasegate.spec import SpecError
try:
    (load_calendar if sys.argv[1] == "calendar" else load_policy)(sys.argv[2])
except SpecError as exc:
    print(exc)
    sys.exit(2)
"""


@pytest.mark.parametrize("kind", ["calendar", "policy"])
def test_calendars_and_policies_have_the_same_bounds(tmp_path: Path, kind: str) -> None:
    """Both load through the spec's loader (releasegate.spec.yamlfile); in a child, under the same memory limit."""
    (tmp_path / f"{kind}.yaml").write_text(billion_laughs())
    done = subprocess.run([sys.executable, "-c", CHILD_LOAD, kind, f"{kind}.yaml"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, preexec_fn=limit_memory)
    assert done.returncode == 2, done.stderr
    assert re.match(rf"{kind}\.yaml:7:\d+: YAML aliases expand to more than {MAX_VALUES} values here", done.stdout)


# --- each way a file used to escape as an internal error (exit 1) ---------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    (HEAD + "x: " + "[" * 1000 + "]" * 1000 + "\n",
     f"spec.yaml:3:{3 + MAX_DEPTH}: lists and mappings nested more than {MAX_DEPTH} levels deep here"),
    (HEAD + "".join("  " * i + f"k{i}:\n" for i in range(1000)),
     f"spec.yaml:{3 + MAX_DEPTH}:{2 * MAX_DEPTH + 1}: lists and mappings nested more than {MAX_DEPTH} levels"),
    (HEAD + "health: {attempts: " + "9" * 5000 + "}\n",
     "spec.yaml:3:20: a number longer than 100 characters here; no spec setting needs one"),
    (HEAD + "health: {timeout: " + "1" * 400 + ".5}\n", "spec.yaml:3:19: a number longer than 100 characters"),
    (HEAD + "health: {attempts: !!float 'x'}\n", "spec.yaml:3:20: 'x' cannot be read as !!float; fix the value"),
    (HEAD + "health: {attempts: !!int 'x'}\n", "spec.yaml:3:20: 'x' cannot be read as !!int; fix the value"),
    (HEAD + "health: {attempts: !!int '0x'}\n", "spec.yaml:3:20: '0x' cannot be read as !!int"),
    (HEAD + "tier: !!bool 'maybe'\n", "spec.yaml:3:7: 'maybe' cannot be read as !!bool"),
    (HEAD + "tier: !!timestamp 2025-13-01\n", "spec.yaml:3:7: unsupported YAML tag !!timestamp; a spec uses plain"),
    (HEAD + "tier: !!binary aGVsbG8=\n", "spec.yaml:3:7: unsupported YAML tag !!binary"),
    (HEAD + "tier: !!set {a, b}\n", "spec.yaml:3:7: unsupported YAML tag !!set"),
    (HEAD + "tier: !!map x\n", "spec.yaml:3:7: the tag !!map does not fit this value; remove the tag"),
    (HEAD + "tier: !!omap [a: 1]\n", "spec.yaml:3:7: unsupported YAML tag !!omap"),
    (HEAD + "tier: !!python/object/apply:os.system ['true']\n", "spec.yaml:3:7: unsupported YAML tag !!python/"),
    (HEAD + 'tier: "a\\0b"\n', "spec.yaml:3:7: this value holds the character U+0000"),
    (HEAD + 'tier: "\\ud800"\n', "spec.yaml:3:7: this value holds the character U+D800"),
    (HEAD + "tier: " + "x" * 70_000 + "\n", "spec.yaml:3:7: a value longer than 65536 characters here"),
    (HEAD + "env: [" + ",".join(["1"] * (MAX_ITEMS + 1)) + "]\n",
     f"spec.yaml:3:{7 + 2 * MAX_ITEMS}: more than {MAX_ITEMS} items in one list here"),
    (HEAD + "env: {" + ",".join(f"k{i}: 1" for i in range(MAX_ITEMS + 1)) + "}\n",
     f"spec.yaml:3:{7 + sum(len(f'k{i}: 1,') for i in range(MAX_ITEMS))}: more than {MAX_ITEMS} keys in one"),
    (HEAD + "".join(f"k{i}: [{','.join(['1'] * 99)}]\n" for i in range(MAX_VALUES // 100 + 1)),
     f"more than {MAX_VALUES} values in the spec here"),
    (HEAD + "a: &a {x: 1}\nb: &b {<<: [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]}\n"
     + "".join(f"c{i}: &c{i} {{<<: [{', '.join([f'*c{i - 1}' if i else '*b'] * 10)}]}}\n" for i in range(6)),
     "YAML aliases expand to more than"),
], ids=["flow-1000-deep", "block-1000-deep", "int-5000-digits", "float-400-digits", "float-tag", "int-tag",
        "int-tag-0x", "bool-tag", "timestamp-tag", "binary-tag", "set-tag", "map-tag-on-text", "omap-tag", "python-tag",
        "nul-escape", "lone-surrogate", "long-scalar", "long-list", "long-mapping", "many-values", "merge-bomb"])
def test_malformed_values_are_user_errors_at_their_place(text: str, expected: str) -> None:
    message = only_issue(text)
    assert re.match(r"^spec\.yaml:\d+:\d+: ", message), message
    assert expected in message


def test_files_that_cannot_be_read_as_text_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"service: caf\xe9\n")
    (tmp_path / "big.yaml").write_text(HEAD + "# " + "x" * MAX_BYTES + "\n")
    (tmp_path / "dir.yaml").mkdir()
    cases = {
        tmp_path / "latin1.yaml": ":1:13: not UTF-8 text (byte 0xe9); save the spec as UTF-8",
        tmp_path / "big.yaml": f":3:{MAX_BYTES - len(HEAD) + 1}: the spec is longer than 1 MiB here",
        Path("/dev/zero"): f":1:{MAX_BYTES + 1}: the spec is longer than 1 MiB here",  # endless: read up to the bound
        tmp_path / "dir.yaml": ": is a directory, not a spec file",
        tmp_path / "missing.yaml": ": no such file",
    }
    for path, expected in cases.items():
        with pytest.raises(SpecError) as info:
            load_spec(path)
        assert str(info.value) == f"{path}{expected}" or str(info.value).startswith(f"{path}{expected}")


@pytest.mark.parametrize(("text", "where"), [
    (HEAD + "x: " + "[" * 1000 + "]" * 1000 + "\n", "spec.yaml:3:67: lists and mappings nested more than 64"),
    (HEAD + "health: {attempts: " + "9" * 5000 + "}\n", "spec.yaml:3:20: a number longer than 100 characters"),
    (HEAD + "health: {attempts: !!float 'x'}\n", "spec.yaml:3:20: 'x' cannot be read as !!float"),
    (HEAD + "notify:\n  - url: mailto://\n", "spec.yaml:4:10: not an Apprise URL Apprise can use (scheme 'mailto'"),
], ids=["deep", "int-5000-digits", "float-tag", "mailto-url"])
def test_validate_exits_2_with_the_place(tmp_path: Path, text: str, where: str) -> None:
    (tmp_path / "spec.yaml").write_text(text)
    done = rg("validate", "spec.yaml", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"releasegate: {where}"), done.stderr
    assert "internal error" not in done.stderr and len(done.stderr.splitlines()) == 1


# --- validate refuses what deploy would refuse for the spec's content ----------------------------------------


@pytest.mark.parametrize("url", ["mailto://", "nosuch://host/x", "json://", "http://example.com", "slack://",
                                 "", "json://127.0.0.1:9/hook", "slack://TokenA/TokenB/TokenC",
                                 "mailtos://user:password@example.com", "pagerduty://integration@apikey"])
def test_validate_accepts_exactly_the_notify_urls_deploy_accepts(tmp_path: Path, url: str) -> None:
    text = HEAD + f"notify:\n  - url: '{url}'\n"
    try:
        spec = load_spec_text(text, "spec.yaml")
    except SpecError as exc:
        # at the URL, or at its key when it is empty
        assert re.match(r"spec\.yaml:4:(10|5): not an Apprise URL Apprise can use", str(exc)), str(exc)
        validated = False
    else:
        validated = True
        try:
            build_notifications(spec, tmp_path)
        except UserError:
            pytest.fail(f"validate accepted {url!r}, which deploy refuses")
    if not validated:  # deploy's own check agrees: the same URL stops a deploy
        from releasegate.providers.notifiers.apprise import check_url

        assert check_url(url) is not None
