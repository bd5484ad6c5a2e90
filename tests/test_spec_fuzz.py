"""Property-based tests of the loader (docs/security.md, section 2): for any text at all, loading a spec either
succeeds or raises ``SpecError`` whose every line is ``FILE:LINE:COL: message`` inside the file, within bounded
memory (tracemalloc's peak) and hypothesis's deadline (10 s: an example takes milliseconds, a pathological
parse minutes; a tighter deadline failed on a loaded machine); through the real CLI, the exit code is 0 or 2.

Derandomized, without an example database: every run tries the same examples, so CI never flakes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from releasegate.notifications import build_notifications
from releasegate.providers.notifiers.apprise import check_url
from releasegate.spec import SpecError, load_spec_text

LOCATED = re.compile(r"^spec\.yaml:(\d+):(\d+): \S")
PEAK_BYTES = 100 << 20

SETTINGS = settings(max_examples=150, deadline=10_000, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# YAML's own punctuation, tags, anchors and escapes, so random text reaches every part of the parser
YAML_BITS = st.sampled_from([
    ":", ": ", "- ", "[", "]", "{", "}", ",", "? ", "&a ", "*a", "&b ", "*b", "<<: ", "!!float ", "!!int ",
    "!!str ", "!!binary ", "!!set ", "!!timestamp ", "!!bool ", "!!null ", "!!map ", "!!seq ", "!!python/none ",
    "!x ", "'", '"', "\\0", "\\ud800", "\\x00", "\\u2028", "#", "|", ">", "---", "...", "%YAML 1.1", "\t", "\n",
    "\n  ", "\n- ", "~", "1e999", "0x", "0o7", "-.inf", ".nan", "99999999999999999999", "10:00", "2025-13-01",
    "yes", "on", "null", "\x00", "\x85", "\ufeff", "\u202e", "\U0001f600", "service", "platform", "command",
    "{port}", "url", "mailto://", "notify", "steps", "weight",
])
TEXT = st.lists(st.one_of(YAML_BITS, st.text(max_size=8)), max_size=40).map("".join)

_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(min_size=1, max_size=10), inner, max_size=4)),
    max_leaves=12)
_SPEC = st.fixed_dictionaries(  # mostly valid, so that mutations also reach what is checked after the YAML
    {"service": st.sampled_from(["shop", "shop", "shop", "Shop", "", "a" * 70]),
     "platform": st.fixed_dictionaries({"command": st.sampled_from(["app --port {port}"] * 3 + ["app", "{x}"])})},
    optional={"tier": st.sampled_from(["critical", "supporting", "gold", 1]),
              "strategy": st.fixed_dictionaries({"canary": st.fixed_dictionaries(
                  {"steps": st.lists(st.fixed_dictionaries({"weight": st.integers(1, 99)}), max_size=3)})}),
              "notify": st.lists(st.fixed_dictionaries({"url": st.sampled_from(
                  ["json://127.0.0.1:9/x", "mailto://", "slack://a/b/c", "nosuch://x"])}), max_size=2),
              "health": st.fixed_dictionaries({}, optional={"path": st.sampled_from(["/", "/health", "x"]),
                                                            "attempts": st.one_of(st.integers(-5, 100), _VALUES)}),
              "metrics": _VALUES})
SPECS = st.one_of(_SPEC, _SPEC.map(lambda spec: {k: v for k, v in spec.items() if k != "metrics"}))


@pytest.fixture(autouse=True, scope="module")
def _apprise_loaded() -> None:
    """Apprise loads its plugins on the first URL it reads (once per process, seconds under tracemalloc): not a
    cost of any one example, so not charged to the first one's deadline."""
    check_url("mailto://")


@st.composite
def near_valid(draw: st.DrawFn) -> str:
    """A spec as YAML, then mutated: a piece of YAML inserted, a slice cut, or a character replaced."""
    text = yaml.safe_dump(draw(SPECS), sort_keys=False, allow_unicode=True)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        match draw(st.sampled_from(["insert", "cut", "replace"])):
            case "insert":
                text = text[:at] + draw(TEXT) + text[at:]
            case "cut":
                text = text[:at] + text[at + draw(st.integers(1, 20)):]
            case _:
                text = text[:at] + draw(st.characters()) + text[at + 1:]
    return text


def check(text: str, state_dir: Path | None = None) -> None:
    """Only SpecError escapes; every line of it is located inside the text; the peak memory stays bounded. With
    ``state_dir``: a spec that loads is one deploy's content checks accept too (its notify URLs)."""
    tracemalloc.start()
    try:
        spec = load_spec_text(text, "spec.yaml")
        if state_dir is not None:
            build_notifications(spec, state_dir)  # raises UserError for a URL deploy refuses
    except SpecError as exc:
        lines = str(exc).splitlines()
        assert lines
        for line in lines:
            found = LOCATED.match(line)
            assert found, line
            assert 1 <= int(found.group(1)) <= text.count("\n") + 2, line
            assert int(found.group(2)) >= 1, line
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"{peak >> 20} MiB"


@SETTINGS
@given(TEXT)
def test_any_text_is_a_spec_or_located_errors(text: str) -> None:
    check(text)


@SETTINGS
@given(near_valid())
def test_mutated_specs_are_a_spec_or_located_errors(text: str) -> None:
    check(text, Path("/nonexistent/state"))  # building the notifications writes nothing


@settings(max_examples=4, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(near_valid())
@example("service: !!timestamp x\n")  # escaped as AttributeError (exit 1) before the loader's bounds
def test_validate_exits_0_or_2_with_located_errors(tmp_path: Path, text: str) -> None:
    (tmp_path / "spec.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
    env = {k: v for k, v in os.environ.items() if k != "RELEASEGATE_DEBUG"}
    done = subprocess.run([sys.executable, "-m", "releasegate", "validate", "spec.yaml"], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=60)
    assert done.returncode in (0, 2), done.stderr
    if done.returncode == 2:
        for line in done.stderr.splitlines():
            assert re.match(r"^releasegate: spec\.yaml(:\d+:\d+)?: \S", line), line
